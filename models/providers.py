"""Per-provider state shared by all workers: paused on a configuration error, throttled."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Integer, String, Text, false, func
from sqlalchemy.orm import Mapped, mapped_column

from jobtracker.models.base import Base, UTCDateTime


class ProviderState(Base):
    """One row per kind once something happened to it. No row means healthy."""

    __tablename__ = "provider_states"

    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: A configuration error (AuthFailure...) stopped polling; a probe poll resumes it.
    paused: Mapped[bool] = mapped_column(Boolean, server_default=false())
    paused_reason: Mapped[str | None] = mapped_column(Text)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: While paused: when one job may be polled as a probe.
    next_probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: RequestLimitExceeded backs the whole provider off until then.
    throttled_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    consecutive_throttles: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())

    def is_throttled(self, now: datetime) -> bool:
        """Whether a RequestLimitExceeded back-off is still running at ``now``."""
        return self.throttled_until is not None and self.throttled_until > now


class RateLimit(Base):
    """One provider's shared pace when the broker is not Redis (``worker.providers.ratelimit``)."""

    __tablename__ = "rate_limits"

    #: The provider (its kind).
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The next free call slot, in seconds since the epoch on the database's clock.
    tat: Mapped[float] = mapped_column(Float(precision=53))
    #: Calls per second allowed now: at most the configured QPS, less after refusals.
    rate: Mapped[float] = mapped_column(Float(precision=53))
    #: The rate at which the provider refused a call after an answer, the last time (0: never).
    learned: Mapped[float] = mapped_column(Float(precision=53))
    #: Refusals in a row since the last answer.
    run: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
