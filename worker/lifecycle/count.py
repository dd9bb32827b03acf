"""The dry run: what a run would remove now, counted from the rules the run itself reads
(:mod:`.rules`), one count per table (a dry run is an operator's question, not a periodic
task, so it is not batched)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobtracker.models import JobTransition, PrunedJob, TrackedJob, WebhookAttempt, WebhookDelivery
from worker.lifecycle.report import PruneReport
from worker.lifecycle.rules import Retention, attempts_of, callbacks_of, transitions_of


def count(session: Session, retention: Retention, report: PruneReport) -> None:
    """Fill ``report`` with what a run at ``retention`` would remove."""
    going = retention.jobs_going()
    report.jobs = _count(session, select(func.count()).select_from(going.subquery()))
    for kind, n in session.execute(
        select(TrackedJob.kind, func.count()).where(*retention.job_goes()).group_by(TrackedJob.kind)
    ):
        report.kinds[kind] = int(n)
    jobs = going.scalar_subquery()
    callbacks = select(WebhookDelivery.id).where(callbacks_of(jobs)).scalar_subquery()
    report.transitions = _count(
        session, select(func.count()).select_from(JobTransition).where(transitions_of(jobs))
    )
    report.deliveries = _count(
        session, select(func.count()).select_from(WebhookDelivery).where(callbacks_of(jobs))
    )
    report.attempts = _count(
        session, select(func.count()).select_from(WebhookAttempt).where(attempts_of(callbacks))
    )
    if retention.attempts_before is not None:
        report.delivered_attempts = _count(
            session,
            select(func.count())
            .select_from(WebhookAttempt)
            .where(
                retention.attempt_old(),
                retention.attempt_delivered(),
                # Those of jobs removed anyway are counted once, with their jobs.
                ~attempts_of(callbacks),
            ),
        )
    if retention.tombstones_before is not None:
        report.tombstones_expired = _count(
            session, select(func.count()).select_from(PrunedJob).where(retention.tombstone_goes())
        )


def _count(session: Session, query: Any) -> int:
    return int(session.execute(query).scalar_one() or 0)
