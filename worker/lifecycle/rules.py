"""What the retention may remove: the one statement of the rules, read by the pruning batches
(:mod:`.prune`) and by the dry run's counts (:mod:`.count`) alike.

What is never removed: an active job; a job with a callback still pending; a job whose callback
failed for good less than the retention ago (counted from its last attempt, so it can still be
redelivered). A job goes with everything of it: its transitions, its callbacks and their
attempts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select

from jobtracker.models import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    JobTransition,
    PrunedJob,
    TrackedJob,
    WebhookAttempt,
    WebhookDelivery,
)
from worker.settings import Settings

DAY_S = 86400.0


@dataclass(frozen=True)
class Retention:
    """The cutoffs of one run, fixed at its start.

    - A job may go when it finished before ``jobs_before`` and none of its callbacks must stay:
      pending, or failed for good at or after ``failed_kept_since``. That is the retention from
      now, however short an ``--older-than`` is asked for.
    - An attempt of a delivered callback may go when made before ``attempts_before``
      (``JOBTRACKER_ATTEMPT_RETENTION_DAYS``, never later than its job; None: with its job).
    - A tombstone may go when written before ``tombstones_before`` (None: kept for ever).
    """

    jobs_before: datetime
    failed_kept_since: datetime
    attempts_before: datetime | None
    tombstones_before: datetime | None

    @classmethod
    def at(
        cls, settings: Settings, now: datetime, older_than_s: float | None = None
    ) -> Retention | None:
        """The rules of a run at ``now``; None when nothing may go (``JOBTRACKER_RETENTION_DAYS``
        is 0 and no ``older_than_s`` is asked for)."""
        retention_s = settings.retention_days * DAY_S
        if older_than_s is None:
            if retention_s <= 0:
                return None
            older_than_s = retention_s
        jobs_before = now - timedelta(seconds=older_than_s)
        attempt_s = settings.attempt_retention_days * DAY_S
        tombstone_s = settings.tombstone_days * DAY_S
        return cls(
            jobs_before=jobs_before,
            failed_kept_since=(
                min(jobs_before, now - timedelta(seconds=retention_s))
                if retention_s > 0
                else jobs_before
            ),
            attempts_before=(
                now - timedelta(seconds=min(attempt_s, older_than_s)) if attempt_s > 0 else None
            ),
            tombstones_before=now - timedelta(seconds=tombstone_s) if tombstone_s > 0 else None,
        )

    def callback_stays(self) -> ColumnElement[bool]:
        """A callback (``WebhookDelivery``) that keeps its job."""
        return or_(
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
            and_(
                WebhookDelivery.status == DeliveryStatus.FAILED.value,
                WebhookDelivery.updated_at >= self.failed_kept_since,
            ),
        )

    def job_goes(self, kind: str | None = None) -> list[ColumnElement[bool]]:
        """A finished job (``TrackedJob``, of ``kind`` if given) that may go."""
        keep = exists().where(
            WebhookDelivery.tracked_job_id == TrackedJob.id, self.callback_stays()
        )
        conditions = [
            TrackedJob.finished_at.is_not(None),
            TrackedJob.finished_at < self.jobs_before,
            TrackedJob.status.in_([s.value for s in TERMINAL_STATUSES]),
            ~keep,
        ]
        if kind is not None:
            conditions.insert(0, TrackedJob.kind == kind)
        return conditions

    def jobs_going(self) -> Select[Any]:
        """The ids of every job that may go."""
        return select(TrackedJob.id).where(*self.job_goes())

    def attempt_old(self) -> ColumnElement[bool]:
        """An attempt (``WebhookAttempt``) made before ``attempts_before``."""
        assert self.attempts_before is not None
        return WebhookAttempt.attempted_at < self.attempts_before

    @staticmethod
    def attempt_delivered() -> ColumnElement[bool]:
        """An attempt of a delivered callback: its outcome is on the message already."""
        return exists().where(
            WebhookDelivery.id == WebhookAttempt.delivery_id,
            WebhookDelivery.status == DeliveryStatus.DELIVERED.value,
        )

    def tombstone_goes(self) -> ColumnElement[bool]:
        """A tombstone (``PrunedJob``) that has kept re-enqueues out long enough."""
        assert self.tombstones_before is not None
        return PrunedJob.pruned_at < self.tombstones_before


def transitions_of(jobs: Any) -> ColumnElement[bool]:
    """The transitions of ``jobs`` (a list of ids, or a query of them): they go with the job."""
    return JobTransition.tracked_job_id.in_(jobs)


def callbacks_of(jobs: Any) -> ColumnElement[bool]:
    """The callbacks of ``jobs``: they go with the job, unless one of them must stay."""
    return WebhookDelivery.tracked_job_id.in_(jobs)


def attempts_of(callbacks: Any) -> ColumnElement[bool]:
    """The attempts of ``callbacks`` (ids, or a query of them): they go with the callback."""
    return WebhookAttempt.delivery_id.in_(callbacks)
