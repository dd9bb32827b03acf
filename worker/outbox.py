"""The callback outbox: messages written with terminal transitions, then sent and retried.

:func:`create_delivery` runs inside the transition's transaction, so a committed terminal status
always has its message. :func:`deliver_one` sends one message under a short lease (two senders
never post it at once), logs the attempt, and schedules the next one from the
:class:`~worker.webhooks.send.DeliveryPolicy`. :func:`sweep` finds messages whose first send was
lost (crash, broker flushed) or whose retry is due. Delivery is at-least-once with a stable
``webhook-id``; receivers deduplicate on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session

from models import DeliveryStatus, TrackedJob, WebhookAttempt, WebhookDelivery, utcnow
from worker import metrics
from worker.db import session_scope
from worker.errors import NotFoundError
from worker.settings import Settings
from worker.webhooks.send import DeliveryPolicy, send
from worker.webhooks.signing import build_payload, encode_body, new_message_id
from worker.webhooks.transport import make_session

log = logging.getLogger(__name__)

#: The tracked job's fields a callback carries (DESIGN.md "Callbacks").
PAYLOAD_FIELDS = (
    "id", "kind", "region", "job_id", "status", "provider_status", "error", "result",
    "result_expires_at", "metadata", "polls", "created_at", "updated_at", "finished_at",
)  # fmt: skip
#: How many due messages one sweep hands out.
SWEEP_LIMIT = 500

_local = threading.local()


def _http() -> requests.Session:
    """One pinned-address session per thread, so a worker thread reuses its connections."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = make_session()
    return session


def delivery_row(job: TrackedJob, *, now: datetime) -> dict[str, Any]:
    """The callback message for ``job``'s terminal status, as a ``webhook_deliveries`` row.

    Written by :func:`worker.transition.transition_many` in the transition's transaction; its
    ``id`` is the ``webhook-id``.
    """
    data = job.to_dict()
    payload = build_payload(f"job.{job.status}", {k: data[k] for k in PAYLOAD_FIELDS}, now=now)
    return {
        "id": new_message_id(),
        "tracked_job_id": job.id,
        "event_type": payload["type"],
        "url": job.callback_url,
        "payload": payload,
        "status": DeliveryStatus.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


#: Threads that send callbacks, in each worker process. A slow receiver holds one of these for
#: at most the send deadline, never a Celery worker thread (polls keep going).
DELIVERY_THREADS = 4
#: How many messages one process takes on at once (sending plus waiting for a thread).
DELIVERY_BACKLOG = 4 * DELIVERY_THREADS
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_in_flight = 0


def deliver_soon(
    delivery_ids: Iterable[str], settings: Settings, *, lease: datetime | None = None
) -> None:
    """Send messages now, on this process's delivery threads.

    Not through the broker: a callback must not queue behind poll batches that wait for
    rate-limit slots. ``lease`` is the sweep's reservation of these messages. If this process
    dies first, the messages are still in the outbox and a later sweep sends them.
    """
    global _executor, _in_flight
    ids = list(delivery_ids)
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                DELIVERY_THREADS, thread_name_prefix="jobtracker-deliver"
            )
        executor = _executor
        _in_flight += len(ids)
    for delivery_id in ids:
        executor.submit(_deliver_logged, delivery_id, settings, lease)


def _deliver_logged(delivery_id: str, settings: Settings, lease: datetime | None) -> None:
    global _in_flight
    try:
        deliver_one(delivery_id, settings, reserved=lease)
    except Exception:  # the lease runs out and the sweep retries; say why it failed
        log.exception("delivery failed unexpectedly", extra={"delivery_id": delivery_id})
    finally:
        with _executor_lock:
            _in_flight -= 1


def free_capacity() -> int:
    """How many more messages this process can take on now."""
    with _executor_lock:
        return max(0, DELIVERY_BACKLOG - _in_flight)


def _lease_s(policy: DeliveryPolicy) -> float:
    # An attempt ends within total_timeout_s (the sender enforces it), so a lease a little longer
    # means a sender that died mid-POST delays the retry by at most this much.
    return policy.total_timeout_s + 5.0


def deliver_one(
    delivery_id: str,
    settings: Settings,
    *,
    policy: DeliveryPolicy | None = None,
    reserved: datetime | None = None,
) -> str | None:
    """Make one attempt of a due message; return its new status, or None if not ours to send.

    ``reserved`` is the lease the sweep took on the message for this process, if any.
    """
    policy = policy or DeliveryPolicy.from_settings(settings)
    now = utcnow()
    lease = now + timedelta(seconds=_lease_s(policy))
    free = or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at <= now)
    if reserved is not None:
        free = or_(free, WebhookDelivery.lease_expires_at == reserved)
    with session_scope(settings) as session:
        delivery = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
                WebhookDelivery.next_attempt_at <= now,
                free,
            )
            .values(lease_expires_at=lease)
            .returning(WebhookDelivery),
            execution_options={"synchronize_session": False},
        ).scalar_one_or_none()
    if delivery is None:
        return None
    outcome = send(
        delivery.url,
        delivery.id,
        encode_body(delivery.payload),
        settings.webhook_secrets,
        policy=policy,
        session=_http(),
    )
    attempts = delivery.attempts + 1
    done = utcnow()
    values: dict[str, Any] = {
        "attempts": attempts,
        "lease_expires_at": None,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error_message,
        "updated_at": done,
    }
    context = {
        "delivery_id": delivery.id,
        "tracked_job_id": delivery.tracked_job_id,
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
            .values(**values)
        )
    return str(values.get("status", DeliveryStatus.PENDING.value))


def due_deliveries(session: Session, now: datetime, limit: int = SWEEP_LIMIT) -> list[str]:
    return list(
        session.execute(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
                WebhookDelivery.next_attempt_at <= now,
                or_(
                    WebhookDelivery.lease_expires_at.is_(None),
                    WebhookDelivery.lease_expires_at <= now,
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def sweep(settings: Settings) -> int:
    """Send due messages (first sends that were lost, retries whose time has come).

    Takes only as many as this process has room for, and reserves them (a lease) so that the
    next sweep, here or on another worker, does not hand them out again while they wait.
    """
    room = min(free_capacity(), SWEEP_LIMIT)
    if not room:
        return 0
    now = utcnow()
    lease = now + timedelta(seconds=_lease_s(DeliveryPolicy.from_settings(settings)) * 2)
    with session_scope(settings) as session:
        ids = due_deliveries(session, now, room)
        if ids:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(lease_expires_at=lease),
                execution_options={"synchronize_session": False},
            )
    if ids:
        deliver_soon(ids, settings, lease=lease)
    return len(ids)


def redeliver(settings: Settings, delivery_id: str) -> WebhookDelivery:
    """Make a message due now again, whatever its status: a new attempt, same ``webhook-id``."""
    now = utcnow()
    with session_scope(settings) as session:
        delivery = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(
                status=DeliveryStatus.PENDING.value,
                next_attempt_at=now,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(WebhookDelivery),
            execution_options={"synchronize_session": False},
        ).scalar_one_or_none()
    if delivery is None:
        raise NotFoundError(f"no delivery {delivery_id!r}")
    return delivery


def redeliver_failed(settings: Settings, since: datetime) -> list[str]:
    """Make every message that ended ``failed`` since ``since`` due again; return their ids."""
    now = utcnow()
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
