"""transition_many, the only writer of status: compare-and-set, history, outbox, atomicity."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from jobtracker.models import JobStatus, JobTransition, TrackedJob, WebhookDelivery, utcnow
from worker.db import session_scope
from worker.errors import InvalidTransition
from worker.flow.enqueue import track
from worker.flow.transition import Move, transition_many
from worker.settings import Settings


def load(settings: Settings, job_id: str) -> TrackedJob:
    with session_scope(settings) as session:
        return session.execute(select(TrackedJob).where(TrackedJob.job_id == job_id)).scalar_one()


def count(settings: Settings, model: type) -> int:
    with session_scope(settings) as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def test_a_move_writes_status_history_and_outbox_together(db_url: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    track("image_animate", "a", callback_url="http://127.0.0.1:9/h", settings=settings)
    job = load(settings, "a")
    now = utcnow()
    with session_scope(settings) as session:
        applied, conflicts = transition_many(
            session,
            [Move(job, JobStatus.SUCCEEDED, "DONE", "req-1", values={"result": {"u": 1}})],
            now=now,
        )
    assert conflicts == [] and applied[0].delivery_id
    assert applied[0].job.status == "succeeded" and applied[0].job.finished_at == now
    assert job.status == "pending"  # the caller's object is left as loaded
    stored = load(settings, "a")
    assert (stored.status, stored.provider_status, stored.result) == ("succeeded", "DONE", {"u": 1})
    with session_scope(settings) as session:
        [t] = session.execute(select(JobTransition)).scalars()
        [d] = session.execute(select(WebhookDelivery)).scalars()
    assert (t.from_status, t.to_status, t.request_id) == ("pending", "succeeded", "req-1")
    assert d.id == applied[0].delivery_id and d.payload["data"]["result"] == {"u": 1}


def test_a_status_changed_under_us_is_a_conflict_and_writes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    track("image_animate", "b", callback_url="http://127.0.0.1:9/h", settings=settings)
    stale = load(settings, "b")  # loaded as pending
    with session_scope(settings) as session:
        session.execute(text("UPDATE tracked_jobs SET status = 'running'"))
    with session_scope(settings) as session:
        applied, conflicts = transition_many(session, [Move(stale, JobStatus.FAILED)], now=utcnow())
    assert applied == [] and len(conflicts) == 1
    assert load(settings, "b").status == "running"
    assert count(settings, JobTransition) == count(settings, WebhookDelivery) == 0


def test_forbidden_moves_raise_and_a_failed_transaction_leaves_no_trace(
    db_url: str, tmp_path: Path
) -> None:
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    track("image_animate", "c", callback_url="http://127.0.0.1:9/h", settings=settings)
    track("image_animate", "d", settings=settings)
    first, second = load(settings, "c"), load(settings, "d")
    second.status = "succeeded"  # as if loaded terminal
    with pytest.raises(InvalidTransition), session_scope(settings) as session:
        transition_many(
            session,
            [Move(first, JobStatus.SUCCEEDED), Move(second, JobStatus.RUNNING)],
            now=utcnow(),
        )
    # The first move's UPDATE ran, but the transaction rolled back with the error.
    assert load(settings, "c").status == "pending"
    assert count(settings, JobTransition) == count(settings, WebhookDelivery) == 0
