"""Memory of a busy worker: ``jobtracker run`` with 100,000 pending jobs against 1,000.

What makes this meaningful: every job is due and stays in progress (``succeed-100000-...``), and
the provider answers at jobtracker's own QPS limit (200/s here), so with 100,000 jobs the worker
has far more due work than it can poll and is busy the whole time: claiming every tick, polling,
writing. A worker that loaded the backlog (all rows, or every claim at once) would grow with it;
the claim is bounded by the rate limit (``claim_limit``), so RSS must not. With 1,000 jobs the same
worker polls every job every few seconds. Each run is a fresh process and database; RSS is VmRSS
from ``/proc/PID/status`` summed over the process and its children, sampled every 0.5 s for 45 s
(the peak after the first 5 s is the figure). Target: 100,000 / 1,000 <= 1.2.

    .venv/bin/python bench/worker_rss.py [--quick]
"""

from __future__ import annotations

import sys
import time

import _common as c

QPS = 200.0


def measure(jobs: int, run_s: float, warmup_s: float) -> tuple[int, int, int]:
    """(peak RSS after warm-up, last RSS, provider calls), in KiB, for ``jobs`` pending jobs."""
    with (
        c.pg_database("jt_bench_rss") as db_url,
        c.redis_db() as redis_url,
        c.SimulatorProcess() as sim,
    ):
        env = {
            **sim.env(),
            **c.qps_env(QPS),
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_BROKER_URL": redis_url,
            "JOBTRACKER_TICK_SECONDS": "1",
            "JOBTRACKER_POLL_INTERVAL_MIN": "2",
            "JOBTRACKER_POLL_INTERVAL_MAX": "10",
        }
        c.insert_jobs(db_url, "succeed-100000-rss-", jobs)
        with c.connect(db_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE tracked_jobs")
        samples: list[tuple[float, int]] = []
        with c.tracker(env, "rss") as proc:
            assert proc.proc is not None
            pid = proc.proc.pid
            c.wait_for(lambda: sim.counters()["total"] > 0, 60, proc, every_s=0.05)
            started = time.monotonic()

            def sample() -> bool:
                samples.append((time.monotonic() - started, c.rss_kib(pid)))
                return False

            c.wait_for(sample, run_s, proc, every_s=0.5)
            calls = int(sim.counters()["total"])
    steady = [kib for at, kib in samples if at >= warmup_s] or [samples[-1][1]]
    return max(steady), samples[-1][1], calls


def main() -> int:
    args = c.parse_args(__doc__ or "")
    large = 10_000 if args.quick else 100_000
    small = 1_000
    run_s = 4.0 if args.quick else 45.0
    warmup_s = 1.0 if args.quick else 5.0
    c.require_services()
    c.header(
        "worker_rss: RSS of jobtracker run, large backlog vs small",
        jobs=f"{large:,} vs {small:,} due jobs that stay in progress",
        provider="fake Tencent API in its own process, no QPS limit",
        jobtracker=f"JOBTRACKER_*_QPS={QPS:g}, tick 1 s, poll interval 2..10 s, 8 threads",
        sampling=f"VmRSS every 0.5 s for {run_s:g} s after the first provider call",
    )
    results = {}
    for jobs in (small, large):
        peak, last, calls = measure(jobs, run_s, warmup_s)
        results[jobs] = peak
        c.note(
            f"{jobs:>7,} jobs: peak {peak / 1024:.1f} MiB, last {last / 1024:.1f} MiB, "
            f"{calls} provider calls in {run_s:g} s"
        )
    c.figure("rss_mib_small", results[small] / 1024, "MiB")
    c.figure("rss_mib_large", results[large] / 1024, "MiB")
    c.figure("rss_ratio_large_to_small", results[large] / results[small], "x", ("<=", 1.2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
