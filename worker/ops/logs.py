"""Logging setup: one line per event, with job context, as text or JSON lines.

Context goes in ``extra={...}`` (``kind``, ``job_id``, ``tracked_job_id``, ``status``...),
which both formats print. Nothing here ever sees a secret: callers pass identifiers, not
credentials.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from worker.settings import Settings

#: Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


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
