"""The service API as an ASGI application: :func:`create_app`.

The layers, outermost first: :class:`~worker.api.observe.Observe` (metrics, access log),
:class:`~worker.api.guard.Gate` (a ``/v1`` request whose token needs no lookup to be refused is
refused here), :class:`~worker.api.body.BodyLimit` (no body over the cap is buffered),
:class:`~worker.api.errors.Contain` (an unexpected exception is a 500, logged without the
request's values), then FastAPI's routing with the error handlers of :mod:`worker.api.errors`.
On start-up the app opens its :class:`~worker.api.waiting.Waiters` watcher thread; on shutdown
it answers every waiting request at once, then stops the thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI

from worker.api import deliveries, errors, health, jobs
from worker.api.auth import ApiContext
from worker.api.body import BodyLimit
from worker.api.guard import AuthGuard, Gate
from worker.api.observe import Observe
from worker.api.ratelimit import ClientRateLimit
from worker.api.waiting import Waiters
from worker.runtime.migrate import head_revision
from worker.settings import Settings

DESCRIPTION = """\
Enqueue Tencent Cloud jobs for tracking, read their status, transitions and callbacks, and
wait for them to end, over HTTP.

Every `/v1` request needs `Authorization: Bearer <token>` (a token from `jobtracker clients
add`). A client sees only the jobs it enqueued. Errors are JSON:
`{"error": {"code": "...", "message": "...", "field": "..."}}`.
"""


def _version() -> str:
    try:
        return metadata.version("jobtracker")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings) -> FastAPI:
    guard = AuthGuard(settings.api_auth_failures_per_min)
    context = ApiContext(
        settings=settings,
        rate_limit=ClientRateLimit(settings),
        waiters=Waiters(settings),
        guard=guard,
        head_revision=head_revision(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        context.waiters.start()
        try:
            yield
        finally:
            context.waiters.release_all()
            context.waiters.stop()

    app = FastAPI(
        title="jobtracker service API",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
    )
    app.state.jobtracker = context
    errors.install(app)
    for router in (jobs.router, deliveries.router, health.router):
        app.include_router(router)
    app.add_middleware(errors.Contain)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(Gate, guard=guard)
    app.add_middleware(Observe)
    return app
