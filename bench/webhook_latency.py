"""Callback latency: from the terminal transition's commit to the receiver, through the real path.

1,000 jobs that succeed on their first poll, each with a callback URL on a verifying
:class:`~worker.devtools.receiver.Receiver` (same ``whsec_`` secret as jobtracker). The path is
the real one: ``jobtracker run`` polls the fake provider (its own process), the transition writes
the outbox row in its transaction, and right after the commit one of the worker process's
delivery threads POSTs the signed callback.

The commit time is observed, not guessed: a trigger on the benchmark's own database (the engine
knows nothing of it) sends ``NOTIFY`` with the ``webhook-id`` when the outbox row is inserted;
PostgreSQL delivers a notification only when its transaction commits, so the moment this process
receives it is the commit time (+ a loopback hop). Latency = the receiver's ``received_monotonic``
of the first verified delivery - that moment, in the same process.

Jobs finish at the pace of jobtracker's QPS limit (the default, 20/s, unless ``--qps``), so
callbacks are sent while polls go on: a steady load, not one burst of 1,000. The backlog (1,000
due jobs at 20/s) is what a busy deployment has: the tick keeps claiming while rate-limited poll
batches keep the worker threads busy. Also printed: the latency
from ``finished_at`` (taken before the batch's writes, so an upper bound).
Targets: p50 <= 200 ms, p99 <= 1 s.

    .venv/bin/python bench/webhook_latency.py [--quick] [--qps N]
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import _common as c

QPS = 20.0

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


def main() -> int:
    from worker.devtools.receiver import Receiver

    args = c.parse_args(__doc__ or "", qps=QPS)
    qps = float(args.qps)
    count = 100 if args.quick else 1000
    timeout_s = count / qps * 4 + 60
    c.require_services()
    c.header(
        "webhook_latency: terminal commit -> receiver, through poll/transition/outbox/deliver",
        jobs=f"{count} x succeed-1 with a callback URL on a verifying Receiver",
        provider="fake Tencent API in its own process, no QPS limit",
        jobtracker=f"JOBTRACKER_*_QPS={qps:g}, tick 0.5 s, 8 threads, Redis broker",
        clock="commit = NOTIFY from an outbox INSERT trigger (delivered at commit)",
    )
    with (
        c.pg_database("jt_bench_wh") as db_url,
        c.redis_db() as redis_url,
        c.SimulatorProcess() as sim,
        Receiver(secrets=[c.WEBHOOK_SECRET]) as rx,
    ):
        with c.connect(db_url, autocommit=True) as conn:
            conn.execute(TRIGGER_SQL)
        listener = CommitListener(db_url)
        listener.start()
        env = {
            **sim.env(),
            **c.qps_env(qps),
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_BROKER_URL": redis_url,
            "JOBTRACKER_TICK_SECONDS": "0.5",
            "JOBTRACKER_WEBHOOK_SECRET": c.WEBHOOK_SECRET,
        }
        c.insert_jobs(db_url, "succeed-1-wh-", count, callback_url=rx.url)
        try:
            with c.tracker(env, "webhooks") as proc:
                delivered = c.wait_for(
                    lambda: len(rx.unique_ids()) >= count, timeout_s, proc, every_s=0.2
                )
                if not delivered:
                    c.note(f"only {len(rx.unique_ids())} of {count} callbacks in {timeout_s:g} s")
        finally:
            listener.stop()
        with c.connect(db_url) as conn:
            finished = dict(
                conn.execute(
                    "SELECT d.id, extract(epoch FROM j.finished_at) FROM webhook_deliveries d "
                    "JOIN tracked_jobs j ON j.id = d.tracked_job_id"
                ).fetchall()
            )
        first: dict[str, Any] = {}
        for message in rx.received:
            msg_id = message.msg_id
            ok = message.verified and 200 <= message.status < 300
            if ok and msg_id is not None and msg_id not in first:
                first[msg_id] = message
        unverified = sum(1 for m in rx.received if not m.verified)

    from_commit = [
        (m.received_monotonic - listener.committed[i]) * 1000
        for i, m in first.items()
        if i in listener.committed
    ]
    from_finished = [
        (m.received_at.timestamp() - float(finished[i])) * 1000
        for i, m in first.items()
        if i in finished
    ]
    arrivals = sorted(m.received_monotonic for m in first.values())
    commits = sorted(listener.committed.values())
    span_s = arrivals[-1] - commits[0] if arrivals and commits else float("nan")
    c.note(
        f"{len(first)} callbacks delivered and verified ({unverified} unverified requests), "
        f"{len(from_commit)} matched to their commit; first commit -> last receipt {span_s:.2f} s"
    )
    if from_finished:
        c.note(
            "from finished_at (upper bound): "
            f"p50 {c.percentile(from_finished, 50):.1f} ms, "
            f"p99 {c.percentile(from_finished, 99):.1f} ms, max {max(from_finished):.1f} ms"
        )
    have = len(from_commit) == count
    c.figure("latency_p50_ms", c.percentile(from_commit, 50) if have else None, "ms", ("<=", 200))
    c.figure("latency_p99_ms", c.percentile(from_commit, 99) if have else None, "ms", ("<=", 1000))
    c.figure("latency_max_ms", max(from_commit) if have else None, "ms")
    c.figure("deliveries_per_s", len(first) / span_s if have else None, "deliveries/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
