"""Service API clients: who may call ``/v1``, with which scopes, and their tokens.

Neither a token nor a webhook secret is ever stored. A token is kept as its SHA-256 (it is 32
random bytes, so a fast hash is enough: there is nothing to brute-force). A client's webhook
secret is derived when a callback is signed, from ``JOBTRACKER_CLIENT_SECRET_KEY`` and the
*generation* numbers kept here (see :mod:`worker.clients.credentials`).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from jobtracker.models.base import Base, UTCDateTime


class Scope(enum.StrEnum):
    """What a client may do through the service API."""

    #: ``POST /v1/jobs`` and redelivering its own callbacks.
    ENQUEUE = "enqueue"
    #: ``GET`` its own jobs (one, a page, or waiting for one).
    READ = "read"
    #: Everything, on every job.
    ADMIN = "admin"


class ApiClient(Base):
    """One service that calls the API. Revoked clients stay, so their jobs keep their owner."""

    __tablename__ = "api_clients"
    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 64", name="name_length"),
        CheckConstraint("secret_generation >= 1", name="secret_generation_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: Space-separated :class:`Scope` values, sorted (``enqueue read``).
    scopes: Mapped[str] = mapped_column(String(64))
    #: The generation of the webhook secret that signs this client's callbacks.
    secret_generation: Mapped[int] = mapped_column(Integer, server_default="1")
    #: During a rotation: the generation that still signs too, until ``previous_secret_until``.
    previous_secret_generation: Mapped[int | None] = mapped_column(Integer)
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    #: Set by ``jobtracker clients revoke``: every token stops working at once.
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def scope_set(self) -> frozenset[Scope]:
        return frozenset(Scope(s) for s in self.scopes.split())

    def secret_generations(self, now: datetime) -> list[int]:
        """The generations whose secrets sign a callback sent at ``now``, newest first."""
        generations = [self.secret_generation]
        previous, until = self.previous_secret_generation, self.previous_secret_until
        if previous is not None and until is not None and until > now:
            generations.append(previous)
        return generations


class ApiToken(Base):
    """One bearer token of a client, stored as a hash."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_client_id", "client_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id", ondelete="CASCADE"))
    #: Hex SHA-256 of the whole token.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The token's first characters (``jt_AbCdEfG``), to tell tokens apart in listings.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    #: NULL: valid until rotated. Set by ``rotate-token`` to the end of the grace period.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiClientNetwork(Base):
    """A network an operator allowed one client's callbacks to reach (``jobtracker clients
    allow-network``). Callbacks of a non-admin client's jobs go only to public addresses, plus
    the addresses inside these networks; link-local and metadata addresses never."""

    __tablename__ = "api_client_networks"

    client_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("api_clients.id", ondelete="CASCADE"), primary_key=True
    )
    #: In its canonical form: ``10.0.0.0/8``, ``fd00::/8``, ``192.0.2.7/32``.
    network: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
