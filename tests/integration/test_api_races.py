"""The retention winning a race against a request: the answer is a 4xx or the job, never a 500.

PostgreSQL only: there, a request's statements run in separate snapshots, so a row can go between
two of them. SQLite takes its one write lock for the whole transaction, so neither race can
happen there.

Each race is played exactly, not by chance: a lock the test holds stops the request at the point
where the pruner would have overtaken it, or a trigger the test adds does the pruner's part at
that point, inside the request's transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import Engine, create_engine, select, text

from jobtracker.models import JobStatus, PrunedJob, TrackedJob, WebhookDelivery, utcnow
from tests.integration.conftest import Api, unique
from worker.db import normalize_url, session_scope
from worker.flow.transition import Move, transition_many


@pytest.fixture(scope="module")
def api_backend() -> str:
    """This module's server runs on PostgreSQL only (see the module's docstring)."""
    return "postgresql"


@pytest.fixture(scope="module")
def api_env() -> dict[str, str]:
    """A server and a database of this module's own: its triggers and held locks stay here."""
    return {"JOBTRACKER_TEST_MODULE": __name__}


@pytest.fixture
def engine(api: Api) -> Iterator[Engine]:
    """The test's own connections (the pruner's side of the race)."""
    engine = create_engine(normalize_url(api.database_url))
    yield engine
    engine.dispose()


def ended_job_with_callback(api: Api, token: str) -> tuple[int, str]:
    answer = api.http(token).post(
        "/v1/jobs",
        json={"kind": "image_animate", "job_id": unique(), "callback_url": "http://x.test/"},
    )
    assert answer.status_code == 201, answer.text
    with session_scope(api.settings()) as session:
        job = session.get(TrackedJob, answer.json()["id"])
        assert job is not None
        transition_many(session, [Move(job, JobStatus.FAILED)], now=utcnow())
        delivery_id = session.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.tracked_job_id == job.id)
        ).scalar_one()
    return job.id, delivery_id


def wait_for_a_blocked(engine: Engine, statement: str, timeout_s: float = 10.0) -> None:
    """Until a backend waits on a lock while running ``statement...``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            blocked = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE :statement"
                ),
                {"statement": statement + "%"},
            ).scalar_one()
        if blocked:
            return
        time.sleep(0.02)
    raise AssertionError(f"no request blocked on {statement!r}")


def test_a_message_pruned_after_the_ownership_check_is_404(api: Api, engine: Engine) -> None:
    client = api.new_client()
    job_pk, delivery_id = ended_job_with_callback(api, client.token)
    http = api.http(client.token)
    with ThreadPoolExecutor(1) as pool, engine.connect() as pruner:
        # The pruner holds the message (as its batch does, FOR UPDATE) ...
        pruner.begin()
        pruner.execute(
            text("SELECT id FROM webhook_deliveries WHERE id = :id FOR UPDATE"), {"id": delivery_id}
        )
        # ... the request passes the ownership check (a plain read) and waits at the update ...
        answer = pool.submit(http.post, f"/v1/deliveries/{delivery_id}/redeliver")
        wait_for_a_blocked(engine, "UPDATE webhook_deliveries")
        # ... and the pruner removes the job with its callbacks and commits first.
        pruner.execute(text("DELETE FROM tracked_jobs WHERE id = :id"), {"id": job_pk})
        pruner.commit()
        done: httpx.Response = answer.result(timeout=30)
    assert done.status_code == 404, done.text
    assert done.json()["error"] == {"code": "not_found", "message": "no such delivery"}


#: The advisory lock a skipped enqueue waits for in the test's trigger.
HOLD = 717017


@pytest.fixture
def enqueue_stops_after_a_skipped_insert(engine: Engine) -> Iterator[None]:
    """An INSERT into tracked_jobs that the tombstone trigger skipped (no row inserted) waits,
    before its transaction goes on, for the advisory lock :data:`HOLD`."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION test_hold_skipped() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN IF NOT EXISTS (SELECT 1 FROM new_rows) THEN "
                f"PERFORM pg_advisory_xact_lock_shared({HOLD}); END IF; RETURN NULL; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER test_hold_skipped AFTER INSERT ON tracked_jobs "
                "REFERENCING NEW TABLE AS new_rows "
                "FOR EACH STATEMENT EXECUTE FUNCTION test_hold_skipped()"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER test_hold_skipped ON tracked_jobs"))
            conn.execute(text("DROP FUNCTION test_hold_skipped()"))


@pytest.mark.usefixtures("enqueue_stops_after_a_skipped_insert")
def test_an_enqueue_whose_tombstone_expires_midway_tracks_the_job_afresh(
    api: Api, engine: Engine
) -> None:
    client = api.new_client()
    job_id = unique("pruned")
    with session_scope(api.settings()) as session:
        # The retention pruned this job a while ago: its tombstone is all that is left.
        session.add(
            PrunedJob(
                kind="image_animate",
                region="ap-guangzhou",
                job_id=job_id,
                tracked_job_id=10**9,
                status="succeeded",
                client_id=client.id,
                created_at=utcnow(),
            )
        )
    http = api.http(client.token)
    with ThreadPoolExecutor(1) as pool, engine.connect() as pruner:
        pruner.execute(text(f"SELECT pg_advisory_lock({HOLD})"))
        # The enqueue's INSERT is skipped for the tombstone; it stops right after ...
        answer = pool.submit(
            http.post, "/v1/jobs", json={"kind": "image_animate", "job_id": job_id}
        )
        wait_for_a_blocked(engine, "INSERT INTO tracked_jobs")
        # ... while the retention expires the tombstone and commits, before the enqueue reads it.
        pruner.execute(text("DELETE FROM pruned_jobs WHERE job_id = :id"), {"id": job_id})
        pruner.commit()
        pruner.execute(text(f"SELECT pg_advisory_unlock({HOLD})"))
        done: httpx.Response = answer.result(timeout=30)
    # Neither the job nor its tombstone is there any more: the job is tracked again, as any
    # enqueue after the tombstone's expiry would track it.
    assert done.status_code == 201, done.text
    assert done.json()["status"] == "pending" and done.json()["client_id"] == client.id
