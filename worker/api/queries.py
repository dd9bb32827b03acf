"""The database work behind the routes. Plain blocking functions: the routes run them on worker
threads (``anyio.to_thread``), so the event loop only ever waits on sockets.

Who may see what is decided here, once: a client sees and redelivers only the jobs it enqueued,
an ``admin`` client every job. A job another client owns is "not found", exactly like a job that
does not exist, so its existence is not disclosed either. Of its callbacks' attempts a non-admin
client sees the error class and the status code only (:func:`shown_attempt`): what a receiver
answered, or how a connection failed, would let a client read or map whatever its callback URL
reaches.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from jobtracker.models import TERMINAL_STATUSES, TrackedJob, WebhookAttempt, WebhookDelivery
from worker import clock
from worker.api.errors import ApiError
from worker.api.schemas import ATTEMPTS_SHOWN
from worker.clients.networks import client_reach
from worker.clients.registry import Caller, authenticate
from worker.db import get_engine, session_scope
from worker.errors import EnqueueError, NotFoundError, UnsafeCallbackURL
from worker.flow.deliver import redeliver
from worker.flow.enqueue import EnqueueRequest, insert_job
from worker.inspection.queries import attempts_page, expand_statuses, job_detail, parse_time
from worker.runtime.migrate import current_revision
from worker.settings import Settings
from worker.webhooks.urls import validate_callback_url

NOT_FOUND = "no such job"
#: What a cursor's text starts with, for each kind of row it pages.
JOB_CURSOR = "v1:"
ATTEMPT_CURSOR = "a1:"

#: Tries of an enqueue that lost a race with the retention (see :func:`enqueue`).
_PRUNE_RACE_TRIES = 3


def identify(settings: Settings, token: str) -> Caller | None:
    with get_engine(settings).connect() as conn:
        return authenticate(conn, token, now=clock.now(settings))


def _visible(caller: Caller, job: TrackedJob | None) -> TrackedJob:
    if job is None or not (caller.admin or job.client_id == caller.id):
        raise ApiError(404, NOT_FOUND)
    return job


def enqueue(
    settings: Settings, caller: Caller, request: EnqueueRequest
) -> tuple[dict[str, Any], bool]:
    """Store the job for ``caller``; return it and whether it is new.

    The same client asking again gets its job back (idempotent). A job tracked for another
    client, or enqueued another way, is a conflict, and the answer says nothing more of it.
    """
    for _ in range(_PRUNE_RACE_TRIES):
        try:
            with session_scope(settings) as session:
                if request.callback_url is not None and not caller.admin:
                    _check_reach(session, caller, request.callback_url)
                job, created = insert_job(
                    session,
                    request,
                    deadline_s=settings.job_deadline_s,
                    now=clock.now(settings),
                    client_id=caller.id,
                )
                if not created and job.client_id != caller.id and not caller.admin:
                    raise ApiError(
                        409,
                        "this (kind, region, job_id) is already tracked for someone else",
                        code="already_tracked",
                    )
                return job.to_dict(), created
        except EnqueueError:
            # The retention removed the job, then its tombstone, between our insert and our
            # read: neither is there now, so a new transaction tracks it afresh.
            continue
    raise ApiError(
        409,
        "the retention is removing this job right now; retry",
        code="being_pruned",
        headers={"Retry-After": "1"},
    )


def _check_reach(session: Session, caller: Caller, url: str) -> None:
    """A literal address the client's callbacks may not reach is refused now; a host name is
    checked at each attempt, against every address it resolves to then."""
    try:
        validate_callback_url(url, client_reach(session, caller.id))
    except UnsafeCallbackURL as exc:
        raise ApiError(422, f"callback_url: {exc.message}", field="callback_url") from None


def shown_attempt(caller: Caller, attempt: dict[str, Any]) -> dict[str, Any]:
    """An attempt as ``caller`` may see it: an admin everything; another client its
    ``error_class`` and ``status_code``, never the receiver's answer (``response_body``) or the
    error's text (``error_message``)."""
    if caller.admin:
        return attempt
    return {**attempt, "error_message": None, "response_body": None}


def shown_delivery(
    caller: Caller, delivery: dict[str, Any], *, last_class: str | None = None
) -> dict[str, Any]:
    """A callback message as ``caller`` may see it: its attempts through :func:`shown_attempt`,
    and for a non-admin ``last_error`` is the last attempt's class (``last_class`` when the
    attempt log is not in ``delivery``)."""
    if caller.admin:
        return delivery
    shown = dict(delivery)
    log = shown.get("attempt_log")
    if log is not None:
        shown["attempt_log"] = [shown_attempt(caller, a) for a in log]
        last_class = log[-1]["error_class"] if log else None
    if shown.get("last_error") is not None:
        shown["last_error"] = last_class
    return shown


def detail(settings: Settings, caller: Caller, job_pk: int) -> dict[str, Any]:
    """The job with its transitions and callbacks, each with its newest attempts (at most
    :data:`ATTEMPTS_SHOWN`: a message redelivered in a loop must not make this unbounded) and
    the cursor of the older ones."""
    with session_scope(settings) as session:
        job = _visible(caller, session.get(TrackedJob, job_pk))
        found = job_detail(session, job, attempts_shown=ATTEMPTS_SHOWN)
    for delivery in found["deliveries"]:
        older = delivery.pop("older_attempts")
        oldest_shown = delivery["attempt_log"][0]["id"] if older else None
        delivery["attempt_log_next_cursor"] = (
            None if oldest_shown is None else encode_cursor(oldest_shown, ATTEMPT_CURSOR)
        )
    found["deliveries"] = [shown_delivery(caller, d) for d in found["deliveries"]]
    return found


def attempts(
    settings: Settings, caller: Caller, delivery_id: str, cursor: str | None, limit: int
) -> dict[str, Any]:
    """A page of one of the caller's messages' attempts, newest first."""
    before_id = None if cursor is None else decode_cursor(cursor, ATTEMPT_CURSOR)
    with session_scope(settings) as session:
        _owned_delivery(session, caller, delivery_id)
        rows = attempts_page(session, delivery_id, limit=limit + 1, before_id=before_id)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "attempts": [shown_attempt(caller, attempt.to_dict()) for attempt in rows],
        "next_cursor": encode_cursor(rows[-1].id, ATTEMPT_CURSOR) if more else None,
    }


def find(settings: Settings, caller: Caller, kind: str, region: str, job_id: str) -> int:
    """The tracked id of (kind, region, job_id), if the caller may see it."""
    with session_scope(settings) as session:
        job = session.execute(
            select(TrackedJob).where(
                TrackedJob.kind == kind, TrackedJob.region == region, TrackedJob.job_id == job_id
            )
        ).scalar_one_or_none()
        return _visible(caller, job).id


def is_active(settings: Settings, job_pk: int) -> bool:
    with session_scope(settings) as session:
        status = session.execute(
            select(TrackedJob.status).where(TrackedJob.id == job_pk)
        ).scalar_one_or_none()
    return status is not None and status not in {s.value for s in TERMINAL_STATUSES}


@dataclass(frozen=True)
class PageQuery:
    statuses: Sequence[str] = ()
    kinds: Sequence[str] = ()
    #: ``?since=`` as sent: an age before the database's now, or a time (:func:`parse_time`).
    since: str | None = None
    #: Only jobs older (smaller id) than this one: the previous page's last.
    before_id: int | None = None
    limit: int = 50


def encode_cursor(pk: int, prefix: str = JOB_CURSOR) -> str:
    """An opaque cursor for the rows below ``pk`` (``prefix``: which kind of row)."""
    return base64.urlsafe_b64encode(f"{prefix}{pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, prefix: str = JOB_CURSOR) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    number = raw.removeprefix(prefix)
    if (
        not raw.startswith(prefix)
        or not number.isascii()
        or not number.isdigit()
        or len(number) > 18
    ):
        raise ApiError(
            422, "cursor: not a cursor this API gave (use next_cursor as is)", field="cursor"
        )
    return int(number)


def page(settings: Settings, caller: Caller, query: PageQuery) -> dict[str, Any]:
    """Jobs newest first (by id), ``limit`` at a time, continuing below ``before_id``.

    Keyset pagination on the primary key: a page is the next ``limit`` ids below the cursor,
    so jobs inserted meanwhile (higher ids) never shift a later page, and no job is seen twice.
    """
    stmt = select(TrackedJob)
    if not caller.admin:
        stmt = stmt.where(TrackedJob.client_id == caller.id)
    if query.statuses:
        stmt = stmt.where(TrackedJob.status.in_(expand_statuses(query.statuses)))
    if query.kinds:
        stmt = stmt.where(TrackedJob.kind.in_(list(query.kinds)))
    if query.since is not None:
        stmt = stmt.where(TrackedJob.created_at >= _since(settings, query.since))
    if query.before_id is not None:
        stmt = stmt.where(TrackedJob.id < query.before_id)
    stmt = stmt.order_by(TrackedJob.id.desc()).limit(query.limit + 1)
    with session_scope(settings) as session:
        jobs = list(session.execute(stmt).scalars())
        more = len(jobs) > query.limit
        jobs = jobs[: query.limit]
        return {
            "jobs": [job.to_dict() for job in jobs],
            "next_cursor": encode_cursor(jobs[-1].id) if more else None,
        }


def _since(settings: Settings, text: str) -> datetime:
    # The database's clock, as the rows' created_at: a host clock that is off would shift it.
    try:
        return parse_time(text, now=clock.now(settings))
    except ValueError as exc:
        raise ApiError(422, f"since: {exc}", field="since") from None


def redeliver_for(settings: Settings, caller: Caller, delivery_id: str) -> dict[str, Any]:
    """Make one of the caller's callback messages due now; the worker's sweep sends it."""
    with session_scope(settings) as session:
        _owned_delivery(session, caller, delivery_id)
        last_class = session.execute(
            select(WebhookAttempt.error_class)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    try:
        delivery = redeliver(settings, delivery_id)
    except NotFoundError:  # the retention removed it since the ownership check
        raise ApiError(404, "no such delivery") from None
    return shown_delivery(caller, delivery.to_dict(), last_class=last_class)


def _owned_delivery(session: Session, caller: Caller, delivery_id: str) -> None:
    row = session.execute(
        select(TrackedJob.client_id)
        .join(WebhookDelivery, WebhookDelivery.tracked_job_id == TrackedJob.id)
        .where(WebhookDelivery.id == delivery_id)
    ).first()
    if row is None or not (caller.admin or row.client_id == caller.id):
        raise ApiError(404, "no such delivery")


def readiness(settings: Settings, head: str | None) -> str | None:
    """None when the database answers and is at ``head``; else what is wrong."""
    with session_scope(settings) as session:
        session.execute(text("SELECT 1"))
    current = current_revision(settings)
    if current != head:
        return (
            f"the database is at revision {current or 'none (empty)'}, this jobtracker needs "
            f"{head}: run `jobtracker db upgrade`"
        )
    return None
