"""Log lines: JSON lines that parse and carry job context, text lines with the same context, one
handler for ours and Celery's records, and no secret even when settings are logged."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.observe.logs import configure_logging
from worker.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_KEY = "not-a-real-tencent-key-0123456789"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "JOBTRACKER_WEBHOOK_SECRET": SECRET,
            "TENCENTCLOUD_SECRET_ID": "AKIDexample",
            "TENCENTCLOUD_SECRET_KEY": SECRET_KEY,
            **env,
        },
        cwd=tmp_path,
    )


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_json_lines_parse_and_carry_job_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(settings(tmp_path, JOBTRACKER_LOG_FORMAT="json"))
    context = {"kind": "image_animate", "job_id": "1194931538865782784", "tracked_job_id": 7}
    logging.getLogger("worker.flow.poll").info(
        "job %s -> %s", "queued", "running", extra={**context, "status": "running"}
    )
    logging.getLogger("worker.flow.outbox").info(
        "callback delivered",
        extra={"delivery_id": "msg_1", "tracked_job_id": 7, "at": datetime(2024, 5, 1, tzinfo=UTC)},
    )
    try:
        raise ValueError("multi\nline")
    except ValueError:
        logging.getLogger("worker.runtime.tasks").exception("task failed", extra=context)

    first, second, third = (json.loads(line) for line in lines(capsys))
    assert first == {
        "ts": first["ts"],
        "level": "INFO",
        "logger": "worker.flow.poll",
        "message": "job queued -> running",
        **context,
        "status": "running",
    }
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None
    assert second["at"] == "2024-05-01 00:00:00+00:00"  # not JSON-native: as text
    assert third["level"] == "ERROR" and "ValueError: multi\nline" in third["exc"]
    assert third["job_id"] == context["job_id"]


def test_text_lines_carry_the_same_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(settings(tmp_path))
    logging.getLogger("worker.flow.enqueue").info(
        "job enqueued", extra={"kind": "video_face_fusion", "job_id": "abc", "tracked_job_id": 3}
    )
    [line] = lines(capsys)
    assert line.endswith(
        "INFO worker.flow.enqueue: job enqueued kind=video_face_fusion job_id=abc tracked_job_id=3"
    )


def test_warnings_and_celery_records_use_the_same_handler(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(settings(tmp_path, JOBTRACKER_LOG_FORMAT="json"))
    logging.getLogger("celery.apps.worker").info("celery@host ready.")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("running as root", UserWarning, stacklevel=1)
    ready, warned = (json.loads(line) for line in lines(capsys))
    assert ready["logger"] == "celery.apps.worker" and ready["message"] == "celery@host ready."
    assert warned["logger"] == "py.warnings" and "running as root" in warned["message"]


def test_routine_celery_lines_are_quiet_unless_debug(tmp_path: Path) -> None:
    configure_logging(settings(tmp_path))
    assert not logging.getLogger("celery.app.trace").isEnabledFor(logging.INFO)
    assert logging.getLogger("celery.app.trace").isEnabledFor(logging.ERROR)
    assert logging.getLogger("celery.apps.worker").isEnabledFor(logging.INFO)
    configure_logging(settings(tmp_path, JOBTRACKER_LOG_LEVEL="DEBUG"))
    assert logging.getLogger("celery.app.trace").isEnabledFor(logging.INFO)


def test_the_handler_writes_to_the_real_stderr_while_celery_redirects_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler on Celery's stdout proxy would feed records back into logging, where the proxy
    drops them: every line after the redirect would be lost."""
    from celery.utils.log import LoggingProxy

    monkeypatch.setattr(sys, "stderr", LoggingProxy(logging.getLogger("celery.redirected")))
    configure_logging(settings(tmp_path))
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.__stderr__


def test_logging_the_settings_shows_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for log_format in ("json", "text"):
        configured = settings(tmp_path, JOBTRACKER_LOG_FORMAT=log_format)
        configure_logging(configured)
        logging.getLogger("worker").warning("starting with %s", configured, extra={"s": configured})
        output = capsys.readouterr().err
        assert "starting with Settings(" in output
        for secret in (SECRET, SECRET.removeprefix("whsec_"), SECRET_KEY):
            assert secret not in output
