"""What the service API takes and gives: the enqueue fields, the limits, and the response
shapes of the OpenAPI document.

**The enqueue fields are listed once, in** :data:`ENQUEUE_FIELDS`. The body of ``POST /v1/jobs``
is checked by :func:`worker.flow.enqueue.validate`, the validator of every other way in, so the
API refuses exactly what they refuse, with the same messages: this module only says which keys
a body may have (anything else is an unknown field) and documents them. A field added to
``validate()`` is one more entry here; ``tests/unit/test_api_schemas.py`` fails until it is.

The response models below document the answers (``/openapi.json``, ``/docs``). The routes send
the dicts of :meth:`models.TrackedJob.to_dict` and :mod:`worker.inspection.queries` as they are, so
the unit test also checks that the models name the same keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from worker.catalogue.table import PROVIDERS
from worker.flow.enqueue import MAX_EXPECTED_DURATION_S, MAX_JOB_ID_CHARS, MAX_METADATA_BYTES

#: ``?wait=`` holds a request at most this long.
MAX_WAIT_S = 60.0
#: Jobs per page: the default and the most one page may have.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: Attempts of each callback message in a job's detail: the newest this many.
ATTEMPTS_SHOWN = 20

#: The keys of a ``POST /v1/jobs`` body -> (required, JSON schema for the docs). The rules are
#: validate()'s; these schemas only describe them.
ENQUEUE_FIELDS: dict[str, tuple[bool, dict[str, Any]]] = {
    "kind": (True, {"type": "string", "enum": list(PROVIDERS), "description": "Which API."}),
    "job_id": (
        True,
        {
            "type": "string",
            "maxLength": MAX_JOB_ID_CHARS,
            "description": "The provider's JobId: no whitespace or control characters.",
            "example": "1194931538865782784",
        },
    ),
    "region": (
        False,
        {
            "type": "string",
            "description": "Tencent region (default: the server's TENCENTCLOUD_REGION).",
            "example": "ap-guangzhou",
        },
    ),
    "callback_url": (
        False,
        {
            "type": "string",
            "format": "uri",
            "description": "http(s) URL that receives the signed callback when the job ends.",
            "example": "https://api.example.com/hooks/jobs",
        },
    ),
    "metadata": (
        False,
        {
            "type": "object",
            "description": f"Echoed back in the callback; at most {MAX_METADATA_BYTES} bytes.",
            "example": {"order": 42},
        },
    ),
    "expected_duration_s": (
        False,
        {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_EXPECTED_DURATION_S,
            "description": "How long the job should take, in seconds, if you know: the poll "
            "schedule is shaped around it.",
            "example": 90,
        },
    ),
}


def enqueue_body_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [name for name, (required, _) in ENQUEUE_FIELDS.items() if required],
        "properties": {name: schema for name, (_, schema) in ENQUEUE_FIELDS.items()},
    }


class Problem(BaseModel):
    code: str = Field(examples=["invalid_field"])
    message: str = Field(examples=["job_id is empty"])
    field: str | None = Field(default=None, examples=["job_id"])


class ErrorBody(BaseModel):
    """Every 4xx / 5xx answer."""

    error: Problem


class Failure(BaseModel):
    code: str | None
    message: str | None


class Job(BaseModel):
    """A tracked job (``tracked_jobs`` row)."""

    id: int
    kind: str
    region: str
    job_id: str
    status: str = Field(
        description="pending, queued, running, succeeded, failed, canceled or expired"
    )
    provider_status: str | None
    error: Failure | None
    result: dict[str, Any] | None
    result_expires_at: str | None
    callback_url: str | None
    metadata: dict[str, Any]
    polls: int
    last_error: Failure | None
    created_at: str | None
    updated_at: str | None
    last_polled_at: str | None
    next_poll_at: str | None
    deadline_at: str | None
    expected_duration_s: float | None
    last_unfinished_at: str | None
    finished_at: str | None
    client_id: int | None = Field(description="The API client that enqueued it, if any.")


class Transition(BaseModel):
    id: int
    from_status: str
    to_status: str
    provider_status: str | None
    request_id: str | None
    reason: str | None
    at: str


class Attempt(BaseModel):
    """One delivery attempt. A client without the ``admin`` scope gets ``error_class`` and
    ``status_code`` only: ``error_message`` and ``response_body`` are null."""

    id: int
    attempted_at: str | None
    status_code: int | None
    error_class: str | None = Field(
        description="http, timeout, connection, dns, tls, refused_url, no_secret or bad_secret"
    )
    error_message: str | None = Field(description="admin clients only")
    latency_ms: int | None
    response_body: str | None = Field(description="the answer's first KiB; admin clients only")


class Delivery(BaseModel):
    """A callback message; ``id`` is its ``webhook-id``."""

    id: str
    tracked_job_id: int
    event_type: str
    url: str
    status: str = Field(description="pending, delivered or failed")
    attempts: int
    last_status_code: int | None
    last_error: str | None = Field(
        description="the last attempt's error: its text for admin clients, its error_class "
        "for the others"
    )
    next_attempt_at: str | None
    created_at: str | None
    updated_at: str | None
    delivered_at: str | None
    attempt_log: list[Attempt] | None = Field(
        default=None,
        description=f"In a job's detail: the newest attempts (at most {ATTEMPTS_SHOWN}), oldest "
        "first.",
    )
    attempt_log_next_cursor: str | None = Field(
        default=None,
        description="Set when the message has older attempts than attempt_log shows: pass it as "
        "?cursor= to GET /v1/deliveries/{id}/attempts.",
    )
    payload: dict[str, Any] | None = None


class JobDetail(BaseModel):
    job: Job
    transitions: list[Transition]
    deliveries: list[Delivery]


class AttemptPage(BaseModel):
    attempts: list[Attempt] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null on the last page."
    )


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null on the last page."
    )


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    revision: str | None


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses."""
    return {status: {"model": ErrorBody} for status in statuses}
