"""``jobtracker settings``: every variable with its value, default and meaning; never a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.settings import Settings
from worker.settings.declare import declared

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MASTER_KEY = "a-master-key-of-more-than-thirty-two-characters"


def run(*args: str, **env: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["settings", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_every_variable_is_listed_with_its_value_and_default() -> None:
    code, out, _ = run(JOBTRACKER_TICK_SECONDS="2.5", JOBTRACKER_IMAGE_ANIMATE_QPS="3")
    assert code == 0
    lines = out.splitlines()
    for s in declared(Settings):
        for _, variable in s.variables(os.environ):
            assert any(line.startswith(variable + " ") for line in lines), variable
    assert any(
        line.startswith("JOBTRACKER_TICK_SECONDS ") and line.endswith("2.5  (default: 5)")
        for line in lines
    )
    assert any(
        line.startswith("JOBTRACKER_IMAGE_ANIMATE_QPS ") and line.endswith("3  (default: 20)")
        for line in lines
    )
    assert any(line.endswith("ap-guangzhou  (default)") for line in lines)
    assert "beat period, seconds" in out


def test_secrets_are_never_shown_and_passwords_are_hidden() -> None:
    env = {
        "TENCENTCLOUD_SECRET_ID": "AKIDverysecretid",
        "TENCENTCLOUD_SECRET_KEY": "verysecretkey",
        "JOBTRACKER_WEBHOOK_SECRET": SECRET,
        "JOBTRACKER_CLIENT_SECRET_KEY": MASTER_KEY,
        "JOBTRACKER_DATABASE_URL": "postgresql+psycopg://jt:hunter2@db/jt",
        "JOBTRACKER_BROKER_URL": "redis://:hunter3@redis:6379/0",
    }
    secrets = ("AKIDverysecretid", "verysecretkey", SECRET, MASTER_KEY, "hunter2", "hunter3")
    for args in ((), ("--json",)):
        code, out, err = run(*args, **env)
        assert code == 0
        assert not [secret for secret in secrets if secret in out + err]
        assert "postgresql+psycopg://jt:***@db/jt" in out
        assert "redis://:***@redis:6379/0" in out
    rows = {row["variable"]: row for row in json.loads(out)}
    assert rows["TENCENTCLOUD_SECRET_KEY"]["value"] == "set"
    assert rows["JOBTRACKER_CLIENT_SECRET_KEY"]["value"] == "set"
    assert rows["JOBTRACKER_CLIENT_SECRET_KEY"]["default"] is None


def test_json_gives_values_as_json_holds_them() -> None:
    code, out, _ = run("--json", JOBTRACKER_WEBHOOK_RETRY_SCHEDULE="1,2")
    assert code == 0
    rows = {row["variable"]: row for row in json.loads(out)}
    assert rows["JOBTRACKER_WEBHOOK_RETRY_SCHEDULE"]["value"] == [1.0, 2.0]
    assert rows["JOBTRACKER_WEBHOOK_RETRY_SCHEDULE"]["is_default"] is False
    assert rows["JOBTRACKER_BATCH_SIZE"] | {"doc": ""} == {
        "variable": "JOBTRACKER_BATCH_SIZE",
        "value": 50,
        "default": 50,
        "is_default": True,
        "doc": "",
        "allowed": ">= 1",
        "secret": False,
    }
    assert rows["TENCENTCLOUD_SECRET_ID"]["value"] is None


def test_a_bad_value_is_refused_by_name_without_echoing_a_secret() -> None:
    code, out, err = run(JOBTRACKER_CLIENT_SECRET_KEY="tooshortsecret")
    assert code == 2 and out == ""
    assert "JOBTRACKER_CLIENT_SECRET_KEY" in err and "tooshortsecret" not in err


def test_markdown_needs_no_valid_environment() -> None:
    code, out, _ = run("--markdown", JOBTRACKER_TICK_SECONDS="-1")
    assert code == 0
    assert out.startswith("| variable | meaning | default | allowed |\n")
    assert "| `JOBTRACKER_<KIND>_QPS` |" in out


def test_a_variable_that_is_no_setting_is_pointed_out() -> None:
    code, _, err = run(JOBTRACKER_TICK_SECOND="2")
    assert code == 0
    assert "not settings, ignored: JOBTRACKER_TICK_SECOND" in err


def test_settings_starts_without_the_heavy_dependencies() -> None:
    """The command answers without SQLAlchemy, Celery or the flow (start-up time)."""
    code = (
        "import sys; from worker.cli import main\n"
        "try:\n    main(['settings', '--json'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('sqlalchemy', 'celery', 'fastapi', 'worker.flow', "
        "'worker.db', 'jobtracker.models.base') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stdout, done.stdout[-2000:] + done.stderr
