"""Who may call the service API: tokens, scopes, ownership, revocation, rotation, and the
``jobtracker clients`` commands, against the real server on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import select

from jobtracker.models import ApiToken, JobStatus, TrackedJob, WebhookDelivery, utcnow
from tests.api_server import MASTER_KEY
from tests.integration.conftest import Api, unique
from worker.cli import main
from worker.clients.registry import revoke_client, rotate_token
from worker.db import session_scope
from worker.flow.transition import Move, transition_many
from worker.settings import reset_settings


def enqueue(api: Api, token: str, **body: object) -> dict[str, object]:
    answer = api.http(token).post(
        "/v1/jobs", json={"kind": "image_animate", "job_id": unique(), **body}
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_no_token_or_a_bad_token_is_401_with_a_challenge(api: Api) -> None:
    job = enqueue(api, api.new_client().token)
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Bearer jt_not-a-real-token"},
        {"Authorization": "Bearer " + "x" * 5000},
    ):
        for method, path in (
            ("GET", f"/v1/jobs/{job['id']}"),
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("POST", "/v1/deliveries/msg_x/redeliver"),
        ):
            answer = api.http().request(method, path, headers=headers, json={})
            assert answer.status_code == 401, (headers, path, answer.text)
            assert answer.json()["error"]["code"] == "unauthorized"
            assert answer.headers["www-authenticate"].startswith("Bearer")


def test_scopes_are_enforced(api: Api) -> None:
    reader = api.new_client("read")
    enqueuer = api.new_client("enqueue")
    job = enqueue(api, enqueuer.token)
    post = api.http(reader.token).post("/v1/jobs", json={"kind": "image_animate", "job_id": "r"})
    assert post.status_code == 403
    assert post.json()["error"] == {
        "code": "forbidden",
        "message": "this client's token does not have the 'enqueue' scope",
    }
    for path in (f"/v1/jobs/{job['id']}", "/v1/jobs", f"/v1/jobs/image_animate/{job['job_id']}"):
        answer = api.http(enqueuer.token).get(path)
        assert answer.status_code == 403 and "'read' scope" in answer.text
    assert api.http(reader.token).post("/v1/deliveries/msg_x/redeliver").status_code == 403


def test_a_client_sees_and_redelivers_only_its_own_jobs(api: Api) -> None:
    owner, other = api.new_client(), api.new_client()
    job = enqueue(api, owner.token, callback_url="https://hooks.example.com/owner")
    # End the job so it has a callback message to redeliver.
    settings = api.settings()
    with session_scope(settings) as session:
        row = session.get(TrackedJob, job["id"])
        assert row is not None
        transition_many(session, [Move(row, JobStatus.FAILED)], now=utcnow())
        delivery_id = session.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.tracked_job_id == job["id"])
        ).scalar_one()
    theirs = api.http(other.token)
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/image_animate/{job['job_id']}"):
        answer = theirs.get(path)
        assert answer.status_code == 404 and answer.json()["error"]["message"] == "no such job"
    assert job["id"] not in [j["id"] for j in theirs.get("/v1/jobs").json()["jobs"]]
    assert theirs.post(f"/v1/deliveries/{delivery_id}/redeliver").status_code == 404
    assert theirs.post("/v1/deliveries/msg_nonexistent/redeliver").status_code == 404
    # The owner can; an admin can too.
    mine = api.http(owner.token).post(f"/v1/deliveries/{delivery_id}/redeliver")
    assert mine.status_code == 202, mine.text
    assert mine.json()["id"] == delivery_id and mine.json()["status"] == "pending"
    admin = api.http(api.new_client("admin").token)
    assert admin.get(f"/v1/jobs/{job['id']}").status_code == 200
    assert admin.post(f"/v1/deliveries/{delivery_id}/redeliver").status_code == 202


def test_a_revoked_clients_token_stops_working_at_once(api: Api) -> None:
    client = api.new_client()
    job = enqueue(api, client.token)
    http = api.http(client.token)
    assert http.get(f"/v1/jobs/{job['id']}").status_code == 200
    with session_scope(api.settings()) as session:
        revoke_client(session, client.name, now=utcnow())
    answer = http.get(f"/v1/jobs/{job['id']}")
    assert answer.status_code == 401
    assert (
        answer.json()["error"]["message"] == "the token is not valid (unknown, expired or revoked)"
    )


def test_a_rotated_token_works_until_its_grace_period_ends(api: Api) -> None:
    client = api.new_client()
    with session_scope(api.settings()) as session:
        issued = rotate_token(session, client.name, grace_s=1.5, now=utcnow())
    assert issued.token and issued.token != client.token
    old, new = api.http(client.token), api.http(issued.token)
    assert old.get("/v1/jobs").status_code == 200
    assert new.get("/v1/jobs").status_code == 200
    time.sleep(1.6)
    assert old.get("/v1/jobs").status_code == 401
    assert new.get("/v1/jobs").status_code == 200


def _cli(api: Api, *args: str, env: dict[str, str] | None = None) -> Result:
    """``jobtracker clients ...`` in this process (a subprocess per call would cost seconds)."""
    reset_settings()
    full_env = {**api.env, "JOBTRACKER_DATABASE_URL": api.database_url, **(env or {})}
    try:
        return CliRunner().invoke(main, ["clients", *args], env=full_env)
    finally:
        reset_settings()


def test_the_clients_commands(api: Api, tmp_path: Path) -> None:
    name = unique("cli")
    refused = _cli(api, "add", name, "--scope", "read", env={"JOBTRACKER_CLIENT_SECRET_KEY": ""})
    assert refused.exit_code == 2
    assert "JOBTRACKER_CLIENT_SECRET_KEY is not set" in refused.output
    added = _cli(api, "add", name, "--scope", "enqueue", "--scope", "read", "--json")
    assert added.exit_code == 0, added.output
    shown = json.loads(added.output)
    token, secret = shown["token"], shown["webhook_secret"]
    assert token.startswith("jt_") and secret.startswith("whsec_")
    assert shown["client"]["scopes"] == ["enqueue", "read"]
    assert _cli(api, "add", name, "--scope", "read").exit_code == 1  # the name is taken
    # The token works; only its hash is stored.
    assert api.http(token).get("/v1/jobs").status_code == 200
    with session_scope(api.settings()) as session:
        stored = session.execute(select(ApiToken.token_hash)).scalars().all()
    assert token not in stored and all(len(h) == 64 for h in stored)

    listing = _cli(api, "list")
    assert listing.exit_code == 0 and name in listing.output
    assert token not in listing.output and secret not in listing.output
    assert token[:10] in listing.output  # the prefix, to tell tokens apart

    rotated = _cli(api, "rotate-token", name, "--grace", "1h", "--json")
    new_token = json.loads(rotated.output)["token"]
    assert new_token != token and "webhook_secret" not in json.loads(rotated.output)
    assert api.http(token).get("/v1/jobs").status_code == 200  # in its grace period
    assert api.http(new_token).get("/v1/jobs").status_code == 200

    new_secret = json.loads(_cli(api, "rotate-secret", name, "--json").output)["webhook_secret"]
    assert new_secret.startswith("whsec_") and new_secret != secret
    text = _cli(api, "rotate-secret", name).output
    assert "shown this once" in text and "previous secret signs callbacks too" in text

    revoked = _cli(api, "revoke", name)
    assert revoked.exit_code == 0
    assert api.http(new_token).get("/v1/jobs").status_code == 401
    assert "revoked" in _cli(api, "list").output
    assert _cli(api, "revoke", "no-such-client").exit_code == 1
    assert _cli(api, "rotate-token", name).exit_code == 1  # revoked


def test_secrets_and_tokens_never_reach_the_server_log(api: Api) -> None:
    client = api.new_client()
    http = api.http(client.token)
    enqueue(api, client.token)
    http.get("/v1/jobs", params={"limit": 0})
    api.http("jt_" + "A" * 43).get("/v1/jobs")
    log = api.server.output()
    # The client's requests are logged (refusals are at DEBUG, below this server's INFO: their
    # lines are checked in test_api_flood.test_tokens_never_reach_the_log, on a DEBUG server).
    assert "api GET /v1/jobs -> 422 route=/v1/jobs status_code=422" in log
    for secret in (client.token, client.token[3:], client.secret, MASTER_KEY):
        assert secret not in log
