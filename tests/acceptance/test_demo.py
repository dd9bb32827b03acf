"""``jobtracker demo`` as a newcomer runs it: a subprocess that finishes by itself, every job in its
expected terminal state with a verified callback, and a database that can be inspected after."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.proc import query
from worker.catalogue.table import PROVIDERS
from worker.cli.demo import LIFECYCLES

pytestmark = pytest.mark.slow

#: The demo promises to be done in about half a minute; this leaves room for a slow machine.
TIME_BOUND_S = 75


def run_demo(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("JOBTRACKER_", "TENCENTCLOUD_"))
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", "demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIME_BOUND_S + 60,
    )
    return result, time.monotonic() - started


def expected_statuses() -> dict[tuple[str, str], str]:
    """(kind, JobId prefix) -> terminal status."""
    return {(kind, lc.prefix): lc.expected for kind in PROVIDERS for lc in LIFECYCLES}


@pytest.fixture(params=["default sqlite file", "postgresql --database-url"])
def database(request: pytest.FixtureRequest) -> str | None:
    if request.param.startswith("default"):
        return None
    return str(request.getfixturevalue("pg_url"))


def test_demo_finishes_with_every_job_in_its_expected_state(
    tmp_path: Path, database: str | None
) -> None:
    args = ["--database-url", database] if database else []
    result, elapsed = run_demo(tmp_path, *args)
    output = result.stdout
    log = tmp_path / "jobtracker-demo.log"
    assert result.returncode == 0, f"{output[-4000:]}\n{result.stderr[-3000:]}\n" + (
        log.read_text(errors="replace")[-4000:] if log.exists() else ""
    )
    assert elapsed < TIME_BOUND_S, f"the demo took {elapsed:.0f} s"
    n = len(PROVIDERS) * len(LIFECYCLES)
    assert f"all {n} jobs reached their expected status" in output
    # Not a TTY: one plain line per change, and each callback as it arrived.
    assert "pending -> queued" in output and "\x1b[" not in output
    assert output.count("signature verified, answered 200") == n
    assert "(retry, same webhook-id)" in output

    url = database or f"sqlite:///{tmp_path / 'jobtracker-demo.db'}"
    rows = query(url, "SELECT kind, job_id, status FROM tracked_jobs")
    got = {(str(kind), str(job_id).rsplit("-", 1)[0]): str(status) for kind, job_id, status in rows}
    assert got == expected_statuses()
    deliveries = query(
        url,
        "SELECT j.job_id, d.status, d.event_type, j.status FROM webhook_deliveries d "
        "JOIN tracked_jobs j ON j.id = d.tracked_job_id",
    )
    assert len(deliveries) == n
    assert all(d == "delivered" and e == f"job.{s}" for _, d, e, s in deliveries)

    # The printed commands work as printed.
    export = next(line for line in output.splitlines() if "export JOBTRACKER_DATABASE_URL=" in line)
    printed_url = shlex.split(export.strip())[1].partition("=")[2]
    assert printed_url == url
    env = {**os.environ, "JOBTRACKER_DATABASE_URL": printed_url}
    jobs = subprocess.run(
        [sys.executable, "-m", "worker", "jobs", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(json.loads(jobs.stdout)) == n
    show = next(line.strip() for line in output.splitlines() if "jobtracker show " in line)
    page = subprocess.run(
        [sys.executable, "-m", "worker", *shlex.split(show)[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Transitions" in page.stdout and "delivered" in page.stdout
    if database is None:
        # Nothing but the database and the tracker's log is left in the working directory.
        left = {p.name for p in tmp_path.iterdir()} - {"jobtracker-demo.db-wal"}
        left -= {"jobtracker-demo.db-shm", "jobtracker-demo.db.migrate-lock"}
        assert left == {"jobtracker-demo.db", "jobtracker-demo.log"}
