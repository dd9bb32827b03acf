"""Callback delivery: send due messages, record every attempt, schedule the next one.

:func:`deliver_soon` hands messages to this process's delivery threads (not the broker: a
callback must not queue behind poll batches waiting for rate-limit slots), which
:class:`~worker.flow.dispatch.Dispatcher` shares fairly between receivers and API clients.
Each attempt first asks the destination's circuit breaker (:mod:`worker.flow.breakers`): a
message skipped by an open one gets no attempt and is due again later. :func:`deliver_one`
claims one message under a short lease (two senders never post it at once), makes one attempt
with :func:`worker.webhooks.send.send` to where its job may reach
(:func:`worker.clients.networks.job_reach`), logs it in ``webhook_attempts`` and schedules the
next one from :class:`~worker.policy.DeliveryPolicy`. :func:`sweep` hands out messages whose
first send was lost (crash, no room) or whose retry is due. :func:`refuse_unreachable` fails at
once the pending messages whose URL is no longer allowed. Delivery is at-least-once with a
stable ``webhook-id``; receivers deduplicate on it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import ColumnElement, Table, bindparam, case, event, insert, or_, select, update
from sqlalchemy.orm import Session

from jobtracker.models import (
    ApiClient,
    DeliveryStatus,
    TrackedJob,
    WebhookAttempt,
    WebhookDelivery,
)
from worker import clock
from worker.clients.networks import job_reach, owner_reach
from worker.clients.registry import callback_secrets
from worker.db import session_scope
from worker.errors import NoClientSecretKey, NotFoundError, UnsafeCallbackURL
from worker.flow import breakers
from worker.flow.dispatch import NOTHING, Dispatcher, Refusal, Ticket, Verdict
from worker.flow.leases import claim
from worker.observe import metrics
from worker.observe.logs import log_context
from worker.policy import DeliveryPolicy
from worker.settings import Settings
from worker.webhooks.classify import AttemptError
from worker.webhooks.send import AttemptOutcome, refuse, send
from worker.webhooks.signing import encode_body
from worker.webhooks.transport import make_session
from worker.webhooks.urls import CallbackResolutionError, Reach, destination, resolve_callback_url

log = logging.getLogger(__name__)

#: How many due messages one sweep hands out.
SWEEP_LIMIT = 500
#: ``Session.info`` key of the messages waiting for their transaction to commit.
_WAITING = "jobtracker_deliveries_waiting"

_local = threading.local()


def _outbox() -> Table:
    table = WebhookDelivery.__table__
    assert isinstance(table, Table)
    return table


#: ``webhook_deliveries`` as a Core table, for executemany updates.
_OUTBOX = _outbox()


def _http() -> requests.Session:
    """One pinned-address session per thread, so a worker thread reuses its connections."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = make_session()
    return session


#: (destination ``host:port``, API client id) of a message: what the delivery threads share by.
Route = tuple[str, int | None]

_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def dispatcher(settings: Settings) -> Dispatcher:
    """This process's delivery threads (started on first use)."""
    global _dispatcher
    with _dispatcher_lock:
        if _dispatcher is None:
            _dispatcher = Dispatcher(
                DeliveryPolicy.from_settings(settings), run=_run, refused=_leave_for_later
            )
        return _dispatcher


def route(url: str | None, client_id: int | None) -> Route:
    """Where a message goes and whose it is, as the delivery threads count them."""
    where = destination(url) if url else None
    return (breakers.key(where) if where else "", client_id)


def deliver_soon(
    delivery_ids: Iterable[str],
    settings: Settings,
    *,
    lease: datetime | None = None,
    routes: Mapping[str, Route] | None = None,
) -> None:
    """Send messages now, on this process's delivery threads.

    Not through the broker: a callback must not queue behind poll batches that wait for
    rate-limit slots. ``lease`` is the sweep's reservation of these messages; ``routes`` their
    destinations and owners where the caller knows them (the others are read). A message the
    threads have no room for, or whose destination's breaker is open, stays in the outbox for a
    later sweep; so does every message if this process dies first.
    """
    ids = list(delivery_ids)
    if not ids:
        return
    known = dict(routes or {})
    missing = [i for i in ids if i not in known]
    if missing:
        known.update(routes_of(settings, missing))
    tickets = [Ticket(i, settings, *known.get(i, ("", None)), lease=lease) for i in ids]
    refusals = dispatcher(settings).offer(tickets)
    if refusals:
        _leave_for_later(refusals)


def routes_of(settings: Settings, delivery_ids: list[str]) -> dict[str, Route]:
    with session_scope(settings) as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.url, TrackedJob.client_id)
            .join(TrackedJob, TrackedJob.id == WebhookDelivery.tracked_job_id)
            .where(WebhookDelivery.id.in_(delivery_ids))
        ).all()
    return {row.id: route(row.url, row.client_id) for row in rows}


def free_capacity(settings: Settings) -> int:
    """How many more messages the sweep may hand to this process now."""
    return dispatcher(settings).room()


def _run(ticket: Ticket) -> Verdict:
    """One ticket on a delivery thread: the breaker's say, then the attempt."""
    settings = ticket.settings
    policy = DeliveryPolicy.from_settings(settings)
    if ticket.destination:
        now = clock.now(settings)
        with session_scope(settings) as session:
            gate = breakers.gate(
                session, settings.database_url, ticket.destination, now=now, policy=policy
            )
        if gate.open and gate.retry_at is not None:
            # From the moment the threads learn it, not from before the query.
            left = gate.retry_at - clock.now(settings)
            return Verdict(open_for_s=max(0.0, left.total_seconds()))
    _, outcome = _deliver(ticket.delivery_id, settings, policy, reserved=ticket.lease)
    if outcome is None:
        return NOTHING
    if outcome.error_class == AttemptError.TIMEOUT.value:
        return Verdict(timed_out=True)
    return Verdict(answered=outcome.error_class in breakers.ANSWERED)


def _leave_for_later(refusals: list[Refusal]) -> None:
    """Messages the threads did not take: no attempt, no attempt row, the outbox keeps them.

    Behind an open breaker, a message is due again after the next probe (plus up to a probe
    interval, so they do not all come back at once). Without room, a first send stays as it is
    (due, unleased: the next sweep takes it) and a swept one is released and due a little later,
    so that the next sweep reaches other messages first.
    """
    settings_of: dict[str, Settings] = {}
    later: dict[tuple[str, datetime | None], list[tuple[str, float]]] = {}
    for ticket, closed_for_s in refusals:
        policy = DeliveryPolicy.from_settings(ticket.settings)
        if closed_for_s is not None:
            metrics.DELIVERIES_SKIPPED.labels("breaker").inc()
            delay = closed_for_s + random.uniform(0, policy.breaker_probe_s)
        else:
            metrics.DELIVERIES_SKIPPED.labels("busy").inc()
            if ticket.lease is None:
                continue
            delay = policy.busy_defer_s * random.uniform(1, 2)
        database = ticket.settings.database_url
        settings_of[database] = ticket.settings
        later.setdefault((database, ticket.lease), []).append((ticket.delivery_id, delay))
    for (database, lease), items in later.items():
        settings = settings_of[database]
        now = clock.now(settings)
        held = (
            _OUTBOX.c.lease_expires_at.is_(None)
            if lease is None
            else (_OUTBOX.c.lease_expires_at == lease)
        )
        stmt = (
            update(_OUTBOX)
            .where(
                _OUTBOX.c.id == bindparam("b_id"),
                _OUTBOX.c.status == DeliveryStatus.PENDING.value,
                held,
            )
            .values(next_attempt_at=bindparam("b_at"), lease_expires_at=None)
        )
        with session_scope(settings) as session:
            session.connection().execute(
                stmt, [{"b_id": i, "b_at": now + timedelta(seconds=d)} for i, d in items]
            )


def send_after_commit(
    session: Session,
    delivery_ids: list[str],
    *,
    lease: datetime | None = None,
    routes: Mapping[str, Route] | None = None,
) -> None:
    """Send these messages once ``session``'s transaction commits (nothing if it rolls back).

    The one way a message reaches :func:`deliver_soon`: the transition that wrote it, and the
    sweep that reserved it (``lease``), both go through here, with the messages' ``routes``.
    If the process dies between the commit and the send, the message is still in the table and
    a later sweep sends it.
    """
    if delivery_ids:
        entry = (list(delivery_ids), lease, dict(routes or {}))
        session.info.setdefault(_WAITING, []).append(entry)


@event.listens_for(Session, "after_commit")
def _hand_over(session: Session) -> None:
    waiting = session.info.pop(_WAITING, None)
    settings = session.info.get("settings")
    if not waiting or not isinstance(settings, Settings):
        return
    for ids, lease, routes in waiting:
        try:
            deliver_soon(ids, settings, lease=lease, routes=routes)
        except Exception:  # the transaction did commit; the sweep sends what was not handed over
            log.exception("could not hand callbacks to the delivery threads")


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_WAITING, None)


def _due(now: datetime, *, reserved: datetime | None = None) -> list[ColumnElement[bool]]:
    """Messages an attempt may be made of now: pending, due, and not held by another sender
    (``reserved``: the lease the sweep took for this sender)."""
    free = or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at <= now)
    if reserved is not None:
        free = or_(free, WebhookDelivery.lease_expires_at == reserved)
    return [
        WebhookDelivery.status == DeliveryStatus.PENDING.value,
        WebhookDelivery.next_attempt_at <= now,
        free,
    ]


def deliver_one(
    delivery_id: str,
    settings: Settings,
    *,
    policy: DeliveryPolicy | None = None,
    reserved: datetime | None = None,
) -> str | None:
    """Make one attempt of a due message; return its new status, or None if not ours to send.

    ``reserved`` is the lease the sweep took on the message for this process, if any. The
    destination's breaker is not asked (the delivery threads do): an operator's redelivery goes.
    """
    status, _ = _deliver(
        delivery_id, settings, policy or DeliveryPolicy.from_settings(settings), reserved=reserved
    )
    return status


def _deliver(
    delivery_id: str, settings: Settings, policy: DeliveryPolicy, *, reserved: datetime | None
) -> tuple[str | None, AttemptOutcome | None]:
    now = clock.now(settings)
    lease = now + timedelta(seconds=policy.lease_s)
    with session_scope(settings) as session:
        taken = claim(
            session,
            WebhookDelivery,
            due=[WebhookDelivery.id == delivery_id, *_due(now, reserved=reserved)],
            order_by=None,
            limit=1,
            values={"lease_expires_at": lease},
            returning=[WebhookDelivery],
        )
        if not taken:
            return None, None
        delivery: WebhookDelivery = taken[0][0]
        try:
            secrets: tuple[str, ...] | NoClientSecretKey = callback_secrets(
                session, delivery.tracked_job_id, settings, now=now
            )
        except NoClientSecretKey as exc:
            secrets = exc
        reach = job_reach(session, delivery.tracked_job_id, settings)
    with log_context(delivery_id=delivery.id, tracked_job_id=delivery.tracked_job_id):
        outcome = _send(delivery, settings, policy, secrets, reach)
        return _record(delivery, lease, now, settings, policy, outcome), outcome


def _send(
    delivery: WebhookDelivery,
    settings: Settings,
    policy: DeliveryPolicy,
    secrets: tuple[str, ...] | NoClientSecretKey,
    reach: Reach,
) -> AttemptOutcome:
    """One attempt to where the job may reach; ``secrets`` sign it (the job's API client's, or
    ``JOBTRACKER_WEBHOOK_SECRET``), or say why there are none: a failed attempt (``no_secret``),
    retried like any other."""
    if isinstance(secrets, NoClientSecretKey):
        return refuse(delivery.url, delivery.id, AttemptError.NO_SECRET, secrets.message)
    return send(
        delivery.url,
        delivery.id,
        encode_body(delivery.payload),
        secrets,
        policy=policy,
        session=_http(),
        # The signed webhook-timestamp: the database clock, which receivers check for freshness.
        now=clock.now(settings),
        reach=reach,
    )


def _record(
    delivery: WebhookDelivery,
    lease: datetime,
    now: datetime,
    settings: Settings,
    policy: DeliveryPolicy,
    outcome: AttemptOutcome,
) -> str:
    """Record an attempt of a message this sender holds until ``lease``; plan the next one.

    In the same transaction, the outcome counts against the destination's circuit breaker.
    """
    attempts = delivery.attempts + 1
    done = clock.now(settings)
    values: dict[str, Any] = {
        "attempts": attempts,
        "lease_expires_at": None,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error_message,
        "updated_at": done,
    }
    context = {
        "attempt": attempts,
        "status_code": outcome.status_code,
        "latency_ms": outcome.latency_ms,
    }
    if outcome.ok:
        values.update(
            status=DeliveryStatus.DELIVERED.value, delivered_at=done, next_attempt_at=None
        )
        log.info("callback delivered", extra=context)
    else:
        delay = policy.next_attempt_delay(attempts, outcome)
        if delay is None:
            values.update(status=DeliveryStatus.FAILED.value, next_attempt_at=None)
            log.error("callback failed for good: %s", outcome.error_message, extra=context)
        else:
            values["next_attempt_at"] = done + timedelta(seconds=delay)
            log.info(
                "callback attempt failed; retrying in %.0f s: %s",
                delay,
                outcome.error_message,
                extra=context,
            )
    metrics.record_delivery(values.get("status"), outcome.latency_ms)
    where = destination(delivery.url)
    with session_scope(settings) as session:
        session.execute(
            insert(WebhookAttempt).values(
                delivery_id=delivery.id,
                attempted_at=now,
                status_code=outcome.status_code,
                error_class=outcome.error_class,
                error_message=outcome.error_message,
                latency_ms=outcome.latency_ms,
                response_body=outcome.response_body,
            )
        )
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_expires_at == lease)
            .values(**_unless_redelivered(values, delivery.next_attempt_at))
        )
        if where is not None:
            breakers.note(
                session,
                settings.database_url,
                breakers.key(where),
                outcome.error_class,
                now=done,
                policy=policy,
            )
    return str(values.get("status", DeliveryStatus.PENDING.value))


def _unless_redelivered(values: dict[str, Any], claimed_next: datetime | None) -> dict[str, Any]:
    """The attempt's update, except that a redelivery made while it was in flight wins.

    A redelivery moves ``next_attempt_at`` to its "now" and leaves the lease alone; when the
    column no longer holds what the claim read, the message stays pending and due as the
    redelivery set it (the next sweep sends it again), whatever this attempt's outcome.
    """
    untouched = WebhookDelivery.next_attempt_at == claimed_next
    pending = DeliveryStatus.PENDING.value
    kept = dict(values)
    kept["status"] = case((untouched, values.get("status", pending)), else_=pending)
    for column in ("next_attempt_at", "delivered_at"):
        if column in values:
            current = getattr(WebhookDelivery, column)
            kept[column] = case((untouched, values[column]), else_=current)
    return kept


def due_deliveries(session: Session, now: datetime, limit: int = SWEEP_LIMIT) -> list[str]:
    """Ids of the messages an attempt may be made of now, longest due first (read only)."""
    query = select(WebhookDelivery.id).where(*_due(now))
    return list(
        session.execute(query.order_by(WebhookDelivery.next_attempt_at).limit(limit)).scalars()
    )


def sweep(settings: Settings) -> int:
    """Send due messages (first sends that were lost, retries whose time has come).

    Takes only as many as this process has room for, and reserves them (a lease) so that the
    next sweep, here or on another worker, does not hand them out again while they wait.
    """
    room = min(free_capacity(settings), SWEEP_LIMIT)
    if not room:
        return 0
    now = clock.now(settings)
    # Twice an attempt's lease: the messages may wait for a delivery thread first.
    lease = now + timedelta(seconds=DeliveryPolicy.from_settings(settings).lease_s * 2)
    with session_scope(settings) as session:
        taken = claim(
            session,
            WebhookDelivery,
            due=_due(now),
            order_by=WebhookDelivery.next_attempt_at,
            limit=room,
            values={"lease_expires_at": lease},
            returning=[WebhookDelivery.id, WebhookDelivery.url, WebhookDelivery.tracked_job_id],
        )
        owners = _owners(session, {row[2] for row in taken})
        routes = {row[0]: route(row[1], owners.get(row[2])) for row in taken}
        send_after_commit(session, [row[0] for row in taken], lease=lease, routes=routes)
    return len(taken)


def _owners(session: Session, job_ids: set[int]) -> dict[int, int | None]:
    if not job_ids:
        return {}
    rows = session.execute(
        select(TrackedJob.id, TrackedJob.client_id).where(TrackedJob.id.in_(job_ids))
    ).all()
    return {row.id: row.client_id for row in rows}


def redeliver(settings: Settings, delivery_id: str) -> WebhookDelivery:
    """Make a message due now again, whatever its status: a new attempt, same ``webhook-id``.

    The lease stays: a message being sent right now is never sent twice at once. Its attempt,
    when it ends, sees the redelivery and leaves the message due (see :func:`_unless_redelivered`).
    """
    now = clock.now(settings)
    with session_scope(settings) as session:
        delivery = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(status=DeliveryStatus.PENDING.value, next_attempt_at=now, updated_at=now)
            .returning(WebhookDelivery),
            execution_options={"synchronize_session": False},
        ).scalar_one_or_none()
    if delivery is None:
        raise NotFoundError(f"no delivery {delivery_id!r}")
    return delivery


def redeliver_failed(settings: Settings, since: datetime) -> list[str]:
    """Make every message that ended ``failed`` since ``since`` due again; return their ids."""
    now = clock.now(settings)
    with session_scope(settings) as session:
        ids = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.status == DeliveryStatus.FAILED.value,
                WebhookDelivery.updated_at >= since,
            )
            .values(
                status=DeliveryStatus.PENDING.value,
                next_attempt_at=now,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(WebhookDelivery.id),
            execution_options={"synchronize_session": False},
        ).scalars()
        return list(ids)


#: Pending messages read at a time by :func:`refuse_unreachable`.
RECHECK_BATCH = 200


def refuse_unreachable(settings: Settings) -> int:
    """Fail at once every pending message whose URL its job may no longer reach; return how many.

    Run by each worker when it starts: after an upgrade (client-owned callbacks lost private
    addresses) or a change of policy (``JOBTRACKER_WEBHOOK_BLOCK_PRIVATE`` turned on), a message
    waiting for its retry hours from now would otherwise stay pending until then. Each refused
    one is recorded like an attempt: a ``refused_url`` row in ``webhook_attempts``, the message
    ``failed``, an ERROR log line; nothing is sent. A host that cannot be resolved now is left
    to its next attempt. Each (host, port, reach) is resolved once.
    """
    policy = DeliveryPolicy.from_settings(settings)
    verdicts: dict[tuple[tuple[str, int] | None, Reach], str | None] = {}
    after = ""
    refused = 0
    reaches: dict[int | None, Reach] = {}
    while True:
        with session_scope(settings) as session:
            rows = session.execute(
                select(
                    WebhookDelivery.id, WebhookDelivery.url, TrackedJob.client_id, ApiClient.scopes
                )
                .join(TrackedJob, TrackedJob.id == WebhookDelivery.tracked_job_id)
                .outerjoin(ApiClient, ApiClient.id == TrackedJob.client_id)
                .where(
                    WebhookDelivery.status == DeliveryStatus.PENDING.value,
                    WebhookDelivery.id > after,
                )
                .order_by(WebhookDelivery.id)
                .limit(RECHECK_BATCH)
            ).all()
            for row in rows:
                if row.client_id not in reaches:
                    reaches[row.client_id] = owner_reach(
                        session, row.client_id, row.scopes, settings
                    )
        if not rows:
            return refused
        after = rows[-1].id
        for row in rows:
            reach = reaches[row.client_id]
            key = (destination(row.url), reach)
            if key not in verdicts:
                verdicts[key] = _refusal(row.url, reach, policy)
            reason = verdicts[key]
            if reason is not None and _fail_refused(settings, policy, row.id, reason):
                refused += 1


def _refusal(url: str, reach: Reach, policy: DeliveryPolicy) -> str | None:
    try:
        resolve_callback_url(url, reach=reach, timeout_s=policy.connect_timeout_s)
    except UnsafeCallbackURL as exc:
        return exc.message
    except CallbackResolutionError:
        return None
    return None


def _fail_refused(
    settings: Settings, policy: DeliveryPolicy, delivery_id: str, reason: str
) -> bool:
    """Record a ``refused_url`` attempt of a pending message nobody holds, due or not."""
    now = clock.now(settings)
    lease = now + timedelta(seconds=policy.lease_s)
    free = or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at <= now)
    with session_scope(settings) as session:
        taken = claim(
            session,
            WebhookDelivery,
            due=[
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
                free,
            ],
            order_by=None,
            limit=1,
            values={"lease_expires_at": lease},
            returning=[WebhookDelivery],
        )
    if not taken:
        return False
    delivery: WebhookDelivery = taken[0][0]
    with log_context(delivery_id=delivery.id, tracked_job_id=delivery.tracked_job_id):
        outcome = refuse(delivery.url, delivery.id, AttemptError.REFUSED_URL, reason)
        _record(delivery, lease, now, settings, policy, outcome)
    return True
