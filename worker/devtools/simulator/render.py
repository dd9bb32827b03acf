"""Answers shaped like the real API's, built from the provider table (no per-kind code)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

from jobtracker.models.status import JobStatus
from worker.catalogue.table import COMMON_ERROR_CODES, ProviderSpec
from worker.devtools.simulator.lifecycle import Step
from worker.errors import JobCanceled, JobFailed, JobNotFound, ProviderError

JSON_CONTENT_TYPE = "application/json"
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)

#: Plausible values for result fields that are not URLs (VideoFaceFusionOutput's).
_SAMPLE_VALUES: dict[str, Any] = {
    "Width": 720,
    "Height": 1280,
    "FPS": 25,
    "DurationInSec": 15.079999923706,
    "Frame": 375,
}

_STEP_STATUS = {
    "queued": JobStatus.QUEUED,
    "running": JobStatus.RUNNING,
    "slow": JobStatus.RUNNING,
    "dribble": JobStatus.RUNNING,
    "done": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "poison": JobStatus.FAILED,
    "nan": JobStatus.SUCCEEDED,
}
#: The size of a ``huge`` answer, and what a ``gzipbomb`` answer decompresses to.
HUGE_BYTES = 64 * 1024 * 1024
GZIP_BOMB_BYTES = 256 * 1024 * 1024
#: What ``json.loads`` accepts and neither PostgreSQL nor a strict parser takes back.
_POISON_TEXT = "\ud800 broken \udfff text\x00"
_NON_FINITE = (float("nan"), float("inf"), float("-inf"))


@dataclass(frozen=True)
class Reply:
    """One HTTP answer; ``drop`` closes the connection without one."""

    status: int = 200
    content_type: str = JSON_CONTENT_TYPE
    body: bytes = b""
    drop: bool = False
    #: Send the whole answer (status line included) one byte at a time, this far apart.
    dribble_s: float = 0.0
    #: ``Content-Encoding`` of ``body`` (``gzip``), if any.
    encoding: str | None = None
    #: Then ``filler`` this many times, then ``tail``: a huge answer not held in memory. Sent
    #: without Content-Length (the connection closes at the end), so only reading tells its size.
    filler: bytes = b""
    repeat: int = 0
    tail: bytes = b""
    #: (kind, JobId) of the poll this answers, for the simulator's in-flight bookkeeping.
    job: tuple[str, str] | None = None


@functools.cache
def _gzip_bomb() -> bytes:
    """About 256 KiB of gzip holding a ``{"Response": ...}`` of GZIP_BOMB_BYTES (built once,
    a chunk at a time, never whole in memory)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as packed:
        packed.write(b'{"Response": {"RequestId": "bomb", "Padding": "')
        zeros = b"0" * (1 << 20)
        for _ in range(GZIP_BOMB_BYTES // len(zeros)):
            packed.write(zeros)
        packed.write(b'"}}')
    return out.getvalue()


def error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    return {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id}}


def code_for(spec: ProviderSpec, cls: type[ProviderError], fallback: str) -> str:
    """The API's own code of an error class (its not-found code...), else ``fallback``."""
    for table in (spec.error_codes, COMMON_ERROR_CODES):
        for code, known in table.items():
            if known is cls and not code.endswith("*"):
                return code
    return fallback


def render(
    spec: ProviderSpec, step: Step, *, job_id: str, request_id: str, content_type: str
) -> Reply:
    """The reply for one poll of ``job_id`` playing ``step``."""
    name = step.name
    if name == "drop":
        return Reply(drop=True)
    if name == "html502":
        return Reply(status=502, content_type="text/html", body=HTML_502)
    if name == "junk":
        return Reply(content_type=content_type, body=b'{"Response": {"Status": "DONE", oops')
    if name == "noresponse":
        return _json({"RequestId": request_id, "Result": "ok"}, content_type)
    if name == "huge":
        # A well-formed "running" answer of about HUGE_BYTES, most of it a padding field.
        head = {"RequestId": request_id}
        _put(head, spec.status_field, spec.raw_status(JobStatus.RUNNING))
        opening = json.dumps({"Response": head})[:-2] + ', "Padding": "'
        filler = b"x" * 65536
        return Reply(
            content_type=content_type,
            body=opening.encode(),
            filler=filler,
            repeat=HUGE_BYTES // len(filler),
            tail=b'"}}',
        )
    if name == "gzipbomb":
        return Reply(content_type=content_type, body=_gzip_bomb(), encoding="gzip")
    errors = {
        "throttle": ("RequestLimitExceeded", "Your requests exceed the frequency limit."),
        "internal": ("InternalError", "An internal error has occurred. Retry your request."),
        "notfound": (
            code_for(spec, JobNotFound, "FailedOperation.JobNotFound"),
            "The task does not exist.",
        ),
        "canceled": (
            code_for(spec, JobCanceled, "FailedOperation.JobHasBeenCanceled"),
            "The task has been canceled. Please submit the task again.",
        ),
        "error": (step.code or "InternalError", f"Simulated error {step.code}."),
    }
    if name in errors:
        code, message = errors[name]
        return _json(error_body(code, message, request_id), content_type)
    return _json({"Response": _status_body(spec, step, job_id, request_id)}, content_type)


def _status_body(spec: ProviderSpec, step: Step, job_id: str, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"RequestId": request_id}
    if step.name == "badstatus":
        known = list(spec.status_values)
        raw: Any = max(k for k in known if isinstance(k, int)) + 90 if _ints(known) else "PAUSED"
        _put(body, spec.status_field, raw)
        return body
    status = _STEP_STATUS[step.name]
    _put(body, spec.status_field, spec.raw_status(status))
    failed = status == JobStatus.FAILED
    failure_code = step.code or code_for(spec, JobFailed, "FailedOperation.Unknown")
    message = f"Simulated failure {failure_code}."
    if step.name == "poison":
        failure_code, message = failure_code + _POISON_TEXT, _POISON_TEXT
    _put(body, spec.error_code_field, failure_code if failed else "")
    _put(body, spec.error_message_field, message if failed else "")
    optional = [key for key in spec.result.fields if key not in spec.result.required]
    for key, path in spec.result.fields.items():
        value = _sample(key, job_id) if status == JobStatus.SUCCEEDED else None
        if step.name == "nan" and key in optional:
            value = _NON_FINITE[optional.index(key) % len(_NON_FINITE)]
        _put(body, path, value)
    if step.name == "nan":
        body["Progress"] = float("nan")  # outside the result: must not trip anything either
    return body


def _ints(values: list[Any]) -> bool:
    return any(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _sample(key: str, job_id: str) -> Any:
    digest = hashlib.md5(job_id.encode("utf-8")).hexdigest()
    if key.endswith("MD5"):
        return digest.upper()
    if key in _SAMPLE_VALUES:
        return _SAMPLE_VALUES[key]
    return f"https://simulator-1250000000.cos.ap-guangzhou.myqcloud.com/{key}/{digest}.mp4"


def _put(body: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _json(payload: dict[str, Any], content_type: str) -> Reply:
    return Reply(content_type=content_type, body=json.dumps(payload).encode("utf-8"))
