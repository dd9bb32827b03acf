from __future__ import annotations

import bisect
import random
from collections import deque

import pytest

from worker.policy import PollPolicy, ProviderBackoff, RatePolicy
from worker.providers.ratelimit import learn, plan


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


def test_the_pace_spaces_slots_evenly_without_banking_idle_time() -> None:
    policy = RatePolicy(margin=0.0)
    pace = None
    slots = []
    for _ in range(3):
        pace, wait, count, _ = plan(pace, 100.0, 10, 1, max_wait_s=1, span_s=0, policy=policy)
        slots.append((wait, count))
    assert slots == [(0.0, 1), (pytest.approx(0.1), 1), (pytest.approx(0.2), 1)]
    # A batch takes as many slots as fit within the span, in one call.
    pace, wait, count, _ = plan(pace, 100.0, 10, 50, max_wait_s=1, span_s=0.25, policy=policy)
    assert (wait, count) == (pytest.approx(0.3), 3)  # 0.3, 0.4, 0.5
    # A slot further away than max_wait is refused, not reserved.
    assert plan(pace, 100.0, 10, 1, max_wait_s=0.55, span_s=0, policy=policy)[2] == 0
    # Idle time is not banked: after a pause, no burst.
    pace, wait, count, _ = plan(pace, 200.0, 10, 3, max_wait_s=0, span_s=0, policy=policy)
    assert (wait, count) == (0.0, 1)


def test_the_pace_keeps_a_margin_below_the_rate() -> None:
    """Slots 1 / (rate * 0.98) apart: no 1-second window holds more than the rate."""
    _, _, count, interval = plan(None, 0.0, 20, 100, max_wait_s=1, span_s=1, policy=RatePolicy())
    assert interval == pytest.approx(1 / 19.6)
    assert count == 20  # 0 .. 19 * 51 ms, all within the first second


@pytest.mark.parametrize(
    ("ceiling", "ample_qps"), [(1.0, 10_000.0), (20.0, 10_000.0), (997.0, 10_000.0),
                               (500.0, 100.0), (5_000.0, 100.0)],
)  # fmt: skip
def test_calls_anywhere_within_the_allowance_never_overfill_a_window(
    ceiling: float, ample_qps: float
) -> None:
    """The bound of RatePolicy's docstring, on the slots ``plan`` hands out to batches of any
    size: a 1-second window holds the calls whose slots lie within ``1 + early_s + late_s`` s of
    each other (the earliest fired as late, the last as early as allowed), never more than the
    rate; and that rate is still nearly all used. Above ``ample_qps`` the slack (and with it the
    allowances) grows, and ``ample_qps`` stays allowed."""
    policy = RatePolicy(ample_qps=ample_qps)
    reach = 1.0 + policy.early_s(ceiling) + policy.late_s(ceiling)
    draw = random.Random(7)
    pace, now, slots = None, 0.0, list[float]()
    while now < 12.0:
        pace, wait, count, interval = plan(pace, now, ceiling, draw.randint(1, 60),
                                           max_wait_s=10, span_s=0.25, policy=policy)  # fmt: skip
        slots += [now + wait + i * interval for i in range(count)]
        now += wait + draw.random() * count * interval
    slots.sort()
    end = bisect.bisect_right
    worst = max(end(slots, first + reach) - i for i, first in enumerate(slots))
    assert worst <= ceiling, (worst, reach)
    used = len([s for s in slots if s < 10.0]) / 10.0
    assert used >= min(ceiling * 0.97, ample_qps), used
    if ceiling > ample_qps:
        assert policy.late_s(ceiling) > 1.0  # a batch goes out on one reservation
    else:
        assert policy.late_s(ceiling) == pytest.approx(0.6 * 0.02 / 0.98)


def test_one_refusal_costs_a_little_rate_and_successes_win_it_back() -> None:
    policy = RatePolicy()
    pace = learn(None, 0.0, 20, ok=100, throttled=0, policy=policy)
    assert pace.rate == 20  # never above the ceiling
    pace = learn(pace, 0.0, 20, ok=0, throttled=1, policy=policy)
    assert (pace.rate, pace.learned, pace.run) == (pytest.approx(19.0), 20, 1)
    # Near the rate that was refused, the climb is slow: 0.2 calls/s per second of answers.
    climbed = learn(pace, 0.0, 20, ok=19, throttled=0, policy=policy)
    assert climbed.rate == pytest.approx(19.2, abs=0.02) and climbed.run == 0


def test_refusals_in_a_row_cut_harder_and_teach_nothing_new() -> None:
    """5, 10, 20, 40, 50, 50 % ...: a QPS set 2.5 times too high comes down within a few calls,
    and what was learned stays the rate of the first refusal."""
    policy = RatePolicy()
    rates = []
    pace = learn(None, 0.0, 50, ok=10, throttled=0, policy=policy)
    for _ in range(5):
        pace = learn(pace, 0.0, 50, ok=0, throttled=1, policy=policy)
        rates.append(round(pace.rate, 2))
    assert rates == [47.5, 42.75, 34.2, 20.52, 10.26]
    assert (pace.learned, pace.run) == (50, 5)
    # Far below what was learned, the climb is fast: a quarter of the ceiling per second.
    assert learn(pace, 0.0, 50, ok=10, throttled=0, policy=policy).rate > pace.rate + 8
    # Never below the floor, whatever the refusals.
    assert learn(pace, 0.0, 50, ok=0, throttled=500, policy=policy).rate == pytest.approx(1.0)


@pytest.mark.parametrize("configured", [20.0, 50.0])
def test_against_a_strict_window_the_pace_settles_near_the_real_limit(configured: float) -> None:
    """A simulation of the pace (no clock, no I/O) against a provider that refuses the 21st call
    of any 1-second window: configured right, nothing is refused; configured 2.5 times too high,
    it settles near 20 within seconds, with few refusals afterwards."""
    policy = RatePolicy()
    pace, now, window = None, 0.0, deque[float]()
    calls: list[tuple[float, bool]] = []
    while now < 120.0:
        pace, wait, _, _ = plan(pace, now, configured, 1, max_wait_s=10, span_s=0, policy=policy)
        now += wait
        while window and window[0] <= now - 1.0:
            window.popleft()
        refused = len(window) >= 20
        if not refused:
            window.append(now)
        calls.append((now, refused))
        pace = learn(pace, now, configured, ok=0 if refused else 1, throttled=int(refused),
                     policy=policy)  # fmt: skip
    later = [refused for at, refused in calls if at >= 10.0]
    rate = len(later) / 110.0
    refused_share = sum(later) / len(later)
    if configured == 20.0:
        assert sum(r for _, r in calls) == 0 and rate >= 19.5
    else:
        assert rate >= 18.0 and refused_share <= 0.03, (rate, refused_share)
