"""One delivery attempt: :func:`send` POSTs a signed message once and says what happened.

:func:`send` never raises for anything the network or the receiver does: every result is an
:class:`AttemptOutcome` whose fields map onto a ``webhook_attempts`` row. It does no database
work and sleeps nowhere; retries belong to the caller, which asks
:class:`~worker.policy.DeliveryPolicy` when to try again.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata

import requests

from worker.errors import ConfigError, UnsafeCallbackURL
from worker.policy import LOG_BODY_BYTES, DeliveryPolicy
from worker.webhooks.classify import AttemptError, classify
from worker.webhooks.signing import NoWebhookSecret, sign_headers
from worker.webhooks.transport import PinnedAdapter, make_session, pinned
from worker.webhooks.urls import (
    CallbackResolutionError,
    Reach,
    loggable_url,
    resolve_callback_url,
)

__all__ = [
    "USER_AGENT",
    "AttemptError",
    "AttemptOutcome",
    "parse_retry_after",
    "refuse",
    "send",
]

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return metadata.version("jobtracker")
    except metadata.PackageNotFoundError:
        return "0+unknown"


USER_AGENT = f"jobtracker-webhooks/{_version()}"
_MAX_MESSAGE = 500


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt did. Messages never contain secrets or signatures."""

    #: The receiver answered 2xx.
    ok: bool
    status_code: int | None = None
    #: An :class:`AttemptError` value; None on success.
    error_class: str | None = None
    error_message: str | None = None
    latency_ms: int = 0
    #: The first KiB of the answer, decoded leniently (no NUL characters, for PostgreSQL text).
    response_body: str | None = None
    #: The receiver's Retry-After (429 and 503 only), in seconds, capped by the policy.
    retry_after_s: float | None = None
    #: The receiver answered 410 Gone: stop retrying this message.
    gone: bool = False

    @property
    def final(self) -> bool:
        """No later attempt can succeed (410 Gone, or a refused URL)."""
        return self.gone or self.error_class == AttemptError.REFUSED_URL


def send(
    url: str,
    msg_id: str,
    body: bytes,
    secrets: Sequence[str],
    *,
    policy: DeliveryPolicy,
    session: requests.Session | None = None,
    now: datetime | None = None,
    reach: Reach | None = None,
) -> AttemptOutcome:
    """POST ``body`` to ``url`` once, signed with every secret, and say what happened.

    ``reach`` says which addresses the URL may resolve to (default: ``policy.block_private``'s).

    ``now`` (aware; default the current time) is the signed ``webhook-timestamp``. ``session``
    must come from :func:`worker.webhooks.transport.make_session` (pass one to reuse connections,
    or to trust a private CA with ``session.verify = "/path/ca.pem"``); by default a fresh one is
    used and closed. Certificates are verified unless the session says otherwise.
    """
    started = time.monotonic()
    deadline = started + policy.total_timeout_s
    moment = datetime.now(UTC) if now is None else now
    attempt = _Attempt(url, msg_id, started, secrets)

    try:
        headers = sign_headers(msg_id, body, secrets, now=moment)
    except NoWebhookSecret as exc:
        return attempt.failed(AttemptError.NO_SECRET, exc.message, level=logging.ERROR)
    except ConfigError as exc:
        return attempt.failed(AttemptError.BAD_SECRET, exc.message, level=logging.ERROR)
    attempt.signature = headers["webhook-signature"]

    try:
        resolved = resolve_callback_url(
            url,
            reach=reach or Reach(block_private=policy.block_private),
            timeout_s=policy.connect_timeout_s,
        )
    except UnsafeCallbackURL as exc:
        return attempt.failed(AttemptError.REFUSED_URL, exc.message, level=logging.WARNING)
    except CallbackResolutionError as exc:
        return attempt.failed(AttemptError.DNS, exc.message)

    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            # Compressed answers could expand past the body cap.
            "Accept-Encoding": "identity",
        }
    )
    try:
        prepared = requests.Request("POST", resolved.url, headers=headers, data=body).prepare()
    except (requests.RequestException, ValueError) as exc:  # e.g. a host IDNA cannot encode
        return attempt.failed(AttemptError.REFUSED_URL, f"callback URL refused: {exc}")
    http = make_session() if session is None else session
    adapter = http.get_adapter(resolved.url)
    if not isinstance(adapter, PinnedAdapter):
        raise ValueError("send() needs a session from worker.webhooks.transport.make_session()")

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return attempt.failed(AttemptError.TIMEOUT, _deadline_message(policy))
    try:
        with pinned(resolved, deadline_s=remaining) as watchdog:
            try:
                # The adapter, not Session.send: the session would read a 3xx body in full
                # while preparing the redirect it is told not to follow.
                response = adapter.send(
                    prepared,
                    stream=True,
                    timeout=(min(policy.connect_timeout_s, remaining), remaining),
                    verify=http.verify if http.verify is not None else True,
                    cert=http.cert,
                    proxies={},
                )
            except requests.RequestException as exc:
                if watchdog.fired:
                    return attempt.failed(AttemptError.TIMEOUT, _deadline_message(policy))
                return attempt.failed(*classify(exc, connect_timeout_s=policy.connect_timeout_s))
            try:
                if watchdog.fired:
                    # The shutdown may have cut the status line or headers short, and http.client
                    # parses a truncated head without complaint.
                    return attempt.failed(AttemptError.TIMEOUT, _deadline_message(policy))
                head, complete = _read_head(response, policy.body_cap_bytes, deadline)
                if complete and not watchdog.fired:
                    # Back to the pool for the next send on this session; an answer that was
                    # not read to its end leaves the connection unusable, and close() drops it.
                    response.raw.release_conn()
            finally:
                response.close()
    finally:
        if session is None:
            http.close()

    status = response.status_code
    retry_after = None
    if status in (429, 503):
        elapsed = timedelta(seconds=time.monotonic() - started)
        retry_after = parse_retry_after(
            response.headers.get("Retry-After"),
            now=moment + elapsed,
            cap_s=policy.retry_after_cap_s,
        )
    text = _lenient_text(head)
    if 200 <= status < 300:
        return attempt.done(status, text)
    if 300 <= status < 400:
        location = loggable_url(response.headers.get("Location", ""))
        message = f"HTTP {status}: redirect to {location or '(no Location)'} not followed"
    else:
        message = f"HTTP {status} {response.reason or ''}".rstrip()
    return attempt.failed(
        AttemptError.HTTP,
        message,
        status_code=status,
        response_body=text,
        retry_after_s=retry_after,
        gone=status == 410,
    )


def refuse(url: str, msg_id: str, error_class: AttemptError, message: str) -> AttemptOutcome:
    """An attempt that was not made (nothing to sign with, say), logged like one that was."""
    attempt = _Attempt(url, msg_id, time.monotonic(), ())
    return attempt.failed(error_class, message, level=logging.ERROR)


def parse_retry_after(value: str | None, *, now: datetime, cap_s: float) -> float | None:
    """Retry-After (delay-seconds or HTTP-date) as seconds from ``now`` in [0, cap_s], or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(int(value))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), cap_s)


class _Attempt:
    """Builds the outcome and its log line; scrubs secrets and signatures from messages."""

    def __init__(self, url: str, msg_id: str, started: float, secrets: Sequence[str]) -> None:
        self.url = url
        self.msg_id = msg_id
        self.started = started
        self.secrets = [s for s in secrets if s]
        self.signature = ""

    def done(self, status: int, text: str) -> AttemptOutcome:
        outcome = AttemptOutcome(
            ok=True, status_code=status, latency_ms=self._latency_ms(), response_body=text
        )
        self._log(outcome, logging.DEBUG)
        return outcome

    def failed(
        self,
        error_class: AttemptError,
        message: str,
        *,
        level: int = logging.INFO,
        status_code: int | None = None,
        response_body: str | None = None,
        retry_after_s: float | None = None,
        gone: bool = False,
    ) -> AttemptOutcome:
        outcome = AttemptOutcome(
            ok=False,
            status_code=status_code,
            error_class=error_class.value,
            error_message=self._scrub(message)[:_MAX_MESSAGE],
            latency_ms=self._latency_ms(),
            response_body=None if response_body is None else self._scrub(response_body),
            retry_after_s=retry_after_s,
            gone=gone,
        )
        self._log(outcome, level)
        return outcome

    def _latency_ms(self) -> int:
        return round((time.monotonic() - self.started) * 1000)

    def _scrub(self, text: str) -> str:
        # Defence in depth: nothing we build quotes a secret, but exception texts and receiver
        # answers are not ours (a receiver might echo the signature header back).
        secrets = [*self.secrets, *(s.removeprefix("whsec_") for s in self.secrets)]
        parts = [p for sig in self.signature.split() for p in (sig, sig.partition(",")[2])]
        for needle in sorted({*secrets, *parts} - {""}, key=len, reverse=True):
            text = text.replace(needle, "[redacted]")
        return text

    def _log(self, outcome: AttemptOutcome, level: int) -> None:
        if outcome.ok:
            what = f"HTTP {outcome.status_code}"
        else:
            what = f"{outcome.error_class}: {outcome.error_message}"
        log.log(
            level,
            "webhook %s to %s: %s (%d ms)",
            self.msg_id,
            loggable_url(self.url),
            what,
            outcome.latency_ms,
            extra={
                "webhook_id": self.msg_id,
                "status_code": outcome.status_code,
                "error_class": outcome.error_class,
                "latency_ms": outcome.latency_ms,
            },
        )


def _read_head(response: requests.Response, cap: int, deadline: float) -> tuple[bytes, bool]:
    """Read at most ``cap`` bytes of the answer before ``deadline``.

    Returns the first KiB and whether the answer was read to its end.
    """
    kept = bytearray()
    total = 0
    try:
        while total < cap and time.monotonic() < deadline:
            chunk = response.raw.read(min(16384, cap - total), decode_content=False)
            if not chunk:
                return bytes(kept), True
            total += len(chunk)
            if len(kept) < LOG_BODY_BYTES:
                kept += chunk[: LOG_BODY_BYTES - len(kept)]
    except Exception:
        # The status line is what counts; a broken or slow body only shortens the log excerpt.
        pass
    return bytes(kept), False


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def _deadline_message(policy: DeliveryPolicy) -> str:
    return f"no complete answer within the {policy.total_timeout_s:g} s deadline"
