"""Tokens and per-client webhook secrets: made, hashed and derived here, stored nowhere.

**Tokens** are ``jt_`` + 32 random bytes (URL-safe base64). The database keeps their SHA-256
only: with 256 random bits there is nothing to brute-force, so a slow password hash would only
cost CPU on every request. A stolen table of hashes lets nobody call the API.

**Webhook secrets** are derived, not stored: ``whsec_`` + base64(HMAC-SHA256(master key,
"jobtracker/webhook-secret/v1/<client id>/<generation>")). HMAC-SHA256 keyed with a high-entropy
secret is a pseudo-random function, so each (client, generation) gets an independent 256-bit
secret, and one client's secret tells nothing about another's. The database keeps only generation
numbers, so a database dump or backup leaks no secret at all; signing needs the master key
(``JOBTRACKER_CLIENT_SECRET_KEY``), which lives in the environment of the processes that sign.
Rotating a client's secret is ``generation + 1``. (Encrypting secrets at rest would need the same
key in the same places, plus a cipher dependency and ciphertext to migrate, for nothing more.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

#: Every token starts with this, so a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "jt_"
#: How much of a token ``jobtracker clients list`` shows: enough to tell tokens apart, and with
#: 42 of 256 bits shown, far too little to guess the rest.
SHOWN_PREFIX_CHARS = 10
_LABEL = b"jobtracker/webhook-secret/v1/"


#: Every token new_token() makes: the prefix and 32 bytes in URL-safe base64 (43 characters).
_TOKEN_RE = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")


def is_well_formed(token: str) -> bool:
    """Whether ``token`` has the form of a token (whether it is one takes a lookup)."""
    return _TOKEN_RE.fullmatch(token) is not None


def new_token() -> str:
    """A new bearer token (shown once, then only its hash is kept)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The hex SHA-256 stored for ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Constant-time comparison of two hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def shown_prefix(token: str) -> str:
    return token[:SHOWN_PREFIX_CHARS]


def derive_webhook_secret(master_key: bytes, client_id: int, generation: int) -> str:
    """Client ``client_id``'s webhook secret of ``generation`` (``whsec_`` + base64, 32 bytes)."""
    if client_id < 1 or generation < 1:
        raise ValueError("client id and generation are positive")
    message = _LABEL + f"{client_id}/{generation}".encode()
    digest = hmac.new(master_key, message, hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest).decode()
