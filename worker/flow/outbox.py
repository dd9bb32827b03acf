"""The callback outbox: the message a terminal transition writes.

:func:`delivery_row` builds the ``webhook_deliveries`` row that
:func:`worker.flow.transition.transition_many` inserts in the transition's own transaction, so a
committed terminal status always has its message. The body is fixed here, once: every attempt
sends the same bytes. Sending it is :mod:`worker.flow.deliver`'s job, after the commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobtracker.models import DeliveryStatus, TrackedJob
from worker.webhooks.signing import build_payload, new_message_id

#: The tracked job's fields a callback carries (DESIGN.md "Callbacks").
PAYLOAD_FIELDS = (
    "id", "kind", "region", "job_id", "status", "provider_status", "error", "result",
    "result_expires_at", "metadata", "polls", "created_at", "updated_at", "finished_at",
)  # fmt: skip


def delivery_row(job: TrackedJob, *, now: datetime) -> dict[str, Any]:
    """The callback message for ``job``'s terminal status, as a ``webhook_deliveries`` row.

    Its ``id`` is the ``webhook-id``.
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
