"""The one place a job's status changes.

:func:`transition_many` moves jobs with a compare-and-set UPDATE each (``WHERE id = :id AND
status = :from``), then writes their ``job_transitions`` rows and, for terminal statuses with a
callback URL, their ``webhook_deliveries`` rows (the outbox), all in the caller's transaction:
either all of it commits or none of it does. It also logs each move (the one "job X -> Y" line)
and hands the new callback messages to delivery once the transaction commits. :func:`expiry` is
the one place an ``expired`` move is built, whoever gives up on the job.

The statements are built once with bound parameters (building an UPDATE of twenty columns per
poll cost more CPU than the database round trip), and the history and outbox rows of a batch go
in one executemany each.

On PostgreSQL a batch that ends jobs also sends ``NOTIFY jobtracker_terminal`` with their ids, in
the same transaction: PostgreSQL delivers it only if and when the transaction commits, so a
listener (the service API's ``?wait=``) learns of a terminal status exactly when it is visible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from jobtracker.models import JobStatus, JobTransition, TrackedJob, WebhookDelivery, can_transition
from worker.errors import InvalidTransition
from worker.flow.deliver import Route, route, send_after_commit
from worker.flow.outbox import delivery_row
from worker.observe import metrics

log = logging.getLogger(__name__)


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


#: ``tracked_jobs`` as a Core table, for statements built once.
JOBS = _table(TrackedJob)
#: Columns a transition may set besides ``status`` / ``updated_at``; the ORM attribute names.
WRITABLE = (
    "provider_status",
    "error_code",
    "error_message",
    "result",
    "result_expires_at",
    "polls",
    "last_polled_at",
    "next_poll_at",
    "deadline_at",
    "lease_expires_at",
    "last_error_code",
    "last_error_message",
    "consecutive_errors",
    "last_unfinished_at",
    "finished_at",
)
_MOVE = (
    update(JOBS)
    .where(
        JOBS.c.id == bindparam("m_id"),
        JOBS.c.status == bindparam("m_from"),
        # The mover still holds the lease it had (or no lease was held): a batch whose lease
        # ran out and was claimed again loses to the new holder.
        JOBS.c.lease_expires_at.is_not_distinct_from(bindparam("m_lease")),
    )
    .values(
        status=bindparam("m_to"),
        updated_at=bindparam("m_now"),
        **{name: bindparam(f"m_{name}") for name in WRITABLE},
    )
)
_ATTRIBUTES = tuple(attr.key for attr in sa_inspect(TrackedJob).column_attrs)
_RECORD = insert(_table(JobTransition))
_OUTBOX = insert(_table(WebhookDelivery))


#: The PostgreSQL channel told the ids (comma-separated) of the jobs a transaction ended.
TERMINAL_CHANNEL = "jobtracker_terminal"
#: NOTIFY payloads must stay under 8000 bytes.
_NOTIFY_CHUNK_CHARS = 7000
_NOTIFY = select(func.pg_notify(TERMINAL_CHANNEL, bindparam("ids")))

#: The ``error_code`` of a job jobtracker gave up on (DESIGN.md: ``expired``).
DEADLINE_CODE = "Tracker.DeadlineExceeded"


def expiry(deadline: datetime, why: str = "deadline passed") -> tuple[str, dict[str, Any]]:
    """The ``reason`` and column values of a move to ``expired`` at ``deadline``."""
    return why, {
        "deadline_at": deadline,
        "error_code": DEADLINE_CODE,
        "error_message": f"no terminal answer by the deadline {deadline.isoformat()}; {why}",
    }


@dataclass(frozen=True)
class Move:
    """One requested status change of a job this worker holds (``job`` as it was loaded)."""

    job: TrackedJob
    to_status: JobStatus
    provider_status: str | None = None
    request_id: str | None = None
    reason: str | None = None
    #: Further columns to set in the same UPDATE (result, error, poll counters...).
    values: dict[str, Any] = field(default_factory=dict)
    #: The lease the mover holds on the job (None: it holds none, and nobody else may either).
    lease: datetime | None = None


@dataclass(frozen=True)
class TransitionResult:
    job: TrackedJob
    from_status: JobStatus
    #: The outbox message written with the transition, to send after commit.
    delivery_id: str | None


def _moved(
    job: TrackedJob, columns: dict[str, Any], status: JobStatus, now: datetime
) -> TrackedJob:
    """A detached copy of ``job`` as the UPDATE left it (the caller's object stays as loaded,
    so a rolled-back batch can be written again)."""
    copy = TrackedJob(**{name: getattr(job, name) for name in _ATTRIBUTES})
    for name, value in columns.items():
        setattr(copy, name, value)
    copy.status, copy.updated_at = status.value, now
    return copy


def transition_many(
    session: Session, moves: list[Move], *, now: datetime
) -> tuple[list[TransitionResult], list[Move]]:
    """Apply ``moves``; return the applied ones and the conflicts (status changed under us).

    Each result carries a copy of its job as the UPDATE left it. Raises
    :class:`InvalidTransition` if the table of allowed transitions forbids a move.
    """
    conn = session.connection()
    applied: list[TransitionResult] = []
    conflicts: list[Move] = []
    history: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    routes: dict[str, Route] = {}
    for move in moves:
        job, from_status = move.job, move.job.job_status
        if not can_transition(from_status, move.to_status):
            raise InvalidTransition(
                f"job {job.id}: {from_status} -> {move.to_status} is not allowed"
            )
        columns = {name: getattr(job, name) for name in WRITABLE}
        columns.update(move.values)
        if move.provider_status is not None:
            columns["provider_status"] = move.provider_status
        if move.to_status.is_terminal:
            # finished_at: when the end was seen, if the mover knows (a poll), else now.
            columns.update(finished_at=move.values.get("finished_at") or now, lease_expires_at=None)
        params = {f"m_{name}": value for name, value in columns.items()}
        params.update(
            m_id=job.id,
            m_from=from_status.value,
            m_to=move.to_status.value,
            m_now=now,
            m_lease=move.lease,
        )
        if conn.execute(_MOVE, params).rowcount != 1:
            conflicts.append(move)
            continue
        job = _moved(job, columns, move.to_status, now)
        history.append(
            {
                "tracked_job_id": job.id,
                "from_status": from_status.value,
                "to_status": move.to_status.value,
                "provider_status": move.provider_status,
                "request_id": move.request_id,
                "reason": move.reason,
                "at": now,
            }
        )
        delivery_id = None
        if move.to_status.is_terminal and job.callback_url:
            row = delivery_row(job, now=now)
            outbox.append(row)
            delivery_id = row["id"]
            routes[delivery_id] = route(job.callback_url, job.client_id)
        applied.append(TransitionResult(job=job, from_status=from_status, delivery_id=delivery_id))
        _log_move(job, from_status, move.reason)
        if move.to_status.is_terminal and move.to_status is not JobStatus.EXPIRED:
            before = job.last_unfinished_at or job.created_at
            ended = job.finished_at or now
            metrics.record_finish(job.kind, job.polls, (ended - before).total_seconds())
    if history:
        conn.execute(_RECORD, history)
    if outbox:
        conn.execute(_OUTBOX, outbox)
        send_after_commit(session, [row["id"] for row in outbox], routes=routes)
    _notify_terminal(conn, [r.job.id for r in applied if r.job.job_status.is_terminal])
    return applied, conflicts


def _notify_terminal(conn: Connection, job_ids: list[int]) -> None:
    """Tell listeners which jobs this transaction ends, once it commits (PostgreSQL only)."""
    if not job_ids or conn.dialect.name != "postgresql":
        return
    chunks: list[list[str]] = [[]]
    size = 0
    for job_id in map(str, job_ids):
        if size + len(job_id) + 1 > _NOTIFY_CHUNK_CHARS:
            chunks.append([])
            size = 0
        chunks[-1].append(job_id)
        size += len(job_id) + 1
    for chunk in chunks:
        conn.execute(_NOTIFY, {"ids": ",".join(chunk)})


def _log_move(job: TrackedJob, from_status: JobStatus, reason: str | None) -> None:
    log.info(
        "job %s -> %s%s",
        from_status.value,
        job.status,
        f" ({reason})" if reason else "",
        extra={
            "kind": job.kind,
            "job_id": job.job_id,
            "tracked_job_id": job.id,
            "status": job.status,
        },
    )
