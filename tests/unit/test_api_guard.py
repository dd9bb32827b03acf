"""The checks before a token lookup: its form, the refused tokens, each source's budget of
failed authentications; bounded tables."""

from __future__ import annotations

import pytest

from worker.api import guard
from worker.api.guard import FAILURE_BURST, REFUSED_TTL_S, AuthGuard, bearer_token, source_of
from worker.clients.credentials import is_well_formed, new_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(check: object) -> int | None:
    return getattr(check, "status", None)


def test_only_the_form_of_our_tokens_is_well_formed() -> None:
    assert all(is_well_formed(new_token()) for _ in range(200))
    for bad in [
        "",
        "jt_",
        "jt_" + "A" * 42,
        "jt_" + "A" * 44,
        "xx_" + "A" * 43,
        "jt_" + "A" * 42 + "=",
    ]:
        assert not is_well_formed(bad), bad
    assert not is_well_formed("jt_" + "A" * 42 + "\u00e9")


def test_a_malformed_token_is_refused_without_a_lookup() -> None:
    gate = AuthGuard(clock=Clock())
    refusal = gate.check("jt_not-a-token", "127.0.0.1")
    assert status(refusal) == 401
    assert gate.check(new_token(), "127.0.0.1") is None


def test_a_refused_token_is_refused_again_without_a_lookup_for_a_while() -> None:
    clock = Clock()
    gate = AuthGuard(clock=clock)
    token = new_token()
    gate.failed(token, "127.0.0.1")
    assert status(gate.check(token, "127.0.0.1")) == 401
    assert status(gate.check(token, "10.9.9.9")) == 401  # whoever sends it
    clock.now += REFUSED_TTL_S + 1
    assert gate.check(token, "127.0.0.1") is None


def test_each_source_has_a_budget_of_failures() -> None:
    clock = Clock()
    gate = AuthGuard(clock=clock)
    for _ in range(FAILURE_BURST):
        assert gate.check(new_token(), "127.0.0.2") is None
        gate.failed(new_token(), "127.0.0.2")
    refusal = gate.check(new_token(), "127.0.0.2")
    assert status(refusal) == 429
    assert refusal is not None and refusal.headers["Retry-After"] == "1"
    assert gate.check(new_token(), "127.0.0.1") is None  # another source: its own budget
    clock.now += 1.0  # JOBTRACKER_API_AUTH_FAILURES' default: 60 a minute
    assert gate.check(new_token(), "127.0.0.2") is None  # one more, a second later
    gate.failed(new_token(), "127.0.0.2")
    assert status(gate.check(new_token(), "127.0.0.2")) == 429


def test_the_rate_of_failures_is_the_settings() -> None:
    clock = Clock()
    gate = AuthGuard(6.0, clock=clock)  # one every 10 s
    for _ in range(FAILURE_BURST):
        gate.failed(new_token(), "127.0.0.2")
    clock.now += 9.0
    assert status(gate.check(new_token(), "127.0.0.2")) == 429
    clock.now += 1.0
    assert gate.check(new_token(), "127.0.0.2") is None


def test_an_ipv6_source_is_its_64() -> None:
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9")
    assert source_of("2001:db8:1:2::1") != source_of("2001:db8:1:3::1")
    assert source_of("192.0.2.1") == "192.0.2.1"
    assert source_of(None) == "unknown"
    assert len(source_of("x" * 1000)) == 64


def test_the_tables_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "MAX_ENTRIES", 100)
    gate = AuthGuard(clock=Clock())
    for i in range(1000):
        gate.failed(new_token(), f"10.0.{i // 256}.{i % 256}")
    assert len(gate._refused) == 100 and len(gate._sources) == 100


def test_the_gate_reads_the_token_as_the_route_does() -> None:
    token = new_token()
    for header, expected in [
        (f"Bearer {token}", token),
        (f"bearer  {token} ", token),
        (f"BEARER {token}", token),
        (f"Basic {token}", None),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Bearer{token}", None),
    ]:
        assert bearer_token([(b"authorization", header.encode())]) == expected, header
    assert bearer_token([(b"host", b"x")]) is None
