"""Counting and logging every request: one metric sample and one log line each.

A pure ASGI middleware (no buffering): it notes the status the app sends and, when the answer is
done, records ``jobtracker_api_requests_total{route,method,status}`` and its duration under the
route's *template* (``/v1/jobs/{id}``; ``unmatched`` for unknown paths), then logs
``api GET /v1/jobs/{id} -> 200`` with the client's name and the latency. The path's values, the
query string and the headers (the token) are never logged. Health checks, and requests refused
for their token (:mod:`worker.api.guard`: a flood of them must not flood the log; they are
counted), log at DEBUG only.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.observe.metrics import record_api_request

log = logging.getLogger("worker.api.access")
_QUIET = frozenset({"/healthz", "/readyz"})


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            elapsed = time.perf_counter() - started
            state = scope.get("state", {})
            route = getattr(scope.get("route"), "path", None) or state.get("route") or "unmatched"
            method = str(scope.get("method", ""))
            record_api_request(route, method, status, elapsed)
            client = state.get("client")
            log.log(
                logging.DEBUG if route in _QUIET or state.get("quiet") else logging.INFO,
                "api %s %s -> %d",
                method,
                route,
                status,
                extra={
                    "route": route,
                    "status_code": status,
                    "latency_ms": round(elapsed * 1000, 1),
                    "client": client,
                },
            )
