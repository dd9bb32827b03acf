"""The Celery way in (``jobtracker.track``) against a real worker: a database blip while the
message is handled loses no job; bad input is refused once, not retried."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy.engine import make_url

from tests.acceptance.proc import Tracker, query, wait_until
from tests.services import TcpProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    url = make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy
    proxy.cut()


def send_track(redis_url: str, **kwargs: object) -> None:
    client = Celery(broker=redis_url)
    try:
        client.send_task("jobtracker.track", kwargs=kwargs, queue="jobtracker")
    finally:
        client.close()


def test_a_database_blip_while_tracking_loses_no_job(
    pg_url: str, redis_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    env = {
        # The worker reaches PostgreSQL only through the proxy; the test reads it directly.
        "JOBTRACKER_DATABASE_URL": proxy.url(pg_url),
        "JOBTRACKER_BROKER_URL": redis_url,
        "JOBTRACKER_TICK_SECONDS": "60",  # no polling needed here
    }
    tracker = Tracker(env, tmp_path).start()
    try:
        wait_until(lambda: "ready" in tracker.output(), 30, "the worker to start", tracker)
        proxy.cut()
        send_track(redis_url, kind="image_animate", job_id="blip-1", metadata={"n": 1})
        send_track(redis_url, kind="nope", job_id="bad-1")
        wait_until(
            lambda: "database unreachable while tracking a job" in tracker.output(),
            30, "a failed attempt", tracker,
        )  # fmt: skip
        time.sleep(2)  # a few retries against a database that is still away
        proxy.restore()
        wait_until(
            lambda: query(pg_url, "SELECT count(*) FROM tracked_jobs WHERE job_id = 'blip-1'")
            == [(1,)],
            60, "the job to be tracked once the database is back", tracker,
        )  # fmt: skip
    finally:
        tracker.kill()
    output = tracker.output()
    [(metadata,)] = query(pg_url, "SELECT metadata FROM tracked_jobs WHERE job_id = 'blip-1'")
    assert metadata == {"n": 1}
    # Bad input is refused once (no retry), and nothing is stored for it.
    assert output.count("refused to track job: unknown kind 'nope'") == 1
    assert query(pg_url, "SELECT count(*) FROM tracked_jobs WHERE job_id = 'bad-1'") == [(0,)]
