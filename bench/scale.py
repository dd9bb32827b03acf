"""Ten million rows on PostgreSQL: what a claim, a metrics scrape and ``jobtracker stats`` cost,
how fast the retention prunes, and how much polling slows while it does.

Two databases of the same shape, loaded with ``INSERT ... SELECT generate_series`` (through the
tables' triggers, as in production):

- large (default 10,000,000 jobs): 90 % finished, spread evenly over the last 90 days, each with
  two transitions, one in ten with a delivered callback and its attempt; 10 % active, of which
  one in ten due now (the rest due tomorrow);
- small: the same shape with 10,000 jobs.

Figures (medians of many runs, the small database's first as the baseline):

- ``claim_ms``: one claim of 50 due rows of one kind (``claim_due`` and its commit);
- ``scrape_ms``: one Prometheus scrape of the database gauges (``DatabaseCollector``);
- ``stats_ms``: ``jobtracker stats`` (``inspection.stats`` and the learned durations);
- ``prune_rows_per_s``: the retention (``jobtracker prune --older-than 80d``, in its own process)
  removing the oldest ninth of the finished jobs with everything of theirs;
- ``poll_ratio_during_prune``: polls per second while that prune runs / without it, with the
  provider's and jobtracker's rate limits lifted (QPS 1,000,000), so the database is the shared
  bottleneck (4 poll threads, batches of 50, the fake provider in its own process, the shared
  pace in Redis);
- the database's size before and after the prune (and after a plain VACUUM).

    .venv/bin/python bench/scale.py [--quick | --smoke] [--jobs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common as c

KINDS = ("video_face_fusion", "image_animate")
DUE_SHARE = 10  # one active job in ten is due now
CHUNK = 1_000_000
#: Rows one claim takes (the small database has 500 due per kind).
CLAIM = 50


def load(url: str, jobs: int) -> None:
    """The shape described in the module docstring, in chunks (one transaction each)."""
    finished = jobs * 9 // 10
    active = jobs - finished
    span_s = 90 * 86400
    with c.connect(url, autocommit=True) as conn:
        for start in range(1, finished + 1, CHUNK):
            end = min(finished, start + CHUNK - 1)
            # finished_at evenly over 90 days: job g finished g * span / finished seconds ago.
            conn.execute(
                "INSERT INTO tracked_jobs (kind, region, job_id, status, provider_status, polls, "
                "finished_at, last_unfinished_at, last_polled_at, next_poll_at, created_at, "
                "updated_at, deadline_at, callback_url) "
                "SELECT CASE WHEN g %% 2 = 0 THEN 'video_face_fusion' ELSE 'image_animate' END, "
                "'ap-guangzhou', 'done-' || g, "
                "CASE WHEN g %% 50 = 0 THEN 'failed' ELSE 'succeeded' END, '7', 2 + g %% 4, "
                "f, f - interval '6 seconds', f, f, f - interval '40 seconds', f, "
                "f + interval '1 day', "
                "CASE WHEN g %% 10 = 0 THEN 'https://hooks.example.com/done' END "
                "FROM (SELECT g, now() - make_interval(secs => g::float8 * %s / %s) AS f "
                "      FROM generate_series(%s::bigint, %s::bigint) AS g) AS s",
                (span_s, finished, start, end),
            )
        conn.execute(
            "INSERT INTO job_transitions (tracked_job_id, from_status, to_status, at) "
            "SELECT id, 'pending', 'running', created_at + interval '5 seconds' "
            "FROM tracked_jobs UNION ALL "
            "SELECT id, 'running', status, finished_at FROM tracked_jobs"
        )
        conn.execute(
            "INSERT INTO webhook_deliveries (id, tracked_job_id, event_type, url, payload, status, "
            "attempts, next_attempt_at, created_at, updated_at, delivered_at) "
            "SELECT 'msg_' || id, id, 'job.' || status, callback_url, "
            "jsonb_build_object('type', 'job.' || status), 'delivered', 1, NULL, finished_at, "
            "finished_at, finished_at FROM tracked_jobs WHERE callback_url IS NOT NULL"
        )
        conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms) "
            "SELECT id, delivered_at, 200, 12 FROM webhook_deliveries"
        )
        # Active: running jobs the fake provider keeps running (succeed after a million polls).
        conn.execute(
            "INSERT INTO tracked_jobs (kind, region, job_id, status, polls, next_poll_at, "
            "created_at, deadline_at) "
            "SELECT CASE WHEN g %% 2 = 0 THEN 'video_face_fusion' ELSE 'image_animate' END, "
            "'ap-guangzhou', 'succeed-1000000-' || g, 'running', 1, "
            "CASE WHEN g %% %s = 0 THEN now() - interval '1 minute' "
            "     ELSE now() + interval '1 day' END, "
            "now() - make_interval(secs => g %% 3600), now() + interval '7 days' "
            "FROM generate_series(1, %s) AS g",
            (DUE_SHARE, active),
        )
        conn.execute("VACUUM ANALYZE")
    from worker.db import get_engine, session_scope
    from worker.lifecycle import tally
    from worker.settings import Settings

    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": url})
    with session_scope(settings) as session:
        tally.compact(session)
    get_engine(settings).dispose()


def settings_for(url: str, sim: c.SimulatorProcess | None = None, broker: str | None = None) -> Any:
    from worker.settings import Settings

    return Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": url,
            # The shared pace in Redis, as in production (not in the database under test).
            **({"JOBTRACKER_BROKER_URL": broker} if broker else {}),
            **(sim.env() if sim is not None else {}),
            "JOBTRACKER_VIDEO_FACE_FUSION_QPS": "1000000",
            "JOBTRACKER_IMAGE_ANIMATE_QPS": "1000000",
            "JOBTRACKER_POLL_SCHEDULE": "backoff",
            "JOBTRACKER_POLL_INTERVAL_MIN": "600",
            "JOBTRACKER_POLL_INTERVAL_MAX": "3600",
            "JOBTRACKER_TICK_SECONDS": "1",
        }
    )


def timed(fn: Any, iterations: int, setup: Any = None) -> float:
    """Median seconds of ``fn()`` over ``iterations`` (after 3 warm-up calls); ``setup()``
    runs untimed before each."""
    samples = []
    for i in range(iterations + 3):
        if setup is not None:
            setup()
        started = time.perf_counter()
        fn()
        if i >= 3:
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def read_costs(url: str, iterations: int) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, generate_latest

    from jobtracker.models import utcnow
    from worker.db import session_scope
    from worker.flow.tick import claim_due
    from worker.inspection.gauges import DatabaseCollector
    from worker.inspection.queries import durations, stats

    settings = settings_for(url)
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(settings))

    taken: list[int] = []

    def claim() -> None:
        with session_scope(settings) as session:
            got = claim_due(session, c.KIND, CLAIM, now=utcnow(), lease_s=3600)
        assert len(got) == CLAIM, len(got)
        taken[:] = [item.id for item in got]

    def due_again() -> None:  # the same work each time, whatever the table's size
        if taken:
            with c.connect(url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE tracked_jobs SET next_poll_at = now() - interval '1 minute', "
                    "lease_expires_at = NULL WHERE id = ANY(%s)",
                    (taken,),
                )

    def scrape() -> None:
        assert b"jobtracker_database_up 1.0" in generate_latest(registry)

    def collect_stats() -> None:
        with session_scope(settings) as session:
            stats(session, now=utcnow())
        durations(settings)

    return {
        "claim": timed(claim, iterations, due_again),
        "scrape": timed(scrape, iterations),
        "stats": timed(collect_stats, iterations),
    }


def poll_rate(
    url: str,
    sim: c.SimulatorProcess,
    broker: str,
    seconds: float,
    stop: threading.Event | None = None,
) -> float:
    """Polls per second of 4 threads claiming and polling batches of 50 for ``seconds``."""
    from worker.flow.poll import poll_batch
    from worker.flow.tick import claim_all

    settings = settings_for(url, sim, broker)
    polled = 0
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            claims = claim_all(settings)
            batches = [
                (kind, [(claim.id, claim.lease, claim.due) for claim in items[i : i + 50]])
                for kind, items in claims.items()
                for i in range(0, len(items), 50)
            ]
            if not batches:
                time.sleep(0.05)
                continue
            for report in pool.map(lambda b: poll_batch(b[0], c.REGION, b[1], settings), batches):
                polled += report.polled
    return polled / (time.monotonic() - started)


def due_again(url: str) -> None:
    """Make the jobs polled so far due again (a poll puts them off by 600 s or more)."""
    with c.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tracked_jobs SET next_poll_at = now() - interval '1 minute', "
            "lease_expires_at = NULL WHERE finished_at IS NULL AND last_polled_at IS NOT NULL"
        )


def db_size(url: str) -> int:
    with c.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def prune_process(url: str, older_than: str) -> subprocess.Popen[str]:
    import os

    env = {**os.environ, "JOBTRACKER_DATABASE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "prune", "--older-than", older_than, "--json"],
        cwd=Path(c.ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    c.add_run_size(parser)
    parser.add_argument("--jobs", type=int, default=10_000_000, help="rows of the large database")
    args = c.smoke_is_quick(parser.parse_args())
    large = 50_000 if args.quick else args.jobs
    small = 10_000
    iterations = 15 if args.quick else 100
    poll_s = 4.0 if args.quick else 30.0
    c.require_services()
    c.header(
        "scale: claim, scrape, stats at a large vs a small table; prune; polling under a prune",
        large=f"{large:,} jobs (90 % finished over 90 days, 2 transitions each, 1 in 10 with a "
        f"delivered callback; 10 % active, 1 in {DUE_SHARE} due)",
        small=f"{small:,} jobs, the same shape",
        medians=f"of {iterations} runs each",
    )
    import json

    costs: dict[int, dict[str, float]] = {}
    with c.pg_database("jt_bench_scale_small") as small_url:
        load(small_url, small)
        costs[small] = read_costs(small_url, iterations)
    with c.pg_database("jt_bench_scale") as url:
        started = time.perf_counter()
        load(url, large)
        c.note(f"loaded {large:,} jobs and their rows in {time.perf_counter() - started:.0f} s")
        costs[large] = read_costs(url, iterations)
        for name in ("claim", "scrape", "stats"):
            c.size_figures(name, costs[small][name], costs[large][name])
        before = db_size(url)
        with c.SimulatorProcess() as sim, c.redis_db() as broker:
            alone = poll_rate(url, sim, broker, poll_s)
            due_again(url)  # the same work for both windows (a small table has no more)
            pruner = prune_process(url, "80d")
            stop = threading.Event()
            result: dict[str, str] = {}

            def wait_for_prune() -> None:
                result["out"], result["err"] = pruner.communicate(timeout=7200)
                stop.set()

            watcher = threading.Thread(target=wait_for_prune)
            watcher.start()
            # Polling measured only while the prune runs (at most poll_s).
            during = poll_rate(url, sim, broker, poll_s, stop)
            watcher.join()
            out, err = result["out"], result["err"]
        assert pruner.returncode == 0, err[-2000:]
        report = json.loads(out)
        after = db_size(url)
        with c.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        vacuumed = db_size(url)
        c.note(
            f"pruned {report['jobs']:,} jobs, {report['rows']:,} rows in all, in "
            f"{report['batches']} batches of at most 500 jobs, {report['seconds']:.1f} s"
        )
        c.figure("prune_rows_per_s", report["rows"] / max(report["seconds"], 1e-9), "rows/s")
        c.figure("prune_jobs_per_s", report["jobs"] / max(report["seconds"], 1e-9), "jobs/s")
        c.figure("polls_per_s_alone", alone, "polls/s")
        c.figure("polls_per_s_during_prune", during, "polls/s")
        c.figure("poll_ratio_during_prune", during / alone if alone else None, "x", (">=", 0.8))
        c.figure("db_mib_before_prune", before / 2**20, "MiB")
        c.figure("db_mib_after_prune", after / 2**20, "MiB")
        c.figure("db_mib_after_vacuum", vacuumed / 2**20, "MiB")
        c.note(
            "PostgreSQL keeps the freed pages for new rows; VACUUM FULL (or pg_repack) would "
            "give them back to the operating system"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
