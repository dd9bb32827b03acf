"""Per-client webhook secrets: each client's callbacks are signed with its own secret (two during
a rotation of it, old and new during a rotation of the master key), verified here with the
``standardwebhooks`` library; jobs from the other ways in keep ``JOBTRACKER_WEBHOOK_SECRET``; a
secret that cannot be derived is a recorded failure."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from click.testing import Result as CliResult
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobtracker.models import WebhookAttempt, WebhookDelivery, utcnow
from tests.api_server import MASTER_KEY
from tests.drive import drive
from tests.integration.conftest import LOOPBACK, Api, NewClient, unique
from worker.cli import main
from worker.clients.registry import rotate_secret
from worker.db import session_scope
from worker.devtools.receiver import ReceivedMessage, Receiver
from worker.devtools.simulator import Simulator
from worker.flow import deliver
from worker.flow.enqueue import track
from worker.settings import Settings, reset_settings

GLOBAL_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def worker_settings(api: Api, sim: Simulator, **env: str) -> Settings:
    """The tracker's side (polls, deliveries), run inline in this process."""
    return api.settings(
        JOBTRACKER_POLL_INTERVAL_MIN="0.05",
        JOBTRACKER_POLL_INTERVAL_MAX="0.1",
        JOBTRACKER_WEBHOOK_SECRET=GLOBAL_SECRET,
        JOBTRACKER_WEBHOOK_RETRY_SCHEDULE="0.3,0.3,0.3",
        **sim.env(),
        **env,
    )


def post_job(api: Api, client: NewClient, callback_url: str) -> dict[str, object]:
    answer = api.http(client.token).post(
        "/v1/jobs",
        json={"kind": "image_animate", "job_id": unique("succeed-1"), "callback_url": callback_url},
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def verifies(secret: str, message: ReceivedMessage) -> bool:
    try:
        Webhook(secret).verify(message.body, dict(message.headers))
    except WebhookVerificationError:
        return False
    return True


def test_each_clients_callbacks_are_signed_with_its_own_secret(api: Api, sim: Simulator) -> None:
    alice, bob = api.new_client(networks=LOOPBACK), api.new_client(networks=LOOPBACK)
    assert alice.secret != bob.secret
    with (
        Receiver(secrets=[alice.secret]) as alice_rx,
        Receiver(secrets=[bob.secret]) as bob_rx,
        Receiver(secrets=[GLOBAL_SECRET]) as legacy_rx,
    ):
        settings = worker_settings(api, sim)
        jobs = [
            post_job(api, alice, alice_rx.url)["id"],
            post_job(api, bob, bob_rx.url)["id"],
            track(
                "image_animate", unique("succeed-1"), callback_url=legacy_rx.url, settings=settings
            )["id"],
        ]
        drive(settings, jobs=jobs)
        [to_alice] = alice_rx.wait_for(1, timeout=15)
        [to_bob] = bob_rx.wait_for(1, timeout=15)
        [to_legacy] = legacy_rx.wait_for(1, timeout=15)
    assert to_alice.verified and to_bob.verified and to_legacy.verified
    # One secret each: none verifies another's callback, so none can forge another's.
    assert verifies(alice.secret, to_alice) and not verifies(bob.secret, to_alice)
    assert verifies(bob.secret, to_bob) and not verifies(alice.secret, to_bob)
    assert not verifies(GLOBAL_SECRET, to_alice)
    # The other ways in keep JOBTRACKER_WEBHOOK_SECRET.
    assert verifies(GLOBAL_SECRET, to_legacy) and not verifies(alice.secret, to_legacy)
    assert len(to_alice.headers["webhook-signature"].split()) == 1
    # No secret travels in a callback.
    for message in (to_alice, to_bob, to_legacy):
        text = message.body.decode() + str(message.headers)
        for secret in (alice.secret, bob.secret, GLOBAL_SECRET, alice.token, MASTER_KEY):
            assert secret not in text and secret.removeprefix("whsec_") not in text


def test_during_a_rotation_both_secrets_sign_then_only_the_new_one(
    api: Api, sim: Simulator, advance_clock: Callable[[float], None]
) -> None:
    client = api.new_client(networks=LOOPBACK)
    with session_scope(api.settings()) as session:
        issued = rotate_secret(
            session, client.name, master_key=MASTER_KEY.encode(), grace_s=3, now=utcnow()
        )
    new_secret = issued.webhook_secret
    assert new_secret and new_secret != client.secret
    settings = worker_settings(api, sim)
    with Receiver(secrets=[client.secret, new_secret]) as rx:
        drive(settings, jobs=[post_job(api, client, rx.url)["id"]])
        [during] = rx.wait_for(1, timeout=15)
        assert len(during.headers["webhook-signature"].split()) == 2
        assert verifies(client.secret, during) and verifies(new_secret, during)
        advance_clock(3.1)  # the grace period ends
        drive(settings, jobs=[post_job(api, client, rx.url)["id"]])
        after = rx.wait_for(2, timeout=15)[1]
    assert verifies(new_secret, after) and not verifies(client.secret, after)


def test_without_the_master_key_a_clients_callback_is_a_recorded_retried_failure(
    api: Api,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    advance_clock: Callable[[float], None],
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(deliver, "deliver_soon", lambda ids, *a, **k: sent.extend(ids))
    client = api.new_client(networks=LOOPBACK)
    no_key = worker_settings(api, sim, JOBTRACKER_CLIENT_SECRET_KEY="")
    assert no_key.client_secret_key is None and no_key.webhook_secrets
    with Receiver(secrets=[client.secret]) as rx:
        job = post_job(api, client, rx.url)
        drive(no_key, jobs=[job["id"]])
        [delivery_id] = sent
        assert deliver.deliver_one(delivery_id, no_key) == "pending"
        assert rx.received == []  # never sent unsigned, nor with the global secret
        with session_scope(no_key) as session:
            [attempt] = session.execute(
                select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
            ).scalars()
            message = session.get(WebhookDelivery, delivery_id)
            assert message is not None and message.tracked_job_id == job["id"]
            assert message.status == "pending" and message.next_attempt_at is not None
        assert attempt.error_class == "no_secret"
        assert "JOBTRACKER_CLIENT_SECRET_KEY" in (attempt.error_message or "")
        # With the key, the retry goes out signed with the client's secret.
        advance_clock(0.35)  # past the retry (0.3 s)
        assert deliver.deliver_one(delivery_id, worker_settings(api, sim)) == "delivered"
        [message_in] = rx.wait_for(1, timeout=10)
    assert verifies(client.secret, message_in)


NEW_MASTER_KEY = "test-new-master-key-not-for-production-9876543210"


def rotate_master(api: Api, **env: str) -> CliResult:
    reset_settings()
    return CliRunner().invoke(
        main,
        ["clients", "rotate-master", "--json"],
        env={"JOBTRACKER_DATABASE_URL": api.database_url, **env},
    )


def test_a_master_key_rotation_signs_with_old_and_new_secrets_until_the_old_key_goes(
    api: Api, sim: Simulator
) -> None:
    """The procedure of the README: new key in, old key as _PREVIOUS; rotate-master prints the
    new secrets; receivers that know either secret accept; once _PREVIOUS is unset, only the new
    secrets sign."""
    # Its secret derives from MASTER_KEY, the key being replaced.
    client = api.new_client(networks=LOOPBACK)
    rotation = {
        "JOBTRACKER_CLIENT_SECRET_KEY": NEW_MASTER_KEY,
        "JOBTRACKER_CLIENT_SECRET_KEY_PREVIOUS": MASTER_KEY,
    }
    # Without the previous key set, the command refuses: the procedure starts with both.
    refused = rotate_master(api, JOBTRACKER_CLIENT_SECRET_KEY=NEW_MASTER_KEY)
    assert refused.exit_code == 2 and "JOBTRACKER_CLIENT_SECRET_KEY_PREVIOUS" in refused.output
    printed = rotate_master(api, **rotation)
    assert printed.exit_code == 0, printed.output
    secrets_now = {entry["client"]: entry["webhook_secret"] for entry in json.loads(printed.stdout)}
    new_secret = secrets_now[client.name]
    assert new_secret.startswith("whsec_") and new_secret != client.secret

    with (
        Receiver(secrets=[client.secret]) as knows_old,
        Receiver(secrets=[new_secret]) as knows_new,
    ):
        overlap = worker_settings(api, sim, **rotation)
        drive(
            overlap,
            jobs=[
                post_job(api, client, knows_old.url)["id"],
                post_job(api, client, knows_new.url)["id"],
            ],
        )
        [to_old] = knows_old.wait_for(1, timeout=15)
        [to_new] = knows_new.wait_for(1, timeout=15)
        for message in (to_old, to_new):  # both accepted: each carries both signatures
            assert verifies(client.secret, message) and verifies(new_secret, message)

        after = worker_settings(api, sim, JOBTRACKER_CLIENT_SECRET_KEY=NEW_MASTER_KEY)
        late_old = post_job(api, client, knows_old.url)["id"]
        drive(after, jobs=[late_old, post_job(api, client, knows_new.url)["id"]])
        later = knows_new.wait_for(2, timeout=15)[1]
        refused_by_old = knows_old.wait_for_requests(2, timeout=15)[1]
    assert verifies(new_secret, later) and not verifies(client.secret, later)
    assert len(later.headers["webhook-signature"].split()) == 1
    # The receiver that still has the old secret refuses it now (and it will be retried).
    assert not refused_by_old.verified and refused_by_old.status == 401
    for message in (to_old, to_new, later):
        text = message.body.decode() + str(message.headers)
        assert NEW_MASTER_KEY not in text and MASTER_KEY not in text
