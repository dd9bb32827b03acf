"""What went wrong with one callback attempt: the ``webhook_attempts.error_class`` values, and
how an exception from the HTTP stack maps onto them with a message an operator can act on.

requests wraps urllib3, which wraps the socket and ssl errors, and the cause that matters (a
refused connection, a failed certificate check, a DNS failure) sits at the bottom of that chain:
:func:`classify` walks it.
"""

from __future__ import annotations

import enum
import socket
import ssl

import requests
from urllib3.exceptions import NameResolutionError


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


def classify(
    exc: requests.RequestException, *, connect_timeout_s: float
) -> tuple[AttemptError, str]:
    root = _root_cause(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return AttemptError.TIMEOUT, f"connect timed out after {connect_timeout_s:g} s"
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
