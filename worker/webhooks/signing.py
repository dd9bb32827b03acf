"""Callback messages and their Standard Webhooks signatures.

A message is ``{"type", "timestamp", "data"}`` (DESIGN.md "Callbacks"), serialized once by
:func:`encode_body`. :func:`sign_headers` gives the three Standard Webhooks headers; the signature
is computed by the ``standardwebhooks`` library itself, so a receiver using that library verifies
what we send by construction. Every configured secret signs each message and the signatures are
space-separated: during a key rotation a receiver that knows only the old secret, or only the new
one, accepts the message.

No secret configured: jobtracker refuses to send. :func:`sign_headers` raises
:class:`NoWebhookSecret`, and :func:`worker.webhooks.send.send` turns that into a failed attempt
with ``error_class="no_secret"`` *before* any network traffic. The attempt counts against the
retry schedule like any other failure, so a message sent while the secret is missing is delivered
once ``JOBTRACKER_WEBHOOK_SECRET`` is set and the process restarted (or it ends ``failed`` and can
be redelivered). A callback is never sent unsigned, and no secret is made up: a generated secret
the receiver does not know would only turn a clear configuration error into signature failures.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

from standardwebhooks.webhooks import Webhook

from worker.errors import ConfigError
from worker.jsonsafe import clean

EVENT_TYPES = frozenset({"job.succeeded", "job.failed", "job.canceled", "job.expired"})
#: The ``webhook_deliveries.id`` column is ``String(64)``.
MAX_MESSAGE_ID_LENGTH = 64
#: Printable ASCII without spaces or the ``.`` that separates the signed parts.
_MESSAGE_ID_RE = re.compile(r"[\x21-\x2d\x2f-\x7e]{1,64}")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class NoWebhookSecret(ConfigError):
    """No webhook signing secret is configured (set JOBTRACKER_WEBHOOK_SECRET); not sending."""


def build_payload(event_type: str, job: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """The callback body for ``job`` as a JSON-ready dict.

    Datetimes in ``job`` become ISO-8601 UTC strings, so the dict stored in the outbox is exactly
    what every attempt sends.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; use one of {sorted(EVENT_TYPES)}")
    payload = {"type": event_type, "timestamp": _iso_utc(now), "data": _jsonable(dict(job))}
    encode_body(payload)  # fail here, not at the first attempt, on a value JSON cannot carry
    return payload


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes to POST: compact UTF-8 JSON with sorted keys.

    Sorted keys make the bytes stable even when the outbox column (JSONB) reorders them.
    """
    # allow_nan=False: receivers' strict parsers refuse NaN; build_payload made the values finite.
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def sign_headers(
    msg_id: str, body: bytes, secrets: Sequence[str], *, now: datetime
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one attempt.

    One ``v1,<base64>`` signature per distinct secret, space-separated. ``now`` must be aware; it
    is converted to UTC first because ``Webhook.sign`` does ``timestamp.replace(tzinfo=utc)``,
    which would sign the wrong second for any other zone.
    """
    if not _MESSAGE_ID_RE.fullmatch(msg_id):
        raise ValueError(
            f"message id must be 1-{MAX_MESSAGE_ID_LENGTH} printable ASCII characters "
            "without spaces or dots"
        )
    keys = list(dict.fromkeys(s for s in secrets if s))
    if not keys:
        raise NoWebhookSecret()
    timestamp = _utc(now)
    data = body.decode("utf-8")
    signatures = []
    for index, secret in enumerate(keys, 1):
        try:
            hook = Webhook(secret)
        except Exception:
            # The library's error may quote the secret's characters; never pass it on.
            raise ConfigError(f"webhook secret #{index} is not valid base64") from None
        signatures.append(hook.sign(msg_id, timestamp, data))
    return {
        "webhook-id": msg_id,
        # The same rounding as Webhook.sign, so the header names the signed second.
        "webhook-timestamp": str(math.floor(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def is_message_id(text: str) -> bool:
    """Whether ``text`` could be a ``webhook-id`` (1-64 printable ASCII, no space or dot)."""
    return _MESSAGE_ID_RE.fullmatch(text) is not None


def new_message_id(*, now_ms: int | None = None, randomness: bytes | None = None) -> str:
    """``msg_`` + a ULID: 48-bit milliseconds then 80 random bits, Crockford base32 (30 chars).

    Ids sort by creation time, so ``ORDER BY id`` in psql reads like a log.
    """
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = os.urandom(10) if randomness is None else randomness
    if not 0 <= ms < 1 << 48 or len(rand) != 10:
        raise ValueError("a ULID needs 0 <= milliseconds < 2**48 and 10 random bytes")
    value = (ms << 80) | int.from_bytes(rand, "big")
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "msg_" + "".join(chars)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime; pass an aware one (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC)


def _iso_utc(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """Plain JSON values only: datetimes as text, and text and numbers that strict JSON parsers
    and UTF-8 can carry (metadata written by plain SQL may hold NaN or lone surrogates)."""
    if isinstance(value, str | float):
        return clean(value)
    if isinstance(value, datetime):
        return _iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {clean(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
