"""Logging setup: one line per event, with job context, as text or JSON lines.

Context is named fields (``kind``, ``job_id``, ``tracked_job_id``, ``status``...), which both
formats print. A stage binds the context it works in once with :func:`log_context` (a context
variable, so each worker thread has its own) and every line logged inside the block carries it,
including lines logged deeper down (the provider client, the rate limiter); ``extra={...}`` adds
what is particular to one line. JSON lines are python-json-logger's; its encoder handles what
``json`` cannot (``str()`` of the value). Nothing here ever sees a secret: callers pass
identifiers, not credentials.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from worker.settings import Settings

_CONTEXT: ContextVar[dict[str, Any]] = ContextVar("jobtracker_log_context")
#: Attributes every LogRecord has; anything else came from ``extra=`` or :func:`log_context`.
#: (uvicorn adds ``color_message``, a copy of the message with terminal colours.)
_STANDARD = set(RESERVED_ATTRS) | {"message", "asctime", "taskName", "color_message"}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (in this thread)."""
    token = _CONTEXT.set({**_CONTEXT.get({}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound :func:`log_context` fields onto each record (``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get({}).items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return line


class JsonFormatter(_LibraryJsonFormatter):
    """``{"ts", "level", "logger", "message", **context}``, plus ``exc`` with a traceback."""

    def __init__(self) -> None:
        super().__init__(
            "%(message)s",
            rename_fields={"exc_info": "exc"},
            reserved_attrs=sorted(_STANDARD),
            json_default=str,
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)


def _stderr() -> TextIO:
    """The process's stderr, even while Celery has it replaced.

    A Celery worker redirects ``sys.stdout``/``sys.stderr`` to a logging proxy (so a stray
    ``print`` in a task becomes a log line). A handler created on that proxy would feed log
    records back into logging, where the proxy's recursion guard silently drops them: every
    line logged after e.g. ``beat_init`` reconfigures logging would vanish.
    """
    stream = sys.stderr
    if type(stream).__name__ == "LoggingProxy" and sys.__stderr__ is not None:
        return sys.__stderr__
    return stream


def configure_logging(settings: Settings, level: str | None = None) -> None:
    """Send every log record (ours, Celery's, warnings) to stderr in the configured format."""
    handler = logging.StreamHandler(_stderr())
    handler.addFilter(ContextFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or settings.log_level)
    # warnings.warn() (Celery's "running as root" SecurityWarning...) as log lines too, so a
    # JSON log stays one JSON object per line.
    logging.captureWarnings(True)
    # The SDK logs whole requests at DEBUG; urllib3 logs URLs. Neither is for operators.
    for noisy in ("tencentcloud_sdk_common", "urllib3", "kombu", "amqp", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Celery's per-message lines ("Sending due task", "Task ... received", "... succeeded") come
    # several times per tick and quote task arguments (callback URLs with their query strings);
    # our own lines already say what happened. Failures are still logged (ERROR); DEBUG shows all.
    routine = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for chatty in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(chatty).setLevel(routine)
