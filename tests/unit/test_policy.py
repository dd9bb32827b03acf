from __future__ import annotations

import pytest

from worker.policy import PollPolicy, ProviderBackoff
from worker.providers.ratelimit import LocalRateLimiter


def test_poll_delay_grows_then_settles_at_the_maximum() -> None:
    policy = PollPolicy(min_s=5, max_s=300, growth=1.5, jitter=0)
    delays = [policy.next_delay(n) for n in range(1, 20)]
    assert delays[0] == 5
    assert delays[1] == 7.5
    assert delays == sorted(delays)
    assert delays[-1] == 300


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_jitter_stays_within_bounds(draw: float) -> None:
    policy = PollPolicy(min_s=1, max_s=100, jitter=0.2)
    for polls in range(1, 15):
        base = min(100, 1 * 1.5 ** (polls - 1))
        delay = policy.next_delay(polls, rand=lambda: draw)
        assert max(1, base * 0.8) - 1e-9 <= delay <= min(100, base * 1.2) + 1e-9


def test_errors_back_off_harder_than_healthy_polls() -> None:
    policy = PollPolicy(min_s=2, max_s=600, jitter=0)
    for n in range(1, 5):
        assert policy.error_delay(n) > policy.next_delay(n)
    assert policy.error_delay(50) == 600


def test_provider_throttle_and_probe_backoff() -> None:
    backoff = ProviderBackoff(jitter=0)
    assert [backoff.throttle_delay(n) for n in (1, 2, 3)] == [1, 2, 4]
    assert backoff.throttle_delay(30) == backoff.throttle_max_s
    assert backoff.probe_delay(0) == backoff.probe_base_s
    assert backoff.probe_delay(100) == 100
    assert backoff.probe_delay(10_000) == backoff.probe_max_s


def test_local_rate_limiter_spaces_slots_evenly() -> None:
    limiter = LocalRateLimiter()
    assert [limiter.reserve_at("k", 10, 1, 1, now=100.0) for _ in range(3)] == [
        (0.0, 1),
        (pytest.approx(0.1), 1),
        (pytest.approx(0.2), 1),
    ]
    # A batch takes as many slots as fit within max_wait, in one call.
    wait, count = limiter.reserve_at("k", 10, 50, 1, now=100.0)
    assert (wait, count) == (pytest.approx(0.3), 8)  # 0.3, 0.4, ..., 1.0
    # A slot further away than max_wait is refused, not reserved.
    assert limiter.reserve_at("k", 10, 1, 0.95, now=100.0)[1] == 0
    assert limiter.reserve_at("k", 10, 1, 2, now=100.0) == (pytest.approx(1.1), 1)
    # Idle time is not banked: after a pause, no burst.
    assert limiter.reserve_at("k", 10, 3, 0, now=200.0) == (0.0, 1)
    assert limiter.reserve_at("k", 10, 1, 1, now=200.0) == (pytest.approx(0.1), 1)
    # Keys are independent.
    assert limiter.reserve_at("other", 10, 1, 1, now=100.0) == (0.0, 1)
