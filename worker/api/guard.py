"""What a request without a valid token may cost: next to nothing.

Looking a token up costs a worker thread and a database query, and the per-client rate gate can
only run after it (it needs the client). So before any lookup, in the event loop, with no I/O:

1. **the token's form**: ``jt_`` and 43 URL-safe base64 characters
   (:func:`~worker.clients.credentials.is_well_formed`); anything else is a 401 at once;
2. **a short negative cache**: the SHA-256 of each token refused in the last
   :data:`REFUSED_TTL_S` (never the token itself); such a token is a 401 at once;
3. **a budget of failed authentications per source**: the client's address after the
   trusted-proxy rule (``JOBTRACKER_API_TRUSTED_PROXIES``: uvicorn believes ``X-Forwarded-For``
   only from those), an IPv6 one by its /64. A source may fail :data:`FAILURE_BURST` times at
   once, then ``JOBTRACKER_API_AUTH_FAILURES`` times a minute; past that it gets 429 with
   ``Retry-After`` and no lookup, whatever token it sends, until its budget refills.

Only a well-formed, unknown token from a source within its budget is looked up. A flood from one
address therefore costs a handful of lookups, then only the parsing of its requests. Both tables
are bounded (:data:`MAX_ENTRIES` each, the least recently touched entry goes first), so a flood
from many addresses cannot grow them without bound.

The checks run in :class:`Gate`, an ASGI middleware in front of FastAPI's routing: a refusal
costs the parsing of the request and a few dictionary reads, not a route's dependencies and
validation (which cost several times more, in the event loop every other request shares).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from worker.api.errors import ApiError, error_response
from worker.clients.credentials import is_well_formed, token_hash
from worker.observe.metrics import API_AUTH_REFUSALS

log = logging.getLogger(__name__)

#: How long a refused token is refused without a lookup.
REFUSED_TTL_S = 60.0
#: Failed authentications a source may make at once (then JOBTRACKER_API_AUTH_FAILURES a minute).
FAILURE_BURST = 20
#: Entries of each table (refused tokens, sources); the least recently touched goes first.
MAX_ENTRIES = 65_536
#: At most one log line per this many seconds about sources over their budget.
WARN_EVERY_S = 60.0

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jobtracker"'}
INVALID = "the token is not valid (unknown, expired or revoked)"
NO_TOKEN = "send the client token as Authorization: Bearer <token>"
#: The paths that need a token.
GUARDED_PREFIX = "/v1/"


def source_of(host: str | None) -> str:
    """The key a client's failures count under: its address, an IPv6 one by its /64 (one host
    usually holds a whole /64)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # a name a trusted proxy forwarded
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class AuthGuard:
    """The checks before a token lookup, and the failures they remember. Thread-safe."""

    def __init__(
        self, failures_per_min: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        #: A failure moves its source's arrival time on by this much.
        self._interval_s = 60.0 / failures_per_min
        self._tolerance_s = (FAILURE_BURST - 1) * self._interval_s
        self._lock = threading.Lock()
        #: token SHA-256 -> when it may be looked up again
        self._refused: OrderedDict[str, float] = OrderedDict()
        #: source -> its theoretical arrival time (GCRA): a failure moves it one interval on
        self._sources: OrderedDict[str, float] = OrderedDict()
        self._warned_at = -math.inf

    def check(self, token: str | None, host: str | None) -> ApiError | None:
        """The answer to give without a lookup, or None when ``token`` is worth looking up."""
        if token is None:
            return self._refuse("no_token", 401, NO_TOKEN, CHALLENGE)
        if not is_well_formed(token):
            return self._refuse("malformed", 401, INVALID, CHALLENGE)
        now = self._clock()
        digest = token_hash(token)
        source = source_of(host)
        with self._lock:
            until = self._refused.get(digest)
            if until is not None and until > now:
                refused_before = True
            else:
                refused_before = False
                wait_s = self._sources.get(source, now) - now - self._tolerance_s
        if refused_before:
            return self._refuse("refused_before", 401, INVALID, CHALLENGE)
        if wait_s > 0:
            self._warn(source)
            retry = str(max(1, math.ceil(wait_s)))
            return self._refuse(
                "source_limited",
                429,
                f"too many failed authentications from this address; retry in {retry} s",
                {"Retry-After": retry},
            )
        return None

    def failed(self, token: str, host: str | None) -> None:
        """A lookup found no valid client for ``token``: remember it, and charge its source."""
        API_AUTH_REFUSALS.labels("unknown").inc()
        now = self._clock()
        digest = token_hash(token)
        source = source_of(host)
        with self._lock:
            _put(self._refused, digest, now + REFUSED_TTL_S)
            arrival = max(self._sources.get(source, now), now) + self._interval_s
            _put(self._sources, source, arrival)

    def _refuse(self, reason: str, status: int, message: str, headers: dict[str, str]) -> ApiError:
        API_AUTH_REFUSALS.labels(reason).inc()
        return ApiError(status, message, headers=headers)

    def _warn(self, source: str) -> None:
        now = self._clock()
        with self._lock:
            if now - self._warned_at < WARN_EVERY_S:
                return
            self._warned_at = now
        log.warning(
            "refusing requests from %s without a lookup: over its budget of failed "
            "authentications (more such sources are counted in "
            "jobtracker_api_auth_refusals_total, not logged, for %g s)",
            source,
            WARN_EVERY_S,
        )


def _put(table: OrderedDict[str, float], key: str, value: float) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_ENTRIES:
        table.popitem(last=False)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the first ``Authorization: Bearer <token>`` header, read exactly as
    FastAPI's HTTPBearer reads it for the route (the scheme in any case, the token stripped),
    or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class Gate:
    """ASGI middleware: every ``/v1`` request whose token :meth:`AuthGuard.check` refuses is
    answered here, before routing; the others go on to the route, which looks the token up."""

    def __init__(self, app: ASGIApp, guard: AuthGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(GUARDED_PREFIX):
            client = scope.get("client")
            refusal = self.guard.check(
                bearer_token(scope["headers"]), client[0] if client else None
            )
            if refusal is not None:
                # For the access line (DEBUG: a flood must not flood the log) and the metrics.
                state = scope.setdefault("state", {})
                state["quiet"] = True
                state["route"] = "/v1/*"
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
