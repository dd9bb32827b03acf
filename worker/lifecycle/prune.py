"""Retention: remove finished jobs (with their transitions, callbacks and attempts) past an age.

What may go is :mod:`.rules`; this module removes it. Each removed job leaves a tombstone in
``pruned_jobs``, and a trigger skips any INSERT of a tombstoned (kind, region, job_id), so
enqueuing a pruned job again, by any way in, neither tracks it twice nor sends a second
callback. Attempts of delivered callbacks go sooner, and tombstones expire.

Work goes in batches of ``JOBTRACKER_PRUNE_BATCH`` rows (:mod:`.batches`); on PostgreSQL a batch
takes its rows ``FOR UPDATE SKIP LOCKED``, so two trackers pruning at once take different rows.
Optionally each batch of jobs is first written to the archive (:mod:`.archive`). A dry run
counts instead (:mod:`.count`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobtracker.models import (
    JobTransition,
    PrunedJob,
    TrackedJob,
    WebhookAttempt,
    WebhookDelivery,
)
from worker import clock
from worker.db import lock_for_write, session_scope
from worker.lifecycle import tally
from worker.lifecycle.archive import Archive
from worker.lifecycle.batches import Budget, in_batches
from worker.lifecycle.count import count
from worker.lifecycle.report import PruneReport
from worker.lifecycle.rules import Retention, attempts_of, callbacks_of, transitions_of
from worker.settings import Settings

log = logging.getLogger(__name__)


def prune(
    settings: Settings,
    *,
    older_than_s: float | None = None,
    dry_run: bool = False,
    budget_s: float | None = None,
    pause_s: float = 0.0,
    now: datetime | None = None,
) -> PruneReport:
    """Remove what the retention settings (or ``older_than_s``) say is old enough.

    ``budget_s``: stop starting new batches after this long (the periodic task's bound; the next
    run carries on). ``pause_s``: sleep between batches, to leave the database to the pollers.
    """
    budget = Budget(budget_s)
    now = now or clock.now(settings)
    retention = Retention.at(settings, now, older_than_s)
    if retention is None:  # JOBTRACKER_RETENTION_DAYS=0 keeps everything
        return PruneReport(dry_run=dry_run, cutoff=None)
    report = PruneReport(dry_run=dry_run, cutoff=retention.jobs_before)
    if dry_run:
        with session_scope(settings) as session:
            count(session, retention, report)
        report.seconds = budget.elapsed()
        return report

    archive = Archive(settings.archive_dir, now) if settings.archive_dir is not None else None
    report.archive = str(archive.path) if archive is not None else None
    batches = partial(in_batches, size=settings.prune_batch, budget=budget, pause_s=pause_s)
    try:
        with session_scope(settings) as session:
            kinds = tally.read(session).kinds()
        for kind in kinds:
            batches(partial(_jobs, settings, retention, kind, now, report, archive))
        if retention.attempts_before is not None:
            batches(_DeliveredAttempts(settings, retention, report).next_batch)
        if retention.tombstones_before is not None:
            batches(partial(_tombstones, settings, retention, report))
    finally:
        if archive is not None:
            archive.close()
            if not archive.written:
                report.archive = None
    report.incomplete = budget.spent
    report.seconds = budget.elapsed()
    if report.rows:
        log.info("pruned", extra={"prune": report.to_dict()})
    return report


_TOMBSTONE_COLUMNS = (
    TrackedJob.id,
    TrackedJob.kind,
    TrackedJob.region,
    TrackedJob.job_id,
    TrackedJob.status,
    TrackedJob.client_id,
    TrackedJob.created_at,
    TrackedJob.finished_at,
)


def _jobs(
    settings: Settings,
    retention: Retention,
    kind: str,
    now: datetime,
    report: PruneReport,
    archive: Archive | None,
) -> int:
    """One batch of jobs of ``kind``, in one transaction: returns how many it chose."""
    with session_scope(settings) as session:
        chosen, removed = _remove_jobs(
            session, retention, kind, settings.prune_batch, now, report, archive
        )
    if removed:
        report.batches += 1
        report.kinds[kind] = report.kinds.get(kind, 0) + removed
    return chosen


def _remove_jobs(
    session: Session,
    retention: Retention,
    kind: str,
    limit: int,
    now: datetime,
    report: PruneReport,
    archive: Archive | None,
) -> tuple[int, int]:
    """Returns how many jobs it chose, and how many of them it removed."""
    lock_for_write(session)  # SQLite: what is chosen stays true until it is deleted
    # Whole rows only for the archive: the tombstones need eight columns, and building 500 ORM
    # objects with their results per batch made the pruner CPU-bound.
    columns: Sequence[Any] = (TrackedJob,) if archive is not None else _TOMBSTONE_COLUMNS
    chosen_rows = session.execute(
        select(*columns)
        .where(*retention.job_goes(kind))
        .order_by(TrackedJob.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    jobs: list[Any] = list(chosen_rows.scalars() if archive is not None else chosen_rows)
    if not jobs:
        return 0, 0
    # The callbacks again, locked: a redelivery may have made one pending since the choice
    # (it changes the message, not the job, so the job's lock did not stop it).
    deliveries = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.tracked_job_id, retention.callback_stays())
        .where(callbacks_of([job.id for job in jobs]))
        .with_for_update()
    ).all()
    kept = {job_pk for _, job_pk, stays in deliveries if stays}
    chosen = len(jobs)
    jobs = [job for job in jobs if job.id not in kept]
    ids = [job.id for job in jobs]
    delivery_ids = [delivery_pk for delivery_pk, job_pk, _ in deliveries if job_pk not in kept]
    if not jobs:
        return chosen, 0
    if archive is not None:
        archive.write(session, jobs, delivery_ids)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(PrunedJob)
        .values(
            [
                {
                    "kind": job.kind,
                    "region": job.region,
                    "job_id": job.job_id,
                    "tracked_job_id": job.id,
                    "status": job.status,
                    "client_id": job.client_id,
                    "created_at": job.created_at,
                    "finished_at": job.finished_at,
                    "pruned_at": now,
                }
                for job in jobs
            ]
        )
        .on_conflict_do_nothing(index_elements=["kind", "region", "job_id"])
    )
    if delivery_ids:
        report.attempts += _delete(session, delete(WebhookAttempt).where(attempts_of(delivery_ids)))
        report.deliveries += _delete(
            session, delete(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))
        )
    report.transitions += _delete(session, delete(JobTransition).where(transitions_of(ids)))
    report.jobs += _delete(session, delete(TrackedJob).where(TrackedJob.id.in_(ids)))
    return chosen, len(ids)


class _DeliveredAttempts:
    """The oldest attempts of delivered callbacks (their outcome is on the message already).

    Walks ``webhook_attempts`` by (attempted_at, id), one batch of rows at a time, each batch
    going on from where the last stopped, so the old attempts of failed or pending callbacks,
    which stay, are read once per run and not again by every batch.
    """

    def __init__(self, settings: Settings, retention: Retention, report: PruneReport) -> None:
        self.settings = settings
        self.retention = retention
        self.report = report
        self.after: tuple[datetime, int] | None = None

    def next_batch(self) -> int:
        """One batch, in one transaction: returns how many attempts it examined."""
        with session_scope(self.settings) as session:
            lock_for_write(session)
            query = (
                select(
                    WebhookAttempt.id,
                    WebhookAttempt.attempted_at,
                    self.retention.attempt_delivered(),
                )
                .where(self.retention.attempt_old())
                .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
                .limit(self.settings.prune_batch)
                .with_for_update(skip_locked=True)
            )
            if self.after is not None:
                key = tuple_(WebhookAttempt.attempted_at, WebhookAttempt.id)
                query = query.where(key > tuple_(*self.after))
            rows = session.execute(query).all()
            doomed = [attempt_pk for attempt_pk, _, delivered in rows if delivered]
            removed = (
                _delete(session, delete(WebhookAttempt).where(WebhookAttempt.id.in_(doomed)))
                if doomed
                else 0
            )
        if rows:
            self.after = (rows[-1][1], rows[-1][0])
        self.report.delivered_attempts += removed
        return len(rows)


def _tombstones(settings: Settings, retention: Retention, report: PruneReport) -> int:
    """One batch of expired tombstones, in one transaction: returns how many it removed."""
    key = tuple_(PrunedJob.kind, PrunedJob.region, PrunedJob.job_id)
    chosen = (
        select(PrunedJob.kind, PrunedJob.region, PrunedJob.job_id)
        .where(retention.tombstone_goes())
        .order_by(PrunedJob.pruned_at)
        .limit(settings.prune_batch)
        .with_for_update(skip_locked=True)
    )
    with session_scope(settings) as session:
        keys = [tuple(row) for row in session.execute(chosen)]
        removed = _delete(session, delete(PrunedJob).where(key.in_(keys))) if keys else 0
    report.tombstones_expired += removed
    return removed


def _delete(session: Session, statement: Any) -> int:
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return int(getattr(result, "rowcount", 0) or 0)
