"""How long jobs of a kind take, learned from what the polls saw: a distribution on a grid.

A finished job's true finish is never seen: it lies between the last poll that found the job
unfinished and the poll that found it finished (an *interval-censored* observation), and a job
that expired only tells that it took longer than its last poll (*right-censored*). The estimate is
the nonparametric maximum-likelihood distribution of such data (Turnbull's self-consistency EM),
on a fixed grid of ages spaced geometrically (each cell ``RATIO`` wider than the last), with more
weight on recent jobs so that a change of the provider's speed shows within tens of jobs.

Pure: no clock, no I/O. The grid makes one EM step O(jobs + cells) (each job's interval is a run
of cells; its share is spread with prefix sums), so learning a few hundred jobs costs
milliseconds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import accumulate

#: The grid: ages from FIRST_S, each boundary RATIO times the previous, up to LAST_S.
FIRST_S = 0.25
RATIO = 1.04
LAST_S = 30 * 86400.0


@cache
def grid() -> tuple[float, ...]:
    """Cell boundaries in seconds of job age: cell k is ``(grid[k-1], grid[k]]`` (cell 0 is
    ``(0, grid[0]]``)."""
    points = [FIRST_S]
    while points[-1] < LAST_S:
        points.append(points[-1] * RATIO)
    return tuple(points)


def cell_of(age_s: float) -> int:
    """The cell whose upper boundary is the first at or above ``age_s``."""
    return min(bisect.bisect_left(grid(), age_s), len(grid()) - 1)


@dataclass(frozen=True)
class Observation:
    """One finished job: its finish lay in ``(after_s, by_s]`` of age; ``by_s`` None means it
    never finished (it expired): only that it took longer than ``after_s``."""

    after_s: float
    by_s: float | None
    weight: float = 1.0


@dataclass(frozen=True)
class Distribution:
    """Probability of finishing in each grid cell, and beyond the grid (never, as far as the
    tracker learned: expired jobs)."""

    mass: tuple[float, ...]
    beyond: float
    #: Jobs it was learned from (their weights' sum: the effective sample size is lower).
    samples: float

    def survival(self) -> list[float]:
        """``S[k]``: the chance the job is still running at the end of cell ``k``."""
        total = 1.0
        out = []
        for p in self.mass:
            total -= p
            out.append(max(0.0, total))
        return out

    def quantile(self, q: float) -> float | None:
        """The age by which a fraction ``q`` of jobs finished (None: not within the grid)."""
        points = grid()
        for k, c in enumerate(accumulate(self.mass)):
            if c >= q:
                return points[k]
        return None

    def scaled(self, factor: float) -> Distribution:
        """The same shape, every duration multiplied by ``factor`` (shifted on the log grid)."""
        shift = round(math.log(factor) / math.log(RATIO))
        n = len(self.mass)
        moved = [0.0] * n
        beyond = self.beyond
        for k, p in enumerate(self.mass):
            j = k + shift
            if j >= n:
                beyond += p
            else:
                moved[max(0, j)] += p
        return Distribution(tuple(moved), beyond, self.samples)


def lognormal(median_s: float, sigma: float) -> Distribution:
    """A lognormal on the grid (a job with a duration hint and no history to shape it)."""
    points = grid()
    mu = math.log(median_s)

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2))))

    previous, mass = 0.0, []
    for point in points:
        value = cdf(point)
        mass.append(value - previous)
        previous = value
    return Distribution(tuple(mass), 1.0 - previous, samples=0.0)


def estimate(observations: Sequence[Observation], *, iterations: int = 150) -> Distribution:
    """The distribution of interval- and right-censored durations: EM with smoothing (EMS).

    Plain EM converges to the maximum-likelihood estimate, which says nothing about where within
    an observation's interval the finish lay, and keeps whatever the start put there; on a fine
    grid that is arbitrary and spiky. So each step is followed by a light smoothing over
    neighbouring cells (Silverman's EMS), and the start spreads each job's weight evenly in time
    over its interval: the estimate is smooth, and stays close to the data where the data says
    something.
    """
    n = len(grid())
    widths = [g - (grid()[k - 1] if k else 0.0) for k, g in enumerate(grid())]
    spans: list[tuple[int, int, float]] = []  # first cell, last cell (n: beyond), weight
    for obs in observations:
        first = cell_of(obs.after_s) if obs.after_s > 0 else 0
        if obs.after_s > 0 and grid()[first] <= obs.after_s:
            first += 1  # the finish came after after_s: the cell holding it is excluded
        last = n if obs.by_s is None else max(first, cell_of(obs.by_s))
        spans.append((min(first, n), last, obs.weight))
    total = sum(w for _, _, w in spans)
    if not spans or total <= 0:
        return Distribution(tuple([0.0] * n), 1.0, 0.0)
    # Cell n is "beyond the grid" (a job that never finished): it has no width of its own.
    width = [*widths, 0.0]
    p = [0.0] * (n + 1)
    for first, last, w in spans:
        if last == n:  # never finished: half beyond the grid, half over its cells, to start
            p[n] += w / 2
            w, last = w / 2, n - 1
        inside = sum(width[first : last + 1]) if first < n else 0.0
        for k in range(first, last + 1):
            p[k] += w * (width[k] / inside if inside > 0 else 1.0 / (last - first + 1))
    p = [x / total for x in p]
    for _ in range(iterations):
        prefix = [0.0, *accumulate(p)]
        share = [0.0] * (n + 2)
        for first, last, w in spans:
            inside = prefix[last + 1] - prefix[first]
            if inside > 0:
                share[first] += w / inside
                share[last + 1] -= w / inside
        running, new = 0.0, []
        for k in range(n + 1):
            running += share[k]
            new.append(p[k] * running / total)
        p = _smooth(new, n)
    return Distribution(tuple(p[:n]), p[n], total)


def _smooth(p: list[float], n: int) -> list[float]:
    """Each grid cell shares a quarter of its mass with each neighbour (the beyond-the-grid
    mass is its own)."""
    out = [0.0] * (n + 1)
    for k in range(n):
        left, right = max(0, k - 1), min(n - 1, k + 1)
        out[left] += 0.25 * p[k]
        out[k] += 0.5 * p[k]
        out[right] += 0.25 * p[k]
    out[n] = p[n]
    return out


def _covered(spans: Sequence[tuple[int, int, float]], n: int) -> list[bool]:
    """Cells inside at least one observation's interval."""
    marks = [0] * (n + 2)
    for first, last, _ in spans:
        marks[first] += 1
        marks[last + 1] -= 1
    return [c > 0 for c in accumulate(marks[: n + 1])]
