"""The adaptive schedule's arithmetic: learning durations from censored polls, planning polls."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from worker.adaptive.distribution import Observation, cell_of, estimate, lognormal
from worker.adaptive.planner import plan


def poll_fixed(durations: list[float], every_s: float) -> list[Observation]:
    """What polls every ``every_s`` tell: each finish between the last two polls."""
    return [
        Observation((math.ceil(t / every_s) - 1) * every_s, math.ceil(t / every_s) * every_s)
        for t in durations
    ]


def draws(n: int, median: float = 20.0, sigma: float = 0.3, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(math.log(median) + sigma * rng.gauss(0, 1)) for _ in range(n)]


def test_durations_are_learned_from_interval_censored_polls() -> None:
    """Polled every 5 s, each job only says 'between these two polls': the quantiles still come
    out close to the truth (lognormal 20 s, sigma 0.3: p10 13.6, p50 20, p90 29.4)."""
    learned = estimate(poll_fixed(draws(400), 5.0))
    for q, truth in ((0.1, 13.6), (0.5, 20.0), (0.9, 29.4)):
        got = learned.quantile(q)
        assert got is not None and abs(got - truth) / truth < 0.15, (q, got)


def test_jobs_that_never_finished_are_right_censored() -> None:
    """Expired after 60 s: one in ten jobs takes longer than that (when, nothing says)."""
    observations = [*poll_fixed(draws(90), 5.0), *[Observation(60.0, None)] * 10]
    learned = estimate(observations)
    at_60 = cell_of(60.0)
    assert learned.survival()[at_60] == pytest.approx(0.1, abs=0.02)
    assert learned.beyond > 0
    # Past the 90 % that finished within 60 s, the quantiles lie beyond 60 s; the 5 % of mass
    # past the grid has no age at all.
    late = learned.quantile(0.93)
    assert late is not None and late > 60
    assert learned.quantile(0.99) is None


def test_recent_jobs_weigh_more() -> None:
    """A provider that got three times slower: with recency weights the estimate follows."""
    old = [Observation(o.after_s, o.by_s, 0.05) for o in poll_fixed(draws(200), 2.0)]
    new = poll_fixed(draws(40, median=60.0, seed=9), 2.0)
    learned = estimate([*new, *old])
    median = learned.quantile(0.5)
    assert median is not None and 45 < median < 75


def test_the_plan_waits_for_the_first_finishes_and_polls_densely_around_them() -> None:
    dist = lognormal(20.0, 0.3)
    schedule = plan(dist, latency_cost_s=8.0, min_gap_s=1.0, max_gap_s=300.0)
    first = schedule.first_age()
    assert 10 < first < 25  # no call at enqueue: nothing finishes that early
    ages = [first]
    while (nxt := schedule.next_age(ages[-1])) is not None and len(ages) < 50:
        assert nxt > ages[-1]
        ages.append(nxt)
    gaps = [b - a for a, b in itertools.pairwise(ages)]
    assert min(gaps) >= 1.0
    # Past the horizon (all but 0.1 % finished) the plan hands over to the backoff.
    assert schedule.next_age(schedule.horizon_s + 1) is None
    assert 1.0 < schedule.calls < 2.0 and schedule.latency_s < 10


def test_the_plan_beats_fixed_intervals_at_equal_latency() -> None:
    """With the true distribution known, the planned schedule needs fewer calls than polling at
    a fixed interval for the same mean detection latency (fixed: first poll at enqueue)."""
    rng = random.Random(5)
    truth = draws(5000, seed=11)
    schedule = plan(lognormal(20.0, 0.3), latency_cost_s=4.0, min_gap_s=1.0, max_gap_s=300.0)
    calls = late = 0.0
    for t in truth:
        seen, n = 0.0, 0
        at = schedule.first_age()
        while True:
            n += 1
            if at >= t:
                break
            seen = at
            at = schedule.next_age(seen) or seen + 5.0
        calls, late = calls + n, late + at - t
    calls, latency = calls / len(truth), late / len(truth)
    every = 2 * latency  # fixed intervals: mean latency is half the interval
    fixed_calls = sum(math.ceil(t / every) + 1 for t in truth) / len(truth)
    assert calls < 0.55 * fixed_calls, (calls, latency, fixed_calls)
    assert rng  # the draws are deterministic


def test_a_scaled_distribution_keeps_its_shape() -> None:
    base = lognormal(20.0, 0.3)
    slower = base.scaled(3.0)
    p50, p90 = slower.quantile(0.5), slower.quantile(0.9)
    assert p50 is not None and p90 is not None
    assert p50 == pytest.approx(60, rel=0.05) and p90 == pytest.approx(3 * 29.4, rel=0.06)
