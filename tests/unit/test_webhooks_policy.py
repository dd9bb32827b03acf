"""Retry policy math and Retry-After parsing: no clock, no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import ConfigError
from worker.policy import DeliveryPolicy
from worker.settings import Settings
from worker.webhooks.send import AttemptError, AttemptOutcome, parse_retry_after

SVIX = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
FAILED = AttemptOutcome(ok=False, status_code=500, error_class=AttemptError.HTTP)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def middle() -> float:
    return 0.5


def test_default_schedule_is_svix_and_gives_eight_attempts() -> None:
    policy = DeliveryPolicy()
    assert policy.retry_schedule_s == SVIX
    assert policy.max_attempts == 8
    delays = [policy.next_attempt_delay(n, FAILED, rand=middle) for n in range(1, 9)]
    assert delays == [*SVIX, None]


def test_jitter_extremes() -> None:
    policy = DeliveryPolicy(retry_schedule_s=(100.0,), jitter=0.1)
    assert policy.next_attempt_delay(1, FAILED, rand=lambda: 0.0) == pytest.approx(90.0)
    assert policy.next_attempt_delay(1, FAILED, rand=lambda: 1.0) == pytest.approx(110.0)


@given(
    attempts=st.integers(min_value=1, max_value=7),
    r=st.floats(min_value=0, max_value=1),
    jitter=st.floats(min_value=0, max_value=0.5),
)
def test_jittered_delay_stays_within_bounds(attempts: int, r: float, jitter: float) -> None:
    policy = DeliveryPolicy(jitter=jitter)
    delay = policy.next_attempt_delay(attempts, FAILED, rand=lambda: r)
    base = SVIX[attempts - 1]
    assert delay is not None
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


def test_exhausted_schedule_ends_the_message() -> None:
    policy = DeliveryPolicy(retry_schedule_s=(1.0, 2.0))
    assert policy.next_attempt_delay(2, FAILED, rand=middle) == 2.0
    assert policy.next_attempt_delay(3, FAILED, rand=middle) is None
    assert DeliveryPolicy(retry_schedule_s=()).next_attempt_delay(1, FAILED, rand=middle) is None


def test_gone_and_refused_url_end_the_message_at_once() -> None:
    policy = DeliveryPolicy()
    gone = AttemptOutcome(ok=False, status_code=410, error_class=AttemptError.HTTP, gone=True)
    refused = AttemptOutcome(ok=False, error_class=AttemptError.REFUSED_URL)
    assert gone.final and refused.final and not FAILED.final
    assert policy.next_attempt_delay(1, gone, rand=middle) is None
    assert policy.next_attempt_delay(1, refused, rand=middle) is None


def test_missing_secret_is_retried_on_the_schedule() -> None:
    no_secret = AttemptOutcome(ok=False, error_class=AttemptError.NO_SECRET)
    assert DeliveryPolicy().next_attempt_delay(1, no_secret, rand=middle) == 5.0


def test_retry_after_lengthens_the_delay_within_the_cap() -> None:
    policy = DeliveryPolicy(retry_after_cap_s=600.0)

    def throttled(seconds: float) -> AttemptOutcome:
        return AttemptOutcome(ok=False, status_code=503, error_class="http", retry_after_s=seconds)

    assert policy.next_attempt_delay(1, throttled(120), rand=middle) == 120.0
    assert policy.next_attempt_delay(1, throttled(5000), rand=middle) == 600.0
    # A shorter Retry-After never brings the retry earlier than the schedule.
    assert policy.next_attempt_delay(2, throttled(1), rand=middle) == 300.0


def test_misuse_is_loud() -> None:
    policy = DeliveryPolicy()
    with pytest.raises(ValueError, match="delivered"):
        policy.next_attempt_delay(1, AttemptOutcome(ok=True, status_code=200), rand=middle)
    with pytest.raises(ValueError, match=">= 1"):
        policy.next_attempt_delay(0, FAILED, rand=middle)
    with pytest.raises(ValueError, match="rand"):
        policy.next_attempt_delay(1, FAILED, rand=lambda: 2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"retry_schedule_s": (5.0, -1.0)},
        {"connect_timeout_s": 20.0, "total_timeout_s": 15.0},
        {"connect_timeout_s": 0.0},
        {"body_cap_bytes": 100},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DeliveryPolicy(**kwargs)  # type: ignore[arg-type]


def test_from_settings(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "JOBTRACKER_WEBHOOK_RETRY_SCHEDULE": "1,2,3",
            "JOBTRACKER_WEBHOOK_BLOCK_PRIVATE": "true",
        },
        cwd=tmp_path,
    )
    policy = DeliveryPolicy.from_settings(settings)
    assert policy.retry_schedule_s == (1.0, 2.0, 3.0)
    assert policy.block_private is True
    assert policy.max_attempts == 4
    assert DeliveryPolicy.from_settings(Settings.from_env({}, cwd=tmp_path)) == DeliveryPolicy()


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120", now=NOW, cap_s=3600) == 120.0
    assert parse_retry_after(" 7 ", now=NOW, cap_s=3600) == 7.0
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=NOW, cap_s=3600) == 90.0


def test_retry_after_is_capped_floored_and_lenient() -> None:
    assert parse_retry_after("86400", now=NOW, cap_s=3600) == 3600.0
    past = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past, now=NOW, cap_s=3600) == 0.0
    for junk in (None, "", "soon", "-5", "1.5e3"):
        assert parse_retry_after(junk, now=NOW, cap_s=3600) is None
