"""Messages and Standard Webhooks signatures, checked with the standardwebhooks library."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from worker.errors import ConfigError
from worker.webhooks.signing import (
    NoWebhookSecret,
    build_payload,
    encode_body,
    new_message_id,
    sign_headers,
)

SHANGHAI = timezone(timedelta(hours=8))
NEW_YORK = timezone(timedelta(hours=-5))


def make_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def message(now: datetime | None = None) -> tuple[str, bytes]:
    moment = now or datetime.now(UTC)
    payload = build_payload("job.succeeded", {"id": 7, "status": "succeeded"}, now=moment)
    return new_message_id(), encode_body(payload)


def test_one_secret_verifies_with_the_library() -> None:
    secret = make_secret()
    msg_id, body = message()
    headers = sign_headers(msg_id, body, [secret], now=datetime.now(UTC))

    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == msg_id
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["data"] == {"id": 7, "status": "succeeded"}


def test_rotation_signs_with_every_secret_and_either_verifies() -> None:
    old, new = make_secret(), make_secret()
    msg_id, body = message()
    headers = sign_headers(msg_id, body, [old, new], now=datetime.now(UTC))

    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(make_secret()).verify(body, headers)


def test_tampered_body_does_not_verify() -> None:
    secret = make_secret()
    msg_id, body = message()
    headers = sign_headers(msg_id, body, [secret], now=datetime.now(UTC))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"succeeded", b"failed"), headers)


@pytest.mark.parametrize("zone", [SHANGHAI, NEW_YORK])
def test_non_utc_aware_timestamp_signs_the_right_second(zone: timezone) -> None:
    secret = make_secret()
    msg_id, body = message()
    local_now = datetime.now(zone)
    headers = sign_headers(msg_id, body, [secret], now=local_now)

    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    # Webhook.sign alone would treat the local wall time as UTC: 8 or 5 hours off, refused.
    Webhook(secret).verify(body, headers)
    utc_headers = sign_headers(msg_id, body, [secret], now=local_now.astimezone(UTC))
    assert utc_headers == headers


def test_naive_timestamp_is_refused() -> None:
    msg_id, body = message()
    with pytest.raises(ValueError, match="naive"):
        sign_headers(msg_id, body, [make_secret()], now=datetime.now())


@pytest.mark.parametrize("secrets", [[], [""], ()])
def test_no_secret_refuses_to_sign(secrets: list[str]) -> None:
    msg_id, body = message()
    with pytest.raises(NoWebhookSecret, match="JOBTRACKER_WEBHOOK_SECRET"):
        sign_headers(msg_id, body, secrets, now=datetime.now(UTC))


def test_invalid_secret_is_a_config_error_that_does_not_quote_it() -> None:
    msg_id, body = message()
    bad = "whsec_Q"  # one base64 character cannot decode
    with pytest.raises(ConfigError) as info:
        sign_headers(msg_id, body, [make_secret(), bad], now=datetime.now(UTC))
    assert "#2" in str(info.value)
    assert "whsec_Q" not in str(info.value)


@pytest.mark.parametrize("msg_id", ["", "a b", "a.b", "x" * 65, "msg_\n"])
def test_unusable_message_ids_are_refused(msg_id: str) -> None:
    with pytest.raises(ValueError, match="message id"):
        sign_headers(msg_id, b"{}", [make_secret()], now=datetime.now(UTC))


def test_message_ids_are_prefixed_short_unique_and_time_ordered() -> None:
    ids = [new_message_id(now_ms=1_700_000_000_000 + i) for i in range(50)]
    assert all(i.startswith("msg_") and len(i) == 30 for i in ids)
    assert sorted(ids) == ids
    assert len({new_message_id() for _ in range(1000)}) == 1000


def test_message_id_is_a_ulid() -> None:
    assert new_message_id(now_ms=0, randomness=bytes(10)) == "msg_" + "0" * 26
    top = new_message_id(now_ms=2**48 - 1, randomness=b"\xff" * 10)
    assert top == "msg_7" + "Z" * 25
    with pytest.raises(ValueError):
        new_message_id(now_ms=2**48)


def test_payload_shape_and_utc_timestamps() -> None:
    now = datetime(2025, 3, 1, 20, 30, 15, 123456, tzinfo=SHANGHAI)
    finished = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    payload = build_payload(
        "job.failed",
        {"id": 3, "finished_at": finished, "metadata": {"tags": ("a", "b")}},
        now=now,
    )
    assert payload == {
        "type": "job.failed",
        "timestamp": "2025-03-01T12:30:15.123Z",
        "data": {
            "id": 3,
            "finished_at": "2025-03-01T12:00:00.000Z",
            "metadata": {"tags": ["a", "b"]},
        },
    }
    # What the outbox stores round-trips to the same bytes.
    assert encode_body(json.loads(encode_body(payload))) == encode_body(payload)


@pytest.mark.parametrize("event", ["job.succeeded", "job.failed", "job.canceled", "job.expired"])
def test_every_contract_event_type_is_accepted(event: str) -> None:
    assert build_payload(event, {}, now=datetime.now(UTC))["type"] == event


def test_unknown_event_type_and_unserializable_data_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        build_payload("job.done", {}, now=datetime.now(UTC))
    with pytest.raises(TypeError):
        build_payload("job.failed", {"x": object()}, now=datetime.now(UTC))


def test_body_is_compact_sorted_utf8() -> None:
    body = encode_body({"b": 1, "a": "é"})
    assert body == '{"a":"é","b":1}'.encode()
