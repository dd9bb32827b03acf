"""``/v1/deliveries``: send a callback again; page through its attempts."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from jobtracker.models import Scope
from worker.api import queries
from worker.api.auth import context, require
from worker.api.errors import ApiError
from worker.api.schemas import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, AttemptPage, Delivery, errors
from worker.clients.registry import Caller
from worker.webhooks.signing import is_message_id

router = APIRouter(prefix="/v1/deliveries", tags=["callbacks"])


def message_id(text: str) -> str:
    """``text`` if it could be a ``webhook-id``; else 422 (it would reach no row, and a NUL
    would not even reach PostgreSQL)."""
    if not is_message_id(text):
        raise ApiError(
            422, "id: not a webhook-id (the deliveries[].id of a job, msg_...)", field="id"
        )
    return text


@router.post(
    "/{id}/redeliver",
    status_code=202,
    summary="Send a callback again",
    response_model=Delivery,
    responses=errors(401, 403, 404, 422, 429),
)
async def redeliver(
    request: Request, caller: Annotated[Caller, Depends(require(Scope.ENQUEUE))], id: str
) -> JSONResponse:
    """Make one of your callback messages (``id`` is its ``webhook-id``) due again, whatever its
    status: the worker sends it on its next sweep (within a few seconds), same ``webhook-id``,
    freshly signed. Watch it with ``GET /v1/jobs/{id}``."""
    ctx = context(request)
    delivery = await to_thread.run_sync(queries.redeliver_for, ctx.settings, caller, message_id(id))
    return JSONResponse(delivery, status_code=202)


@router.get(
    "/{id}/attempts",
    summary="A page of a callback's attempts, newest first",
    response_model=AttemptPage,
    responses=errors(401, 403, 404, 422, 429),
)
async def list_attempts(
    request: Request,
    caller: Annotated[Caller, Depends(require(Scope.READ))],
    id: str,
    cursor: Annotated[
        str | None,
        Query(
            description="`attempt_log_next_cursor` of the message in its job, or `next_cursor` "
            "of the previous page."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
) -> JSONResponse:
    """Every attempt of one of your callback messages (``id`` is its ``webhook-id``), newest
    first. A job's detail shows the newest attempts of each message; follow its
    ``attempt_log_next_cursor`` here for the older ones, then ``next_cursor`` until it is null."""
    ctx = context(request)
    page = await to_thread.run_sync(
        queries.attempts, ctx.settings, caller, message_id(id), cursor, limit
    )
    return JSONResponse(page)
