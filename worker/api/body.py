"""Request bodies, read strictly: a size cap, ``application/json`` only, and JSON with no
duplicate keys, no ``NaN`` / ``Infinity`` and an object at the top.

A body that breaks any of these is refused with a 4xx before anything is written. Python's
``json`` module accepts ``NaN`` and keeps the last of two equal keys; either would let two
readers of one body disagree about what it says.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.api.errors import ApiError, error_body


class BodyTooLarge(ApiError):
    def __init__(self, cap: int) -> None:
        super().__init__(413, f"the request body is over the {cap} byte limit")


class BodyLimit:
    """ASGI middleware: no request body over ``max_bytes`` is ever buffered.

    A declared ``Content-Length`` over the cap is answered 413 at once; a chunked body is
    counted as it arrives and reading it fails with 413 once it passes the cap.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _refuse(send, BodyTooLarge(self.max_bytes))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Send, error: ApiError) -> None:
    body = json.dumps(error_body(error.code, error.message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Duplicate(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Duplicate(key)
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or :class:`ApiError` (400) saying what is wrong with it."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8", code="invalid_json") from None
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    except _Duplicate as exc:
        raise ApiError(
            400, f"the key {exc.args[0]!r} appears twice in one object", code="invalid_json"
        ) from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}",
            code="invalid_json",
        ) from None
    except (ValueError, RecursionError) as exc:
        # NaN / Infinity, integers past Python's digit limit, absurd nesting.
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(
            400, f"the request body is not valid JSON: {reason}", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number"
        )
        raise ApiError(
            400, f"the request body must be a JSON object, not {kind}", code="invalid_json"
        )
    return value


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object; 415 unless it is sent as ``application/json``."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            415,
            "send the body as Content-Type: application/json"
            + (f" (not {media_type})" if media_type else ""),
        )
    return parse_json_object(await request.body())
