"""A client cannot read our network through its callbacks: over real HTTP, an internal service on
loopback holds a secret; a non-admin client's callbacks never reach it unless an operator allowed
the network, and whatever it answers never comes back to the client (a class and a status code
only). Pending callbacks that are no longer allowed fail at once when the worker starts."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import select, update

from jobtracker.models import (
    JobStatus,
    TrackedJob,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from tests.drive import drive
from tests.integration.conftest import Api, NewClient, unique
from tests.integration.test_api_auth import _cli
from worker.db import session_scope
from worker.devtools.receiver import Receiver, Reply
from worker.devtools.simulator import Simulator
from worker.flow import deliver
from worker.flow.enqueue import track
from worker.flow.transition import Move, transition_many
from worker.settings import Settings

GLOBAL_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: What the internal service answers: it must never reach a client.
INTERNAL_SECRET = "internal-admin-password-7f3a9c"


@pytest.fixture
def internal() -> Any:
    """An internal HTTP service on loopback that answers every request with a secret."""
    with Receiver(default=Reply(200, INTERNAL_SECRET.encode()), reject_unverified=False) as rx:
        yield rx


def worker_settings(api: Api, sim: Simulator) -> Settings:
    return api.settings(
        JOBTRACKER_POLL_INTERVAL_MIN="0.05",
        JOBTRACKER_POLL_INTERVAL_MAX="0.1",
        JOBTRACKER_WEBHOOK_SECRET=GLOBAL_SECRET,
        JOBTRACKER_WEBHOOK_RETRY_SCHEDULE="0,0,0",
        **sim.env(),
    )


def post(api: Api, client: NewClient, callback_url: str) -> Any:
    return api.http(client.token).post(
        "/v1/jobs",
        json={"kind": "image_animate", "job_id": unique("succeed-1"), "callback_url": callback_url},
    )


def end_and_collect(
    api: Api, sim: Simulator, job_id: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, str]:
    """Poll the job to its end; return the worker's settings and its callback message's id."""
    sent: list[str] = []
    monkeypatch.setattr(deliver, "deliver_soon", lambda ids, *a, **k: sent.extend(ids))
    settings = worker_settings(api, sim)
    drive(settings, jobs=[job_id])
    [delivery_id] = sent
    return settings, delivery_id


def texts(*answers: Any) -> str:
    return " ".join(a.text for a in answers)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",  # the resolver reads these as 127.0.0.1 too
        "2130706433",
        "0x7f.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "10.0.0.5",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.169.254",  # link-local: cloud metadata
    ],
)
def test_a_callback_to_a_literal_internal_address_is_refused_at_enqueue(
    api: Api, internal: Receiver, host: str
) -> None:
    client = api.new_client()
    answer = post(api, client, f"http://{host}:{internal.port}/internal/admin")
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == "callback_url" and error["code"] == "invalid_field"
    assert "callback URL refused" in error["message"]
    assert internal.received == []


def test_a_host_name_that_resolves_inside_is_refused_at_send_and_nothing_leaks(
    api: Api, sim: Simulator, internal: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = api.new_client()
    created = post(api, client, f"http://localhost:{internal.port}/internal/admin")
    assert created.status_code == 201, created.text  # a name: checked when the callback goes
    settings, delivery_id = end_and_collect(api, sim, created.json()["id"], monkeypatch)
    assert deliver.deliver_one(delivery_id, settings) == "failed"  # refused: never retried
    assert internal.received == []
    http = api.http(client.token)
    detail = http.get(f"/v1/jobs/{created.json()['id']}")
    [message] = detail.json()["deliveries"]
    [attempt] = message["attempt_log"]
    assert (message["status"], message["last_error"]) == ("failed", "refused_url")
    assert (attempt["error_class"], attempt["status_code"]) == ("refused_url", None)
    assert attempt["error_message"] is None and attempt["response_body"] is None
    assert "127.0.0.1" not in detail.text  # not even what the name resolved to
    # The operator sees why.
    with session_scope(settings) as session:
        stored = session.execute(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
        ).scalar_one()
    assert "localhost resolves to 127.0.0.1" in (stored.error_message or "")
    assert "loopback" in (stored.error_message or "")


def test_an_allowed_network_lets_callbacks_in_and_only_admins_see_the_answers(
    api: Api, sim: Simulator, internal: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = api.new_client()
    url = f"http://127.0.0.1:{internal.port}/internal/admin"
    assert post(api, client, url).status_code == 422
    allowed = _cli(api, "allow-network", client.name, "127.0.0.1")
    assert allowed.exit_code == 0, allowed.output
    assert "127.0.0.1/32" in allowed.output
    created = post(api, client, url)
    assert created.status_code == 201, created.text
    job_pk = created.json()["id"]
    settings, delivery_id = end_and_collect(api, sim, job_pk, monkeypatch)
    internal.script([Reply(500, INTERNAL_SECRET.encode())])
    assert deliver.deliver_one(delivery_id, settings) == "pending"
    http = api.http(client.token)
    after_500 = http.get(f"/v1/jobs/{job_pk}")
    [message] = after_500.json()["deliveries"]
    assert message["last_status_code"] == 500 and message["last_error"] == "http"
    again = http.post(f"/v1/deliveries/{delivery_id}/redeliver")
    assert again.status_code == 202 and again.json()["last_error"] == "http"
    assert deliver.deliver_one(delivery_id, settings) == "delivered"
    waited = http.get(f"/v1/jobs/{job_pk}", params={"wait": 1})
    listing = http.get("/v1/jobs")
    pages = http.get(f"/v1/deliveries/{delivery_id}/attempts")
    assert [(a["status_code"], a["error_class"]) for a in pages.json()["attempts"]] == [
        (200, None),
        (500, "http"),
    ]  # newest first
    assert all(a["response_body"] is None for a in pages.json()["attempts"])
    assert all(a["error_message"] is None for a in pages.json()["attempts"])
    [message] = waited.json()["deliveries"]
    assert [(a["status_code"], a["error_class"]) for a in message["attempt_log"]] == [
        (500, "http"),
        (200, None),
    ]
    assert all(a["response_body"] is None for a in message["attempt_log"])
    assert all(a["error_message"] is None for a in message["attempt_log"])
    assert len(internal.received) == 2
    # The secret went to the worker and stays with the operators.
    assert INTERNAL_SECRET not in texts(created, after_500, again, waited, listing, pages)
    admin = api.http(api.new_client("admin").token)
    [seen] = admin.get(f"/v1/jobs/{job_pk}").json()["deliveries"]
    assert all(INTERNAL_SECRET in a["response_body"] for a in seen["attempt_log"])
    assert seen["attempt_log"][0]["error_message"] == "HTTP 500 Internal Server Error"
    admin_pages = admin.get(f"/v1/deliveries/{delivery_id}/attempts").json()["attempts"]
    assert all(INTERNAL_SECRET in a["response_body"] for a in admin_pages)
    # Taken back: the next callback there is refused again, at enqueue.
    assert _cli(api, "deny-network", client.name, "127.0.0.1/32").exit_code == 0
    assert post(api, client, url).status_code == 422


def test_admins_and_the_other_ways_in_keep_the_settings_policy(
    api: Api, sim: Simulator, internal: Receiver
) -> None:
    url = f"http://127.0.0.1:{internal.port}/internal/admin"
    admin = api.new_client("admin")
    assert post(api, admin, url).status_code == 201
    settings = worker_settings(api, sim)
    track("image_animate", unique("succeed-1"), callback_url=url, settings=settings)


def test_the_network_commands(api: Api) -> None:
    client = api.new_client()

    def run(*args: str) -> Result:
        return _cli(api, *args)

    host_bits = run("allow-network", client.name, "10.0.0.1/8")
    assert host_bits.exit_code == 1
    assert "10.0.0.0/8" in host_bits.output and "10.0.0.1" in host_bits.output
    assert run("allow-network", client.name, "not-a-network").exit_code == 1
    metadata = run("allow-network", client.name, "169.254.0.0/16")
    assert metadata.exit_code == 1 and "link-local" in metadata.output
    assert run("allow-network", "no-such-client", "10.0.0.0/8").exit_code == 1
    assert run("allow-network", client.name, "10.0.0.0/8").exit_code == 0
    assert "already allowed" in run("allow-network", client.name, "10.0.0.0/8").output
    assert run("allow-network", client.name, "fd00::/8").exit_code == 0
    [listed] = [c for c in json.loads(run("list", "--json").output) if c["name"] == client.name]
    assert listed["networks"] == ["10.0.0.0/8", "fd00::/8"]
    table = run("list").output
    assert "public + 10.0.0.0/8 + fd00::/8" in table
    assert post(api, client, "http://10.1.2.3:8080/hook").status_code == 201
    assert post(api, client, "http://10.1.2.3:8080/hook?x=1").status_code == 201
    assert post(api, client, "http://192.168.1.1/hook").status_code == 422
    assert run("deny-network", client.name, "10.0.0.0/8").exit_code == 0
    missing = run("deny-network", client.name, "10.0.0.0/8")
    assert missing.exit_code == 1 and "fd00::/8" in missing.output
    assert post(api, client, "http://10.1.2.3:8080/hook").status_code == 422


def test_after_the_upgrade_a_pending_callback_that_is_now_refused_fails_at_once(
    api: Api,
    sim: Simulator,
    internal: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Jobs stored before the rule (or before deny-network) with a retry hours away."""
    monkeypatch.setattr(deliver, "deliver_soon", lambda ids, *a, **k: None)
    url = f"http://127.0.0.1:{internal.port}/internal/admin"
    client, admin = api.new_client(), api.new_client("admin")
    settings = worker_settings(api, sim)
    owners = {"client": client.id, "admin": admin.id, "other way in": None}
    jobs: dict[str, int] = {}
    with session_scope(settings) as session:
        for label, owner in owners.items():
            job = TrackedJob(
                kind="image_animate",
                region="ap-guangzhou",
                job_id=unique("old"),
                callback_url=url,
                client_id=owner,
            )
            session.add(job)
            session.flush()
            session.refresh(job)
            jobs[label] = job.id
            transition_many(session, [Move(job, JobStatus.SUCCEEDED)], now=utcnow())
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.tracked_job_id.in_(list(jobs.values())))
            .values(attempts=1, next_attempt_at=utcnow() + timedelta(hours=2))
        )
    caplog.set_level(logging.INFO)
    assert deliver.refuse_unreachable(settings) >= 1
    with session_scope(settings) as session:
        by_job = {
            d.tracked_job_id: d
            for d in session.execute(
                select(WebhookDelivery).where(
                    WebhookDelivery.tracked_job_id.in_(list(jobs.values()))
                )
            ).scalars()
        }
        refused = by_job[jobs["client"]]
        [attempt] = session.execute(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == refused.id)
        ).scalars()
    assert (refused.status, refused.attempts) == ("failed", 2)
    assert attempt.error_class == "refused_url" and "loopback" in (attempt.error_message or "")
    assert by_job[jobs["admin"]].status == "pending"
    assert by_job[jobs["other way in"]].status == "pending"
    logged = [r for r in caplog.records if refused.id in r.getMessage()]
    assert any(r.levelno >= logging.WARNING and "refused_url" in r.getMessage() for r in logged)
    assert internal.received == []
    assert deliver.refuse_unreachable(settings) == 0  # done once
