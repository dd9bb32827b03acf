"""One delivery attempt (:func:`send`), and the policy that schedules the next one.

:func:`send` never raises for anything the network or the receiver does: every result is an
:class:`AttemptOutcome` whose fields map onto a ``webhook_attempts`` row. It does no database
work and sleeps nowhere; retries belong to the caller, which asks the policy when to try again.
"""

from __future__ import annotations

import email.utils
import enum
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NameResolutionError

from worker.errors import ConfigError, UnsafeCallbackURL
from worker.settings import DEFAULT_RETRY_SCHEDULE
from worker.webhooks.signing import NoWebhookSecret, sign_headers
from worker.webhooks.transport import PinnedAdapter, make_session, pinned
from worker.webhooks.urls import (
    CallbackResolutionError,
    check_url,
    resolve_callback_url,
    validate_callback_url,
)

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = [
    "USER_AGENT",
    "AttemptError",
    "AttemptOutcome",
    "DeliveryPolicy",
    "UnsafeCallbackURL",
    "check_url",
    "parse_retry_after",
    "send",
    "validate_callback_url",
]

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return metadata.version("jobtracker")
    except metadata.PackageNotFoundError:
        return "0+unknown"


USER_AGENT = f"jobtracker-webhooks/{_version()}"
#: How much of the receiver's answer is kept for the attempt log (``webhook_attempts``).
LOG_BODY_BYTES = 1024
_MAX_MESSAGE = 500


class AttemptError(enum.StrEnum):
    """``webhook_attempts.error_class``: why an attempt failed."""

    #: The receiver answered, but not 2xx (3xx included: redirects are not followed).
    HTTP = "http"
    #: Connecting took longer than the connect timeout, or the whole attempt longer than the total.
    TIMEOUT = "timeout"
    #: Refused, reset or unreachable.
    CONNECTION = "connection"
    #: The host name could not be resolved.
    DNS = "dns"
    #: TLS handshake or certificate verification failed.
    TLS = "tls"
    #: The URL is not allowed (syntax, or an address in a refused range); never retried.
    REFUSED_URL = "refused_url"
    #: No signing secret is configured, so nothing was sent.
    NO_SECRET = "no_secret"
    #: A configured signing secret is unusable, so nothing was sent.
    BAD_SECRET = "bad_secret"


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


@dataclass(frozen=True)
class DeliveryPolicy:
    """When to retry a callback, and how long one attempt may take.

    After the n-th failed attempt (n = 1, 2, ...) the next one waits::

        delay(n) = max(schedule[n-1] * (1 + jitter * (2 * rand() - 1)),
                       min(retry_after, retry_after_cap_s))

    where ``rand()`` is uniform in [0, 1) and ``retry_after`` is the receiver's Retry-After (sent
    with 429 or 503; 0 when absent). There is no next attempt (``None``, the message ends
    ``failed``) when n > len(schedule), after 410 Gone, or when the URL is refused. So a message
    gets at most ``1 + len(schedule)`` attempts; the default schedule is Svix's (5 s, 5 min,
    30 min, 2 h, 5 h, 10 h, 10 h). A missing secret is retried like any failure, so setting one
    within the schedule still delivers.

    One attempt: connecting may take ``connect_timeout_s``, everything (DNS, connect, TLS, request,
    answer) ``total_timeout_s``; at most ``body_cap_bytes`` of the answer are read.
    """

    retry_schedule_s: tuple[float, ...] = tuple(float(s) for s in DEFAULT_RETRY_SCHEDULE)
    #: Each delay varies by up to this fraction either way, so retries do not arrive in waves.
    jitter: float = 0.1
    retry_after_cap_s: float = 3600.0
    connect_timeout_s: float = 5.0
    total_timeout_s: float = 15.0
    body_cap_bytes: int = 64 * 1024
    #: Also refuse private, loopback, ULA and CGNAT addresses (JOBTRACKER_WEBHOOK_BLOCK_PRIVATE).
    block_private: bool = False

    def __post_init__(self) -> None:
        if any(not s >= 0 for s in self.retry_schedule_s):
            raise ConfigError("webhook retry delays must be non-negative seconds")
        if not 0 <= self.jitter < 1:
            raise ConfigError("webhook retry jitter must be in [0, 1)")
        if not 0 < self.connect_timeout_s <= self.total_timeout_s:
            raise ConfigError("webhook timeouts must satisfy 0 < connect <= total")
        if self.retry_after_cap_s < 0 or self.body_cap_bytes < LOG_BODY_BYTES:
            raise ConfigError(
                f"webhook Retry-After cap must be >= 0 and body cap >= {LOG_BODY_BYTES} bytes"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            retry_schedule_s=tuple(float(s) for s in settings.webhook_retry_schedule_s),
            block_private=settings.webhook_block_private,
        )

    @property
    def max_attempts(self) -> int:
        return 1 + len(self.retry_schedule_s)

    def next_attempt_delay(
        self,
        attempts_made: int,
        outcome: AttemptOutcome,
        *,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` attempts, or None if none."""
        if outcome.ok:
            raise ValueError("the message was delivered; there is no next attempt")
        if attempts_made < 1:
            raise ValueError("attempts_made counts the attempt just made, so it is >= 1")
        if outcome.final or attempts_made > len(self.retry_schedule_s):
            return None
        r = rand()
        if not 0 <= r <= 1:
            raise ValueError(f"rand() must return a number in [0, 1], got {r!r}")
        delay = self.retry_schedule_s[attempts_made - 1] * (1 + self.jitter * (2 * r - 1))
        if outcome.retry_after_s is not None:
            delay = max(delay, min(outcome.retry_after_s, self.retry_after_cap_s))
        return delay


def send(
    url: str,
    msg_id: str,
    body: bytes,
    secrets: Sequence[str],
    *,
    policy: DeliveryPolicy,
    session: requests.Session | None = None,
    now: datetime | None = None,
) -> AttemptOutcome:
    """POST ``body`` to ``url`` once, signed with every secret, and say what happened.

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
            url, block_private=policy.block_private, timeout_s=policy.connect_timeout_s
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
                return attempt.failed(*_classify(exc, policy))
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
        location = _without_query(response.headers.get("Location", ""))
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
            _without_query(self.url),
            what,
            outcome.latency_ms,
            extra={
                "webhook_id": self.msg_id,
                "status_code": outcome.status_code,
                "error_class": outcome.error_class,
                "latency_ms": outcome.latency_ms,
            },
        )


def _classify(exc: requests.RequestException, policy: DeliveryPolicy) -> tuple[AttemptError, str]:
    root = _root_cause(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return AttemptError.TIMEOUT, f"connect timed out after {policy.connect_timeout_s:g} s"
    if isinstance(exc, requests.exceptions.Timeout):
        return AttemptError.TIMEOUT, "timed out waiting for the answer"
    if isinstance(exc, requests.exceptions.SSLError) or isinstance(root, ssl.SSLError):
        reason = getattr(root, "verify_message", None)  # set on certificate failures
        return AttemptError.TLS, f"TLS failed: {reason or _reason(root)}"
    if _caused_by(exc, (NameResolutionError, socket.gaierror)):
        return AttemptError.DNS, f"cannot resolve host: {_reason(root)}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return AttemptError.CONNECTION, f"connection failed: {_reason(root)}"
    return AttemptError.CONNECTION, f"request failed: {type(exc).__name__}: {_reason(root)}"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it: urllib3's ``reason``, ``__cause__``, ``__context__``, args."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        reason = getattr(current, "reason", None)
        nested = [reason, current.__cause__, current.__context__, *current.args]
        todo.extend(n for n in nested if isinstance(n, BaseException))
    return seen


def _root_cause(exc: BaseException) -> BaseException:
    chain = _chain(exc)
    for candidate in reversed(chain):
        if isinstance(candidate, OSError) and not isinstance(candidate, requests.RequestException):
            return candidate
    return chain[-1]


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    return any(isinstance(item, kinds) for item in _chain(exc))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    # urllib3 prefixes "<HTTPConnection object at 0x...>: " to its messages.
    return text.rpartition(">: ")[2] if ">: " in text else text


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


def _without_query(url: str) -> str:
    """A URL for logs: tokens live in the query and fragment, so both are dropped."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(malformed URL)"
    return parts._replace(query="", fragment="").geturl()


def _deadline_message(policy: DeliveryPolicy) -> str:
    return f"no complete answer within the {policy.total_timeout_s:g} s deadline"
