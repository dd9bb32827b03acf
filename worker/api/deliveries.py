"""``/v1/deliveries``: send a callback again."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from jobtracker.models import Scope
from worker.api import queries
from worker.api.auth import context, require
from worker.api.errors import ApiError
from worker.api.schemas import Delivery, errors
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
