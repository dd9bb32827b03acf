"""The one error format of the service API: ``{"error": {"code", "message", "field"?}}``.

Every 4xx and 5xx answer has this body, whoever raised it: our routes (:class:`ApiError`),
FastAPI's parameter checks (a query parameter that is not a number...), Starlette's routing (an
unknown path, a wrong method) and unexpected exceptions (:class:`Contain`: a 500 that says nothing
of the cause, which is logged instead, without the values the request carried).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.jsonsafe import clean_text

log = logging.getLogger(__name__)

#: HTTP status -> the ``code`` of errors nobody named.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An answer other than success, with its status, code, message and, for bad input, field."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    # A message or field may quote the caller's text, which may hold a lone surrogate (legal in
    # a JSON escape, unencodable as UTF-8): the answer must still be JSON.
    error: dict[str, Any] = {"code": code, "message": clean_text(message)}
    if field is not None:
        error["field"] = clean_text(field)
    return {"error": error}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.code, error.message, error.field),
        status_code=error.status,
        headers=error.headers,
    )


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("query", "path")]
    field = ".".join(location) or None
    message = str(first.get("msg", "invalid value"))
    text = f"{field}: {message}" if field else message
    return error_response(ApiError(422, text, field=field))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    messages = {
        404: "no such endpoint; see /docs",
        405: "method not allowed on this endpoint; see /docs",
    }
    message = messages.get(exc.status_code) or str(exc.detail)
    return error_response(ApiError(exc.status_code, message, headers=exc.headers))


class Unexpected(Exception):
    """What the log says of an exception nobody answered: no value a request carried."""


def describe(exc: BaseException) -> str:
    """``exc`` for a log line. A database error is told by its class, SQLSTATE and statement,
    never by its message: PostgreSQL quotes the failing row there (``DETAIL: Failing row
    contains (...)``), callback URLs with their ``?token=`` included."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        state = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        statement = " ".join((exc.statement or "").split())[:200]
        return (
            f"{type(exc).__name__} from the database ({type(orig).__name__}"
            f"{f', {state}' if state else ''}) running: {statement}"
        )
    return f"{type(exc).__name__}: {str(exc)[:300]}"


class Contain:
    """ASGI middleware: an exception nobody answered becomes a 500 in the one error format,
    logged once, by :func:`describe`.

    Inside Starlette's ``ServerErrorMiddleware``, which would re-raise it after answering: the
    server would then log the exception's own text (a database error's parameters and failing
    row) a second time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def noted(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noted)
        except Exception as exc:
            # The traceback's frames, with describe()'s message: never the exception's text.
            told = Unexpected(describe(exc)).with_traceback(exc.__traceback__)
            log.error(
                "unexpected error answering %s %s",
                scope.get("method", ""),
                # The route's template, as the access log: the path holds the caller's values.
                getattr(scope.get("route"), "path", None) or "(no route)",
                exc_info=(Unexpected, told, told.__traceback__),
            )
            if not started:
                failed = ApiError(500, "internal error; the server logged the cause")
                await error_response(failed)(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
