"""The cost of one claim with 1,000,000 rows against 1,000 rows: it must not grow with the table.

Two databases with the same shape: the same due work (100 due rows of one kind), 10 % pending but
not due (next poll tomorrow) and the rest terminal, bulk-loaded with ``INSERT ... SELECT
generate_series``. Each iteration makes the 100 due rows due again (untimed),
then times one claim: ``claim_due`` (the claim statement of one kind, limit 100, and its commit)
and ``claim_all`` (a whole tick's claims: provider states, every kind, commit). Medians over many
iterations; the target is large / small <= 2 for both. The plan of the claim statement on the
large table is printed (EXPLAIN ANALYZE of the exact SQL the claim sent).

    .venv/bin/python bench/tick_cost.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime
from typing import Any

import _common as c

DUE = 100


def load(url: str, total: int) -> None:
    """``DUE`` due rows, 10 % pending not due, the rest terminal (two kinds, alternating)."""
    pending = total // 10
    terminal = total - pending - DUE
    with c.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tracked_jobs (kind, region, job_id, status, provider_status, polls, "
            "finished_at, last_polled_at, next_poll_at, created_at, updated_at) "
            "SELECT CASE WHEN g %% 2 = 0 THEN 'video_face_fusion' ELSE 'image_animate' END, "
            "'ap-guangzhou', 'done-' || g, 'succeeded', '7', 3, "
            "now() - make_interval(secs => g), now() - make_interval(secs => g), "
            "now() - make_interval(secs => g), now() - make_interval(secs => g + 60), "
            "now() - make_interval(secs => g) "
            "FROM generate_series(1, %s) AS g",
            (terminal,),
        )
        conn.execute(
            "INSERT INTO tracked_jobs (kind, region, job_id, status, polls, next_poll_at) "
            "SELECT CASE WHEN g %% 2 = 0 THEN 'video_face_fusion' ELSE 'image_animate' END, "
            "'ap-guangzhou', 'later-' || g, "
            "CASE WHEN g %% 3 = 0 THEN 'pending' ELSE 'running' END, "
            "g %% 5, now() + interval '1 day' + make_interval(secs => g %% 3600) "
            "FROM generate_series(1, %s) AS g",
            (pending,),
        )
        c.insert_jobs(url, "due-", DUE)
        conn.execute("VACUUM ANALYZE tracked_jobs")


def make_due(conn: Any) -> None:
    conn.execute(
        "UPDATE tracked_jobs SET next_poll_at = now() - interval '1 minute', "
        "lease_expires_at = NULL WHERE job_id LIKE 'due-%'"
    )


def time_claims(url: str, iterations: int) -> dict[str, float]:
    """Median seconds of one ``claim_due`` and one ``claim_all``."""
    from jobtracker.models import utcnow
    from worker.db import session_scope
    from worker.flow.tick import claim_all, claim_due
    from worker.settings import Settings

    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": url})
    timings: dict[str, list[float]] = {"claim_due": [], "claim_all": []}
    with c.connect(url, autocommit=True) as conn:
        for i in range(iterations + 3):  # the first few warm the caches and prepare statements
            make_due(conn)
            started = time.perf_counter()
            with session_scope(settings) as session:
                claimed = claim_due(session, c.KIND, DUE, now=utcnow(), lease_s=120)
            elapsed_due = time.perf_counter() - started
            assert len(claimed) == DUE, f"claimed {len(claimed)} of {DUE}"
            make_due(conn)
            started = time.perf_counter()
            claims = claim_all(settings)
            elapsed_all = time.perf_counter() - started
            assert sum(map(len, claims.values())) == DUE
            if i >= 3:
                timings["claim_due"].append(elapsed_due)
                timings["claim_all"].append(elapsed_all)
    return {name: statistics.median(values) for name, values in timings.items()}


def explain(url: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the exact statement ``claim_due`` sends, rolled back."""
    from sqlalchemy import event

    from jobtracker.models import utcnow
    from worker.db import get_engine, session_scope
    from worker.flow.tick import claim_due
    from worker.settings import Settings

    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": url})
    engine = get_engine(settings)
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE TRACKED_JOBS"):
            captured.append((statement, parameters))

    with c.connect(url, autocommit=True) as conn:
        make_due(conn)
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_scope(settings) as session:
            claim_due(session, c.KIND, DUE, now=utcnow(), lease_s=120)
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = captured[0]
    with c.connect(url, autocommit=True) as conn:
        make_due(conn)
    with engine.connect() as conn, conn.begin() as transaction:
        rows = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters
        ).all()
        transaction.rollback()
    return "\n".join(f"   | {row[0]}" for row in rows)


def main() -> int:
    args = c.parse_args(__doc__ or "")
    large = 100_000 if args.quick else 1_000_000
    small = 1_000
    iterations = 20 if args.quick else 200
    c.require_services(redis=False)
    c.header(
        "tick_cost: one claim with a large table vs a small one",
        large=f"{large:,} rows: {DUE} due, {large // 10:,} pending not due, the rest terminal",
        small=f"{small:,} rows: {DUE} due, {small // 10:,} pending not due, the rest terminal",
        claim=f"{DUE} due rows each time (made due again between iterations, untimed); "
        f"median of {iterations}",
    )
    medians: dict[int, dict[str, float]] = {}
    plan = ""
    for rows in (small, large):
        with c.pg_database("jt_bench_tick") as url:
            started = time.perf_counter()
            load(url, rows)
            c.note(f"loaded {rows:,} rows in {time.perf_counter() - started:.1f} s")
            medians[rows] = time_claims(url, iterations)
            if rows == large:
                plan = explain(url)
            from worker.db import dispose_engines

            dispose_engines()
    c.note(f"plan of the claim statement on {large:,} rows ({datetime.now():%H:%M:%S}):")
    print(plan, flush=True)
    for name in ("claim_due", "claim_all"):
        c.size_figures(name, medians[small][name], medians[large][name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
