"""Rate discipline against a strict provider limiter: calls per second, and how many were refused.

The fake provider (its own process) allows 20 calls in any sliding 1-second window per action (the
21st within a second is refused with ``RequestLimitExceeded``), stricter than a token bucket.
Three runs of the real ``jobtracker run`` (PostgreSQL, Redis, 8 threads, tick 1 s), each over
due jobs that succeed on their first poll (one call per job):

1. **configured right**: ``JOBTRACKER_*_QPS=20``. Targets: >= 18 calls/s, <= 1 % throttled.
2. **configured too high**: ``JOBTRACKER_*_QPS=50`` against the real 20. Targets, after the first
   10 s: >= 17 calls/s, <= 3 % throttled.
3. **shared quota**: another service spends 5 of the 20 calls/s; configured 20. No target: the
   figures show what one refusal among many successes costs (every job must still finish).

Calls/s is the steady window between 10 % and 90 % of the run's calls (the simulator's counter,
sampled every 0.25 s); for run 2 the window starts 10 s in. Throttled % counts the refusals in
the same window over the calls in it.

    .venv/bin/python bench/rate.py [--quick | --smoke]
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass

import _common as c

LIMIT = 20.0


@dataclass
class Run:
    calls_per_s: float
    throttled_percent: float
    finished: int
    seconds: float


def crossing(samples: list[tuple[float, int, int]], level: float) -> tuple[float, float]:
    """When the call counter reached ``level`` (interpolated), and the throttled count then."""
    for (t0, n0, r0), (t1, n1, r1) in itertools.pairwise(samples):
        if n0 < level <= n1:
            f = (level - n0) / (n1 - n0)
            return t0 + (t1 - t0) * f, r0 + (r1 - r0) * f
    raise ValueError(f"the counter never reached {level}")


def at_time(samples: list[tuple[float, int, int]], moment: float) -> tuple[float, float]:
    """The call and throttled counters at ``moment`` (interpolated)."""
    for (t0, n0, r0), (t1, n1, r1) in itertools.pairwise(samples):
        if t0 <= moment <= t1:
            f = (moment - t0) / (t1 - t0) if t1 > t0 else 0.0
            return n0 + (n1 - n0) * f, r0 + (r1 - r0) * f
    return samples[-1][1], samples[-1][2]


def run(label: str, count: int, configured: float, *, other_qps: float = 0.0,
        skip_s: float = 0.0) -> Run:  # fmt: skip
    timeout_s = count / max(1.0, LIMIT - other_qps) * 3 + 60
    with (
        c.pg_database("jt_bench_rate") as db_url,
        c.redis_db() as redis_url,
        c.SimulatorProcess(qps=LIMIT, limiter="window", other_qps=other_qps) as sim,
    ):
        env = {
            **sim.env(),
            **c.qps_env(configured),
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_BROKER_URL": redis_url,
            "JOBTRACKER_TICK_SECONDS": "1",
        }
        c.insert_jobs(db_url, f"succeed-1-{label}-", count)
        samples: list[tuple[float, int, int]] = []
        done = 0
        with c.tracker(env, f"rate-{label}") as proc, c.connect(db_url, autocommit=True) as conn:

            def finished() -> bool:
                nonlocal done
                counters = sim.counters()
                samples.append(
                    (time.monotonic(), int(counters["total"]), int(counters["throttled"]))
                )
                (done,) = conn.execute(
                    "SELECT count(*) FROM tracked_jobs WHERE finished_at IS NOT NULL"
                ).fetchone()
                return bool(done >= count)

            if not c.wait_for(finished, timeout_s, proc, every_s=0.25):
                c.note(f"{label}: timed out after {timeout_s:g} s")
    start = samples[0][0]
    total = samples[-1][1]
    low_t, low_r = crossing(samples, 0.1 * total)
    high_t, high_r = crossing(samples, 0.9 * total)
    if skip_s:
        low_t = max(low_t, start + skip_s)
        _, low_r = at_time(samples, low_t)
    low_n, _ = at_time(samples, low_t)
    high_n, _ = at_time(samples, high_t)
    calls = high_n - low_n
    c.note(
        f"{label}: {total} calls, {samples[-1][2]} throttled in all, {done}/{count} jobs "
        f"finished in {samples[-1][0] - start:.1f} s; window {low_t - start:.1f}..."
        f"{high_t - start:.1f} s"
    )
    return Run(
        calls_per_s=calls / (high_t - low_t),
        throttled_percent=100.0 * (high_r - low_r) / max(1.0, calls),
        finished=done,
        seconds=samples[-1][0] - start,
    )


def main() -> int:
    args = c.parse_args(__doc__ or "")
    count = 60 if args.smoke else 150 if args.quick else 2000
    c.require_services()
    c.header(
        "rate: provider calls/s against a strict 20-calls-per-second window",
        jobs=f"{count} due jobs per run, succeed-1 (one call each)",
        provider=f"fake Tencent API in its own process: {LIMIT:g} calls in any 1 s window",
        jobtracker="jobtracker run: PostgreSQL + Redis, tick 1 s, 8 threads",
    )
    right = run("right", count, LIMIT)
    c.figure("strict20_calls_per_s", right.calls_per_s, "calls/s", (">=", 18.0))
    c.figure("strict20_throttled_percent", right.throttled_percent, "%", ("<=", 1.0))
    high = run("high", count, 50.0, skip_s=0.0 if args.quick else 10.0)
    c.figure("configured50_calls_per_s", high.calls_per_s, "calls/s", (">=", 17.0))
    c.figure("configured50_throttled_percent", high.throttled_percent, "%", ("<=", 3.0))
    shared = run("shared", count, LIMIT, other_qps=5.0)
    c.figure("shared_quota_calls_per_s", shared.calls_per_s, "calls/s")
    c.figure("shared_quota_throttled_percent", shared.throttled_percent, "%")
    c.figure("shared_quota_jobs_finished", shared.finished, "jobs", (">=", count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
