"""``?wait=``: a request held until its job ends, woken by the shared watcher (LISTEN/NOTIFY on
PostgreSQL, one poll for all waiters on SQLite), never by each waiter polling."""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from jobtracker.models import JobStatus, TrackedJob, utcnow
from tests.api_server import ApiServer
from tests.drive import drive
from tests.integration.conftest import BASE_ENV, Api, unique
from worker.api import waiting
from worker.api.waiting import Waiters
from worker.db import get_engine, session_scope
from worker.devtools.simulator import Simulator
from worker.flow.enqueue import track
from worker.flow.transition import Move, transition_many
from worker.settings import Settings


def finish(settings: Settings, job_pk: int, status: JobStatus = JobStatus.SUCCEEDED) -> float:
    """End the job through the one status writer; return the monotonic time just before commit."""
    with session_scope(settings) as session:
        job = session.get(TrackedJob, job_pk)
        assert job is not None
        transition_many(session, [Move(job, status)], now=utcnow())
        committing = time.monotonic()
    return committing


def hold(api: Api, token: str, path: str, wait: float) -> Future[tuple[httpx.Response, float]]:
    """GET ``path?wait=`` on a thread; the future gives the answer and when it arrived."""
    pool = ThreadPoolExecutor(1)

    def call() -> tuple[httpx.Response, float]:
        answer = api.http(token).get(path, params={"wait": wait})
        return answer, time.monotonic()

    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


@pytest.mark.serial  # bounds on wall time
def test_wait_returns_when_the_job_ends(api: Api) -> None:
    client = api.new_client()
    job = (
        api.http(client.token)
        .post("/v1/jobs", json={"kind": "image_animate", "job_id": unique()})
        .json()
    )
    started = time.monotonic()
    held = [
        hold(api, client.token, f"/v1/jobs/{job['id']}", 30),
        hold(api, client.token, f"/v1/jobs/image_animate/{job['job_id']}", 30),
    ]
    time.sleep(1.0)  # the requests are in, and waiting
    assert not any(f.done() for f in held)
    committed = finish(api.settings(), job["id"])
    for future in held:
        answer, arrived = future.result(timeout=10)
        assert answer.status_code == 200
        assert answer.json()["job"]["status"] == "succeeded"
        assert [t["to_status"] for t in answer.json()["transitions"]] == ["succeeded"]
        # Woken by the transition, not by the 30 s timeout.
        assert arrived - committed < 2.0, arrived - committed
        assert arrived - started < 10


@pytest.mark.serial  # bounds on wall time
def test_wait_gives_up_after_n_seconds_and_an_ended_job_answers_at_once(api: Api) -> None:
    client = api.new_client()
    http = api.http(client.token)
    job = http.post("/v1/jobs", json={"kind": "image_animate", "job_id": unique()}).json()
    started = time.monotonic()
    answer = http.get(f"/v1/jobs/{job['id']}", params={"wait": 1.5})
    elapsed = time.monotonic() - started
    assert answer.status_code == 200 and answer.json()["job"]["status"] == "pending"
    assert 1.4 <= elapsed < 5, elapsed
    finish(api.settings(), job["id"], JobStatus.FAILED)
    started = time.monotonic()
    ended = http.get(f"/v1/jobs/{job['id']}", params={"wait": 60})
    assert ended.json()["job"]["status"] == "failed"
    assert time.monotonic() - started < 1.0


def test_wait_on_a_job_the_real_engine_finishes(api: Api, sim: Simulator) -> None:
    """The whole path: the fake provider answers, poll_batch decides, the writer commits."""
    client = api.new_client()
    job = (
        api.http(client.token)
        .post("/v1/jobs", json={"kind": "video_face_fusion", "job_id": unique("succeed-2")})
        .json()
    )
    future = hold(api, client.token, f"/v1/jobs/{job['id']}", 30)
    time.sleep(0.5)
    settings = api.settings(
        JOBTRACKER_POLL_INTERVAL_MIN="0.05", JOBTRACKER_POLL_INTERVAL_MAX="0.1", **sim.env()
    )
    drive(settings, seconds=15, jobs=[job["id"]])
    answer, _ = future.result(timeout=15)
    assert answer.json()["job"]["status"] == "succeeded"
    assert [t["to_status"] for t in answer.json()["transitions"]][-1] == "succeeded"


@pytest.mark.serial  # bounds on wall time
def test_one_watcher_serves_every_waiter_without_polling_per_waiter(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 waiters, in this process: on SQLite the watcher reads all of them in one query per
    round, not one per waiter; on PostgreSQL it reads nothing until NOTIFY wakes them."""
    # No safety sweep during the test: on PostgreSQL only the notifications can wake them.
    monkeypatch.setattr(waiting, "SAFETY_SWEEP_S", 3600.0)
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    ids = [track("image_animate", unique(), settings=settings)["id"] for _ in range(100)]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    # What the watcher thread sends through SQLAlchemy (the SQLite poller; the PostgreSQL
    # listener has its own connection and, between notifications, sends nothing).
    engine = get_engine(settings)
    event.listen(engine, "before_cursor_execute", count)

    async def active() -> bool:
        return True

    async def scenario() -> tuple[int, float, list[None]]:
        waiters = Waiters(settings)
        waiters.start()
        try:
            tasks = [asyncio.create_task(waiters.wait(pk, 20, active)) for pk in ids]
            await asyncio.sleep(0.5)
            assert waiters.waiting == 100
            before = len(statements)
            await asyncio.sleep(1.0)
            polled = len(statements) - before
            committed = await asyncio.to_thread(lambda: [finish(settings, pk) for pk in ids][-1])
            done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert waiters.waiting == 0
            return polled, time.monotonic() - committed, done
        finally:
            waiters.stop()

    try:
        polled, latency, done = asyncio.run(scenario())
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(done) == 100
    # One round every 0.2 s for all 100 waiters: about 5 statements in the second, not 500.
    assert polled <= 10, polled
    assert latency < 2.0


def test_stopping_the_server_answers_every_waiter_at_once(sqlite_url: str, tmp_path: Path) -> None:
    server = ApiServer({**BASE_ENV, "JOBTRACKER_DATABASE_URL": sqlite_url}, tmp_path).start()
    try:
        handle = Api(server=server, database_url=sqlite_url, env=BASE_ENV, tmp=tmp_path)
        client = handle.new_client()
        job = (
            handle.http(client.token)
            .post("/v1/jobs", json={"kind": "image_animate", "job_id": unique()})
            .json()
        )
        futures = [hold(handle, client.token, f"/v1/jobs/{job['id']}", 60) for _ in range(5)]
        time.sleep(1.0)
        stopping = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for future in futures:
            answer, arrived = future.result(timeout=15)
            assert answer.status_code == 200 and answer.json()["job"]["status"] == "pending"
            assert arrived - stopping < 5
        server.proc.wait(timeout=15)  # type: ignore[union-attr]
        handle.close()
    finally:
        server.kill()
