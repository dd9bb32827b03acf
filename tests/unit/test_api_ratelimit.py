"""The per-client gate: a burst, then the average rate, and how long to wait when refused."""

from __future__ import annotations

from pathlib import Path

from worker.api.ratelimit import ClientRateLimit
from worker.policy import RatePolicy
from worker.providers.ratelimit import LocalStore, RateLimiter
from worker.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(tmp_path: Path, rate: str, burst: str) -> tuple[ClientRateLimit, Clock]:
    clock = Clock()
    settings = Settings.from_env(
        {"JOBTRACKER_API_RATE": rate, "JOBTRACKER_API_BURST": burst}, cwd=tmp_path
    )
    limiter = RateLimiter(LocalStore(clock), RatePolicy(margin=0.0), plan_ahead=False)
    return ClientRateLimit(settings, limiter), clock


def test_a_burst_then_the_rate(tmp_path: Path) -> None:
    limit, clock = gate(tmp_path, "2", "5")
    assert [limit.admit(1) for _ in range(5)] == [None] * 5
    assert limit.admit(1) == 1  # the 6th at once: wait (at least) a second
    assert limit.admit(2) is None  # another client has its own budget
    clock.now += 0.5
    assert limit.admit(1) is None  # half a second at 2/s frees one slot
    assert limit.admit(1) == 1


def test_retry_after_is_whole_seconds_long_enough(tmp_path: Path) -> None:
    limit, clock = gate(tmp_path, "0.1", "1")
    assert limit.admit(1) is None
    assert limit.admit(1) == 10
    clock.now += 10
    assert limit.admit(1) is None
