"""Retention and tallies on both backends: what is pruned, what never is, idempotent enqueue
after a prune on every way in, bounded batches, two pruners at once, and totals that match a
real count whatever writes the rows."""

from __future__ import annotations

import gzip
import json
import random
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text, update

from jobtracker.models import (
    JobTransition,
    PrunedJob,
    RowTally,
    TrackedJob,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from worker.cli import main
from worker.db import session_scope
from worker.flow.enqueue import track
from worker.inspection.queries import stats
from worker.lifecycle import tally
from worker.lifecycle.prune import prune
from worker.runtime import tasks
from worker.settings import Settings

DAY = timedelta(days=1)


def settings_for(db_url: str, tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url, **env}, cwd=tmp_path)


def add_job(
    settings: Settings,
    job_id: str,
    *,
    status: str = "succeeded",
    age: timedelta = 40 * DAY,
    delivery: str | None = None,
    delivery_age: timedelta | None = None,
    attempts: int = 1,
    kind: str = "image_animate",
    polls: int = 3,
) -> int:
    """A job that finished ``age`` ago (or an active one created then), with its history and,
    optionally, a callback in ``delivery`` status whose last attempt was ``delivery_age`` ago."""
    now = utcnow()
    at = now - age
    finished = status not in ("pending", "queued", "running")
    with session_scope(settings) as session:
        job = TrackedJob(
            kind=kind,
            job_id=job_id,
            region="ap-guangzhou",
            status=status,
            polls=polls,
            created_at=at - timedelta(minutes=5),
            updated_at=at,
            next_poll_at=at,
            deadline_at=at + DAY,
            finished_at=at if finished else None,
            last_unfinished_at=at - timedelta(seconds=4) if finished else None,
            meta={},
        )
        session.add(job)
        session.flush()
        session.add(
            JobTransition(tracked_job_id=job.id, from_status="pending", to_status="queued", at=at)
        )
        if finished:
            session.add(
                JobTransition(tracked_job_id=job.id, from_status="queued", to_status=status, at=at)
            )
        if delivery is not None:
            last = now - (delivery_age if delivery_age is not None else age)
            session.add(
                WebhookDelivery(
                    id=f"msg_{job_id}",
                    tracked_job_id=job.id,
                    event_type=f"job.{status}",
                    url="https://example.com/hook",
                    payload={"type": f"job.{status}"},
                    status=delivery,
                    attempts=attempts,
                    created_at=at,
                    updated_at=last,
                    delivered_at=last if delivery == "delivered" else None,
                )
            )
            session.flush()
            for n in range(attempts):
                session.add(
                    WebhookAttempt(
                        delivery_id=f"msg_{job_id}",
                        attempted_at=last - timedelta(seconds=attempts - n),
                        status_code=200 if delivery == "delivered" else 500,
                    )
                )
        return job.id


def job_ids(settings: Settings) -> set[str]:
    with session_scope(settings) as session:
        return set(session.execute(select(TrackedJob.job_id)).scalars())


def counts(settings: Settings) -> dict[str, int]:
    with session_scope(settings) as session:
        return {
            model.__tablename__: int(
                session.execute(select(func.count()).select_from(model)).scalar_one()
            )
            for model in (TrackedJob, JobTransition, WebhookDelivery, WebhookAttempt, PrunedJob)
        }


def test_prune_removes_old_finished_jobs_and_never_what_must_stay(
    db_url: str, tmp_path: Path
) -> None:
    settings = settings_for(db_url, tmp_path, JOBTRACKER_RETENTION_DAYS="30")
    add_job(settings, "old-done", delivery="delivered", attempts=2)
    add_job(settings, "old-failed-long-ago", status="failed", delivery="failed", attempts=3)
    add_job(settings, "old-expired", status="expired")
    add_job(settings, "young-done", age=10 * DAY, delivery="delivered")
    # Must stay: active however old, a pending callback, a failed callback retried recently.
    add_job(settings, "old-active", status="running")
    add_job(settings, "old-pending-callback", delivery="pending")
    add_job(settings, "old-failed-recently", delivery="failed", delivery_age=2 * DAY)

    report = prune(settings)

    assert job_ids(settings) == {
        "young-done",
        "old-active",
        "old-pending-callback",
        "old-failed-recently",
    }
    assert (report.jobs, report.transitions, report.deliveries, report.attempts) == (3, 6, 2, 5)
    assert report.kinds == {"image_animate": 3}
    with session_scope(settings) as session:
        tombs = {t.job_id: t.status for t in session.execute(select(PrunedJob)).scalars()}
    assert tombs == {
        "old-done": "succeeded",
        "old-failed-long-ago": "failed",
        "old-expired": "expired",
    }
    # Nothing of theirs is left behind.
    left = counts(settings)
    assert (left["job_transitions"], left["webhook_deliveries"]) == (4 + 3, 3)
    # A second run has nothing to do.
    assert prune(settings).rows == 0


def test_dry_run_counts_and_removes_nothing(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(db_url, tmp_path)
    add_job(settings, "a", delivery="delivered", attempts=2)
    add_job(settings, "b")
    add_job(settings, "c", age=DAY)
    before = counts(settings)
    report = prune(settings, dry_run=True)
    assert (report.jobs, report.transitions, report.deliveries, report.attempts) == (2, 4, 1, 2)
    assert counts(settings) == before
    real = prune(settings)
    assert (real.jobs, real.transitions, real.deliveries, real.attempts) == (2, 4, 1, 2)


def test_retention_zero_keeps_everything(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(db_url, tmp_path, JOBTRACKER_RETENTION_DAYS="0")
    add_job(settings, "ancient", age=3000 * DAY, delivery="delivered")
    assert prune(settings).rows == 0
    assert job_ids(settings) == {"ancient"}
    # On demand, an explicit age still works.
    assert prune(settings, older_than_s=DAY.total_seconds()).jobs == 1


def test_attempts_of_delivered_callbacks_go_sooner(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(
        db_url, tmp_path, JOBTRACKER_RETENTION_DAYS="30", JOBTRACKER_ATTEMPT_RETENTION_DAYS="7"
    )
    add_job(settings, "delivered-10d", age=10 * DAY, delivery="delivered", attempts=3)
    add_job(settings, "failed-10d", age=10 * DAY, delivery="failed", attempts=2)
    add_job(settings, "delivered-2d", age=2 * DAY, delivery="delivered", attempts=1)
    report = prune(settings)
    assert (report.jobs, report.delivered_attempts) == (0, 3)
    with session_scope(settings) as session:
        left = dict(
            session.execute(
                select(WebhookAttempt.delivery_id, func.count()).group_by(
                    WebhookAttempt.delivery_id
                )
            ).all()
        )
    # The message keeps its outcome (status, attempts, last status code); failed ones keep all.
    assert left == {"msg_failed-10d": 2, "msg_delivered-2d": 1}


def test_batches_are_bounded(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(db_url, tmp_path, JOBTRACKER_PRUNE_BATCH="4")
    for n in range(10):
        add_job(settings, f"j{n}")
    largest: list[int] = []
    from sqlalchemy import event

    from worker.db import get_engine

    deleted_in_tx: list[int] = [0]

    def count_deletes(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM TRACKED_JOBS"):
            deleted_in_tx[0] += cursor.rowcount

    def on_commit(conn: Any) -> None:
        largest.append(deleted_in_tx[0])
        deleted_in_tx[0] = 0

    engine = get_engine(settings)
    event.listen(engine, "after_cursor_execute", count_deletes)
    event.listen(engine, "commit", on_commit)
    try:
        report = prune(settings)
    finally:
        event.remove(engine, "after_cursor_execute", count_deletes)
        event.remove(engine, "commit", on_commit)
    assert (report.jobs, report.batches) == (10, 3)
    assert max(largest) == 4


def test_enqueuing_a_pruned_job_again_tracks_nothing_on_every_way_in(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(db_url, tmp_path)
    first = track("image_animate", "done-long-ago", settings=settings)
    with session_scope(settings) as session:
        session.execute(
            update(TrackedJob)
            .where(TrackedJob.id == first["id"])
            .values(status="succeeded", finished_at=utcnow() - 40 * DAY)
        )
    assert prune(settings).jobs == 1

    # Python (and the Celery task, which calls it): the tombstone comes back, nothing is tracked.
    again = track("image_animate", "done-long-ago", settings=settings)
    assert (again["id"], again["status"], again["pruned_at"] is not None) == (
        first["id"],
        "succeeded",
        True,
    )
    # The CLI.
    monkeypatch.setenv("JOBTRACKER_DATABASE_URL", db_url)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["enqueue", "image_animate", "done-long-ago"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["status"] == "succeeded"
    # A plain SQL INSERT, as users write it: skipped by the table's trigger.
    with session_scope(settings) as session:
        inserted = session.execute(
            text(
                "INSERT INTO tracked_jobs (kind, job_id) VALUES ('image_animate', 'done-long-ago') "
                "ON CONFLICT DO NOTHING"
            )
        )
        assert inserted.rowcount == 0  # type: ignore[attr-defined]
        session.execute(
            text(
                "INSERT INTO tracked_jobs (kind, job_id) VALUES ('image_animate', 'done-long-ago')"
            )
        )
    assert job_ids(settings) == set()
    # `jobtracker show` says where it went.
    shown = CliRunner().invoke(main, ["show", "image_animate", "done-long-ago"])
    assert shown.exit_code == 1
    assert "pruned by the retention" in shown.output and "ended succeeded" in shown.output
    # Another region is another job.
    track("image_animate", "done-long-ago", region="ap-shanghai", settings=settings)
    assert job_ids(settings) == {"done-long-ago"}


def test_tombstones_expire(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(db_url, tmp_path, JOBTRACKER_TOMBSTONE_DAYS="100")
    add_job(settings, "a")
    prune(settings)
    with session_scope(settings) as session:
        session.execute(update(PrunedJob).values(pruned_at=utcnow() - 101 * DAY))
    assert prune(settings).tombstones_expired == 1
    assert counts(settings)["pruned_jobs"] == 0


def test_two_pruners_at_once_remove_each_job_once(pg_url: str, tmp_path: Path) -> None:
    settings = settings_for(pg_url, tmp_path, JOBTRACKER_PRUNE_BATCH="7")
    for n in range(120):
        add_job(settings, f"j{n}", delivery="delivered" if n % 3 else None)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(prune(settings))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(r.jobs for r in reports) == 120
    assert counts(settings) == {
        "tracked_jobs": 0,
        "job_transitions": 0,
        "webhook_deliveries": 0,
        "webhook_attempts": 0,
        "pruned_jobs": 120,
    }


def test_archive_holds_each_pruned_job_with_its_history(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    settings = settings_for(db_url, tmp_path, JOBTRACKER_ARCHIVE_DIR=str(folder))
    add_job(settings, "a", delivery="delivered", attempts=2)
    add_job(settings, "b", status="failed")
    report = prune(settings)
    assert report.archive is not None
    (path,) = folder.glob("pruned-*.jsonl.gz")
    with gzip.open(path, "rt") as f:
        lines = [json.loads(line) for line in f]
    by_id = {line["job"]["job_id"]: line for line in lines}
    assert set(by_id) == {"a", "b"}
    assert [t["to_status"] for t in by_id["a"]["transitions"]] == ["queued", "succeeded"]
    (message,) = by_id["a"]["deliveries"]
    assert (message["status"], len(message["attempt_log"])) == ("delivered", 2)
    # A run with nothing to prune leaves no empty file.
    assert prune(settings).archive is None
    assert len(list(folder.glob("*.gz"))) == 1


def true_counts(settings: Settings) -> dict[tuple[str, str], int]:
    with session_scope(settings) as session:
        rows = session.execute(
            select(TrackedJob.kind, TrackedJob.status, func.count()).group_by(
                TrackedJob.kind, TrackedJob.status
            )
        ).all()
    return {(k, s): int(n) for k, s, n in rows}


def tallied(settings: Settings) -> dict[tuple[str, str], int]:
    with session_scope(settings) as session:
        return {key: t.rows for key, t in tally.read(session).jobs.items()}


def test_tallies_match_a_real_count_whatever_writes_the_rows(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(db_url, tmp_path)
    rng = random.Random(7)
    for n in range(30):
        track(rng.choice(["image_animate", "video_face_fusion"]), f"t{n}", settings=settings)
    with session_scope(settings) as session:
        # Plain SQL: inserts, status moves (some finishing), deletes, an untouched-status update.
        session.execute(
            text(
                "INSERT INTO tracked_jobs (kind, job_id) VALUES "
                "('image_animate', 'sql1'), ('video_face_fusion', 'sql2')"
            )
        )
        session.execute(
            text("UPDATE tracked_jobs SET status = 'running' WHERE job_id IN ('t1', 't2', 't3')")
        )
        session.execute(
            update(TrackedJob)
            .where(TrackedJob.job_id.in_(["t4", "t5", "t6", "t7"]))
            .values(status="failed", finished_at=utcnow() - 40 * DAY, polls=2)
        )
        session.execute(text("UPDATE tracked_jobs SET polls = polls + 1"))
        session.execute(text("DELETE FROM tracked_jobs WHERE job_id = 't8'"))
    assert tallied(settings) == true_counts(settings)
    prune(settings)
    assert tallied(settings) == true_counts(settings)
    with session_scope(settings) as session:
        folded = tally.compact(session)
        rows_left = session.execute(select(func.count()).select_from(RowTally)).scalar_one()
    assert folded > 0
    # One row per (subject, kind, status) that is not zero.
    assert rows_left == len(true_counts(settings))
    assert tallied(settings) == true_counts(settings)
    with session_scope(settings) as session:
        finished = tally.read(session).finished("image_animate")
        truth = session.execute(
            select(func.count(), func.coalesce(func.sum(TrackedJob.polls), 0)).where(
                TrackedJob.kind == "image_animate", TrackedJob.finished_at.is_not(None)
            )
        ).one()
    assert (finished.rows, finished.polls) == (truth[0], truth[1])


def test_stats_read_tallies_and_the_detection_bound(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(db_url, tmp_path)
    add_job(settings, "a", age=DAY, polls=2)
    add_job(settings, "b", age=DAY, polls=4)
    add_job(settings, "c", status="pending", age=timedelta(minutes=1))
    with session_scope(settings) as session:
        result = stats(session, now=utcnow())
    assert result["jobs"]["image_animate"]["succeeded"] == 2
    assert result["jobs_total"] == 3
    assert result["polls_per_finished_job"]["image_animate"] == {
        "jobs": 2,
        "avg": 3.0,
        "max_recent": 4,
        "detection_bound_s": 4.0,
    }
    assert result["oldest_active"]["pending"]["kind"] == "image_animate"
    assert 6 * 60 - 5 < result["oldest_active"]["pending"]["age_s"] < 6 * 60 + 60


def test_the_periodic_tasks_prune_and_compact(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBTRACKER_DATABASE_URL", db_url)
    monkeypatch.setenv("JOBTRACKER_RETENTION_DAYS", "30")
    monkeypatch.chdir(tmp_path)
    settings = settings_for(db_url, tmp_path)
    add_job(settings, "old")
    add_job(settings, "new", age=DAY)
    assert tasks.prune()["jobs"] == 1
    # Two inserts and a delete left several tally rows for the same keys: folded now.
    assert tasks.compact_tallies() > 0
    assert tasks.compact_tallies() == 0
    assert job_ids(settings) == {"new"}
    monkeypatch.setenv("JOBTRACKER_RETENTION_DAYS", "0")
    from worker.settings import reset_settings

    reset_settings()
    add_job(settings, "old2")
    assert tasks.prune() == {}


def test_a_callback_redelivered_while_its_job_is_chosen_keeps_the_job(
    pg_url: str, tmp_path: Path
) -> None:
    """The choice locks job rows; a redelivery changes only the message. The batch reads the
    callbacks again, locked, before it deletes, and keeps a job whose callback is pending."""
    from sqlalchemy import event

    from worker.db import get_engine
    from worker.flow.deliver import redeliver

    settings = settings_for(pg_url, tmp_path)
    add_job(settings, "redelivered", delivery="delivered")
    add_job(settings, "plain", delivery="delivered")
    fired: list[str] = []

    def redeliver_meanwhile(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not fired and "FROM tracked_jobs" in statement and "SKIP LOCKED" in statement:
            fired.append(statement)
            worker = threading.Thread(target=redeliver, args=(settings, "msg_redelivered"))
            worker.start()
            worker.join(timeout=30)

    engine = get_engine(settings)
    event.listen(engine, "after_cursor_execute", redeliver_meanwhile)
    try:
        report = prune(settings)
    finally:
        event.remove(engine, "after_cursor_execute", redeliver_meanwhile)
    assert fired
    assert report.jobs == 1 and job_ids(settings) == {"redelivered"}
    with session_scope(settings) as session:
        message = session.get(WebhookDelivery, "msg_redelivered")
        assert message is not None and message.status == "pending"


def test_a_shorter_older_than_keeps_a_callback_that_failed_within_the_retention(
    db_url: str, tmp_path: Path
) -> None:
    settings = settings_for(db_url, tmp_path, JOBTRACKER_RETENTION_DAYS="30")
    add_job(settings, "failed-2d-ago", age=40 * DAY, delivery="failed", delivery_age=2 * DAY)
    add_job(settings, "done-2d-ago", age=2 * DAY, delivery="delivered")
    report = prune(settings, older_than_s=DAY.total_seconds())
    assert report.jobs == 1 and job_ids(settings) == {"failed-2d-ago"}


def test_old_attempts_of_failed_callbacks_do_not_stop_the_walk(db_url: str, tmp_path: Path) -> None:
    """Attempts are walked by time once per run: a batch of old attempts that must stay (a
    failed callback's) does not end the run before the delivered ones behind it."""
    settings = settings_for(
        db_url, tmp_path, JOBTRACKER_PRUNE_BATCH="3", JOBTRACKER_ATTEMPT_RETENTION_DAYS="7"
    )
    add_job(settings, "failed", age=20 * DAY, delivery="failed", attempts=7)
    add_job(settings, "delivered", age=10 * DAY, delivery="delivered", attempts=5)
    before = prune(settings, dry_run=True)
    assert before.delivered_attempts == 5
    report = prune(settings)
    assert (report.jobs, report.delivered_attempts) == (0, 5)
    assert counts(settings)["webhook_attempts"] == 7


def test_insert_or_replace_on_sqlite_keeps_the_tallies_exact(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = settings_for(sqlite_url, tmp_path)
    add_job(settings, "a")
    with session_scope(settings) as session:
        row = session.execute(select(TrackedJob.id)).scalar_one()
        session.execute(
            text(
                "INSERT OR REPLACE INTO tracked_jobs (id, kind, job_id, status) "
                "VALUES (:id, 'image_animate', 'a', 'pending')"
            ),
            {"id": row},
        )
    assert tallied(settings) == true_counts(settings)


COUNTED = ("jobs", "transitions", "deliveries", "attempts", "delivered_attempts")


def test_a_dry_run_counts_what_the_run_then_removes(db_url: str, tmp_path: Path) -> None:
    """Every part of the retention at once: the count reads the rules the run reads."""
    settings = settings_for(
        db_url,
        tmp_path,
        JOBTRACKER_RETENTION_DAYS="30",
        JOBTRACKER_ATTEMPT_RETENTION_DAYS="7",
        JOBTRACKER_TOMBSTONE_DAYS="100",
        JOBTRACKER_PRUNE_BATCH="2",
    )
    add_job(settings, "tombstoned")
    add_job(settings, "tombstoned-too", kind="video_face_fusion")
    prune(settings)
    with session_scope(settings) as session:
        session.execute(update(PrunedJob).values(pruned_at=utcnow() - 101 * DAY))
    add_job(settings, "old-delivered", delivery="delivered", attempts=3)
    add_job(settings, "old-failed-long-ago", status="failed", delivery="failed", attempts=2)
    add_job(settings, "old-other-kind", kind="video_face_fusion", delivery="delivered")
    add_job(settings, "old-expired", status="expired")
    add_job(settings, "young-delivered", age=10 * DAY, delivery="delivered", attempts=4)
    add_job(settings, "young-failed", age=10 * DAY, delivery="failed", attempts=2)
    add_job(settings, "old-active", status="running")
    add_job(settings, "old-pending-callback", delivery="pending", attempts=2)
    add_job(settings, "old-failed-recently", delivery="failed", delivery_age=2 * DAY)
    before = counts(settings)

    counted = prune(settings, dry_run=True)
    assert counts(settings) == before
    removed = prune(settings)

    assert [getattr(counted, f) for f in COUNTED] == [getattr(removed, f) for f in COUNTED]
    assert (counted.tombstones_expired, removed.tombstones_expired) == (2, 2)
    assert counted.kinds == removed.kinds == {"image_animate": 3, "video_face_fusion": 1}
    assert (removed.jobs, removed.delivered_attempts) == (4, 4)
    assert prune(settings, dry_run=True).rows == 0


def test_a_spent_budget_stops_the_run_and_the_next_one_carries_on(
    db_url: str, tmp_path: Path
) -> None:
    settings = settings_for(db_url, tmp_path, JOBTRACKER_PRUNE_BATCH="2")
    for n in range(5):
        add_job(settings, f"j{n}")
    stopped = prune(settings, budget_s=0.0)
    assert stopped.incomplete and stopped.jobs == 0
    assert len(job_ids(settings)) == 5
    done = prune(settings, budget_s=60.0, pause_s=0.01)
    assert not done.incomplete and (done.jobs, done.batches) == (5, 3)
