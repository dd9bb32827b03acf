"""Who is calling: ``Authorization: Bearer jt_...`` -> the client, its scopes, its rate limit.

Every ``/v1`` route depends on :func:`require` with the scope it needs: ``enqueue`` for POSTs and
redelivery, ``read`` for GETs (``admin`` has both, on every job). The answer is 401 without a
valid token (missing, unknown, expired after a rotation, or its client revoked), 429 over the
client's rate, and 403 outside its scopes. What a request without a valid token may cost is
bounded by :mod:`worker.api.guard`, whose Gate answers before routing (no lookup for a missing,
malformed or recently refused token, nor for an address over its budget of failed
authentications: 429). The token itself goes no
further than this module, the guard and the hash lookup: it is never logged or put in an answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from anyio import to_thread
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobtracker.models import Scope
from worker.api import queries
from worker.api.errors import ApiError
from worker.api.guard import CHALLENGE, INVALID, NO_TOKEN, AuthGuard
from worker.api.ratelimit import ClientRateLimit
from worker.api.waiting import Waiters
from worker.clients.registry import Caller
from worker.settings import Settings

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A client token from `jobtracker clients add` (jt_...).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


@dataclass
class ApiContext:
    """What the routes share in one API process (``app.state.jobtracker``)."""

    settings: Settings
    rate_limit: ClientRateLimit
    waiters: Waiters
    guard: AuthGuard
    #: The migration this code needs, for /readyz.
    head_revision: str | None

    def admit(self, token: str) -> tuple[Caller | None, int | None]:
        """The token's client and, if it is over its rate, the seconds to wait (on a thread)."""
        caller = queries.identify(self.settings, token)
        if caller is None:
            return None, None
        return caller, self.rate_limit.admit(caller.id)


def context(request: Request) -> ApiContext:
    ctx = request.app.state.jobtracker
    assert isinstance(ctx, ApiContext)
    return ctx


def require(scope: Scope) -> Callable[..., Awaitable[Caller]]:
    """A route dependency: the calling client, which must hold ``scope``."""

    async def caller(request: Request, credentials: Credentials) -> Caller:
        ctx = context(request)
        if credentials is None:  # the Gate answers these first; this is its second line
            raise ApiError(401, NO_TOKEN, headers=CHALLENGE)
        found, retry_after = await to_thread.run_sync(ctx.admit, credentials.credentials)
        if found is None:
            ctx.guard.failed(
                credentials.credentials, request.client.host if request.client else None
            )
            request.state.quiet = True  # counted; logged at DEBUG like the Gate's refusals
            raise ApiError(401, INVALID, headers=CHALLENGE)
        # For the access log line and the metrics (observe.py): the client's name, never the token.
        request.state.client = found.name
        if retry_after is not None:
            raise ApiError(
                429,
                f"client {found.name!r} is over its request rate; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        if not found.allows(scope):
            raise ApiError(
                403,
                f"this client's token does not have the {scope.value!r} scope",
                code="forbidden",
            )
        return found

    return caller
