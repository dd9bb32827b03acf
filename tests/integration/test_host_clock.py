"""The operators' commands and the API's ``?since=`` run on the database's clock: on a host whose
clock is days off, a revocation, a token's expiry, a secret's grace period and every "since 1h"
land where they would on a host with the right time.

The host's clock is moved for the whole process (``time_machine``: ``datetime.now``,
``time.time``, and so ``worker.clock.wall``), the way a host whose clock is off moves it; the
database's clock (PostgreSQL's, SQLite's C library's) is left alone.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from jobtracker.models import (
    ApiClient,
    ApiToken,
    JobStatus,
    TrackedJob,
    WebhookDelivery,
)
from tests.api_server import MASTER_KEY, ApiServer
from tests.integration.conftest import BASE_ENV, Api, unique
from worker import clock
from worker.cli import main
from worker.db import session_scope
from worker.flow import deliver
from worker.flow.enqueue import track
from worker.flow.transition import Move, transition_many
from worker.settings import Settings, reset_settings

OFF = timedelta(days=3)
#: How far a written time may be from the true one (commands, round trips, a loaded machine).
SLACK = timedelta(minutes=2)


@pytest.fixture
def host_clock_off() -> Iterator[Callable[[timedelta], None]]:
    """Put this process's clock off by the given amount (ticking on from there)."""
    travels: list[time_machine.travel] = []

    def put_off(by: timedelta) -> None:
        travel = time_machine.travel(datetime.now(UTC) + by, tick=True)
        travel.start()
        travels.append(travel)
        clock.reset()  # like a new process: no offset to the database measured yet

    yield put_off
    for travel in reversed(travels):
        travel.stop()
    clock.reset()


def cli(db_url: str, *args: str) -> Result:
    reset_settings()
    env = {"JOBTRACKER_DATABASE_URL": db_url, "JOBTRACKER_CLIENT_SECRET_KEY": MASTER_KEY}
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def near(value: datetime | None, expected: datetime) -> bool:
    return value is not None and abs(value - expected) < SLACK


@pytest.mark.parametrize("off", [OFF, -OFF], ids=["fast-host", "slow-host"])
def test_the_clients_commands_write_the_databases_time(
    db_url: str, host_clock_off: Callable[[timedelta], None], off: timedelta
) -> None:
    true_now = datetime.now(UTC)
    host_clock_off(off)
    cli(db_url, "clients", "add", "billing", "--scope", "read")
    cli(db_url, "clients", "rotate-token", "billing", "--grace", "1h")
    cli(db_url, "clients", "rotate-secret", "billing", "--grace", "1h")
    cli(db_url, "clients", "revoke", "billing")
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url})
    with session_scope(settings) as session:
        client = session.execute(select(ApiClient)).scalar_one()
        tokens = list(session.execute(select(ApiToken).order_by(ApiToken.id)).scalars())
    assert near(client.created_at, true_now)
    assert near(client.revoked_at, true_now)
    # Both grace periods end an hour after now, not an hour after this host's idea of now.
    assert near(client.previous_secret_until, true_now + timedelta(hours=1))
    first, second = tokens
    assert near(first.expires_at, true_now + timedelta(hours=1)) and second.expires_at is None
    assert near(first.created_at, true_now) and near(second.created_at, true_now)


def failed_delivery(settings: Settings, ended_ago: timedelta) -> str:
    """A job whose callback ended failed ``ended_ago`` before the database's now."""
    job_pk = track("image_animate", unique(), callback_url="http://x.test/", settings=settings)[
        "id"
    ]
    with session_scope(settings) as session:
        job = session.get(TrackedJob, job_pk)
        assert job is not None
        transition_many(session, [Move(job, JobStatus.FAILED)], now=clock.now(settings))
        delivery_id = session.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.tracked_job_id == job_pk)
        ).scalar_one()
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(status="failed", updated_at=clock.now(settings) - ended_ago)
        )
    return str(delivery_id)


@pytest.mark.parametrize("off", [OFF, -OFF], ids=["fast-host", "slow-host"])
def test_since_an_age_counts_back_from_the_databases_now(
    db_url: str,
    tmp_path: Path,
    host_clock_off: Callable[[timedelta], None],
    off: timedelta,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deliver, "deliver_soon", lambda *args, **kwargs: None)  # no worker here
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    recent = failed_delivery(settings, timedelta(minutes=10))
    failed_delivery(settings, timedelta(hours=2))
    host_clock_off(off)
    redelivered = json.loads(cli(db_url, "redeliver", "--failed-since", "1h", "--json").stdout)
    assert redelivered["redelivered"] == [recent]
    # (jobtracker jobs --since already counted back from the database's now; kept so.)
    listed = json.loads(cli(db_url, "jobs", "--since", "1h", "--json").stdout)
    assert len(listed) == 2


SITECUSTOMIZE = """
    # Test equipment: this interpreter's clock is off by JOBTRACKER_TEST_CLOCK_OFF_S seconds.
    import os
    from datetime import UTC, datetime, timedelta

    import time_machine

    _off = timedelta(seconds=float(os.environ["JOBTRACKER_TEST_CLOCK_OFF_S"]))
    time_machine.travel(datetime.now(UTC) + _off, tick=True).start()
"""


@pytest.fixture
def api_on_a_fast_host(pg_url: str, tmp_path: Path) -> Iterator[Api]:
    """The real `jobtracker api` on a host whose clock is OFF ahead."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = {
        **BASE_ENV,
        "JOBTRACKER_DATABASE_URL": pg_url,
        "JOBTRACKER_TEST_CLOCK_OFF_S": str(OFF.total_seconds()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    server = ApiServer(env, tmp_path).start()
    api = Api(server=server, database_url=pg_url, env=env, tmp=tmp_path)
    try:
        yield api
    finally:
        api.close()
        server.stop()


def test_the_apis_since_counts_back_from_the_databases_now(api_on_a_fast_host: Api) -> None:
    api = api_on_a_fast_host
    client = api.new_client()
    http = api.http(client.token)
    fresh = http.post("/v1/jobs", json={"kind": "image_animate", "job_id": unique()}).json()
    older = http.post("/v1/jobs", json={"kind": "image_animate", "job_id": unique()}).json()
    with session_scope(api.settings()) as session:
        session.execute(
            update(TrackedJob)
            .where(TrackedJob.id == older["id"])
            .values(created_at=clock.now(api.settings()) - timedelta(hours=2))
        )
    page = http.get("/v1/jobs", params={"since": "1h"}).json()
    assert [job["id"] for job in page["jobs"]] == [fresh["id"]]
