"""The ``?wait=`` watcher cannot be stopped for good: a stray ``NOTIFY`` from any database role is
ignored, a killed connection or a failure restarts it (counted), and it runs on the lowest psycopg
that pyproject.toml allows.

PostgreSQL for the notifications (the SQLite poller is restarted the same way, tested in-process
below).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import psycopg
import pytest

from tests import services
from tests.api_server import ApiServer, free_port
from tests.integration.conftest import BASE_ENV, Api, unique
from tests.integration.test_api_wait import finish, hold
from worker.api import waiting
from worker.api.waiting import APPLICATION_NAME, Waiters, job_ids
from worker.db import libpq_url
from worker.flow.enqueue import track
from worker.flow.transition import TERMINAL_CHANNEL
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: What other programs (or a hostile database role) may send on the channel.
STRAY_PAYLOADS = ["x", "", ",", " , ", "-1", "1e5", "12;DROP", "9" * 40, "\u0661\u0662", "x" * 7000]


@pytest.fixture(scope="module")
def api_backend() -> str:
    """This module's server runs on PostgreSQL only (see the module's docstring)."""
    return "postgresql"


@pytest.fixture(scope="module")
def api_env() -> dict[str, str]:
    return {"JOBTRACKER_METRICS_PORT": str(free_port())}


def notify(database_url: str, *payloads: str) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        for payload in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (TERMINAL_CHANNEL, payload))


def restarts(api: Api) -> float:
    text = httpx.get(f"http://127.0.0.1:{api.env['JOBTRACKER_METRICS_PORT']}/metrics").text
    found = re.search(r"^jobtracker_api_wait_watcher_restarts_total (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def woken_promptly(api: Api, *, wait_s: float = 20.0) -> float:
    """Seconds from a job's commit to the answer of a request waiting for it."""
    client = api.new_client()
    job = (
        api.http(client.token)
        .post("/v1/jobs", json={"kind": "image_animate", "job_id": unique()})
        .json()
    )
    held = hold(api, client.token, f"/v1/jobs/{job['id']}", wait_s)
    time.sleep(0.5)  # the request is in, and waiting
    committed = finish(api.settings(), job["id"])
    answer, arrived = held.result(timeout=wait_s + 10)
    assert answer.status_code == 200 and answer.json()["job"]["status"] == "succeeded"
    return arrived - committed


def test_a_stray_notify_is_ignored_and_waits_still_end_at_once(api: Api) -> None:
    before = restarts(api)
    notify(api.database_url, *STRAY_PAYLOADS)
    time.sleep(0.5)  # the watcher reads them
    # Woken by the job's own notification, not by the 20 s timeout (nor the 5 s safety sweep).
    assert woken_promptly(api) < 2.0
    assert restarts(api) == before  # nothing failed: the payloads were ignored
    assert "Traceback" not in api.server.output()


def listener_pids(database_url: str) -> list[int]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database()",
            (APPLICATION_NAME,),
        ).fetchall()
    return [row[0] for row in rows]


def test_a_killed_listening_connection_restarts_the_watcher_counted(api: Api) -> None:
    before = restarts(api)
    [pid] = listener_pids(api.database_url)
    with psycopg.connect(libpq_url(api.database_url), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 10
    while not (restarts(api) > before and listener_pids(api.database_url)):
        assert time.monotonic() < deadline, "the watcher did not come back"
        time.sleep(0.1)
    assert restarts(api) == before + 1
    assert woken_promptly(api) < 2.0


def test_a_failing_watcher_is_restarted_on_both_backends(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception (a bug, not only a lost connection) restarts it; the sweep after the
    restart ends the waits whose notification was missed meanwhile."""
    monkeypatch.setattr(waiting, "RESTART_DELAYS_S", (0.05, 0.05))
    monkeypatch.setattr(waiting, "SQLITE_POLL_S", 0.05)
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    job_pk = track("image_animate", unique(), settings=settings)["id"]
    waiters = Waiters(settings)
    failures = {"left": 2}
    sweep, ended = waiters._sweep, waiters._ended

    def failing_sweep(*args: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug in the watcher")
        sweep(*args)  # type: ignore[arg-type]

    def failing_ended(*args: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug in the watcher")
        ended(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(waiters, "_sweep", failing_sweep)
    monkeypatch.setattr(waiters, "_ended", failing_ended)
    before = waiting.API_WAIT_WATCHER_RESTARTS._value.get()

    async def active() -> bool:
        return True

    async def scenario() -> float:
        waiters.start()
        try:
            task = asyncio.create_task(waiters.wait(job_pk, 20, active))
            await asyncio.sleep(0.3)
            committed = await asyncio.to_thread(finish, settings, job_pk)
            await asyncio.wait_for(task, 10)
            return time.monotonic() - committed
        finally:
            waiters.stop()

    took = asyncio.run(scenario())
    assert waiting.API_WAIT_WATCHER_RESTARTS._value.get() - before == 2
    assert took < 6.0  # the restarted watcher's sweep at the latest, never the 20 s timeout


def test_job_ids_keeps_only_ids() -> None:
    assert job_ids("12,13") == [12, 13]
    assert job_ids("12,x, 14 ,,-3,1e5") == [12, 14]
    for payload in STRAY_PAYLOADS:
        assert job_ids(payload) == []


# -- the lowest allowed psycopg ------------------------------------------------------------------


def lowest_psycopg() -> str:
    """The lower bound of psycopg in pyproject.toml's dependencies."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [bound] = [
        found.group(1)
        for requirement in dependencies
        if (found := re.fullmatch(r"psycopg\[binary\]>=([0-9.]+),<\d+", requirement))
    ]
    return bound


@pytest.fixture(scope="session")
def lowest_psycopg_path() -> Path:
    """A folder holding exactly the lowest allowed psycopg (and its binary build), to put first
    on PYTHONPATH; installed once per machine and Python version, from the package index."""
    version = lowest_psycopg()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    folder = Path.home() / ".cache" / "jobtracker-tests" / f"psycopg-{version}-{tag}"
    if not (folder / ".complete").exists():
        done = subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
                "--target", str(folder), f"psycopg=={version}", f"psycopg-binary=={version}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            services.require(f"psycopg {version} from the package index", RuntimeError(done.stderr))
        (folder / ".complete").touch()
    return folder


def test_waits_work_on_the_lowest_allowed_psycopg(
    pg_url: str, tmp_path: Path, lowest_psycopg_path: Path
) -> None:
    env = {
        **BASE_ENV,
        "JOBTRACKER_DATABASE_URL": pg_url,
        "JOBTRACKER_METRICS_PORT": str(free_port()),
        "PYTHONPATH": str(lowest_psycopg_path),
    }
    seen = subprocess.run(
        [sys.executable, "-c", "import psycopg; print(psycopg.__version__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert seen == lowest_psycopg()
    server = ApiServer(env, tmp_path).start()
    api = Api(server=server, database_url=pg_url, env=env, tmp=tmp_path)
    try:
        assert woken_promptly(api) < 2.0  # the watcher runs: notifies(timeout=) exists
        notify(pg_url, *STRAY_PAYLOADS)
        assert woken_promptly(api) < 2.0
        assert restarts(api) == 0
    finally:
        api.close()
        server.stop()
    assert "Traceback" not in server.output()
