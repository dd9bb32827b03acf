"""The operators' CLI: ``jobtracker jobs / show / deliveries / redeliver / stats`` on both backends,
over jobs driven through the real engine against the fake provider and a verifying receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from jobtracker.models import DeliveryStatus, TrackedJob, WebhookDelivery, utcnow
from tests import services
from tests.drive import drive
from worker.cli import main
from worker.db import dispose_engines, session_scope
from worker.devtools.receiver import Receiver
from worker.devtools.simulator import Simulator
from worker.flow import deliver
from worker.flow.enqueue import track
from worker.providers import state as provider_state
from worker.providers.client import clear_clients
from worker.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class World:
    settings: Settings
    env: dict[str, str]
    receiver: Receiver
    #: JobId -> tracked job id
    ids: dict[str, int]

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)

    def json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def delivery_of(self, job_id: str) -> WebhookDelivery:
        with session_scope(self.settings) as session:
            return session.execute(
                select(WebhookDelivery).where(WebhookDelivery.tracked_job_id == self.ids[job_id])
            ).scalar_one()


@dataclass
class Built:
    """One backend's world, built once: a database to copy, the receiver its callbacks went to."""

    #: A SQLite file, or clones of the PostgreSQL database
    template: Path | services.TemplateClones
    env: dict[str, str]
    receiver: Receiver
    ids: dict[str, int]


def build(settings: Settings, receiver: Receiver) -> dict[str, int]:
    """Four jobs run to where they stop: succeeded (callback delivered), failed (callback answered
    503, retry pending), not found (callback answered 410: failed), and one still pending that
    keeps getting InternalError."""
    ids = {}
    for kind, job_id in [
        ("video_face_fusion", "succeed-2-cli"),
        ("video_face_fusion", "fail-2-cli"),
        ("image_animate", "notfound-cli"),
        ("image_animate", "internal-cli"),
    ]:
        row = track(kind, job_id, callback_url=receiver.url, settings=settings)
        ids[job_id] = row["id"]
    # Until the three that end have ended; internal-cli, polled with them, stays pending.
    drive(settings, jobs=[ids[j] for j in ("succeed-2-cli", "fail-2-cli", "notfound-cli")])
    # Callbacks in the order the jobs finished is not fixed: answer by webhook-id instead.
    by_job = {}
    with session_scope(settings) as session:
        for delivery in session.execute(select(WebhookDelivery)).scalars():
            by_job[delivery.tracked_job_id] = delivery.id
    plan = {ids["succeed-2-cli"]: 200, ids["fail-2-cli"]: 503, ids["notfound-cli"]: 410}
    for job_ref, answer in plan.items():
        receiver.script([answer])
        assert deliver.deliver_one(by_job[job_ref], settings) is not None
    return ids


def quiet_delivery(patch: pytest.MonkeyPatch) -> None:
    """Callbacks are sent by the tests themselves (deliver_one), not after each commit."""
    patch.setattr(deliver, "deliver_soon", lambda ids, _settings, **_: None)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def built(
    request: pytest.FixtureRequest, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    """The world, built once per backend through the real engine; each test gets a copy."""
    folder = tmp_path_factory.mktemp("cli-world")
    if request.param == "sqlite":
        template: Path | services.TemplateClones = folder / "world.db"
        services.copy_sqlite(sqlite_template, template)
        url = f"sqlite:///{template}"
    else:
        pg_clones: services.TemplateClones = request.getfixturevalue("pg_clones")
        name = pg_clones.take()
        url = services.pg_url(name)
    with Simulator() as sim, Receiver(secrets=[SECRET]) as receiver:
        env = {
            "JOBTRACKER_POLL_INTERVAL_MIN": "0.05",
            "JOBTRACKER_POLL_INTERVAL_MAX": "0.1",
            "JOBTRACKER_NOT_FOUND_GRACE": "0",
            "JOBTRACKER_WEBHOOK_SECRET": SECRET,
            "JOBTRACKER_WEBHOOK_RETRY_SCHEDULE": "300,300",
            **sim.env(),
        }
        settings = Settings.from_env({**env, "JOBTRACKER_DATABASE_URL": url}, cwd=folder)
        with pytest.MonkeyPatch.context() as patch:
            quiet_delivery(patch)
            ids = build(settings, receiver)
        dispose_engines()  # a template database must have no connection
        if request.param == "postgresql":
            template = services.TemplateClones(name)
        try:
            yield Built(template, env, receiver, ids)
        finally:
            if isinstance(template, services.TemplateClones):
                template.close()
                pg_clones.give_back(name)
            clear_clients()


@pytest.fixture
def world(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A copy of the backend's world (its receiver is shared: answer it by webhook-id)."""
    quiet_delivery(monkeypatch)
    clone = None
    if isinstance(built.template, Path):
        path = tmp_path / "jobtracker.db"
        services.copy_sqlite(built.template, path)
        url = f"sqlite:///{path}"
    else:
        clone = built.template.take()
        url = services.pg_url(clone)
    env = {**built.env, "JOBTRACKER_DATABASE_URL": url}
    yield World(Settings.from_env(env, cwd=tmp_path), env, built.receiver, dict(built.ids))
    dispose_engines()
    if clone is not None:
        built.template.give_back(clone)


def test_jobs_lists_newest_first_with_filters(world: World) -> None:
    result = world.cli("jobs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "KIND", "REGION", "JOB_ID", "STATUS", "PROVIDER", "POLLS", "AGE", "ERROR"
    ]  # fmt: skip
    # Newest first, and columns aligned: every JOB_ID starts at the header's column.
    column = lines[0].index("JOB_ID")
    assert [line[column:].split()[0] for line in lines[1:]] == [
        "internal-cli", "notfound-cli", "fail-2-cli", "succeed-2-cli"
    ]  # fmt: skip
    assert "FailedOperation.JobNotFound" in result.stdout
    assert "(retrying) InternalError" in result.stdout

    failed = world.json("jobs", "--status", "failed")
    assert {j["job_id"] for j in failed} == {"fail-2-cli", "notfound-cli"}
    assert all(j["error"]["code"] for j in failed)
    both = world.json("jobs", "--status", "succeeded", "--status", "active")
    assert {j["job_id"] for j in both} == {"succeed-2-cli", "internal-cli"}
    animate = world.json("jobs", "--kind", "image_animate")
    assert {j["job_id"] for j in animate} == {"notfound-cli", "internal-cli"}
    assert [j["job_id"] for j in world.json("jobs", "--limit", "1")] == ["internal-cli"]

    # Age filters read created_at: make one job three days old.
    with session_scope(world.settings) as session:
        session.execute(
            update(TrackedJob)
            .where(TrackedJob.id == world.ids["succeed-2-cli"])
            .values(created_at=utcnow() - timedelta(days=3))
        )
    old = world.json("jobs", "--older-than", "2d")
    assert [j["job_id"] for j in old] == ["succeed-2-cli"]
    recent = world.json("jobs", "--since", "1h30m")
    assert {j["job_id"] for j in recent} == {"fail-2-cli", "notfound-cli", "internal-cli"}
    none = world.cli("jobs", "--older-than", "1w")
    assert none.exit_code == 0 and none.stdout == ""
    assert "no matching jobs" in none.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "--since", "10x"],
        ["jobs", "--status", "done"],
        ["jobs", "--kind", "video_fusion"],
        ["jobs", "--limit", "0"],
        ["show"],
        ["show", "a", "b", "c"],
        ["show", "video_fusion", "x"],
        ["deliveries", "--status", "lost"],
        ["redeliver"],
        ["redeliver", "msg_x", "--failed-since", "1h"],
        ["redeliver", "--failed-since", "yesterday"],
    ],
)
def test_bad_arguments_exit_2(world: World, args: list[str]) -> None:
    result = world.cli(*args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.stderr


def test_show_a_job_with_its_history_and_callback_attempts(world: World) -> None:
    job_ref = world.ids["fail-2-cli"]
    page = world.cli("show", str(job_ref))
    assert page.exit_code == 0, page.output
    text = page.stdout
    assert "job_id             fail-2-cli" in text
    assert "Transitions (2)" in text and "pending  queued" in text and "queued   failed" in text
    delivery = world.delivery_of("fail-2-cli")
    assert f"{delivery.id}  job.failed  pending  attempts=1" in text
    assert "HTTP 503 Service Unavailable" in text

    detail = world.json("show", str(job_ref))
    assert detail["job"]["status"] == "failed"
    assert [(t["from_status"], t["to_status"]) for t in detail["transitions"]] == [
        ("pending", "queued"),
        ("queued", "failed"),
    ]
    [message] = detail["deliveries"]
    assert message["id"] == delivery.id and message["payload"]["type"] == "job.failed"
    assert [a["status_code"] for a in message["attempt_log"]] == [503]

    # The same job by its provider JobId, with or without its kind and region.
    assert world.json("show", "fail-2-cli")["job"]["id"] == job_ref
    by_kind = world.json("show", "video_face_fusion", "fail-2-cli", "--region", "ap-guangzhou")
    assert by_kind["job"]["id"] == job_ref
    # A JobId made of digits (image_animate's are) that is not also a tracked id.
    digits = track("image_animate", "1194931538865782784", settings=world.settings)
    assert world.json("show", "1194931538865782784")["job"]["id"] == digits["id"]
    # No callback URL: said plainly.
    plain = track("image_animate", "succeed-1-nourl", settings=world.settings)
    assert "no callback URL" in world.cli("show", str(plain["id"])).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "987654"], "no tracked job with id or JobId 987654"),
        (["show", "no-such-job"], "no tracked job no-such-job"),
        (["show", "image_animate", "fail-2-cli"], "no tracked job image_animate fail-2-cli"),
        (["show", "fail-2-cli", "--region", "ap-shanghai"], "in ap-shanghai"),
        (["deliveries", "--job", "987654"], "no tracked job with id 987654"),
        (["redeliver", "msg_nope"], "no delivery 'msg_nope'"),
    ],
)
def test_unknown_ids_exit_1_with_one_line(world: World, args: list[str], message: str) -> None:
    result = world.cli(*args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_one_jobid_in_two_kinds_is_ambiguous(world: World) -> None:
    track("image_animate", "fail-2-cli", settings=world.settings)
    result = world.cli("show", "fail-2-cli")
    assert result.exit_code == 1 and "matches several jobs" in result.stderr
    assert world.json("show", "image_animate", "fail-2-cli")["job"]["kind"] == "image_animate"


def test_deliveries_lists_and_filters(world: World) -> None:
    table = world.cli("deliveries")
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[0].split()[:5] == ["ID", "JOB", "EVENT", "STATUS", "ATTEMPTS"]
    assert len(table.stdout.splitlines()) == 4
    every = world.json("deliveries")
    assert {d["status"] for d in every} == {"delivered", "pending", "failed"}
    pending = world.json("deliveries", "--status", "pending")
    assert [d["tracked_job_id"] for d in pending] == [world.ids["fail-2-cli"]]
    assert pending[0]["last_status_code"] == 503 and pending[0]["next_attempt_at"]
    mine = world.json("deliveries", "--job", str(world.ids["notfound-cli"]))
    assert [(d["status"], d["last_status_code"]) for d in mine] == [("failed", 410)]
    two = world.json("deliveries", "--status", "pending", "--status", "failed")
    assert len(two) == 2


def test_redeliver_one_sends_the_same_message_again_now(world: World) -> None:
    delivery = world.delivery_of("fail-2-cli")  # answered 503, next attempt in 300 s
    world.receiver.script([200])
    result = world.cli("redeliver", delivery.id)
    assert result.exit_code == 0, result.output
    assert f"{delivery.id} (job.failed to {world.receiver.url}): attempt 2 delivered (HTTP 200" in (
        result.stdout
    )
    # Same message, same webhook-id, verified by the receiver.
    assert world.receiver.attempts(delivery.id) == 2
    assert delivery.id in world.receiver.unique_ids()
    assert world.delivery_of("fail-2-cli").status == DeliveryStatus.DELIVERED.value

    # An attempt that fails again says so, with exit status 1 and the next attempt's time.
    failed = world.delivery_of("notfound-cli")
    world.receiver.script([500])
    again = world.cli("redeliver", failed.id, "--json")
    assert again.exit_code == 1
    report = json.loads(again.stdout)
    assert report["sent"] is True and report["status"] == "pending"
    assert [a["status_code"] for a in report["attempt_log"]] == [410, 500]


def test_redeliver_failed_since_makes_them_due_for_the_sweep(world: World) -> None:
    failed = world.delivery_of("notfound-cli")
    assert failed.status == "failed"
    none = world.cli("redeliver", "--failed-since", "2099-01-01T00:00:00Z")
    assert none.exit_code == 0 and none.stdout.startswith("0 failed deliveries")
    result = world.cli("redeliver", "--failed-since", "1h")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 failed deliveries since")
    assert f"  {failed.id}" in result.stdout.splitlines()
    again = world.delivery_of("notfound-cli")
    assert again.status == "pending" and again.next_attempt_at <= utcnow()
    # The worker's sweep picks it up (here: the sweep's query).
    with session_scope(world.settings) as session:
        assert failed.id in deliver.due_deliveries(session, utcnow())


def test_stats_counts_and_provider_states(world: World) -> None:
    with session_scope(world.settings) as session:
        provider_state.pause(session, "image_animate", "AuthFailure.SecretIdNotFound: x", utcnow())
        # Refusing every call (one refusal only costs rate): the whole provider rests.
        provider_state.throttle(
            session,
            "video_face_fusion",
            utcnow(),
            rate=1.0,
            run=provider_state.PARK_AFTER_THROTTLES,
        )
    data = world.json("stats")
    assert data["jobs"]["video_face_fusion"] == {
        "pending": 0, "queued": 0, "running": 0, "succeeded": 1, "failed": 1, "canceled": 0,
        "expired": 0,
    }  # fmt: skip
    assert data["jobs"]["image_animate"]["failed"] == 1
    assert data["jobs"]["image_animate"]["pending"] == 1
    assert data["jobs_total"] == 4
    oldest = data["oldest_active"]["pending"]
    assert oldest["kind"] == "image_animate"  # internal-cli, the one job still pending
    with session_scope(world.settings) as session:
        pending = session.get(TrackedJob, world.ids["internal-cli"])
        assert pending is not None
        age_s = (utcnow() - pending.created_at).total_seconds()
    assert oldest["age_s"] == pytest.approx(age_s, abs=2)
    polls = data["polls_per_finished_job"]["video_face_fusion"]
    assert (polls["jobs"], polls["avg"], polls["max_recent"]) == (2, 2.0, 2)
    # Each ended job's bound: its terminal poll minus the poll before (both were polled twice,
    # at most a poll interval of 0.1 s apart, plus a step of the driver).
    assert 0 < polls["detection_bound_s"] < 2
    assert data["deliveries"] == {"pending": 1, "delivered": 1, "failed": 1}
    states = {p["kind"]: p for p in data["providers"]}
    assert states["image_animate"]["paused"] is True
    assert states["image_animate"]["paused_reason"].startswith("AuthFailure")
    assert states["video_face_fusion"]["throttled"] is True

    text = world.cli("stats").stdout
    assert text.splitlines()[0].split() == [
        "KIND", "PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "EXPIRED",
        "TOTAL",
    ]  # fmt: skip
    assert text.splitlines()[3].split() == ["total", "1", "0", "0", "1", "2", "0", "0", "4"]
    assert "oldest active job: pending" in text
    assert "deliveries: pending 1, delivered 1, failed 1" in text
    assert "provider image_animate: PAUSED" in text
    assert "provider video_face_fusion: throttled until" in text


def test_reading_a_missing_sqlite_file_is_refused_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    for command in (["jobs"], ["show", "1"], ["deliveries"], ["stats"]):
        result = CliRunner().invoke(
            main, command, env={"JOBTRACKER_DATABASE_URL": f"sqlite:///{missing}"}
        )
        assert result.exit_code == 2, result.output
        assert f"no database at {missing}" in result.stderr
    assert not missing.exists()
