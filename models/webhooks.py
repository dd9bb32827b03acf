"""The callback outbox: one row per message, and one row per attempt to deliver it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from jobtracker.models.base import Base, JSONType, UTCDateTime


class DeliveryStatus(enum.StrEnum):
    """Where a callback message stands."""

    #: Waiting for its first or next attempt (``next_attempt_at``).
    PENDING = "pending"
    #: A receiver answered 2xx.
    DELIVERED = "delivered"
    #: Retries are exhausted, the receiver answered 410 Gone, or the URL is refused.
    FAILED = "failed"


class WebhookDelivery(Base):
    """One callback message. Its ``id`` is the ``webhook-id`` header, stable across retries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s.value}'" for s in DeliveryStatus)),
            name="status",
        ),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        # The sweep reads only pending messages.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_tracked_job_id", "tracked_job_id"),
        Index("ix_webhook_deliveries_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tracked_job_id: Mapped[int] = mapped_column(ForeignKey("tracked_jobs.id", ondelete="CASCADE"))
    #: ``job.succeeded``, ``job.failed``, ``job.canceled`` or ``job.expired``.
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    #: The exact JSON body, fixed when the message is created so every attempt sends the same.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), server_default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=func.now())
    #: A sender holds the message until then, so two senders do not post it at once.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        back_populates="delivery", order_by="WebhookAttempt.id", passive_deletes=True
    )

    def to_dict(
        self, *, attempts: Sequence[WebhookAttempt] | None = None, payload: bool = False
    ) -> dict[str, Any]:
        """The message as operators see it (CLI, API, archive); ``id`` is its ``webhook-id``.
        ``attempts``: its attempt log, as read by the caller; ``payload``: with its body."""
        entry: dict[str, Any] = {
            "id": self.id,
            "tracked_job_id": self.tracked_job_id,
            "event_type": self.event_type,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "next_attempt_at": (
                _ts(self.next_attempt_at) if self.status == DeliveryStatus.PENDING.value else None
            ),
            "created_at": _ts(self.created_at),
            "updated_at": _ts(self.updated_at),
            "delivered_at": _ts(self.delivered_at),
        }
        if attempts is not None:
            entry["attempt_log"] = [a.to_dict() for a in attempts]
        if payload:
            entry["payload"] = self.payload
        return entry


class WebhookAttempt(Base):
    """One HTTP attempt to deliver a callback message."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        Index("ix_webhook_attempts_delivery_id", "delivery_id", "id"),
        # Retention removes the oldest attempts of delivered messages first.
        Index("ix_webhook_attempts_attempted_at", "attempted_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    #: The receiver's HTTP status, when it answered.
    status_code: Mapped[int | None] = mapped_column(Integer)
    #: ``http``, ``timeout``, ``connection``, ``dns``, ``tls``, ``refused_url``... NULL on success.
    error_class: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    #: The first KiB of the receiver's answer.
    response_body: Mapped[str | None] = mapped_column(Text)

    delivery: Mapped[WebhookDelivery] = relationship(back_populates="attempt_log")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "attempted_at": _ts(self.attempted_at),
            "status_code": self.status_code,
            "error_class": self.error_class,
            "error_message": self.error_message,
            "latency_ms": self.latency_ms,
            "response_body": self.response_body,
        }


class DeliveryBreaker(Base):
    """A callback destination (``host:port``) that timed out, shared by every worker.

    The row exists while the destination's last attempts timed out: ``timeouts`` in a row. From
    :attr:`worker.policy.DeliveryPolicy.breaker_timeouts` on, the breaker is open
    (``opened_at``): messages to it wait, without an attempt, and one probe goes out from
    ``probe_at`` on. Any answer deletes the row.
    """

    __tablename__ = "delivery_breakers"

    destination: Mapped[str] = mapped_column(Text, primary_key=True)
    timeouts: Mapped[int] = mapped_column(Integer, server_default="0")
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "state": "open" if self.opened_at is not None else "counting",
            "timeouts": self.timeouts,
            "opened_at": _ts(self.opened_at),
            "probe_at": _ts(self.probe_at),
            "updated_at": _ts(self.updated_at),
        }


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
