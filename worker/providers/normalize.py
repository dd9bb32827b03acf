"""Turn a provider's decoded JSON answer into one :class:`Answer`, or one of our errors.

Nothing here does I/O or reads a clock (``now`` is passed in). The rules, in order:

1. No ``Response`` object: :class:`~worker.errors.UnexpectedAnswer` (``Transport.BadAnswer``).
2. ``Response.Error`` present: its code is classified with the provider table and raised. An ill
   formed ``Error`` is :class:`UnexpectedAnswer` (``Answer.BadError``).
3. The status field must hold a raw value of the table, of the exact JSON type; anything else is
   :class:`UnexpectedAnswer` (``Answer.UnknownStatus``). Only such a value can make a job terminal.
4. A failed status carries the job's own error code and message; a succeeded one its result, which
   must have its required fields (``Answer.MissingResult`` otherwise).

Our own codes: ``Transport.BadAnswer``, ``Answer.BadError``, ``Answer.UnknownStatus``,
``Answer.MissingResult``; the client adds ``Transport.*`` for network faults.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobtracker.models.status import JobStatus
from worker.catalogue.table import ProviderSpec, error_class_for
from worker.errors import (
    ErrorClass,
    JobNotFound,
    ProviderError,
    UnexpectedAnswer,
)
from worker.jsonsafe import clean

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlevel = 2

#: Provider text lands in bounded columns (tracked_jobs.error_code, job_transitions.request_id).
MAX_MESSAGE_CHARS = 2000
MAX_CODE_CHARS = 128
MAX_REQUEST_ID_CHARS = 64


@dataclass(frozen=True)
class Answer:
    """What the provider said about one job, in our terms."""

    status: JobStatus
    #: The raw status value as text (``"7"``, ``"RUN"``), or ``None`` when the answer had none.
    provider_status: str | None
    error_code: str | None = None
    error_message: str | None = None
    #: Result fields of a succeeded job, keyed as in the provider table.
    result: dict[str, Any] | None = None
    result_expires_at: datetime | None = None
    request_id: str | None = None


def normalize(spec: ProviderSpec, response: Any, *, now: datetime) -> Answer:
    """The :class:`Answer` in a decoded ``{"Response": {...}}`` body; raises only ProviderError."""
    try:
        # Text and numbers SQL and strict JSON parsers cannot hold (NUL, lone surrogates, NaN)
        # are made storable here, at the boundary, so one answer never fails a batch's write.
        response = clean(response)
    except RecursionError:
        raise UnexpectedAnswer(
            f"{spec.action}: the answer is nested too deeply", code="Transport.BadAnswer"
        ) from None
    body = response.get("Response") if isinstance(response, dict) else None
    if not isinstance(body, dict):
        raise UnexpectedAnswer(
            f"{spec.action}: the answer has no Response object: {_brief(response)}",
            code="Transport.BadAnswer",
        )
    request_id = _text(body.get("RequestId"), MAX_REQUEST_ID_CHARS)

    if "Error" in body:
        raise _error_from(spec, body["Error"], request_id)

    raw = lookup(body, spec.status_field)
    status = spec.status_for(raw)
    if status is None:
        raise UnexpectedAnswer(
            f"{spec.action}: {spec.status_field}={_brief(raw)} is not a known status",
            code="Answer.UnknownStatus",
            request_id=request_id,
        )
    provider_status = str(raw)

    if status == JobStatus.FAILED:
        return Answer(
            status=status,
            provider_status=provider_status,
            error_code=_text(lookup(body, spec.error_code_field), MAX_CODE_CHARS),
            error_message=_text(lookup(body, spec.error_message_field)),
            request_id=request_id,
        )
    if status != JobStatus.SUCCEEDED:
        return Answer(status=status, provider_status=provider_status, request_id=request_id)

    result = {key: lookup(body, path) for key, path in spec.result.fields.items()}
    missing = [
        key
        for key in spec.result.required
        if not (isinstance(result[key], str) and result[key].strip())
    ]
    if missing:
        raise UnexpectedAnswer(
            f"{spec.action}: {spec.status_field}={provider_status} (succeeded) without "
            f"{', '.join(missing)}",
            code="Answer.MissingResult",
            request_id=request_id,
        )
    expires_at = now + timedelta(seconds=spec.result_ttl_s) if spec.result_ttl_s else None
    return Answer(
        status=status,
        provider_status=provider_status,
        result=result,
        result_expires_at=expires_at,
        request_id=request_id,
    )


def classify_error(
    spec: ProviderSpec, code: str, message: str = "", request_id: str | None = None
) -> ProviderError:
    """The error (not raised) for a provider error code, per the provider table."""
    cls = error_class_for(spec, code)
    return cls(
        message[:MAX_MESSAGE_CHARS] or code, code=code[:MAX_CODE_CHARS], request_id=request_id
    )


def effective_error_class(error: ProviderError, *, job_age_s: float, grace_s: float) -> ErrorClass:
    """How the scheduler should treat ``error`` for a job ``job_age_s`` seconds old.

    A freshly submitted job can be briefly invisible to the query API, so "not found" within the
    grace period is transient; after it, the job is gone (job-terminal). Everything else keeps its
    class.
    """
    if isinstance(error, JobNotFound) and job_age_s < grace_s:
        return ErrorClass.TRANSIENT
    return error.error_class


def lookup(body: dict[str, Any], path: str) -> Any:
    """The value at a dotted path, or ``None`` when any step is missing or not an object."""
    value: Any = body
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _error_from(spec: ProviderSpec, error: Any, request_id: str | None) -> ProviderError:
    code = error.get("Code") if isinstance(error, dict) else None
    if not isinstance(code, str) or not code.strip():
        return UnexpectedAnswer(
            f"{spec.action}: ill-formed Response.Error: {_brief(error)}",
            code="Answer.BadError",
            request_id=request_id,
        )
    message = error.get("Message") if isinstance(error, dict) else None
    text = message if isinstance(message, str) else ""
    return classify_error(spec, code.strip(), text, request_id)


def _brief(value: Any) -> str:
    """A short repr for messages; never raises (``repr`` of a 5000-digit int does)."""
    try:
        return _short.repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def _text(value: Any, limit: int = MAX_MESSAGE_CHARS) -> str | None:
    """A non-empty string field (numbers as text), else ``None``; provider "" means absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _brief(value)[:limit]
    if isinstance(value, str) and value.strip():
        return value[:limit]
    return None
