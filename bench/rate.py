"""Sustained provider calls per second under a 20 QPS limit, and how many were throttled.

The fake provider (its own process) enforces 20 QPS per action (a token bucket, like the real
gateway) and answers ``RequestLimitExceeded`` above it; jobtracker's shared limit is also 20 QPS
(``JOBTRACKER_*_QPS=20``, GCRA in Redis). 2,000 due jobs that succeed on their first poll, so
each job is one call: about 100 s. The calls/s figure is the steady window between 10 % and 90 %
of the calls (the simulator's request counter, sampled every 0.25 s), so start-up and the last
partial tick are left out; throttled % is over every call of the run.
Targets: >= 18 calls/s and <= 1 % throttled.

    .venv/bin/python bench/rate.py [--quick]
"""

from __future__ import annotations

import itertools
import sys
import time

import _common as c

QPS = 20.0


def crossing(samples: list[tuple[float, int]], level: float) -> float:
    """When the counter reached ``level``, interpolated between samples."""
    for (t0, n0), (t1, n1) in itertools.pairwise(samples):
        if n0 < level <= n1:
            return t0 + (t1 - t0) * (level - n0) / (n1 - n0)
    raise ValueError(f"the counter never reached {level}")


def main() -> int:
    args = c.parse_args(__doc__ or "")
    count = 120 if args.quick else 2000
    timeout_s = count / QPS * 2 + 60
    c.require_services()
    c.header(
        "rate: sustained provider calls/s under a 20 QPS provider limit",
        jobs=f"{count} due jobs, succeed-1 (one call each)",
        provider=f"fake Tencent API in its own process, {QPS:g} QPS per action (token bucket)",
        jobtracker=f"JOBTRACKER_*_QPS={QPS:g} (shared GCRA in Redis), tick 1 s, 8 threads",
    )
    with (
        c.pg_database("jt_bench_rate") as db_url,
        c.redis_db() as redis_url,
        c.SimulatorProcess(qps=QPS) as sim,
    ):
        env = {
            **sim.env(),
            **c.qps_env(QPS),
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_BROKER_URL": redis_url,
            "JOBTRACKER_TICK_SECONDS": "1",
        }
        c.insert_jobs(db_url, "succeed-1-rate-", count)
        samples: list[tuple[float, int]] = []
        with c.tracker(env, "rate") as proc, c.connect(db_url, autocommit=True) as conn:

            def finished() -> bool:
                samples.append((time.monotonic(), int(sim.counters()["total"])))
                (done,) = conn.execute(
                    "SELECT count(*) FROM tracked_jobs WHERE finished_at IS NOT NULL"
                ).fetchone()
                return bool(done >= count)

            if not c.wait_for(finished, timeout_s, proc, every_s=0.25):
                c.note(f"timed out after {timeout_s:g} s")
        counters = sim.counters()
    total, throttled = int(counters["total"]), int(counters["throttled"])
    low, high = 0.1 * count, 0.9 * count
    window_s = crossing(samples, high) - crossing(samples, low)
    c.note(
        f"{total} provider calls, {throttled} throttled; steady window {low:.0f}..{high:.0f} "
        f"calls took {window_s:.1f} s"
    )
    c.figure("sustained_calls_per_s", (high - low) / window_s, "calls/s", (">=", 18.0))
    c.figure("throttled_percent", 100.0 * throttled / max(1, total), "%", ("<=", 1.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
