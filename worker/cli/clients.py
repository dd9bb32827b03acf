"""``jobtracker clients add / list / revoke / rotate-token / rotate-secret / rotate-master /
allow-network / deny-network``: who may call the service API, and where its callbacks may go.

A token and a webhook secret are printed once, when they are made, and never again: only the
token's hash is stored, and the secret is derived when a callback is signed. Lost one? Rotate it.

Every time these commands write (a revocation, a token's expiry, the end of a secret's grace
period) is the database's (:func:`worker.clock.now`), the clock the API and the worker compare
them with: a host clock that is off would end a grace period early or late.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

import click

from jobtracker.models import Scope
from worker import clock
from worker.cli.common import AGE, JSON_OPTION, fail, print_json, read_settings, ready_settings
from worker.cli.tables import clients_table, format_time
from worker.clients.networks import allow_network, deny_network
from worker.clients.registry import (
    Issued,
    add_client,
    client_dict,
    list_clients,
    master_rotation,
    revoke_client,
    rotate_secret,
    rotate_token,
)
from worker.db import session_scope
from worker.errors import ClientError, NoClientSecretKey, NotFoundError
from worker.settings import Settings

GRACE_OPTION = click.option(
    "--grace",
    type=AGE,
    help="How long the old one keeps working too (default: JOBTRACKER_API_ROTATION_GRACE).",
)


@click.group()
def clients() -> None:
    """Service API clients: tokens, scopes and webhook secrets."""


def _grace_s(settings: Settings, grace: timedelta | None) -> float:
    return settings.api_rotation_grace_s if grace is None else grace.total_seconds()


def _show(issued: Issued, settings: Settings, as_json: bool, what: str) -> None:
    now = clock.now(settings)
    with session_scope(settings) as session:
        entry = client_dict(session, session.merge(issued.client), now=now)
    if as_json:
        shown: dict[str, Any] = {"client": entry}
        if issued.token:
            shown["token"] = issued.token
        if issued.webhook_secret:
            shown["webhook_secret"] = issued.webhook_secret
        print_json(shown)
        return
    click.echo(f"client {entry['name']!r} {what} (scopes: {' '.join(entry['scopes'])})")
    if issued.token:
        click.echo("token, shown this once (send it as Authorization: Bearer <token>):")
        click.echo(f"  {issued.token}")
    if issued.webhook_secret:
        click.echo("webhook secret of its callbacks, shown this once (verify with it):")
        click.echo(f"  {issued.webhook_secret}")
    if entry["previous_secret_until"] and issued.webhook_secret:
        until = format_time(entry["previous_secret_until"])
        click.echo(f"the previous secret signs callbacks too until {until} UTC")
    expiring = [t for t in entry["tokens"] if t["expires_at"]]
    if issued.token and expiring:
        until = format_time(min(t["expires_at"] for t in expiring))
        click.echo(f"the previous token keeps working until {until} UTC")


@clients.command("add")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice([s.value for s in Scope]),
    help="enqueue (POST), read (GET), admin (everything, every job). Repeatable.",
)
@JSON_OPTION
def add(name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Add a client; print its token and webhook secret, once."""
    settings = ready_settings()
    try:
        with session_scope(settings) as session:
            issued = add_client(
                session,
                name,
                scopes,
                master_key=settings.client_secret_key,
                now=clock.now(settings),
            )
    except NoClientSecretKey as exc:
        fail(str(exc), 2)
    except ClientError as exc:
        fail(str(exc), 1)
    _show(issued, settings, as_json, "added")


@clients.command("list")
@JSON_OPTION
def list_(as_json: bool) -> None:
    """List clients, their scopes and tokens (prefixes only), revoked ones included."""
    settings = read_settings()
    now = clock.now(settings)
    with session_scope(settings) as session:
        rows = list_clients(session, now=now)
    if as_json:
        print_json(rows)
    elif rows:
        click.echo(clients_table(rows, now))
    else:
        click.echo(
            "no API clients; add one with `jobtracker clients add NAME --scope ...`", err=True
        )


@clients.command()
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke a client: every token of it stops working now (its jobs go on)."""
    settings = read_settings()
    try:
        with session_scope(settings) as session:
            revoke_client(session, name, now=clock.now(settings))
    except NotFoundError as exc:
        fail(str(exc), 1)
    click.echo(f"client {name!r} revoked: its tokens no longer work")


@clients.command("rotate-token")
@click.argument("name")
@GRACE_OPTION
@JSON_OPTION
def rotate_token_command(name: str, grace: timedelta | None, as_json: bool) -> None:
    """Issue a new token; the old one keeps working for the grace period."""
    settings = read_settings()
    try:
        with session_scope(settings) as session:
            issued = rotate_token(
                session, name, grace_s=_grace_s(settings, grace), now=clock.now(settings)
            )
    except (NotFoundError, ClientError) as exc:
        fail(str(exc), 1)
    _show(issued, settings, as_json, "has a new token")


@clients.command("rotate-secret")
@click.argument("name")
@GRACE_OPTION
@JSON_OPTION
def rotate_secret_command(name: str, grace: timedelta | None, as_json: bool) -> None:
    """Issue a new webhook secret; both sign callbacks during the grace period."""
    settings = read_settings()
    try:
        with session_scope(settings) as session:
            issued = rotate_secret(
                session,
                name,
                master_key=settings.client_secret_key,
                grace_s=_grace_s(settings, grace),
                now=clock.now(settings),
            )
    except NoClientSecretKey as exc:
        fail(str(exc), 2)
    except (NotFoundError, ClientError) as exc:
        fail(str(exc), 1)
    _show(issued, settings, as_json, "has a new webhook secret")


@clients.command("rotate-master")
@JSON_OPTION
def rotate_master_command(as_json: bool) -> None:
    """Print each client's webhook secret under the new master key, for a master key rotation.

    Set the new key in JOBTRACKER_CLIENT_SECRET_KEY and the old one in
    JOBTRACKER_CLIENT_SECRET_KEY_PREVIOUS first (here and where the worker runs): both sign
    every callback until the previous one is unset. Nothing is stored (the secrets are derived),
    so running this again prints the same secrets.
    """
    settings = read_settings()
    try:
        with session_scope(settings) as session:
            rotated = [
                (client.name, client.revoked_at is not None, secret)
                for client, secret in master_rotation(
                    session,
                    master_key=settings.client_secret_key,
                    previous_key=settings.client_secret_key_previous,
                )
            ]
    except NoClientSecretKey as exc:
        fail(str(exc), 2)
    if as_json:
        print_json(
            [
                {"client": name, "revoked": revoked, "webhook_secret": secret}
                for name, revoked, secret in rotated
            ]
        )
        return
    if not rotated:
        click.echo("no API clients: nothing to hand over", err=True)
        return
    click.echo(
        "each client's new webhook secret (hand each to its client; until "
        "JOBTRACKER_CLIENT_SECRET_KEY_PREVIOUS is unset, callbacks are signed with the old "
        "secrets too):"
    )
    for name, revoked, secret in rotated:
        click.echo(f"  {name}{' (revoked)' if revoked else ''}: {secret}")


@clients.command("allow-network")
@click.argument("name")
@click.argument("network")
def allow_network_command(name: str, network: str) -> None:
    """Let the client's callbacks reach a private NETWORK (10.0.0.0/8, or one address)."""
    settings = read_settings()
    try:
        with session_scope(settings) as session:
            shown, added = allow_network(session, name, network, now=clock.now(settings))
    except (NotFoundError, ClientError) as exc:
        fail(str(exc), 1)
    if not added:
        click.echo(f"{shown} was already allowed for {name!r}")
        return
    click.echo(f"callbacks of {name!r} may now reach {shown}")
    if ipaddress.ip_network(shown).is_global:
        click.echo(f"(public addresses were allowed already: {shown} changes nothing)", err=True)


@clients.command("deny-network")
@click.argument("name")
@click.argument("network")
def deny_network_command(name: str, network: str) -> None:
    """Take back a NETWORK allowed with allow-network (as it was written, or its canonical form)."""
    settings = read_settings()
    try:
        with session_scope(settings) as session:
            shown = deny_network(session, name, network)
    except (NotFoundError, ClientError) as exc:
        fail(str(exc), 1)
    click.echo(
        f"callbacks of {name!r} may no longer reach {shown}; its pending callbacks there are "
        "refused at their next attempt"
    )
