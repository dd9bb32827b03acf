"""When to poll a job next, given how long its kind takes: the cheapest schedule for a latency.

Each poll costs one call; each second between a job's finish and the poll that sees it costs
``1 / latency_cost_s`` of a call. Given the learned distribution of durations (on the grid of
:mod:`worker.adaptive.distribution`), :func:`plan` finds, by dynamic programming over the grid's
ages, the schedule of poll ages that minimises the expected total cost: from each age at which a
job was last seen unfinished, the age of the next poll. Polls come often where finishes are
dense and rarely where they are not, and the first poll comes when the first finishes start,
not at once (a JobId that does not exist is not failed before the not-found grace period
anyway, so an immediate confirming poll buys little and costs a call per job).

:func:`for_latency` picks ``latency_cost_s`` so that the schedule's expected mean detection
latency (the time from the finish to the poll that sees it) meets a target: the one knob,
``JOBTRACKER_POLL_TARGET_LATENCY``.

Past the plan's horizon (the age by which all but ``TAIL`` of the learned jobs had finished, or
where the grid's cells grow wider than the longest interval allowed) a job is in the tail and
the caller falls back to the plain backoff.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate

from worker.adaptive.distribution import Distribution, grid

#: The horizon: the plan stops where fewer than this fraction of the jobs that finish at all
#: are still running (or where the learned jobs end).
TAIL = 0.001
#: The expected calls charged for a job that reaches the horizon (it falls back to the backoff).
TAIL_CALLS = 4.0


@dataclass(frozen=True)
class Plan:
    """A schedule: from a job last seen unfinished at age ``ages[i]`` (i = -1: enqueued, age 0),
    poll next at age ``ages[after[i + 1]]``; past ``horizon_s`` the job is in the tail."""

    ages: tuple[float, ...]
    #: after[i + 1]: the index of the next poll's age from state i (state -1 first).
    after: tuple[int, ...]
    horizon_s: float
    latency_cost_s: float
    #: Expected calls per job and mean detection latency (s) of the jobs finishing before the
    #: horizon, as the model predicts them.
    calls: float
    latency_s: float

    def next_age(self, seen_unfinished_s: float) -> float | None:
        """The age of the next poll of a job last seen unfinished at this age (0: never
        answered yet); None when the job is past the horizon (the tail: fall back)."""
        if seen_unfinished_s >= self.horizon_s:
            return None
        state = _floor_index(self.ages, seen_unfinished_s)
        j = self.after[state + 1]
        if j < 0:
            return None
        return max(self.ages[j], seen_unfinished_s)

    def first_age(self) -> float:
        """The age of a job's first poll."""
        age = self.next_age(0.0)
        return 0.0 if age is None else age


def plan(dist: Distribution, *, latency_cost_s: float, min_gap_s: float, max_gap_s: float) -> Plan:
    """The cheapest schedule for ``dist`` when one call is worth ``latency_cost_s`` seconds of
    detection latency, polls at least ``min_gap_s`` and at most ``max_gap_s`` apart."""
    points = grid()
    survival = dist.survival()
    horizon = _horizon(points, survival, dist.beyond, max_gap_s)
    ages = points[: horizon + 1]
    mass = dist.mass[: horizon + 1]
    mids = [((points[k - 1] if k else 0.0) + points[k]) / 2 for k in range(len(ages))]
    # Prefix sums: P[k] = mass of cells < k, M[k] = mass x mid of cells < k.
    cum_p = [0.0, *accumulate(mass)]
    cum_m = [0.0, *accumulate(p * m for p, m in zip(mass, mids, strict=True))]
    still = [1.0, *survival[: horizon + 1]]  # still[i + 1]: running at ages[i]; still[0] = 1
    n = len(ages)
    # cost[i + 1]: expected cost from state i (unnormalised: weighted by the chance to be there).
    cost = [0.0] * (n + 1)
    after = [-1] * (n + 1)
    cost[n] = still[n] * TAIL_CALLS  # past the horizon: the tail's fallback
    for i in range(n - 2, -2, -1):
        start = 0.0 if i < 0 else ages[i]
        best, best_j = math.inf, -1
        for j in range(i + 1, n):
            gap = ages[j] - start
            if gap < min_gap_s:
                continue
            if gap > max_gap_s and j > i + 1:
                break
            # Jobs finishing in cells i+1..j are seen at ages[j].
            waited = ages[j] * (cum_p[j + 1] - cum_p[i + 1]) - (cum_m[j + 1] - cum_m[i + 1])
            total = still[i + 1] + waited / latency_cost_s + cost[j + 1]
            if total < best:
                best, best_j = total, j
        cost[i + 1], after[i + 1] = best, best_j
    calls, latency = _forecast(ages, mass, mids, still, after)
    return Plan(
        ages=tuple(ages),
        after=tuple(after),
        horizon_s=ages[-1],
        latency_cost_s=latency_cost_s,
        calls=calls,
        latency_s=latency,
    )


def for_latency(dist: Distribution, target_s: float, *, min_gap_s: float, max_gap_s: float) -> Plan:
    """The cheapest plan whose expected mean detection latency is at most ``target_s``
    (bisecting the latency cost; the latency falls as the cost of a second rises)."""
    low, high = math.log(1e-3), math.log(1e6)  # latency_cost_s: a call is worth e^x seconds
    best: Plan | None = None
    for _ in range(24):
        mid = (low + high) / 2
        candidate = plan(
            dist, latency_cost_s=math.exp(mid), min_gap_s=min_gap_s, max_gap_s=max_gap_s
        )
        if candidate.latency_s <= target_s:
            best, low = candidate, mid  # meets the target: try trading latency for calls
        else:
            high = mid
    if best is None:  # even polling as often as allowed does not meet it: the closest
        best = plan(dist, latency_cost_s=1e-3, min_gap_s=min_gap_s, max_gap_s=max_gap_s)
    return best


def _horizon(
    points: tuple[float, ...], survival: list[float], beyond: float, max_gap_s: float
) -> int:
    finishing = max(1e-12, 1.0 - beyond)  # jobs that never finish are not waited for here
    for k, left in enumerate(survival):
        width = points[k] - (points[k - 1] if k else 0.0)
        if left - beyond <= TAIL * finishing or width > max_gap_s:
            return k
    return len(points) - 1


def _forecast(
    ages: list[float] | tuple[float, ...],
    mass: tuple[float, ...],
    mids: list[float],
    still: list[float],
    after: list[int],
) -> tuple[float, float]:
    """Expected calls per job and mean latency of the jobs finishing before the horizon, when
    following the plan from enqueue."""
    calls = 0.0
    latency_sum = 0.0
    finished = 0.0
    state = -1
    while True:
        j = after[state + 1]
        if j < 0:
            break
        calls += still[state + 1]
        for k in range(state + 1, j + 1):
            latency_sum += mass[k] * (ages[j] - mids[k])
            finished += mass[k]
        state = j
        if state >= len(ages) - 1:
            break
    calls += still[state + 1] * TAIL_CALLS
    return calls, (latency_sum / finished if finished > 0 else 0.0)


def _floor_index(ages: tuple[float, ...], age: float) -> int:
    """The last state whose age is at or before ``age`` (-1: before the first boundary)."""
    lo, hi = 0, len(ages)
    while lo < hi:
        mid = (lo + hi) // 2
        if ages[mid] <= age:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1
