"""Enqueue four ways (Python, CLI, Celery, plain SQL): one due row, bad input stores nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text

from jobtracker.models import TrackedJob, utcnow
from worker.cli import main
from worker.db import normalize_url, session_scope
from worker.errors import EnqueueError
from worker.flow.enqueue import track, validate
from worker.flow.tick import claim_due
from worker.settings import Settings


def settings_for(url: str, tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"JOBTRACKER_DATABASE_URL": url, **env}, cwd=tmp_path)


def count_rows(url: str) -> int:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(TrackedJob)).scalar_one()
    engine.dispose()
    return int(n)


def test_python_enqueue_is_idempotent_and_due(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(db_url, tmp_path)
    first = track(
        "video_face_fusion",
        "C0a5EXaNR7JzGvlg",
        callback_url="https://hooks.example.com/jobs",
        metadata={"order": 42},
        settings=settings,
    )
    again = track("video_face_fusion", "C0a5EXaNR7JzGvlg", settings=settings)
    assert again["id"] == first["id"]
    assert first["status"] == "pending"
    assert first["region"] == "ap-guangzhou"
    assert first["metadata"] == {"order": 42}
    # Every row gets a deadline, JOBTRACKER_JOB_DEADLINE (a day by default) after it was made.
    deadline = datetime.fromisoformat(first["deadline_at"]) - datetime.fromisoformat(
        first["created_at"]
    )
    assert abs(deadline - timedelta(seconds=settings.job_deadline_s)) < timedelta(seconds=5)
    assert count_rows(db_url) == 1
    # A different region is a different job.
    other = track("video_face_fusion", "C0a5EXaNR7JzGvlg", region="ap-shanghai", settings=settings)
    assert other["id"] != first["id"]
    # Due now: the tick's claim finds both.
    with session_scope(settings) as session:
        claimed = claim_due(
            session, "video_face_fusion", 10, now=utcnow() + timedelta(seconds=1), lease_s=60
        )
    assert {c.id for c in claimed} == {first["id"], other["id"]}


def test_sql_insert_naming_only_kind_and_job_id_is_due(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(db_url, tmp_path)
    engine = create_engine(normalize_url(db_url))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tracked_jobs (kind, job_id) "
                "VALUES ('image_animate', '1194931538865782784')"
            )
        )
    engine.dispose()
    with session_scope(settings) as session:
        job = session.execute(select(TrackedJob)).scalar_one()
        assert (job.status, job.region, job.polls, job.meta) == ("pending", "ap-guangzhou", 0, {})
        assert job.next_poll_at <= utcnow() + timedelta(seconds=1)
        claimed = claim_due(
            session, "image_animate", 10, now=utcnow() + timedelta(seconds=1), lease_s=60
        )
    assert [c.id for c in claimed] == [job.id]
    # The same job through Python finds the SQL row instead of adding one.
    assert track("image_animate", "1194931538865782784", settings=settings)["id"] == job.id


BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"kind": "video_fusion"}, "unknown kind"),
    ({"job_id": ""}, "empty"),
    ({"job_id": "   "}, "empty"),
    ({"job_id": "x" * 129}, "129 characters"),
    ({"job_id": "abc\x00def"}, "control character"),
    ({"job_id": "abc\ndef"}, "whitespace"),
    ({"job_id": "abc\u200bdef"}, "control character"),
    ({"callback_url": "ftp://hooks.example.com/x"}, "http"),
    ({"callback_url": "hooks.example.com/x"}, "http"),
    ({"callback_url": "https:///path-only"}, "no host"),
    ({"callback_url": "https://user:pw@hooks.example.com/"}, "user name or password"),
    ({"callback_url": "https://hooks.example.com:99999/"}, "Port out of range"),
    ({"callback_url": "http://169.254.169.254/latest/meta-data"}, "refused"),
    ({"metadata": [1, 2]}, "JSON object"),
    ({"metadata": "not json"}, "not valid JSON"),
    ({"metadata": '"a string"'}, "JSON object"),
    ({"metadata": {"blob": "x" * 20000}}, "limit"),
    ({"metadata": {"f": float("nan")}}, "JSON"),
    # What no store takes as it is: refused with the field named, never stored altered.
    ({"metadata": {"note": "a\x00b"}}, "NUL character"),
    ({"metadata": {"\ud800": 1}}, "lone UTF-16 surrogate"),
    ({"metadata": {"a": [{"b": "\udfff"}]}}, "lone UTF-16 surrogate"),
    ({"callback_url": "https://hooks.example.com/\udc00"}, "lone UTF-16 surrogate"),
    ({"region": "Guangzhou"}, "region"),
    ({"region": "ap guangzhou"}, "region"),
    ({"expected_duration_s": 0}, "above 0"),
    ({"expected_duration_s": -5}, "above 0"),
    ({"expected_duration_s": 31 * 86400}, "30 days"),
    ({"expected_duration_s": "soon"}, "not a number"),
    ({"expected_duration_s": float("inf")}, "number of seconds"),
    ({"expected_duration_s": True}, "number of seconds"),
    ({"expected_duration_s": 10**400}, "seconds"),  # 400 digits: past a float
]


def nowhere(tmp_path: Path) -> Path:
    """A SQLite file in a folder that does not exist: any use of the database fails loudly."""
    return tmp_path / "absent" / "jobtracker.db"


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_input_is_refused_before_the_database_is_touched(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """``track()`` validates first: with a database that cannot even be opened, the refusal is
    still the input's (no database error), so nothing can have been stored."""
    settings = settings_for(f"sqlite:///{nowhere(tmp_path)}", tmp_path)
    args: dict[str, Any] = {"kind": "image_animate", "job_id": "1194931538865782784", **change}
    with pytest.raises(EnqueueError, match=message):
        track(**args, settings=settings)
    assert not nowhere(tmp_path).parent.exists()


def test_bad_input_stores_nothing(db_url: str, tmp_path: Path) -> None:
    """Every bad input through ``track()`` on a real database (both backends): refused, and the
    table stays empty; a good one afterwards is stored."""
    settings = settings_for(db_url, tmp_path)
    for change, message in BAD_INPUTS:
        args: dict[str, Any] = {"kind": "image_animate", "job_id": "1194931538865782784", **change}
        with pytest.raises(EnqueueError, match=message):
            track(**args, settings=settings)
    assert count_rows(db_url) == 0
    track("image_animate", "1194931538865782784", settings=settings)
    assert count_rows(db_url) == 1


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_each_refusal_names_the_field_that_broke_the_rule(
    change: dict[str, Any], message: str
) -> None:
    """The service API answers 422 naming the field; the field travels on the one error."""
    args: dict[str, Any] = {"kind": "image_animate", "job_id": "1194931538865782784", **change}
    with pytest.raises(EnqueueError, match=message) as caught:
        validate(args.pop("kind"), args.pop("job_id"), **args, default_region="ap-guangzhou")
    assert caught.value.field == next(iter(change))


def _cli_args(change: dict[str, Any]) -> list[str]:
    args = [change.get("kind", "image_animate"), change.get("job_id", "1194931538865782784")]
    for name in ("callback_url", "region", "metadata"):
        if name in change:
            value = change[name]
            args += [
                f"--{name.replace('_', '-')}",
                value if isinstance(value, str) else json.dumps(value),
            ]
    if "expected_duration_s" in change:
        args += ["--expected-duration", str(change["expected_duration_s"])]
    return args


def _argv_can_carry(change: dict[str, Any]) -> bool:
    # NaN has no JSON spelling for --metadata; a NUL byte cannot be passed in argv at all.
    return "nan" not in repr(change) and "\x00" not in str(change.get("job_id", ""))


@pytest.mark.parametrize(("change", "message"), [c for c in BAD_INPUTS if _argv_can_carry(c[0])])
def test_cli_refuses_bad_input_with_exit_code_2(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """Refused before the database is touched: its file is never even created."""
    database = tmp_path / "jobtracker.db"
    result = CliRunner().invoke(
        main,
        ["enqueue", *_cli_args(change)],
        env={"JOBTRACKER_DATABASE_URL": f"sqlite:///{database}"},
    )
    assert result.exit_code == 2, result.output
    assert message.lower() in result.output.lower()
    assert len(result.output.strip().splitlines()) == 1
    assert not database.exists()


def test_cli_enqueue_prints_the_job_as_json_in_a_real_process(db_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "JOBTRACKER_DATABASE_URL": db_url}
    command = [
        sys.executable, "-m", "worker", "enqueue", "video_face_fusion", "JOB-1",
        "--callback-url", "http://127.0.0.1:9/hook", "--region", "ap-beijing",
        "--metadata", '{"user": 7}',
    ]  # fmt: skip
    first = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    job = json.loads(first.stdout)
    assert (job["kind"], job["job_id"], job["region"]) == (
        "video_face_fusion",
        "JOB-1",
        "ap-beijing",
    )
    assert job["metadata"] == {"user": 7}
    assert job["callback_url"] == "http://127.0.0.1:9/hook"
    second = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert json.loads(second.stdout)["id"] == job["id"]
    assert count_rows(db_url) == 1
    bad = subprocess.run(
        [sys.executable, "-m", "worker", "enqueue", "nope", "J"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("jobtracker: unknown kind")


def test_celery_send_task_enqueues_through_a_real_broker(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Another service's ``send_task("jobtracker.track", ...)`` over Redis reaches the table."""
    from celery import Celery
    from celery.contrib.testing.worker import start_worker
    from celery.signals import task_postrun

    from worker.runtime.app import app, celery_config
    from worker.settings import reset_settings

    env = {"JOBTRACKER_DATABASE_URL": pg_url, "JOBTRACKER_BROKER_URL": redis_url}
    settings = Settings.from_env(env, cwd=tmp_path)
    # The worker runs in this process: count the messages it has handled, whatever the outcome.
    handled = threading.Semaphore(0)

    def count(**_: object) -> None:
        handled.release()

    task_postrun.connect(count, weak=False)
    os.environ.update(env)
    reset_settings()
    app.conf.update(celery_config(settings))
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            caller = Celery("other-service", broker=redis_url)
            caller.send_task(
                "jobtracker.track",
                kwargs={"kind": "image_animate", "job_id": "from-celery", "metadata": {"a": 1}},
                queue="jobtracker",
            )
            caller.send_task(
                "jobtracker.track", kwargs={"kind": "bogus", "job_id": "x"}, queue="jobtracker"
            )
            for _ in range(2):
                assert handled.acquire(timeout=20)
            # The same job again (without metadata): the first row stays as it was.
            caller.send_task(
                "jobtracker.track",
                kwargs={"kind": "image_animate", "job_id": "from-celery"},
                queue="jobtracker",
            )
            assert handled.acquire(timeout=20)
    finally:
        task_postrun.disconnect(count)
        for key in env:
            os.environ.pop(key, None)
        reset_settings()
    with session_scope(settings) as session:
        jobs = session.execute(select(TrackedJob)).scalars().all()
        assert [(j.kind, j.job_id, j.meta) for j in jobs] == [
            ("image_animate", "from-celery", {"a": 1})
        ]
