"""Retention: remove finished jobs (with their transitions, callbacks and attempts) past an age.

What is never removed: an active job; a job with a callback still pending; a job whose callback
failed for good less than the retention ago (counted from its last attempt, so it can still be
redelivered). Each removed job leaves a tombstone in ``pruned_jobs``, and a trigger skips any
INSERT of a tombstoned (kind, region, job_id), so enqueuing a pruned job again, by any way in,
neither tracks it twice nor sends a second callback.

Work goes in batches of ``JOBTRACKER_PRUNE_BATCH`` jobs, one short transaction each, so polls
and enqueues are never held up for long; on PostgreSQL a batch takes its rows ``FOR UPDATE SKIP
LOCKED``, so two trackers pruning at once take different rows. Optionally each batch is first
written to ``JOBTRACKER_ARCHIVE_DIR`` as gzipped JSON Lines (one job per line, with its history).
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobtracker.models import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    JobTransition,
    PrunedJob,
    TrackedJob,
    WebhookAttempt,
    WebhookDelivery,
)
from worker import clock
from worker.db import lock_for_write, session_scope
from worker.lifecycle import tally
from worker.settings import Settings

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass
class PruneReport:
    """What one run removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    #: Finished before this: eligible (None: job retention off).
    cutoff: datetime | None
    jobs: int = 0
    transitions: int = 0
    deliveries: int = 0
    attempts: int = 0
    #: Attempts of delivered callbacks removed ahead of their jobs.
    delivered_attempts: int = 0
    tombstones_expired: int = 0
    batches: int = 0
    seconds: float = 0.0
    #: True when the run stopped at its time budget with work left (the next run goes on).
    incomplete: bool = False
    archive: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return (
            self.jobs
            + self.transitions
            + self.deliveries
            + self.attempts
            + self.delivered_attempts
            + self.tombstones_expired
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        out["rows"] = self.rows
        out["seconds"] = round(self.seconds, 3)
        return out


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
    started = time.monotonic()
    now = now or clock.now(settings)
    if older_than_s is None and settings.retention_days > 0:
        older_than_s = settings.retention_days * DAY_S
    cutoff = now - timedelta(seconds=older_than_s) if older_than_s is not None else None
    report = PruneReport(dry_run=dry_run, cutoff=cutoff)

    def out_of_time() -> bool:
        if budget_s is not None and time.monotonic() - started > budget_s:
            report.incomplete = True
            return True
        return False

    if older_than_s is None:  # JOBTRACKER_RETENTION_DAYS=0 keeps everything
        return report
    if dry_run:
        with session_scope(settings) as session:
            _count(session, settings, report, now)
        report.seconds = time.monotonic() - started
        return report

    archive: _Archive | None = None
    try:
        if cutoff is not None:  # always, here; the check keeps mypy's narrowing
            if settings.archive_dir is not None:
                archive = _Archive(settings.archive_dir, now)
                report.archive = str(archive.path)
            with session_scope(settings) as session:
                kinds = tally.read(session).kinds()
            for kind in kinds:
                while not out_of_time():
                    with session_scope(settings) as session:
                        taken, removed = _prune_batch(
                            session, settings, kind, cutoff, now, report, archive
                        )
                    if removed:
                        report.batches += 1
                        report.kinds[kind] = report.kinds.get(kind, 0) + removed
                    if taken < settings.prune_batch:
                        break
                    if pause_s:
                        time.sleep(pause_s)
        attempt_cutoff = _attempt_cutoff(settings, now, older_than_s)
        after: tuple[datetime, int] | None = None
        while attempt_cutoff is not None and not out_of_time():
            with session_scope(settings) as session:
                seen, n, after = _prune_delivered_attempts(
                    session, attempt_cutoff, settings.prune_batch, after
                )
            report.delivered_attempts += n
            if seen < settings.prune_batch:
                break
            if pause_s:
                time.sleep(pause_s)
        if settings.tombstone_days > 0:
            tomb_cutoff = now - timedelta(seconds=settings.tombstone_days * DAY_S)
            while not out_of_time():
                with session_scope(settings) as session:
                    n = _expire_tombstones(session, tomb_cutoff, settings.prune_batch)
                report.tombstones_expired += n
                if n < settings.prune_batch:
                    break
    finally:
        if archive is not None:
            archive.close()
            if not archive.written:
                report.archive = None
    report.seconds = time.monotonic() - started
    if report.rows:
        log.info("pruned", extra={"prune": report.to_dict()})
    return report


def _attempt_cutoff(
    settings: Settings, now: datetime, older_than_s: float | None
) -> datetime | None:
    """Attempts of delivered callbacks go after ``JOBTRACKER_ATTEMPT_RETENTION_DAYS``, never
    later than their jobs; 0: with their jobs."""
    days = settings.attempt_retention_days
    if days <= 0 or older_than_s is None:
        return None
    return now - timedelta(seconds=min(days * DAY_S, older_than_s))


def _must_stay(failed_since: datetime) -> Any:
    """A callback that keeps its job: still pending, or failed for good since ``failed_since``
    (its last attempt; it may still be redelivered)."""
    return or_(
        WebhookDelivery.status == DeliveryStatus.PENDING.value,
        and_(
            WebhookDelivery.status == DeliveryStatus.FAILED.value,
            WebhookDelivery.updated_at >= failed_since,
        ),
    )


def _eligible(kind: str | None, cutoff: datetime, failed_since: datetime) -> list[Any]:
    """A finished job older than ``cutoff`` with no callback that must stay."""
    keep = exists().where(WebhookDelivery.tracked_job_id == TrackedJob.id, _must_stay(failed_since))
    conditions = [
        TrackedJob.finished_at.is_not(None),
        TrackedJob.finished_at < cutoff,
        TrackedJob.status.in_([s.value for s in TERMINAL_STATUSES]),
        ~keep,
    ]
    if kind is not None:
        conditions.insert(0, TrackedJob.kind == kind)
    return conditions


def _failed_since(settings: Settings, cutoff: datetime, now: datetime) -> datetime:
    """A failed callback is kept the retention from its last attempt, even when a shorter
    ``--older-than`` is asked for."""
    if settings.retention_days <= 0:
        return cutoff
    return min(cutoff, now - timedelta(seconds=settings.retention_days * DAY_S))


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


def _prune_batch(
    session: Session,
    settings: Settings,
    kind: str,
    cutoff: datetime,
    now: datetime,
    report: PruneReport,
    archive: _Archive | None,
) -> tuple[int, int]:
    """One transaction: returns how many jobs it chose, and how many of them it removed."""
    lock_for_write(session)  # SQLite: what is chosen stays true until it is deleted
    failed_since = _failed_since(settings, cutoff, now)
    # Whole rows only for the archive: the tombstones need eight columns, and building 500 ORM
    # objects with their results per batch made the pruner CPU-bound.
    columns: Sequence[Any] = (TrackedJob,) if archive is not None else _TOMBSTONE_COLUMNS
    chosen_rows = session.execute(
        select(*columns)
        .where(*_eligible(kind, cutoff, failed_since))
        .order_by(TrackedJob.finished_at)
        .limit(settings.prune_batch)
        .with_for_update(skip_locked=True)
    )
    jobs: list[Any] = list(chosen_rows.scalars() if archive is not None else chosen_rows)
    if not jobs:
        return 0, 0
    # The callbacks again, locked: a redelivery may have made one pending since the choice
    # (it changes the message, not the job, so the job's lock did not stop it).
    deliveries = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.tracked_job_id, _must_stay(failed_since))
        .where(WebhookDelivery.tracked_job_id.in_([job.id for job in jobs]))
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
        report.attempts += _delete(
            session, delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(delivery_ids))
        )
        report.deliveries += _delete(
            session, delete(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))
        )
    report.transitions += _delete(
        session, delete(JobTransition).where(JobTransition.tracked_job_id.in_(ids))
    )
    report.jobs += _delete(session, delete(TrackedJob).where(TrackedJob.id.in_(ids)))
    return chosen, len(ids)


def _delete(session: Session, statement: Any) -> int:
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return int(getattr(result, "rowcount", 0) or 0)


def _prune_delivered_attempts(
    session: Session, cutoff: datetime, limit: int, after: tuple[datetime, int] | None
) -> tuple[int, int, tuple[datetime, int] | None]:
    """The oldest attempts of delivered callbacks (their outcome is on the message already).

    Walks ``webhook_attempts`` by (attempted_at, id) from ``after``, ``limit`` rows at a time,
    so the old attempts of failed or pending callbacks, which stay, are read once per run and
    not again by every batch. Returns (rows examined, rows removed, where to go on from).
    """
    lock_for_write(session)
    key = tuple_(WebhookAttempt.attempted_at, WebhookAttempt.id)
    query = (
        select(
            WebhookAttempt.id,
            WebhookAttempt.attempted_at,
            exists().where(
                WebhookDelivery.id == WebhookAttempt.delivery_id,
                WebhookDelivery.status == DeliveryStatus.DELIVERED.value,
            ),
        )
        .where(WebhookAttempt.attempted_at < cutoff)
        .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if after is not None:
        query = query.where(key > tuple_(*after))
    rows = session.execute(query).all()
    if not rows:
        return 0, 0, after
    doomed = [attempt_pk for attempt_pk, _, delivered in rows if delivered]
    removed = (
        _delete(session, delete(WebhookAttempt).where(WebhookAttempt.id.in_(doomed)))
        if doomed
        else 0
    )
    return len(rows), removed, (rows[-1][1], rows[-1][0])


def _expire_tombstones(session: Session, cutoff: datetime, limit: int) -> int:
    key = tuple_(PrunedJob.kind, PrunedJob.region, PrunedJob.job_id)
    chosen = (
        select(PrunedJob.kind, PrunedJob.region, PrunedJob.job_id)
        .where(PrunedJob.pruned_at < cutoff)
        .order_by(PrunedJob.pruned_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    keys = [tuple(row) for row in session.execute(chosen)]
    if not keys:
        return 0
    return _delete(session, delete(PrunedJob).where(key.in_(keys)))


def _count(session: Session, settings: Settings, report: PruneReport, now: datetime) -> None:
    """What a run would remove now (one count per table: a dry run is an operator's question,
    not a periodic task)."""
    if report.cutoff is not None:
        failed_since = _failed_since(settings, report.cutoff, now)
        eligible = select(TrackedJob.id).where(*_eligible(None, report.cutoff, failed_since))
        report.jobs = _scalar(session, select(func.count()).select_from(eligible.subquery()))
        for kind, n in session.execute(
            select(TrackedJob.kind, func.count())
            .where(*_eligible(None, report.cutoff, failed_since))
            .group_by(TrackedJob.kind)
        ):
            report.kinds[kind] = int(n)
        ids = eligible.scalar_subquery()
        report.transitions = _scalar(
            session,
            select(func.count()).where(JobTransition.tracked_job_id.in_(ids)),
        )
        deliveries = select(WebhookDelivery.id).where(WebhookDelivery.tracked_job_id.in_(ids))
        report.deliveries = _scalar(
            session, select(func.count()).select_from(deliveries.subquery())
        )
        report.attempts = _scalar(
            session,
            select(func.count()).where(
                WebhookAttempt.delivery_id.in_(deliveries.scalar_subquery())
            ),
        )
    attempt_cutoff = _attempt_cutoff(settings, now, _age_s(report.cutoff, now))
    if attempt_cutoff is not None:
        delivered = [
            WebhookAttempt.attempted_at < attempt_cutoff,
            WebhookDelivery.status == DeliveryStatus.DELIVERED.value,
        ]
        if report.cutoff is not None:
            # Those of jobs removed anyway are counted once, with their jobs.
            delivered.append(
                WebhookDelivery.tracked_job_id.not_in(
                    select(TrackedJob.id).where(*_eligible(None, report.cutoff, failed_since))
                )
            )
        report.delivered_attempts = _scalar(
            session,
            select(func.count())
            .select_from(WebhookAttempt)
            .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
            .where(*delivered),
        )
    if settings.tombstone_days > 0:
        report.tombstones_expired = _scalar(
            session,
            select(func.count()).where(
                PrunedJob.pruned_at < now - timedelta(seconds=settings.tombstone_days * DAY_S)
            ),
        )


def _age_s(cutoff: datetime | None, now: datetime) -> float | None:
    return None if cutoff is None else (now - cutoff).total_seconds()


def _scalar(session: Session, query: Any) -> int:
    return int(session.execute(query).scalar_one() or 0)


class _Archive:
    """Pruned rows as gzipped JSON Lines, written before the batch that deletes them commits
    (a batch that then fails leaves lines for rows still in the table: an audit may see a job
    twice, never miss one)."""

    def __init__(self, folder: Path, now: datetime) -> None:
        self.folder = folder
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        # Two runs in one second (two trackers, or a run and the CLI) must not share a file.
        self.path = folder / f"pruned-{stamp}-{uuid.uuid4().hex[:8]}.jsonl.gz"
        self._file: gzip.GzipFile | None = None

    def write(self, session: Session, jobs: Sequence[TrackedJob], delivery_ids: list[str]) -> None:
        ids = [job.id for job in jobs]
        transitions: dict[int, list[dict[str, Any]]] = {}
        for t in session.execute(
            select(JobTransition)
            .where(JobTransition.tracked_job_id.in_(ids))
            .order_by(JobTransition.id)
        ).scalars():
            transitions.setdefault(t.tracked_job_id, []).append(t.to_dict())
        attempts: dict[str, list[WebhookAttempt]] = {}
        deliveries: dict[int, list[dict[str, Any]]] = {}
        if delivery_ids:
            for a in session.execute(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id.in_(delivery_ids))
                .order_by(WebhookAttempt.id)
            ).scalars():
                attempts.setdefault(a.delivery_id, []).append(a)
            for d in session.execute(
                select(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))
            ).scalars():
                deliveries.setdefault(d.tracked_job_id, []).append(
                    d.to_dict(attempts=attempts.get(d.id, []), payload=True)
                )
        lines = [
            json.dumps(
                {
                    "job": job.to_dict(),
                    "transitions": transitions.get(job.id, []),
                    "deliveries": deliveries.get(job.id, []),
                },
                ensure_ascii=False,
                separators=(",", ":"),
                default=str,
            )
            for job in jobs
        ]
        if self._file is None:  # created at the first batch: a run with nothing leaves nothing
            self.folder.mkdir(parents=True, exist_ok=True)
            # Open across batches (closed by close()): one gzip member per run.
            self._file = gzip.GzipFile(self.path, "xb")
        self._file.write(("\n".join(lines) + "\n").encode())
        self._file.flush()

    @property
    def written(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
