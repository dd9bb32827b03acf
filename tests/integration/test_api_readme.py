"""The README's Service API section, run as written: every ``curl`` example against the real
server, and the receiver example against real per-client-signed callbacks."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from jobtracker.models import JobStatus, TrackedJob, WebhookAttempt, WebhookDelivery, utcnow
from tests.api_server import free_port
from tests.drive import drive
from tests.integration.conftest import LOOPBACK, Api, unique
from worker.db import session_scope
from worker.devtools.simulator import Simulator
from worker.flow import deliver
from worker.flow.transition import Move, transition_many

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = README.read_text().split("## Service API", 1)[1].split("\n## ", 1)[0]
GLOBAL_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def curl_commands() -> list[str]:
    """Every curl command of the section's shell blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", SECTION, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.startswith("curl "):
                commands.append(command.split("  #", 1)[0].strip())
    return commands


def test_every_curl_example_of_the_readme_works(api: Api) -> None:
    client = api.new_client("enqueue", "read")
    commands = curl_commands()
    assert len(commands) >= 9
    env = {**os.environ, "JT": api.url, "TOKEN": client.token}
    job_pk, delivery_id = None, ""
    for command in commands:
        if job_pk is not None:
            command = command.replace("/v1/jobs/12", f"/v1/jobs/{job_pk}")
            command = command.replace("msg_01JD8Q6YVDBY4J3B4H6AZ0M7KQ", delivery_id)
        done = subprocess.run(
            ["bash", "-c", command + " -w '\\n%{http_code}'"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        body, _, status = done.stdout.rpartition("\n")
        assert done.returncode == 0, (command, done.stderr)
        assert status.startswith("2"), (command, status, body)
        answer = json.loads(body)
        if "POST" in command and "/v1/jobs" in command:
            assert status == "201" and answer["metadata"] == {"user": 7}
            job_pk = answer["id"]
            # End it, so that ?wait= answers at once and it has a callback to redeliver.
            with session_scope(api.settings()) as session:
                job = session.get(TrackedJob, job_pk)
                assert job is not None
                transition_many(session, [Move(job, JobStatus.FAILED)], now=utcnow())
                delivery_id = session.execute(
                    select(WebhookDelivery.id).where(WebhookDelivery.tracked_job_id == job_pk)
                ).scalar_one()
        elif "?wait=" in command or "/v1/jobs/image_animate/" in command:
            assert answer["job"]["id"] == job_pk and answer["job"]["status"] == "failed"
        elif "redeliver" in command:
            assert status == "202" and answer["id"] == delivery_id
        elif "/v1/jobs?" in command:
            assert "next_cursor" in answer


def _receiver_source() -> str:
    marker = "<!-- test_api_readme.py: receiver -->\n```python\n"
    return SECTION.split(marker, 1)[1].split("```", 1)[0]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_the_readme_receiver_verifies_its_clients_callbacks(
    api: Api, sim: Simulator, tmp_path: Path
) -> None:
    mine, theirs = api.new_client(networks=LOOPBACK), api.new_client(networks=LOOPBACK)
    script = tmp_path / "receiver.py"
    script.write_text(_receiver_source())
    port = free_port()
    env = {**os.environ, "JOBTRACKER_CALLBACK_SECRET": mine.secret, "PORT": str(port)}
    receiver = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert receiver.poll() is None and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/hooks/animate"
        job_id = unique("succeed-1")
        ours = api.http(mine.token).post(
            "/v1/jobs",
            json={"kind": "image_animate", "job_id": job_id, "callback_url": url,
                  "metadata": {"user": 7}},
        ).json()  # fmt: skip
        forged = (
            api.http(theirs.token)
            .post(
                "/v1/jobs",
                json={"kind": "image_animate", "job_id": unique("succeed-1"), "callback_url": url},
            )
            .json()
        )
        settings = api.settings(
            JOBTRACKER_POLL_INTERVAL_MIN="0.05",
            JOBTRACKER_POLL_INTERVAL_MAX="0.1",
            JOBTRACKER_WEBHOOK_SECRET=GLOBAL_SECRET,
            **sim.env(),
        )
        sent: list[str] = []
        real_soon = deliver.deliver_soon
        try:
            deliver.deliver_soon = lambda ids, *a, **k: sent.extend(ids)  # type: ignore[assignment]
            drive(settings, jobs=[ours["id"], forged["id"]])
        finally:
            deliver.deliver_soon = real_soon  # type: ignore[assignment]
        outcomes = {}
        for delivery_id in sent:
            outcomes[delivery_id] = deliver.deliver_one(delivery_id, settings)
        with session_scope(settings) as session:
            by_job = {
                d.tracked_job_id: d
                for d in session.execute(
                    select(WebhookDelivery).where(WebhookDelivery.id.in_(sent))
                ).scalars()
            }
            codes = {
                a.delivery_id: a.status_code
                for a in session.execute(
                    select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(sent))
                ).scalars()
            }
        # Our callback verified (204); the other client's, signed with its own secret, did not.
        assert outcomes[by_job[ours["id"]].id] == "delivered"
        assert codes[by_job[ours["id"]].id] == 204
        assert outcomes[by_job[forged["id"]].id] == "pending"
        assert codes[by_job[forged["id"]].id] == 401
        # A redelivery of the same message is recognised as a duplicate.
        deliver.redeliver(settings, by_job[ours["id"]].id)
        assert deliver.deliver_one(by_job[ours["id"]].id, settings) == "delivered"
    finally:
        receiver.terminate()
        output, _ = receiver.communicate(timeout=10)
    assert output.splitlines() == [f"job.succeeded {job_id} succeeded {{'user': 7}}"]
