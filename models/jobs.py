"""Tracked jobs and the transition log (the status enum and its transitions: ``status``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from itertools import pairwise
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
    or_,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from jobtracker.models.base import Base, JSONType, UTCDateTime
from jobtracker.models.status import ACTIVE_STATUSES, JobStatus


def _sql_list(statuses: frozenset[JobStatus]) -> str:
    return ", ".join(f"'{s.value}'" for s in sorted(statuses))


#: The one source of the partial index predicate: rows the tick may still claim.
ACTIVE_PREDICATE = text(f"status IN ({_sql_list(ACTIVE_STATUSES)})")
#: Finished rows (the learning of durations reads the newest through an index on this).
FINISHED_PREDICATE = text("finished_at IS NOT NULL")
#: Active rows inserted without a deadline (plain SQL): the tick gives them one.
NO_DEADLINE_PREDICATE = text(f"deadline_at IS NULL AND status IN ({_sql_list(ACTIVE_STATUSES)})")


def unknown_kind(known: Iterable[str]) -> ColumnElement[bool]:
    """``kind NOT IN known``, written as the ranges between the known kinds, so the database
    reads only the index entries of unknown kinds (a NOT IN would read every active row)."""
    kinds = sorted(known)
    column = TrackedJob.kind
    ranges = [column < kinds[0], column > kinds[-1]]
    ranges += [and_(column > a, column < b) for a, b in pairwise(kinds)]
    return or_(*ranges)


class TrackedJob(Base):
    """One provider job that jobtracker polls until it reaches a terminal status."""

    __tablename__ = "tracked_jobs"
    __table_args__ = (
        UniqueConstraint("kind", "region", "job_id"),
        CheckConstraint(f"status IN ({_sql_list(frozenset(JobStatus))})", name="status"),
        CheckConstraint("length(job_id) BETWEEN 1 AND 128", name="job_id_length"),
        CheckConstraint("polls >= 0", name="polls_non_negative"),
        CheckConstraint(
            f"(finished_at IS NULL) = (status IN ({_sql_list(ACTIVE_STATUSES)}))",
            name="finished_iff_terminal",
        ),
        # The tick's claim reads only this index: due rows of one kind that are not terminal.
        Index(
            "ix_tracked_jobs_due",
            "kind",
            "next_poll_at",
            postgresql_where=ACTIVE_PREDICATE,
            sqlite_where=ACTIVE_PREDICATE,
        ),
        # Expiring the jobs of a provider that cannot be asked (paused, throttled).
        Index(
            "ix_tracked_jobs_deadline",
            "kind",
            "deadline_at",
            postgresql_where=ACTIVE_PREDICATE,
            sqlite_where=ACTIVE_PREDICATE,
        ),
        Index(
            "ix_tracked_jobs_no_deadline",
            "id",
            postgresql_where=NO_DEADLINE_PREDICATE,
            sqlite_where=NO_DEADLINE_PREDICATE,
        ),
        Index("ix_tracked_jobs_created_at", "created_at"),
        # The oldest active job of a (kind, status), for gauges: one index seek, not a scan.
        Index(
            "ix_tracked_jobs_active_created",
            "kind",
            "status",
            "created_at",
            postgresql_where=ACTIVE_PREDICATE,
            sqlite_where=ACTIVE_PREDICATE,
        ),
        # The newest finished jobs of a kind: what the adaptive schedule learns from.
        Index(
            "ix_tracked_jobs_finished",
            "kind",
            "finished_at",
            postgresql_where=FINISHED_PREDICATE,
            sqlite_where=FINISHED_PREDICATE,
        ),
        # A client's jobs, newest first (the API's pages).
        Index("ix_tracked_jobs_client_id", "client_id", "id"),
        # The rules a row must keep (known kind, region name, metadata object, http(s) callback
        # URL, JobId without blanks) are CHECK constraints on PostgreSQL and triggers on SQLite:
        # see migrations/rules.py and migrations/versions/0002_table_rules.py.
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(64), server_default="ap-guangzhou")
    job_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), server_default=JobStatus.PENDING.value)
    #: The provider's own status value, verbatim (``7``, ``RUN``...).
    provider_status: Mapped[str | None] = mapped_column(String(64))
    #: Why the job failed (terminal statuses only).
    error_code: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    result_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    callback_url: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, server_default=text("'{}'"))
    polls: Mapped[int] = mapped_column(Integer, server_default="0")
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_poll_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    #: When the provider last answered that the job had not finished (its true finish lies
    #: between this and ``finished_at``: the detection bound).
    last_unfinished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The caller's hint of how long the job takes, in seconds (the schedule uses it).
    expected_duration_s: Mapped[float | None] = mapped_column(Float(precision=53))
    #: When the job becomes ``expired``; NULL means created_at + JOBTRACKER_JOB_DEADLINE.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A worker holds the row until then (a claim); an expired lease may be claimed again.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The last non-terminal poll error (transient or configuration), for operators.
    last_error_code: Mapped[str | None] = mapped_column(String(128))
    last_error_message: Mapped[str | None] = mapped_column(Text)
    #: Poll errors in a row; reset by a good answer. Drives the harder backoff.
    consecutive_errors: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The service API client that enqueued the job; NULL for the other ways in.
    client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))

    transitions: Mapped[list[JobTransition]] = relationship(
        back_populates="job", order_by="JobTransition.id", passive_deletes=True
    )

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    def to_dict(self) -> dict[str, Any]:
        """The job as users see it (CLI output, webhook ``data``)."""

        def ts(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "kind": self.kind,
            "region": self.region,
            "job_id": self.job_id,
            "status": self.status,
            "provider_status": self.provider_status,
            "error": (
                {"code": self.error_code, "message": self.error_message}
                if self.error_code or self.error_message
                else None
            ),
            "result": self.result,
            "result_expires_at": ts(self.result_expires_at),
            "callback_url": self.callback_url,
            "metadata": self.meta if self.meta is not None else {},
            "polls": self.polls,
            "last_error": (
                {"code": self.last_error_code, "message": self.last_error_message}
                if self.last_error_code
                else None
            ),
            "created_at": ts(self.created_at),
            "updated_at": ts(self.updated_at),
            "last_polled_at": ts(self.last_polled_at),
            "next_poll_at": ts(self.next_poll_at) if not self.job_status.is_terminal else None,
            "deadline_at": ts(self.deadline_at),
            "expected_duration_s": self.expected_duration_s,
            "last_unfinished_at": ts(self.last_unfinished_at),
            "finished_at": ts(self.finished_at),
            "client_id": self.client_id,
        }


class JobTransition(Base):
    """One status change of a tracked job, written in the transaction that made it."""

    __tablename__ = "job_transitions"
    __table_args__ = (
        CheckConstraint(f"to_status IN ({_sql_list(frozenset(JobStatus))})", name="to_status"),
        Index("ix_job_transitions_tracked_job_id", "tracked_job_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tracked_job_id: Mapped[int] = mapped_column(ForeignKey("tracked_jobs.id", ondelete="CASCADE"))
    from_status: Mapped[str] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    provider_status: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    #: Why, for transitions jobtracker made itself (deadline) or errors that ended the job.
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())

    job: Mapped[TrackedJob] = relationship(back_populates="transitions")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "provider_status": self.provider_status,
            "request_id": self.request_id,
            "reason": self.reason,
            "at": self.at.isoformat(),
        }
