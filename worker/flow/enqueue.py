"""Enqueue: validate a request and insert its ``tracked_jobs`` row, idempotently.

Every way in (Celery ``jobtracker.track``, :func:`track`, the CLI) goes through
:func:`validate` and :func:`insert_job`, so they refuse the same inputs with the same messages.
A plain SQL INSERT relies on the table's defaults and constraints instead.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobtracker.models import PrunedJob, TrackedJob
from worker import clock
from worker.catalogue.table import PROVIDERS
from worker.db import session_scope
from worker.errors import EnqueueError
from worker.jsonsafe import unstorable
from worker.settings import REGION_RE, Settings, get_settings
from worker.webhooks.urls import validate_callback_url

log = logging.getLogger(__name__)

MAX_JOB_ID_CHARS = 128
#: Metadata travels in every callback; keep it small.
MAX_METADATA_BYTES = 16 * 1024


@dataclass(frozen=True)
class EnqueueRequest:
    """A validated request to track one job."""

    kind: str
    job_id: str
    region: str
    callback_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The caller's hint of how long the job takes, in seconds (the poll schedule uses it).
    expected_duration_s: float | None = None


def validate(
    kind: Any,
    job_id: Any,
    *,
    callback_url: Any = None,
    region: Any = None,
    metadata: Any = None,
    expected_duration_s: Any = None,
    default_region: str,
) -> EnqueueRequest:
    """Check a request; raise :class:`EnqueueError` with a one-line message if it is bad.

    The error's ``field`` names the argument that broke the rule.
    """
    return EnqueueRequest(
        kind=_validate_kind(kind),
        job_id=_validate_job_id(job_id),
        region=_validate_region(default_region if region is None else region),
        callback_url=None if callback_url is None else _validate_callback(callback_url),
        metadata=_validate_metadata(metadata),
        expected_duration_s=(
            None if expected_duration_s is None else _validate_duration(expected_duration_s)
        ),
    )


_Checked = TypeVar("_Checked")


def _field(name: str) -> Callable[[Callable[[Any], _Checked]], Callable[[Any], _Checked]]:
    """Mark the errors a field's check raises with the field's name."""

    def decorate(check: Callable[[Any], _Checked]) -> Callable[[Any], _Checked]:
        @functools.wraps(check)
        def checked(value: Any) -> _Checked:
            try:
                return check(value)
            except EnqueueError as exc:
                exc.field = exc.field or name
                raise

        return checked

    return decorate


@_field("kind")
def _validate_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in PROVIDERS:
        known = ", ".join(PROVIDERS)
        raise EnqueueError(f"unknown kind {kind!r}: use one of {known}")
    return kind


@_field("job_id")
def _validate_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str):
        raise EnqueueError(f"job_id must be a string, not {type(job_id).__name__}")
    if not job_id.strip():
        raise EnqueueError("job_id is empty")
    if len(job_id) > MAX_JOB_ID_CHARS:
        raise EnqueueError(
            f"job_id is {len(job_id)} characters long; the limit is {MAX_JOB_ID_CHARS}"
        )
    for char in job_id:
        if char.isspace():
            raise EnqueueError(f"job_id {job_id!r} contains whitespace")
        if unicodedata.category(char).startswith("C"):
            raise EnqueueError(f"job_id {job_id!r} contains a control character")
    return job_id


#: A duration hint longer than this is not a job-query API's job.
MAX_EXPECTED_DURATION_S = 30 * 86400.0


@_field("expected_duration_s")
def _validate_duration(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise EnqueueError(
                f"expected_duration_s {value!r} is not a number of seconds"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnqueueError(
            f"expected_duration_s must be a number of seconds, not {_json_type(value)}"
        )
    # An integer past a float's range (JSON allows thousands of digits) cannot be a float.
    if isinstance(value, int) and abs(value) > MAX_EXPECTED_DURATION_S:
        raise EnqueueError(
            f"expected_duration_s must be above 0 and at most {MAX_EXPECTED_DURATION_S:g} "
            "seconds (30 days)"
        )
    if not math.isfinite(value):
        raise EnqueueError("expected_duration_s must be a finite number of seconds")
    if not 0 < value <= MAX_EXPECTED_DURATION_S:
        raise EnqueueError(
            f"expected_duration_s {value:g} must be above 0 and at most "
            f"{MAX_EXPECTED_DURATION_S:g} seconds (30 days)"
        )
    return float(value)


@_field("region")
def _validate_region(region: Any) -> str:
    if not isinstance(region, str) or not REGION_RE.match(region) or len(region) > 64:
        raise EnqueueError(f"region {region!r} is not a Tencent region name such as ap-guangzhou")
    return region


@_field("callback_url")
def _validate_callback(url: Any) -> str:
    if not isinstance(url, str):
        raise EnqueueError(f"callback_url must be a string, not {type(url).__name__}")
    problem = unstorable(url)
    if problem:
        raise EnqueueError(f"callback_url contains {problem}")
    # Syntax only: addresses are resolved and checked when the callback is sent.
    try:
        return validate_callback_url(url)
    except ValueError as exc:
        raise EnqueueError(f"callback_url: {exc}") from None


@_field("metadata")
def _validate_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise EnqueueError(
                f"metadata is not valid JSON: {exc.msg} at position {exc.pos}"
            ) from None
    if not isinstance(metadata, dict):
        raise EnqueueError(f"metadata must be a JSON object, not {_json_type(metadata)}")
    try:
        encoded = json.dumps(metadata, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise EnqueueError(f"metadata is not JSON-serializable: {exc}") from None
    except RecursionError:
        raise EnqueueError("metadata nests too deeply") from None
    # Round-trip so the stored value is plain JSON (no tuples, no non-str keys).
    result: dict[str, Any] = json.loads(encoded)
    problem = _unstorable_in(result)
    if problem:
        raise EnqueueError(f"metadata contains {problem}")
    size = len(encoded.encode())
    if size > MAX_METADATA_BYTES:
        raise EnqueueError(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return result


def _unstorable_in(value: Any) -> str | None:
    """What in a JSON value (keys included) no store takes as it is: JSONB refuses NUL, and no
    UTF-8 encoder writes a lone surrogate (legal as a ``\\ud800`` escape in JSON)."""
    pending = [value]
    while pending:  # a loop, not recursion: the nesting is the caller's
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, str):
            problem = unstorable(item)
            if problem:
                return problem
    return None


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def insert_job(
    session: Session,
    request: EnqueueRequest,
    *,
    deadline_s: float,
    now: datetime,
    client_id: int | None = None,
) -> tuple[TrackedJob | PrunedJob, bool]:
    """Insert the row unless (kind, region, job_id) exists; return it and whether it is new.

    A job the retention already pruned is not tracked again: its tombstone comes back instead
    (``status`` is how it ended, ``pruned_at`` when it went).

    ``client_id`` is the service API client enqueuing it (None for the other ways in). An
    existing row is returned as it is, whoever enqueued it: the caller decides who may see it.
    """
    values = {
        "client_id": client_id,
        "deadline_at": now + timedelta(seconds=deadline_s),
        "kind": request.kind,
        "region": request.region,
        "job_id": request.job_id,
        "callback_url": request.callback_url,
        "expected_duration_s": request.expected_duration_s,
        "meta": request.metadata,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(TrackedJob)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["kind", "region", "job_id"])
        .returning(TrackedJob.id)
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    job = session.execute(
        select(TrackedJob).where(
            TrackedJob.kind == request.kind,
            TrackedJob.region == request.region,
            TrackedJob.job_id == request.job_id,
        )
    ).scalar_one_or_none()
    if job is not None:
        return job, new_id is not None
    # No row and none inserted: the table's trigger skipped a job the retention pruned.
    pruned = session.get(PrunedJob, (request.kind, request.region, request.job_id))
    if pruned is None:  # pruned, then its tombstone expired in between: not worth a retry loop
        raise EnqueueError(
            f"{request.kind} {request.job_id} in {request.region} was being pruned; try again"
        )
    return pruned, False


def track(
    kind: str,
    job_id: str,
    callback_url: str | None = None,
    region: str | None = None,
    metadata: dict[str, Any] | str | None = None,
    expected_duration_s: float | None = None,
    *,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Start tracking a provider job; return the tracked job as a dict.

    ``expected_duration_s`` is an optional hint of how long the job takes (the poll schedule
    uses it). Idempotent on (kind, region, job_id): a second call returns the existing row
    unchanged. Raises :class:`~worker.errors.EnqueueError` for bad input, storing nothing.
    """
    settings = settings or get_settings()
    request = validate(
        kind,
        job_id,
        callback_url=callback_url,
        region=region,
        metadata=metadata,
        expected_duration_s=expected_duration_s,
        default_region=settings.region,
    )
    return enqueue(request, settings)


def enqueue(request: EnqueueRequest, settings: Settings) -> dict[str, Any]:
    """Store a validated request (idempotently); return the tracked job as a dict."""
    with session_scope(settings) as session:
        job, created = insert_job(
            session, request, deadline_s=settings.job_deadline_s, now=clock.now(settings)
        )
        result = job.to_dict()
    log.info(
        "job enqueued"
        if created
        else "job already tracked" + (" (pruned)" if result.get("pruned_at") else ""),
        extra={"kind": request.kind, "job_id": request.job_id, "tracked_job_id": result["id"]},
    )
    return result
