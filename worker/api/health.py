"""``/healthz`` (the process answers) and ``/readyz`` (its database is there and migrated).

Neither needs a token: they say nothing about jobs. Point a liveness probe at ``/healthz`` (a
restart cannot fix a database) and a readiness probe or load balancer at ``/readyz``.
"""

from __future__ import annotations

import asyncio

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from worker.api import queries
from worker.api.auth import context
from worker.api.errors import ApiError, error_response
from worker.api.schemas import Health, Readiness, errors

router = APIRouter(tags=["health"])
#: A database that takes longer than this to answer is not ready.
READY_TIMEOUT_S = 5.0


@router.get("/healthz", summary="The process is up", response_model=Health)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="The database answers and is at the newest migration",
    response_model=Readiness,
    responses=errors(503),
)
async def readyz(request: Request) -> JSONResponse:
    ctx = context(request)
    try:
        problem = await asyncio.wait_for(
            to_thread.run_sync(queries.readiness, ctx.settings, ctx.head_revision),
            READY_TIMEOUT_S,
        )
    except TimeoutError:
        problem = f"the database did not answer within {READY_TIMEOUT_S:g} s"
    except Exception as exc:
        problem = f"cannot reach the database: {type(exc).__name__}"
    if problem is not None:
        return error_response(ApiError(503, problem, code="not_ready"))
    return JSONResponse({"status": "ready", "revision": ctx.head_revision})
