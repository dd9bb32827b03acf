"""send() against the real receiver over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from worker.devtools.receiver import Receiver, Reply
from worker.policy import DeliveryPolicy
from worker.webhooks.send import USER_AGENT, AttemptOutcome, send
from worker.webhooks.signing import build_payload, encode_body, new_message_id, sign_headers
from worker.webhooks.transport import make_session

#: Short timeouts keep the suite fast; SLACK covers thread scheduling on a busy CI machine.
POLICY = DeliveryPolicy(connect_timeout_s=1.0, total_timeout_s=1.5)
SLACK = 0.75


def make_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def secret() -> str:
    return make_secret()


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    with Receiver(secrets=[secret]) as rx:
        yield rx


def job_body(event: str = "job.succeeded") -> bytes:
    job = {"id": 1, "kind": "video_face_fusion", "job_id": "J-1", "status": event[4:]}
    return encode_body(build_payload(event, job, now=datetime.now(UTC)))


def deliver(rx: Receiver, secrets: list[str], **kwargs: Any) -> tuple[str, AttemptOutcome]:
    msg_id = new_message_id()
    kwargs.setdefault("policy", POLICY)
    return msg_id, send(kwargs.pop("url", rx.url), msg_id, job_body(), secrets, **kwargs)


def test_success_is_signed_and_verified(receiver: Receiver, secret: str) -> None:
    msg_id, outcome = deliver(receiver, [secret])

    assert outcome.ok and outcome.status_code == 200 and outcome.error_class is None
    assert outcome.retry_after_s is None and not outcome.gone
    # Whole milliseconds of a loopback exchange: it may round to 0, never past the deadline.
    assert 0 <= outcome.latency_ms <= POLICY.total_timeout_s * 1000
    [message] = receiver.wait_for(1, timeout=2)
    assert message.verified and message.msg_id == msg_id
    assert message.type == "job.succeeded"
    assert message.payload["data"]["job_id"] == "J-1"
    assert message.headers["content-type"] == "application/json"
    assert message.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("jobtracker-webhooks/")


def test_rotation_either_secret_verifies(secret: str) -> None:
    old, new = make_secret(), secret
    for known in (old, new):
        with Receiver(secrets=[known]) as rx:
            _, outcome = deliver(rx, [old, new])
            assert outcome.ok
            assert rx.received[0].verified


def test_unknown_secret_is_rejected_by_the_receiver(receiver: Receiver) -> None:
    _, outcome = deliver(receiver, [make_secret()])
    assert not outcome.ok and outcome.status_code == 401 and outcome.error_class == "http"
    assert not receiver.received[0].verified
    assert receiver.unique_ids() == []


def test_non_utc_timestamp_still_verifies(receiver: Receiver, secret: str) -> None:
    local = datetime.now(timezone(timedelta(hours=8)))
    _, outcome = deliver(receiver, [secret], now=local)
    assert outcome.ok
    assert receiver.received[0].verified


def test_500_then_200_then_a_duplicate(receiver: Receiver, secret: str) -> None:
    receiver.script([500])
    msg_id = new_message_id()
    body = job_body()
    first = send(receiver.url, msg_id, body, [secret], policy=POLICY)
    second = send(receiver.url, msg_id, body, [secret], policy=POLICY)
    third = send(receiver.url, msg_id, body, [secret], policy=POLICY)

    assert (first.ok, first.status_code, first.error_class) == (False, 500, "http")
    assert first.error_message == "HTTP 500 Internal Server Error"
    assert POLICY.next_attempt_delay(1, first, rand=lambda: 0.5) == 5.0
    assert second.ok and third.ok
    assert receiver.unique_ids() == [msg_id]
    assert receiver.attempts(msg_id) == 3
    assert receiver.duplicates == {msg_id: 1}


def test_scripted_sequence(receiver: Receiver, secret: str) -> None:
    receiver.script([503, 503, 200])
    msg_id = new_message_id()
    body = job_body()
    codes = [
        send(receiver.url, msg_id, body, [secret], policy=POLICY).status_code for _ in range(4)
    ]
    assert codes == [503, 503, 200, 200]


def test_410_means_gone(receiver: Receiver, secret: str) -> None:
    receiver.script([Reply.gone()])
    _, outcome = deliver(receiver, [secret])
    assert not outcome.ok and outcome.gone and outcome.final
    assert outcome.status_code == 410 and outcome.response_body == "gone"
    assert POLICY.next_attempt_delay(1, outcome, rand=lambda: 0.5) is None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_failures_and_not_followed(
    receiver: Receiver, secret: str, status: int
) -> None:
    with Receiver(secrets=[secret]) as target:
        receiver.script([Reply.redirect(target.url + "?token=hidden", status)])
        _, outcome = deliver(receiver, [secret])

        assert not outcome.ok and outcome.status_code == status
        assert outcome.error_class == "http"
        assert outcome.error_message is not None
        assert "not followed" in outcome.error_message
        assert "hidden" not in outcome.error_message
        time.sleep(0.1)
        assert target.received == []


def test_plain_3xx_is_a_failure(receiver: Receiver, secret: str) -> None:
    receiver.script([304])
    _, outcome = deliver(receiver, [secret])
    assert not outcome.ok and outcome.status_code == 304


@pytest.mark.serial  # bounds on wall time
def test_slow_receiver_times_out_at_the_total_deadline(receiver: Receiver, secret: str) -> None:
    receiver.script([Reply(200, delay_s=5)])
    started = time.monotonic()
    _, outcome = deliver(receiver, [secret])
    elapsed = time.monotonic() - started

    assert not outcome.ok and outcome.error_class == "timeout" and outcome.status_code is None
    assert POLICY.total_timeout_s - 0.1 <= elapsed < POLICY.total_timeout_s + SLACK


@pytest.mark.serial  # bounds on wall time
def test_trickling_receiver_cannot_outlast_the_total_deadline(
    receiver: Receiver, secret: str
) -> None:
    # Each byte arrives well within any per-read timeout; only a total deadline ends this.
    receiver.script([Reply(200, b"ok", trickle_s=0.1)])
    started = time.monotonic()
    _, outcome = deliver(receiver, [secret])
    elapsed = time.monotonic() - started

    assert outcome.error_class == "timeout"
    assert "1.5 s deadline" in (outcome.error_message or "")
    assert elapsed < POLICY.total_timeout_s + SLACK


@pytest.mark.serial  # bounds on wall time
def test_huge_answer_is_not_read_in_full(receiver: Receiver, secret: str) -> None:
    # 1 GiB announced; reading it all would take far longer than the assertion allows.
    receiver.script([Reply(200, b"A" * 1000 + b"B" * 64536, repeat=16384)])
    started = time.monotonic()
    _, outcome = deliver(receiver, [secret])

    assert outcome.ok
    assert outcome.response_body == "A" * 1000 + "B" * 24
    assert time.monotonic() - started < 1.0


def test_binary_answer_is_kept_leniently(receiver: Receiver, secret: str) -> None:
    receiver.script([Reply(400, b"\xff\x00bad")])
    _, outcome = deliver(receiver, [secret])
    assert outcome.response_body == "\ufffd\ufffdbad"


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(receiver: Receiver, secret: str, status: int) -> None:
    receiver.script([Reply.retry_after(120, status)])
    _, outcome = deliver(receiver, [secret])
    assert outcome.retry_after_s == 120.0
    assert POLICY.next_attempt_delay(1, outcome, rand=lambda: 0.5) == 120.0


def test_retry_after_http_date_is_honoured(receiver: Receiver, secret: str) -> None:
    when = datetime.now(UTC) + timedelta(seconds=300)
    receiver.script([Reply.retry_after(format_datetime(when, usegmt=True))])
    _, outcome = deliver(receiver, [secret])
    assert outcome.retry_after_s == pytest.approx(300, abs=3)


def test_retry_after_is_capped_and_ignored_outside_429_503(receiver: Receiver, secret: str) -> None:
    policy = DeliveryPolicy(connect_timeout_s=1, total_timeout_s=1.5, retry_after_cap_s=60)
    receiver.script([Reply.retry_after(86400), Reply.retry_after(30, status=500)])
    _, capped = deliver(receiver, [secret], policy=policy)
    _, ignored = deliver(receiver, [secret], policy=policy)
    assert capped.retry_after_s == 60.0
    assert policy.next_attempt_delay(1, capped, rand=lambda: 0.5) == 60.0
    assert ignored.retry_after_s is None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://100.100.100.200/",
        "http://user:pw@127.0.0.1/",
        "ftp://127.0.0.1/",
        "http:///nohost",
    ],
)
def test_refused_urls_are_never_contacted(secret: str, url: str) -> None:
    outcome = send(url, new_message_id(), job_body(), [secret], policy=POLICY)
    assert not outcome.ok and outcome.error_class == "refused_url" and outcome.final
    assert outcome.status_code is None
    assert POLICY.next_attempt_delay(1, outcome, rand=lambda: 0.5) is None


def test_user_info_never_reaches_a_log_line(
    receiver: Receiver, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL stored before the table refused user info (or a Location header carrying some)."""
    caplog.set_level(logging.DEBUG)
    url = receiver.url.replace("http://", "http://alice:hunter2@")
    send(url, new_message_id(), job_body(), [secret], policy=POLICY)
    receiver.script([Reply.redirect("http://bob:s3cret@elsewhere.example/x?token=t")])
    send(receiver.url, new_message_id(), job_body(), [secret], policy=POLICY)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "webhook" in logged and "elsewhere.example/x" in logged
    for needle in ("alice", "hunter2", "bob", "s3cret", "token=t"):
        assert needle not in logged


def test_block_private_refuses_the_local_receiver(receiver: Receiver, secret: str) -> None:
    policy = DeliveryPolicy(connect_timeout_s=1, total_timeout_s=1.5, block_private=True)
    _, outcome = deliver(receiver, [secret], policy=policy)
    assert outcome.error_class == "refused_url"
    assert "loopback" in (outcome.error_message or "")
    assert receiver.received == []


def test_no_secret_sends_nothing(receiver: Receiver) -> None:
    _, outcome = deliver(receiver, [])
    assert not outcome.ok and outcome.error_class == "no_secret" and not outcome.final
    time.sleep(0.1)
    assert receiver.received == []


def test_down_receiver_then_back_on_the_same_port(receiver: Receiver, secret: str) -> None:
    url = receiver.url
    receiver.stop()
    _, down = deliver(receiver, [secret], url=url)
    assert down.error_class == "connection" and down.status_code is None

    receiver.start()
    assert receiver.url == url
    _, up = deliver(receiver, [secret])
    assert up.ok


def test_unresolvable_host_is_a_dns_error(secret: str) -> None:
    outcome = send(
        "http://nothing.invalid/cb", new_message_id(), job_body(), [secret], policy=POLICY
    )
    assert outcome.error_class == "dns" and not outcome.final


def test_connection_is_pinned_to_the_checked_address(
    receiver: Receiver, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers 127.0.0.1 to the check and 127.0.0.2 afterwards."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://rebind.test:{receiver.port}/webhook"
    _, outcome = deliver(receiver, [secret], url=url)

    assert outcome.ok
    assert lookups == ["rebind.test"]  # resolved once, by the check
    assert receiver.received[0].headers["host"] == f"rebind.test:{receiver.port}"


def test_rebinding_to_metadata_is_refused(
    receiver: Receiver, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def metadata(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    monkeypatch.setattr(socket, "getaddrinfo", metadata)
    _, outcome = deliver(receiver, [secret], url="http://innocent.test/cb")
    assert outcome.error_class == "refused_url"


def test_a_session_reuses_connections(receiver: Receiver, secret: str) -> None:
    receiver.script([200, Reply(500, b"x" * 5000), 200, 200])
    with make_session() as session:
        outcomes = [deliver(receiver, [secret], session=session)[1] for _ in range(4)]
    assert [o.status_code for o in outcomes] == [200, 500, 200, 200]
    ports = [m.client[1] for m in receiver.received]
    assert len(set(ports)) == 1
    with pytest.raises(ValueError, match="make_session"):
        deliver(receiver, [secret], session=requests.Session())


def test_a_kept_alive_connection_is_not_reused_for_other_addresses(
    receiver: Receiver, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second attempt's check answers 127.0.0.2 (nothing listens there): the open
    connection to 127.0.0.1 must not carry it."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1", "127.0.0.2"])

    def moving(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "moving.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", moving)
    url = f"http://moving.test:{receiver.port}/webhook"
    with make_session() as session:
        _, first = deliver(receiver, [secret], url=url, session=session)
        _, second = deliver(receiver, [secret], url=url, session=session)
    assert first.ok
    assert second.error_class == "connection"
    assert len(receiver.received) == 1


def test_nothing_secret_reaches_logs_or_outcomes(
    receiver: Receiver, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    other = make_secret()
    now = datetime.now(UTC)
    msg_id = new_message_id()
    body = job_body()
    signature = sign_headers(msg_id, body, [secret, other], now=now)["webhook-signature"]
    # A receiver that echoes what it got, secrets included, and then fails in every way.
    echo = f"got {signature} with {secret}".encode()
    receiver.script([Reply(400, echo), Reply(200, delay_s=5), Reply.redirect("http://x/")])

    caplog.set_level(logging.DEBUG)
    outcomes = [
        send(receiver.url, msg_id, body, [secret, other], policy=POLICY, now=now) for _ in range(3)
    ]
    outcomes.append(send("http://169.254.169.254/", msg_id, body, [secret], policy=POLICY))
    outcomes.append(send("http://127.0.0.1:1/", msg_id, body, [secret], policy=POLICY))
    outcomes.append(send(receiver.url, msg_id, body, ["whsec_Q"], policy=POLICY))

    assert [o.error_class for o in outcomes] == [
        "http", "timeout", "http", "refused_url", "connection", "bad_secret",
    ]  # fmt: skip
    assert "[redacted]" in (outcomes[0].response_body or "")
    texts = [r.getMessage() for r in caplog.records] + [repr(o) for o in outcomes]
    needles = [secret, other, secret.removeprefix("whsec_"), "whsec_Q"]
    needles += [sig.partition(",")[2] for sig in signature.split()]
    for text in texts:
        for needle in needles:
            assert needle not in text


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder: Path = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_https_keeps_the_host_name_for_sni_and_certificate(
    secret: str, certificate: tuple[str, str]
) -> None:
    with Receiver(secrets=[secret], tls=certificate) as rx:
        assert rx.url.startswith("https://localhost:")
        _, untrusted = deliver(rx, [secret])
        assert untrusted.error_class == "tls"
        assert "certificate" in (untrusted.error_message or "")

        with make_session() as session:
            session.verify = certificate[0]
            _, outcome = deliver(rx, [secret], session=session)
        assert outcome.ok
        assert [m.verified for m in rx.received if m.status == 200] == [True]


def test_receiver_wait_for_reports_what_arrived(receiver: Receiver, secret: str) -> None:
    receiver.script([503])
    msg_id, _ = deliver(receiver, [secret])
    with pytest.raises(TimeoutError, match="0 of 1 messages") as info:
        receiver.wait_for(1, timeout=0.2)
    assert msg_id in str(info.value) and "503" in str(info.value)
    assert len(receiver.wait_for_requests(1, timeout=0.2)) == 1


def test_receiver_without_secrets_records_unverified_messages() -> None:
    with Receiver() as rx:
        _, outcome = deliver(rx, [make_secret()])
        assert outcome.ok
        [message] = rx.received
        assert not message.verified and message.type == "job.succeeded"
        assert rx.unique_ids() == []


def test_stopping_cuts_a_slow_reply_short(receiver: Receiver, secret: str) -> None:
    receiver.script([Reply(200, delay_s=30)])
    policy = DeliveryPolicy(connect_timeout_s=1, total_timeout_s=10)
    results: list[AttemptOutcome] = []
    sender = threading.Thread(
        target=lambda: results.append(deliver(receiver, [secret], policy=policy)[1])
    )
    sender.start()
    receiver.wait_for_requests(1, timeout=2)
    started = time.monotonic()
    receiver.stop()
    sender.join(timeout=5)
    assert time.monotonic() - started < 2
    assert results and results[0].error_class == "connection"
