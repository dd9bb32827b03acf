"""The one place a job's status changes.

:func:`transition` is a compare-and-set UPDATE (``WHERE id = :id AND status = :from``) plus its
``job_transitions`` row, and for a terminal status with a callback URL, its ``webhook_deliveries``
row (the outbox), all in the caller's transaction. Either all of it commits or none of it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from models import JobStatus, JobTransition, TrackedJob, can_transition
from worker.errors import InvalidTransition, JobTrackerError


class TransitionConflict(JobTrackerError):
    """The job's status changed under us; nothing was written."""


@dataclass(frozen=True)
class TransitionResult:
    job: TrackedJob
    #: The outbox message written with the transition, to send after commit.
    delivery_id: str | None


def transition(
    session: Session,
    job_id: int,
    from_status: JobStatus,
    to_status: JobStatus,
    *,
    now: datetime,
    provider_status: str | None = None,
    request_id: str | None = None,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
) -> TransitionResult:
    """Move tracked job ``job_id`` from ``from_status`` to ``to_status``.

    ``values`` are further columns to set in the same UPDATE (result, error, poll counters...).
    Raises :class:`InvalidTransition` if the table of allowed transitions forbids the move and
    :class:`TransitionConflict` if the row is no longer in ``from_status``.
    """
    if not can_transition(from_status, to_status):
        raise InvalidTransition(f"job {job_id}: {from_status} -> {to_status} is not allowed")
    columns: dict[str, Any] = dict(values or {})
    columns.update(status=to_status.value, updated_at=now)
    if provider_status is not None:
        columns["provider_status"] = provider_status
    if to_status.is_terminal:
        columns.update(finished_at=now, lease_expires_at=None)
    job = session.execute(
        update(TrackedJob)
        .where(TrackedJob.id == job_id, TrackedJob.status == from_status.value)
        .values(**columns)
        .returning(TrackedJob),
        execution_options={"synchronize_session": False},
    ).scalar_one_or_none()
    if job is None:
        raise TransitionConflict(f"job {job_id} is no longer {from_status}")
    session.execute(
        insert(JobTransition).values(
            tracked_job_id=job_id,
            from_status=from_status.value,
            to_status=to_status.value,
            provider_status=provider_status,
            request_id=request_id,
            reason=reason,
            at=now,
        )
    )
    delivery_id = None
    if to_status.is_terminal and job.callback_url:
        from worker.outbox import create_delivery

        delivery_id = create_delivery(session, job, now=now)
    return TransitionResult(job=job, delivery_id=delivery_id)
