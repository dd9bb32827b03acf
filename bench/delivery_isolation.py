"""Delivery isolation: a healthy receiver's callbacks while dark receivers hold a backlog.

20 *dark* receivers accept every connection and never answer (each attempt to them lasts its
whole 15 s deadline), and 1,000 callbacks to them are pending in the outbox when ``jobtracker
run`` starts (plain SQL rows, due at once, spread over the 20). Meanwhile jobs whose callback
goes to a healthy, verifying :class:`~worker.devtools.receiver.Receiver` finish one after the
other (a plain SQL enqueue every 0.25 s; the fake provider ends them at their first poll).
Latency = the healthy receiver's ``received_monotonic`` of each message - the moment its outbox
row's transaction committed, observed in this process through a ``NOTIFY`` trigger (as in
``webhook_latency.py``). The run lasts long enough for the dark receivers' breakers to open (5
timeouts in a row each, at one attempt at a time per receiver). Target: p99 <= 1 s.

Then the same with 10,000 dark callbacks pending: the worker's RSS (VmRSS of it and its
children, sampled every 0.5 s after the first 5 s, peak) must stay within 20 MiB of the 1,000
run's: queues are bounded, and what does not fit stays in the outbox.

    .venv/bin/python bench/delivery_isolation.py [--quick]
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import _common as c

DARK_RECEIVERS = 20

TRIGGER_SQL = """
CREATE FUNCTION bench_notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_commit', NEW.id);
    RETURN NEW;
END $$;
CREATE TRIGGER bench_notify_commit AFTER INSERT ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION bench_notify_commit();
"""


class CommitListener(threading.Thread):
    """Records ``time.monotonic()`` when each outbox row's transaction commits (via NOTIFY)."""

    def __init__(self, db_url: str) -> None:
        super().__init__(name="commit-listener", daemon=True)
        self.conn = c.connect(db_url, autocommit=True)
        self.conn.execute("LISTEN bench_commit")
        self.committed: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for notify in self.conn.notifies(timeout=0.2):
                self.committed.setdefault(notify.payload, time.monotonic())

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        self.conn.close()


def insert_dark_backlog(db_url: str, urls: list[str], count: int) -> None:
    """``count`` finished jobs with a pending callback each, round-robin over ``urls``."""
    payload = json.dumps({"type": "job.succeeded", "timestamp": "2026-01-01T00:00:00Z",
                          "data": {"status": "succeeded"}})  # fmt: skip
    with c.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO tracked_jobs (kind, region, job_id, status, callback_url, finished_at) "
            "SELECT %s, %s, 'dark-' || g, 'succeeded', (%s::text[])[1 + g %% %s], now() "
            "FROM generate_series(1, %s) AS g",
            (c.KIND, c.REGION, urls, len(urls), count),
        )
        conn.execute(
            "INSERT INTO webhook_deliveries (id, tracked_job_id, event_type, url, payload, "
            "status, attempts, next_attempt_at) "
            "SELECT 'msg_dark_' || id, id, 'job.succeeded', callback_url, %s::jsonb, 'pending', "
            "0, now() FROM tracked_jobs WHERE job_id LIKE 'dark-%%'",
            (payload,),
        )


@contextlib.contextmanager
def dark_receivers(n: int) -> Iterator[list[Any]]:
    from worker.devtools.blackhole import Blackhole

    holes = [Blackhole().start() for _ in range(n)]
    try:
        yield holes
    finally:
        for hole in holes:
            hole.stop()


def run_phase(dark_count: int, run_s: float, quick: bool) -> dict[str, Any]:
    """One worker with ``dark_count`` dark callbacks pending; healthy jobs finish meanwhile."""
    from worker.devtools.receiver import Receiver

    with (
        c.pg_database("jt_bench_iso") as db_url,
        c.redis_db() as redis_url,
        c.SimulatorProcess() as sim,
        Receiver(secrets=[c.WEBHOOK_SECRET]) as healthy,
        dark_receivers(DARK_RECEIVERS) as holes,
    ):
        insert_dark_backlog(db_url, [h.url for h in holes], dark_count)
        with c.connect(db_url, autocommit=True) as conn:
            conn.execute(TRIGGER_SQL)
            conn.execute("VACUUM ANALYZE")
        listener = CommitListener(db_url)
        listener.start()
        env = {
            **sim.env(),
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_BROKER_URL": redis_url,
            "JOBTRACKER_TICK_SECONDS": "0.5",
            "JOBTRACKER_WEBHOOK_SECRET": c.WEBHOOK_SECRET,
            "JOBTRACKER_POLL_EARLY_CHECK": "true",
        }
        samples: list[tuple[float, int]] = []
        enqueued = 0
        try:
            with c.tracker(env, "isolation") as proc:
                assert proc.proc is not None
                pid = proc.proc.pid
                c.wait_for(lambda: sum(h.accepted for h in holes) > 0, 60, proc, every_s=0.05)
                started = time.monotonic()
                next_job = started
                while time.monotonic() - started < run_s:
                    now = time.monotonic()
                    if now >= next_job:
                        c.insert_jobs(db_url, f"succeed-1-healthy-{enqueued}-", 1,
                                      callback_url=healthy.url)  # fmt: skip
                        enqueued += 1
                        next_job += 0.5 if quick else 0.25
                    samples.append((now - started, c.rss_kib(pid)))
                    if proc.proc.poll() is not None:
                        raise RuntimeError(f"jobtracker run exited:\n{proc.output()[-3000:]}")
                    time.sleep(0.1)
                # The last healthy jobs: their callbacks, then stop.
                c.wait_for(lambda: len(healthy.unique_ids()) >= enqueued, 30, proc, every_s=0.1)
                with c.connect(db_url) as conn:
                    opened = conn.execute(
                        "SELECT count(*) FROM delivery_breakers WHERE opened_at IS NOT NULL"
                    ).fetchone()
                    attempts = conn.execute(
                        "SELECT count(*) FROM webhook_attempts WHERE delivery_id LIKE 'msg_dark_%'"
                    ).fetchone()
        finally:
            listener.stop()
        first: dict[str, float] = {}
        for message in healthy.received:
            ok = message.verified and 200 <= message.status < 300
            if ok and message.msg_id is not None and message.msg_id not in first:
                first[message.msg_id] = message.received_monotonic
    latencies = [
        (at - listener.committed[i]) * 1000 for i, at in first.items() if i in listener.committed
    ]
    steady = [kib for at, kib in samples if at >= (1.0 if quick else 5.0)] or [samples[-1][1]]
    return {
        "enqueued": enqueued,
        "delivered": len(first),
        "latencies_ms": latencies,
        "rss_kib": max(steady),
        "dark_connections": sum(h.accepted for h in holes),
        "dark_attempts": int(attempts[0]) if attempts else 0,
        "breakers_open": int(opened[0]) if opened else 0,
    }


def report(name: str, phase: dict[str, Any], dark_count: int) -> None:
    lat = phase["latencies_ms"]
    c.note(
        f"{name}: {dark_count:,} dark callbacks pending over {DARK_RECEIVERS} receivers; "
        f"{phase['delivered']} of {phase['enqueued']} healthy callbacks delivered "
        f"({len(lat)} matched to their commit); {phase['dark_connections']} connections to the "
        f"dark receivers, {phase['dark_attempts']} dark attempts recorded, "
        f"{phase['breakers_open']} breakers open at the end; peak RSS "
        f"{phase['rss_kib'] / 1024:.1f} MiB"
    )
    if lat:
        c.note(
            f"{name}: healthy latency p50 {c.percentile(lat, 50):.1f} ms, "
            f"p99 {c.percentile(lat, 99):.1f} ms, max {max(lat):.1f} ms"
        )


def main() -> int:
    args = c.parse_args(__doc__ or "")
    small, large = (100, 1_000) if args.quick else (1_000, 10_000)
    run_s = 12.0 if args.quick else 100.0
    c.require_services()
    c.header(
        "delivery_isolation: a healthy receiver's callbacks while dark receivers hold a backlog",
        dark=f"{DARK_RECEIVERS} receivers that accept and never answer; {small:,} then "
        f"{large:,} callbacks pending to them at start",
        healthy=f"a job with a callback to a verifying receiver every "
        f"{0.5 if args.quick else 0.25} s for {run_s:g} s (succeed-1, early check)",
        jobtracker="jobtracker run, defaults (32 delivery threads), tick 0.5 s, Redis broker",
        clock="commit = NOTIFY from an outbox INSERT trigger (delivered at commit)",
    )
    phases = {}
    for dark_count in (small, large):
        phases[dark_count] = run_phase(dark_count, run_s, args.quick)
        report(f"{dark_count:,} pending", phases[dark_count], dark_count)
    lat = phases[small]["latencies_ms"]
    complete = bool(lat) and phases[small]["delivered"] == phases[small]["enqueued"]
    c.figure("healthy_latency_p50_ms", c.percentile(lat, 50) if complete else None, "ms")
    c.figure(
        "healthy_latency_p99_ms", c.percentile(lat, 99) if complete else None, "ms",
        ("<=", 1000),
    )  # fmt: skip
    c.figure("healthy_latency_max_ms", max(lat) if complete else None, "ms")
    lat_large = phases[large]["latencies_ms"]
    c.figure(
        "healthy_latency_p99_ms_large_backlog",
        c.percentile(lat_large, 99) if lat_large else None,
        "ms",
        ("<=", 1000),
    )
    c.figure("breakers_open", float(phases[small]["breakers_open"]), "destinations")
    rss_small, rss_large = phases[small]["rss_kib"] / 1024, phases[large]["rss_kib"] / 1024
    c.figure("rss_mib_small_backlog", rss_small, "MiB")
    c.figure("rss_mib_large_backlog", rss_large, "MiB")
    c.figure("rss_growth_mib", rss_large - rss_small, "MiB", ("<=", 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
