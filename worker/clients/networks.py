"""Where a client's callbacks may go: public addresses, plus the networks an operator allowed.

A client's callback URL is its own choice, and the worker POSTs to it from inside our network,
so a client that names ``http://10.0.0.5:8080/admin`` would have the worker call an internal
service for it. The callbacks of jobs a non-admin client enqueued therefore reach only public
addresses, whatever ``JOBTRACKER_WEBHOOK_BLOCK_PRIVATE`` says, unless an operator allowed a
network for that client (``jobtracker clients allow-network``: an internal team whose receiver
is internal). Link-local and cloud-metadata addresses stay refused for everyone. ``admin``
clients and the other ways in keep the setting's policy.

The check runs at enqueue for literal addresses (:mod:`worker.api.queries`) and at every
attempt for every address the host resolves to (:mod:`worker.flow.deliver`).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobtracker.models import ApiClient, ApiClientNetwork, Scope, TrackedJob
from worker.clients.registry import find_client, networks_of
from worker.errors import ClientError, NotFoundError
from worker.settings import Settings
from worker.webhooks.urls import IPNetwork, Reach, parse_networks

#: Ends the refusal of a client's callback URL.
CLIENT_REASON = (
    "callbacks of API clients go only to public addresses and to the networks an operator "
    "allowed for the client"
)
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


def parse_network(text: str) -> IPNetwork:
    """An operator's CIDR (``10.0.0.0/8``) or single address (``10.1.2.3``), strictly.

    ``10.0.0.1/8`` is refused rather than guessed: it may mean the network 10.0.0.0/8 or the
    one address 10.0.0.1, and allowing the wrong one opens a whole network.
    """
    try:
        network = ipaddress.ip_network(text.strip())
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(text.strip(), strict=False)
            address = text.strip().partition("/")[0]
            raise ClientError(
                f"{text}: the address has bits set beyond the /{loose.prefixlen} prefix; write "
                f"the network {loose} or the single address {address}"
            ) from None
        raise ClientError(
            f"{text!r} is not a network: write an address (10.1.2.3, fd00::7) or a CIDR "
            "(10.0.0.0/8, fd00::/8)"
        ) from None
    if any(network.version == n.version and network.subnet_of(n) for n in _LINK_LOCAL):  # type: ignore[arg-type]
        raise ClientError(
            f"{network} is link-local: callbacks never go there (cloud metadata lives there), "
            "so allowing it would change nothing"
        )
    return network


def allow_network(session: Session, name: str, text: str, *, now: datetime) -> tuple[str, bool]:
    """Let the client's callbacks reach this network; return it and whether it is new."""
    network = str(parse_network(text))
    client = find_client(session, name)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    added = session.execute(
        insert(ApiClientNetwork)
        .values(client_id=client.id, network=network, created_at=now)
        .on_conflict_do_nothing(index_elements=["client_id", "network"])
        .returning(ApiClientNetwork.network)
    ).first()
    return network, added is not None


def deny_network(session: Session, name: str, text: str) -> str:
    """Take an allowed network back; raises NotFoundError if it was not allowed."""
    network = str(parse_network(text))
    client = find_client(session, name)
    removed = session.execute(
        delete(ApiClientNetwork)
        .where(ApiClientNetwork.client_id == client.id, ApiClientNetwork.network == network)
        .returning(ApiClientNetwork.network)
    ).first()
    if removed is None:
        allowed = ", ".join(networks_of(session, client.id)) or "none"
        raise NotFoundError(f"{network} is not allowed for {name!r} (allowed: {allowed})")
    return network


def client_reach(session: Session, client_id: int) -> Reach:
    """Where a non-admin client's callbacks may go."""
    return Reach(
        block_private=True,
        allowed=parse_networks(networks_of(session, client_id)),
        reason=CLIENT_REASON,
    )


def job_reach(session: Session, tracked_job_id: int, settings: Settings) -> Reach:
    """Where a job's callbacks may go: its client's reach if a non-admin client enqueued it,
    else ``JOBTRACKER_WEBHOOK_BLOCK_PRIVATE``'s."""
    client = session.execute(
        select(ApiClient.id, ApiClient.scopes)
        .join(TrackedJob, TrackedJob.client_id == ApiClient.id)
        .where(TrackedJob.id == tracked_job_id)
    ).first()
    if client is None:
        return Reach(block_private=settings.webhook_block_private)
    return owner_reach(session, client.id, client.scopes, settings)


def owner_reach(
    session: Session, client_id: int | None, scopes: str | None, settings: Settings
) -> Reach:
    """The reach of the jobs of this client (None: the other ways in), its scopes as stored."""
    if client_id is None or Scope.ADMIN.value in (scopes or "").split():
        return Reach(block_private=settings.webhook_block_private)
    return client_reach(session, client_id)
