"""Tokens and derived per-client webhook secrets: random, hashed, independent, verifiable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from standardwebhooks.webhooks import Webhook

from jobtracker.models import ApiClient, Scope
from worker.clients.credentials import (
    TOKEN_PREFIX,
    derive_webhook_secret,
    new_token,
    same_hash,
    shown_prefix,
    token_hash,
)
from worker.clients.registry import Caller, parse_scopes, webhook_secrets

KEY = b"k" * 32


def test_tokens_are_random_prefixed_and_stored_as_sha256() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
    digest = token_hash(token)
    assert len(digest) == 64 and token not in digest
    assert same_hash(digest, token_hash(token)) and not same_hash(digest, token_hash(token + "x"))
    assert token.startswith(shown_prefix(token)) and len(shown_prefix(token)) == 10


def test_webhook_secrets_are_derived_per_client_and_generation() -> None:
    one = derive_webhook_secret(KEY, 1, 1)
    assert one == derive_webhook_secret(KEY, 1, 1)  # reproducible at send time
    others = {
        derive_webhook_secret(KEY, 2, 1),
        derive_webhook_secret(KEY, 1, 2),
        derive_webhook_secret(b"another key of 32 characters....", 1, 1),
        derive_webhook_secret(KEY, 11, 1),
    }
    assert one not in others and len(others) == 4
    # A valid Standard Webhooks secret of 32 bytes: the library signs and verifies with it.
    hook = Webhook(one)
    now = datetime.now(UTC)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": hook.sign("msg_1", now, "{}"),
    }
    assert hook.verify(b"{}", headers) == {}


def test_both_secrets_sign_during_a_rotation_and_only_the_new_one_after() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)
    client = ApiClient(
        id=7,
        name="svc",
        scopes="read",
        secret_generation=3,
        previous_secret_generation=2,
        previous_secret_until=now + timedelta(hours=1),
    )
    assert webhook_secrets(client, KEY, now=now) == (
        derive_webhook_secret(KEY, 7, 3),
        derive_webhook_secret(KEY, 7, 2),
    )
    later = now + timedelta(hours=1)
    assert webhook_secrets(client, KEY, now=later) == (derive_webhook_secret(KEY, 7, 3),)


def test_scopes() -> None:
    assert parse_scopes(["read", "enqueue", "read"]) == {Scope.READ, Scope.ENQUEUE}
    reader = Caller(1, "r", frozenset({Scope.READ}))
    assert reader.allows(Scope.READ) and not reader.allows(Scope.ENQUEUE)
    admin = Caller(2, "a", frozenset({Scope.ADMIN}))
    assert all(admin.allows(s) for s in Scope)
