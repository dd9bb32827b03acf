"""A job's detail stays small however many attempts its callback has (a client redelivering in a
loop): the newest few, and a cursor to page through the others."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from jobtracker.models import JobStatus, TrackedJob, WebhookAttempt, WebhookDelivery, utcnow
from tests.integration.conftest import Api, unique
from worker.api.schemas import ATTEMPTS_SHOWN
from worker.db import session_scope
from worker.flow import deliver
from worker.flow.transition import Move, transition_many

ATTEMPTS = 500


@pytest.fixture(autouse=True)
def _no_sending(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No worker here: the callbacks are not sent after the commit (the attempts are ours)."""
    monkeypatch.setattr(deliver, "deliver_soon", lambda *args, **kwargs: None)
    yield


def job_with_attempts(api: Api, token: str, count: int) -> tuple[int, str, list[int]]:
    """A job whose callback failed ``count`` times, each answer's first KiB kept; (job id,
    message id, attempt ids oldest first)."""
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
        session.add_all(
            WebhookAttempt(
                delivery_id=delivery_id,
                attempted_at=utcnow(),
                status_code=503,
                latency_ms=12,
                response_body="x" * 1024,
            )
            for _ in range(count)
        )
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(attempts=count, last_status_code=503)
        )
        session.flush()
        ids = list(
            session.execute(
                select(WebhookAttempt.id)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            ).scalars()
        )
    return job.id, delivery_id, ids


def test_the_detail_shows_the_newest_attempts_and_a_cursor_to_the_rest(api: Api) -> None:
    client = api.new_client()
    http = api.http(client.token)
    job_pk, delivery_id, ids = job_with_attempts(api, client.token, ATTEMPTS)
    answer = http.get(f"/v1/jobs/{job_pk}")
    assert answer.status_code == 200
    # 500 attempts of 1 KiB each were over half a megabyte in one answer.
    assert len(answer.content) < 48 * 1024, len(answer.content)
    [delivery] = answer.json()["deliveries"]
    assert delivery["attempts"] == ATTEMPTS
    assert [a["id"] for a in delivery["attempt_log"]] == ids[-ATTEMPTS_SHOWN:]  # oldest first
    cursor = delivery["attempt_log_next_cursor"]
    assert cursor

    older: list[int] = []
    pages = 0
    while cursor is not None:
        page = http.get(
            f"/v1/deliveries/{delivery_id}/attempts", params={"cursor": cursor, "limit": 200}
        )
        assert page.status_code == 200, page.text
        body: dict[str, Any] = page.json()
        assert len(body["attempts"]) <= 200
        older += [a["id"] for a in body["attempts"]]
        cursor = body["next_cursor"]
        pages += 1
    # Every other attempt once, newest first, none skipped or repeated.
    assert older == ids[:-ATTEMPTS_SHOWN][::-1]
    assert pages == 3

    newest = http.get(f"/v1/deliveries/{delivery_id}/attempts", params={"limit": 5}).json()
    assert [a["id"] for a in newest["attempts"]] == ids[-5:][::-1]
    assert newest["next_cursor"]


def test_a_message_with_few_attempts_has_no_cursor(api: Api) -> None:
    client = api.new_client()
    job_pk, _, ids = job_with_attempts(api, client.token, 3)
    [delivery] = api.http(client.token).get(f"/v1/jobs/{job_pk}").json()["deliveries"]
    assert [a["id"] for a in delivery["attempt_log"]] == ids
    assert delivery["attempt_log_next_cursor"] is None


def test_attempts_are_the_owners_and_need_the_read_scope(api: Api) -> None:
    owner, other, writer = api.new_client(), api.new_client(), api.new_client("enqueue")
    _, delivery_id, _ = job_with_attempts(api, owner.token, 2)
    path = f"/v1/deliveries/{delivery_id}/attempts"
    assert api.http(other.token).get(path).status_code == 404
    assert api.http(writer.token).get(path).status_code == 403
    assert api.http(api.new_client("admin").token).get(path).status_code == 200
    # A cursor of another kind (a job page's) is not an attempt cursor.
    job_cursor = api.http(owner.token).get("/v1/jobs", params={"limit": 1}).json()["next_cursor"]
    for bad in (job_cursor or "djE6MTI", "not-a-cursor", "\x00"):
        refused = api.http(owner.token).get(path, params={"cursor": bad})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "cursor"
