"""``/v1/jobs``: enqueue a job, read one (optionally waiting for it to end), list a page."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from jobtracker.models import JobStatus, Scope
from worker.api import queries
from worker.api.auth import context, require
from worker.api.body import read_json_object
from worker.api.errors import ApiError
from worker.api.schemas import (
    DEFAULT_PAGE_SIZE,
    ENQUEUE_FIELDS,
    MAX_PAGE_SIZE,
    MAX_WAIT_S,
    Job,
    JobDetail,
    JobPage,
    enqueue_body_schema,
    errors,
)
from worker.catalogue.table import PROVIDERS
from worker.clients.registry import Caller
from worker.errors import EnqueueError
from worker.flow.enqueue import EnqueueRequest, validate
from worker.inspection.queries import STATUS_GROUPS

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Enqueuer = Annotated[Caller, Depends(require(Scope.ENQUEUE))]
Reader = Annotated[Caller, Depends(require(Scope.READ))]
#: Tracked job ids: positive 64-bit integers (a larger number would overflow the driver).
JobPk = Annotated[int, Path(ge=1, le=2**63 - 1, description="The tracked job's id.")]
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        description="Hold the request until the job ends or this many seconds pass (at most "
        f"{MAX_WAIT_S:g}); then answer with the job as it is.",
    ),
]


def request_from_body(body: dict[str, Any], default_region: str) -> EnqueueRequest:
    """The body's fields, through the validator every way in shares; 422 names the field."""
    for name in body:
        if name not in ENQUEUE_FIELDS:
            accepted = ", ".join(ENQUEUE_FIELDS)
            shown = _short(name)
            raise ApiError(422, f"unknown field {shown!r}: accepted are {accepted}", field=shown)
    for name, (required, _) in ENQUEUE_FIELDS.items():
        if required and name not in body:
            raise ApiError(422, f"{name} is required", field=name)
    try:
        return validate(**body, default_region=default_region)
    except EnqueueError as exc:
        raise ApiError(422, exc.message, field=exc.field) from None


@router.post(
    "",
    status_code=201,
    summary="Track a job",
    response_model=None,
    responses={
        201: {"model": Job, "description": "Tracked now."},
        200: {"model": Job, "description": "This client already tracks it: the job as it is."},
        **errors(400, 401, 403, 409, 413, 415, 422, 429),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": enqueue_body_schema()}},
        }
    },
)
async def enqueue(request: Request, caller: Enqueuer) -> JSONResponse:
    """Start tracking a provider job. Idempotent: the same client posting the same (kind,
    region, job_id) again gets its job back (200), unchanged. A job tracked for another client
    or enqueued another way is a 409."""
    ctx = context(request)
    tracked = request_from_body(await read_json_object(request), ctx.settings.region)
    job, created = await to_thread.run_sync(queries.enqueue, ctx.settings, caller, tracked)
    log.info(
        "job enqueued" if created else "job already tracked",
        extra={
            "kind": tracked.kind,
            "job_id": tracked.job_id,
            "tracked_job_id": job["id"],
            "client": caller.name,
        },
    )
    return JSONResponse(job, status_code=201 if created else 200)


async def _answer(request: Request, caller: Caller, job_pk: int, wait: float) -> JSONResponse:
    ctx = context(request)
    found = await to_thread.run_sync(queries.detail, ctx.settings, caller, job_pk)
    if wait > 0 and not JobStatus(found["job"]["status"]).is_terminal:

        async def still_active() -> bool:
            return await to_thread.run_sync(queries.is_active, ctx.settings, job_pk)

        await ctx.waiters.wait(job_pk, wait, still_active)
        found = await to_thread.run_sync(queries.detail, ctx.settings, caller, job_pk)
    return JSONResponse(found)


_READ_ERRORS = errors(401, 403, 404, 422, 429, 503)


@router.get(
    "/{id}", summary="One job by tracked id", response_model=JobDetail, responses=_READ_ERRORS
)
async def get_job(request: Request, caller: Reader, id: JobPk, wait: Wait = 0) -> JSONResponse:
    """The job, its transitions and its callback messages, each with its newest attempts (see
    ``GET /v1/deliveries/{id}/attempts`` for the older ones)."""
    return await _answer(request, caller, id, wait)


@router.get(
    "/{kind}/{job_id:path}",
    summary="One job by kind and provider JobId",
    response_model=JobDetail,
    responses=_READ_ERRORS,
)
async def get_job_by_job_id(
    request: Request,
    caller: Reader,
    kind: str,
    job_id: str,
    region: Annotated[str | None, Query(description="Default: the server's region.")] = None,
    wait: Wait = 0,
) -> JSONResponse:
    """The same as by id, naming the job as it was enqueued."""
    ctx = context(request)
    try:
        named = validate(kind, job_id, region=region, default_region=ctx.settings.region)
    except EnqueueError as exc:
        raise ApiError(422, exc.message, field=exc.field) from None
    job_pk = await to_thread.run_sync(
        queries.find, ctx.settings, caller, named.kind, named.region, named.job_id
    )
    return await _answer(request, caller, job_pk, wait)


def _short(text: str, limit: int = 64) -> str:
    """A caller's string, cut for quoting in an error."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _checked(values: list[str], allowed: list[str], field: str) -> list[str]:
    for value in values:
        if value not in allowed:
            raise ApiError(
                422,
                f"{field}: unknown value {_short(value)!r}; use {', '.join(allowed)}",
                field=field,
            )
    return values


@router.get(
    "",
    summary="A page of jobs, newest first",
    response_model=JobPage,
    responses=errors(401, 403, 422, 429),
)
async def list_jobs(
    request: Request,
    caller: Reader,
    status: Annotated[
        list[str] | None,
        Query(description="Repeatable; also `active` (pending/queued/running) and `terminal`."),
    ] = None,
    kind: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
    since: Annotated[
        str | None, Query(description="Created within this age (`2h`, `3d`) or since ISO-8601.")
    ] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
) -> JSONResponse:
    """The caller's jobs (an admin's: every job), newest first. Follow ``next_cursor`` for older
    ones: pages neither repeat nor skip a job while new jobs arrive."""
    ctx = context(request)
    statuses = _checked(status or [], [*(s.value for s in JobStatus), *STATUS_GROUPS], "status")
    kinds = _checked(kind or [], list(PROVIDERS), "kind")
    query = queries.PageQuery(
        statuses=statuses,
        kinds=kinds,
        since=since,
        before_id=None if cursor is None else queries.decode_cursor(cursor),
        limit=limit,
    )
    return JSONResponse(await to_thread.run_sync(queries.page, ctx.settings, caller, query))
