"""What keeps the tables small and their totals cheap: tombstones of pruned jobs, and the tally
of rows per (kind, status) that metrics and ``jobtracker stats`` read instead of counting.

Both are kept by the database itself (triggers, installed by migration 0006), so a plain SQL
INSERT, UPDATE or DELETE is counted, and a plain SQL INSERT of a pruned job is skipped, exactly
like the tracker's own writes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from jobtracker.models.base import Base, UTCDateTime
from jobtracker.models.jobs import TrackedJob

#: SQLite only makes an INTEGER PRIMARY KEY its rowid (autoincrementing); PostgreSQL gets 64 bits.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class PrunedJob(Base):
    """What is left of a job the retention pruned: enough to keep enqueue idempotent (enqueuing
    it again neither tracks it twice nor sends a second callback) and to say how it ended."""

    __tablename__ = "pruned_jobs"
    __table_args__ = (Index("ix_pruned_jobs_pruned_at", "pruned_at"),)

    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: The ``tracked_jobs.id`` it had.
    tracked_job_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    #: The service API client that had enqueued it (no foreign key: clients outlive nothing here).
    client_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())

    def to_dict(self) -> dict[str, Any]:
        """The job as far as it is still known, in the shape of ``TrackedJob.to_dict`` (what
        is gone is null), plus ``pruned_at``."""
        # A transient row, never added to a session: only to share the one rendering of a job.
        known = TrackedJob(
            id=self.tracked_job_id,
            kind=self.kind,
            region=self.region,
            job_id=self.job_id,
            status=self.status,
            meta={},
            created_at=self.created_at,
            updated_at=self.pruned_at,
            finished_at=self.finished_at,
            client_id=self.client_id,
        )
        return {**known.to_dict(), "pruned_at": self.pruned_at.isoformat()}


class RowTally(Base):
    """Changes to the number of rows per (table, kind, status), appended by triggers.

    Appending instead of updating one row per (kind, status) keeps concurrent writers from
    queueing on a counter row's lock. The total is the sum of a subject's rows; a periodic
    compaction (:mod:`worker.lifecycle.tally`) folds them into one row per key, so a read sums
    a few rows whatever the size of the tables.
    """

    __tablename__ = "row_tallies"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    #: ``job`` (tracked_jobs) or ``delivery`` (webhook_deliveries).
    subject: Mapped[str] = mapped_column(String(16))
    #: The job's kind; empty for deliveries.
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(BigInteger)
    #: Sum of ``polls`` over finished jobs (0 for active ones and deliveries).
    polls: Mapped[int] = mapped_column(BigInteger)
    #: Finished jobs whose detection bound is known (``last_unfinished_at`` set)...
    bounded: Mapped[int] = mapped_column(BigInteger)
    #: ... and the sum of those bounds (``finished_at - last_unfinished_at``), in seconds.
    bound_s: Mapped[float] = mapped_column(Float(precision=53))
