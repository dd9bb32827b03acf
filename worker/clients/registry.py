"""The ``api_clients`` and ``api_tokens`` rows: adding, rotating and revoking clients, finding
the client behind a bearer token, and the webhook secrets that sign a job's callbacks.

Every function takes a session (the caller's transaction) and ``now``, so the CLI, the API and
the tests drive the same code, and the clock is the caller's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobtracker.models import ApiClient, ApiClientNetwork, ApiToken, Scope, TrackedJob
from worker.clients.credentials import (
    derive_webhook_secret,
    is_well_formed,
    new_token,
    same_hash,
    shown_prefix,
    token_hash,
)
from worker.errors import ClientError, NoClientSecretKey, NotFoundError
from worker.settings import Settings

#: Client names: what operators type and logs show.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Caller:
    """The authenticated client behind a request."""

    id: int
    name: str
    scopes: frozenset[Scope]

    @property
    def admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        return self.admin or scope in self.scopes


@dataclass(frozen=True)
class Issued:
    """What ``add`` and the rotations show once: never stored, never shown again."""

    client: ApiClient
    token: str | None = None
    webhook_secret: str | None = None


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    scopes: set[Scope] = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ClientError(f"unknown scope {name!r}: use {known}") from None
    if not scopes:
        raise ClientError("give the client at least one scope (--scope enqueue/read/admin)")
    return frozenset(scopes)


def add_client(
    session: Session, name: str, scopes: Iterable[str], *, master_key: bytes | None, now: datetime
) -> Issued:
    """A new client with its first token and webhook secret."""
    if master_key is None:
        # A client whose callbacks cannot be signed would only collect failed deliveries.
        raise NoClientSecretKey(
            "JOBTRACKER_CLIENT_SECRET_KEY is not set: it is needed to give the client its "
            "webhook secret (generate one with "
            '`python3 -c "import secrets; print(secrets.token_urlsafe(32))"`)'
        )
    if not NAME_RE.fullmatch(name):
        raise ClientError(
            f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    client = ApiClient(
        name=name,
        scopes=" ".join(sorted(s.value for s in parse_scopes(scopes))),
        secret_generation=1,
        created_at=now,
    )
    session.add(client)
    try:
        session.flush()
    except IntegrityError:
        raise ClientError(f"a client named {name!r} exists already") from None
    token = _issue_token(session, client, now)
    secret = derive_webhook_secret(master_key, client.id, client.secret_generation)
    return Issued(client=client, token=token, webhook_secret=secret)


def _issue_token(session: Session, client: ApiClient, now: datetime) -> str:
    token = new_token()
    session.add(
        ApiToken(
            client_id=client.id,
            token_hash=token_hash(token),
            prefix=shown_prefix(token),
            created_at=now,
        )
    )
    session.flush()
    return token


def find_client(session: Session, name: str) -> ApiClient:
    client = session.execute(select(ApiClient).where(ApiClient.name == name)).scalar_one_or_none()
    if client is None:
        raise NotFoundError(f"no API client named {name!r}")
    return client


def _active_client(session: Session, name: str) -> ApiClient:
    client = find_client(session, name)
    if client.revoked_at is not None:
        raise ClientError(f"client {name!r} is revoked")
    return client


def revoke_client(session: Session, name: str, *, now: datetime) -> ApiClient:
    """Every token of the client stops working now. Its jobs go on, and their callbacks are
    still signed with its secret (the receiver expects no other)."""
    client = find_client(session, name)
    if client.revoked_at is None:
        client.revoked_at = now
        session.flush()
    return client


def rotate_token(session: Session, name: str, *, grace_s: float, now: datetime) -> Issued:
    """A new token; the client's current ones keep working ``grace_s`` more seconds."""
    client = _active_client(session, name)
    until = now + timedelta(seconds=grace_s)
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.client_id == client.id,
            (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > until),
        )
        .values(expires_at=until)
    )
    return Issued(client=client, token=_issue_token(session, client, now))


def rotate_secret(
    session: Session, name: str, *, master_key: bytes | None, grace_s: float, now: datetime
) -> Issued:
    """The next webhook secret; the current one goes on signing too for ``grace_s`` seconds.

    Rotating again within the grace period drops the oldest secret at once: two sign at most.
    """
    if master_key is None:
        raise NoClientSecretKey()
    client = _active_client(session, name)
    client.previous_secret_generation = client.secret_generation
    client.previous_secret_until = now + timedelta(seconds=grace_s)
    client.secret_generation += 1
    session.flush()
    secret = derive_webhook_secret(master_key, client.id, client.secret_generation)
    return Issued(client=client, webhook_secret=secret)


def authenticate(conn: Connection, token: str, *, now: datetime) -> Caller | None:
    """The client a bearer token belongs to, or None (unknown, expired, or client revoked).

    One indexed Core query, no ORM objects: it runs on every API request.
    """
    if not is_well_formed(token):  # not one of ours: no query
        return None
    digest = token_hash(token)
    row = conn.execute(_AUTHENTICATE, {"digest": digest}).first()
    if row is None or not same_hash(row.token_hash, digest):
        return None
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    scopes = frozenset(Scope(s) for s in row.scopes.split())
    return Caller(id=row.id, name=row.name, scopes=scopes)


_AUTHENTICATE = (
    select(
        ApiToken.token_hash,
        ApiToken.expires_at,
        ApiClient.id,
        ApiClient.name,
        ApiClient.scopes,
        ApiClient.revoked_at,
    )
    .join(ApiClient, ApiClient.id == ApiToken.client_id)
    .where(ApiToken.token_hash == bindparam("digest"))
)


def webhook_secrets(
    client: ApiClient, master_key: bytes, *, now: datetime, previous_key: bytes | None = None
) -> tuple[str, ...]:
    """The secrets that sign the client's callbacks at ``now``: two during a rotation of its
    secret; during a rotation of the master key (``previous_key``), those derived from the
    previous key too, so a receiver that knows only its old secret still verifies."""
    keys = [master_key] if previous_key is None else [master_key, previous_key]
    return tuple(
        derive_webhook_secret(key, client.id, generation)
        for key in keys
        for generation in client.secret_generations(now)
    )


def callback_secrets(
    session: Session, tracked_job_id: int, settings: Settings, *, now: datetime
) -> tuple[str, ...]:
    """The secrets that sign a job's callbacks: its client's, or ``JOBTRACKER_WEBHOOK_SECRET``
    for jobs that came another way. Raises :class:`NoClientSecretKey` when the job has a client
    and the master key is missing (the attempt is then a recorded failure, never unsigned)."""
    client = session.execute(
        select(ApiClient)
        .join(TrackedJob, TrackedJob.client_id == ApiClient.id)
        .where(TrackedJob.id == tracked_job_id)
    ).scalar_one_or_none()
    if client is None:
        return settings.webhook_secrets
    if settings.client_secret_key is None:
        raise NoClientSecretKey(
            f"JOBTRACKER_CLIENT_SECRET_KEY is not set: cannot sign the callbacks of API client "
            f"{client.name!r}; set it and restart the worker"
        )
    return webhook_secrets(
        client,
        settings.client_secret_key,
        now=now,
        previous_key=settings.client_secret_key_previous,
    )


def master_rotation(
    session: Session, *, master_key: bytes | None, previous_key: bytes | None
) -> list[tuple[ApiClient, str]]:
    """Each client (revoked ones too: their jobs' callbacks are still signed) with its webhook
    secret under the new master key, to hand to it during a master key rotation.

    Nothing is written: the secrets are derived, and both keys sign until the previous one is
    unset. Raises :class:`NoClientSecretKey` unless both keys are set (and differ, which the
    settings check).
    """
    if master_key is None or previous_key is None:
        raise NoClientSecretKey(
            "a master key rotation needs the new key in JOBTRACKER_CLIENT_SECRET_KEY and the "
            "old one in JOBTRACKER_CLIENT_SECRET_KEY_PREVIOUS (set both where the worker runs "
            "too, so both sign meanwhile)"
        )
    clients = session.execute(select(ApiClient).order_by(ApiClient.name)).scalars()
    return [
        (client, derive_webhook_secret(master_key, client.id, client.secret_generation))
        for client in clients
    ]


def client_dict(session: Session, client: ApiClient, *, now: datetime) -> dict[str, Any]:
    """A client as operators see it: no token, no secret, only which tokens exist."""
    tokens = session.execute(
        select(ApiToken).where(ApiToken.client_id == client.id).order_by(ApiToken.id)
    ).scalars()
    rotating = client.secret_generations(now)[1:]

    def ts(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": client.id,
        "name": client.name,
        "scopes": client.scopes.split(),
        "created_at": ts(client.created_at),
        "revoked_at": ts(client.revoked_at),
        "secret_generation": client.secret_generation,
        "previous_secret_until": ts(client.previous_secret_until) if rotating else None,
        "networks": networks_of(session, client.id),
        "tokens": [
            {
                "prefix": t.prefix + "…",
                "created_at": ts(t.created_at),
                "expires_at": ts(t.expires_at),
            }
            for t in tokens
            if t.expires_at is None or t.expires_at > now
        ],
    }


def networks_of(session: Session, client_id: int) -> list[str]:
    """The networks an operator allowed the client's callbacks to reach (besides public ones)."""
    return list(
        session.execute(
            select(ApiClientNetwork.network)
            .where(ApiClientNetwork.client_id == client_id)
            .order_by(ApiClientNetwork.network)
        ).scalars()
    )


def list_clients(session: Session, *, now: datetime) -> list[dict[str, Any]]:
    clients = session.execute(select(ApiClient).order_by(ApiClient.name)).scalars()
    return [client_dict(session, c, now=now) for c in clients]
