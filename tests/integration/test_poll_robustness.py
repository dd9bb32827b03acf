"""Bad data and shared-state races in a poll batch: one bad row never sinks its neighbours."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from jobtracker.models import JobStatus, ProviderState, TrackedJob, utcnow
from tests.drive import step
from worker.catalogue.table import PROVIDERS
from worker.db import session_scope
from worker.devtools.receiver import Receiver
from worker.devtools.simulator import Simulator
from worker.flow import poll
from worker.flow.enqueue import track
from worker.providers.normalize import Answer, normalize
from worker.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def statuses(settings: Settings) -> dict[str, str]:
    with session_scope(settings) as session:
        return {j.job_id: j.status for j in session.execute(select(TrackedJob)).scalars()}


def test_nul_characters_from_the_provider_are_dropped() -> None:
    body = {
        "Response": {
            "Status": "FAIL",
            "ErrorCode": "FailedOperation.DriverFailed\x00",
            "ErrorMessage": "bad\x00 input",
            "RequestId": "r\x00",
        }
    }
    answer = normalize(PROVIDERS["image_animate"], body, now=utcnow())
    assert (answer.status, answer.error_code, answer.error_message, answer.request_id) == (
        JobStatus.FAILED,
        "FailedOperation.DriverFailed",
        "bad input",
        "r",
    )


class FakeClient:
    """Answers every job as succeeded; one job's result carries a value PostgreSQL refuses."""

    def query(self, job_id: str, *, now: Any = None) -> Answer:
        result = {"ResultVideoUrl": "https://x/" + ("\x00" if job_id == "poison" else job_id)}
        return Answer(JobStatus.SUCCEEDED, "DONE", result=result, request_id="r")


class UnencodableClient:
    """Answers past the normalizer (as a new provider path with a missed check would): job
    ``bad`` gets a message no UTF-8 encoder can write, so the driver raises before any SQL is
    sent, and not a DBAPIError."""

    def query(self, job_id: str, *, now: Any = None) -> Answer:
        if job_id == "bad":
            return Answer(JobStatus.FAILED, "FAIL", error_code="X", error_message="\ud800")
        result = {"ResultVideoUrl": f"https://x/{job_id}"}
        return Answer(JobStatus.SUCCEEDED, "DONE", result=result, request_id="r")


def test_a_row_the_database_refuses_does_not_sink_the_batch(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": db_url,
            "TENCENTCLOUD_SECRET_ID": "id",
            "TENCENTCLOUD_SECRET_KEY": "key",
        },
        cwd=tmp_path,
    )
    monkeypatch.setattr(poll, "get_client", lambda *a: FakeClient())
    for job_id in ("a", "poison", "b"):
        track("image_animate", job_id, settings=settings)
    step(settings)
    got = statuses(settings)
    assert (got["a"], got["b"]) == ("succeeded", "succeeded")
    # PostgreSQL refuses the NUL (the job stays active, polled again later); SQLite stores it.
    refuses_nul = db_url.startswith("postgresql")
    assert got["poison"] == ("pending" if refuses_nul else "succeeded")


def test_only_an_answer_after_a_refusal_ends_the_run_of_refusals(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """An answer before the refusal (same batch) does not clear it; the next answer does."""
    settings = Settings.from_env(
        {"JOBTRACKER_DATABASE_URL": db_url, "JOBTRACKER_IMAGE_ANIMATE_QPS": "1000", **sim.env()},
        cwd=tmp_path,
    )
    sim.script("ok-first", ["done"])
    sim.script("then-throttled", ["throttle", "done"])
    track("image_animate", "ok-first", settings=settings)
    track("image_animate", "then-throttled", settings=settings)
    with session_scope(settings) as session:  # poll ok-first first in the batch
        job = session.execute(
            select(TrackedJob).where(TrackedJob.job_id == "ok-first")
        ).scalar_one()
        job.next_poll_at = utcnow() - timedelta(seconds=5)
    step(settings)
    with session_scope(settings) as session:
        state = session.get(ProviderState, "image_animate")
        assert state is not None and state.consecutive_throttles == 1
        assert state.throttled_until is None  # one refusal: the provider does not rest
        session.execute(update(TrackedJob).values(next_poll_at=utcnow() - timedelta(seconds=1)))
    step(settings)
    with session_scope(settings) as session:
        state = session.get(ProviderState, "image_animate")
        assert state is not None and state.consecutive_throttles == 0


def test_a_job_that_finishes_by_its_deadline_gets_its_real_status(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """At the deadline the provider is asked once more; only a non-terminal answer expires."""
    from tests.drive import drive

    settings = Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_JOB_DEADLINE": "1",
            "JOBTRACKER_POLL_INTERVAL_MIN": "30",
            "JOBTRACKER_POLL_INTERVAL_MAX": "60",
            **sim.env(),
        },
        cwd=tmp_path,
    )
    sim.script("last-moment", ["running", "done"])
    sim.script("still-running", ["running"])
    track("image_animate", "last-moment", settings=settings)
    track("image_animate", "still-running", settings=settings)
    drive(settings, seconds=5)
    assert statuses(settings) == {"last-moment": "succeeded", "still-running": "expired"}
    assert sim.calls("last-moment") == sim.calls("still-running") == 2


def test_a_paused_providers_overdue_jobs_expire_without_using_the_probe(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    from sqlalchemy import update

    from tests.drive import step

    settings = Settings.from_env(
        {"JOBTRACKER_DATABASE_URL": db_url, **sim.env(), "TENCENTCLOUD_SECRET_KEY": "wrong"},
        cwd=tmp_path,
    )
    for job_id in ("old-1", "old-2", "fresh"):
        track("video_face_fusion", job_id, settings=settings)
    step(settings)  # AuthFailure: the provider is paused
    calls = sim.counters().total
    with session_scope(settings) as session:
        session.execute(
            update(TrackedJob)
            .where(TrackedJob.job_id.in_(["old-1", "old-2"]))
            .values(deadline_at=utcnow() - timedelta(seconds=1))
        )
        # Time passes: the probe is due, and so are the jobs released until then.
        session.execute(update(ProviderState).values(next_probe_at=utcnow() - timedelta(seconds=1)))
        session.execute(update(TrackedJob).values(next_poll_at=utcnow() - timedelta(seconds=1)))
    step(settings)
    got = statuses(settings)
    assert (got["old-1"], got["old-2"]) == ("expired", "expired")
    # The probe went to a job that can still succeed, and it asked the provider.
    assert got["fresh"] == "pending"
    assert sim.counters().total == calls + 1


def strict_json(body: bytes) -> Any:
    """Parse as a receiver's strict parser would: UTF-8, and no NaN or Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(body.decode("utf-8"), parse_constant=refuse)


@pytest.mark.parametrize("kind", ["image_animate", "video_face_fusion"])
def test_poison_answers_are_stored_and_never_sink_a_batch(
    db_url: str, sim: Simulator, tmp_path: Path, kind: str
) -> None:
    """A failed answer whose text carries lone surrogates and NUL, and a succeeded one carrying
    NaN and Infinity, end like any other answer, next to healthy jobs polled in the same batch;
    their callbacks are strict JSON."""
    settings = Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_WEBHOOK_SECRET": SECRET,
            "JOBTRACKER_POLL_INTERVAL_MIN": "0.05",
            **sim.env(),
        },
        cwd=tmp_path,
    )
    with Receiver(secrets=[SECRET]) as receiver:
        for job_id in ("succeed-1-a", "poison-1-p", "nan-1-n", "succeed-1-b"):
            track(kind, job_id, callback_url=receiver.url, settings=settings)
        step(settings)  # one batch, one poll each
        assert statuses(settings) == {
            "succeed-1-a": "succeeded",
            "poison-1-p": "failed",
            "nan-1-n": "succeeded",
            "succeed-1-b": "succeeded",
        }
        messages = {m.payload["data"]["job_id"]: m for m in receiver.wait_for(4, timeout=20)}
    poisoned = strict_json(messages["poison-1-p"].body)["data"]["error"]
    assert poisoned["message"] == "\ufffd broken \ufffd text"
    assert poisoned["code"].startswith("FailedOperation.")
    result = strict_json(messages["nan-1-n"].body)["data"]["result"]
    optional = [
        k for k in PROVIDERS[kind].result.fields if k not in PROVIDERS[kind].result.required
    ]
    assert optional and all(result[key] is None for key in optional)
    with session_scope(settings) as session:
        job = session.execute(select(TrackedJob).where(TrackedJob.job_id == "nan-1-n")).scalar_one()
        assert job.result is not None and all(job.result[key] is None for key in optional)


def test_any_exception_writing_one_row_spares_the_batch_and_the_job_still_ends(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    advance_clock: Callable[[float], None],
) -> None:
    """A row whose write raises something other than a DBAPIError (here UnicodeEncodeError in the
    driver) is written job by job: its neighbours finish, it gets a recorded error, and at its
    deadline it expires instead of being polled forever."""
    settings = Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": db_url,
            "TENCENTCLOUD_SECRET_ID": "id",
            "TENCENTCLOUD_SECRET_KEY": "key",
            "JOBTRACKER_JOB_DEADLINE": "2",
            "JOBTRACKER_POLL_INTERVAL_MIN": "0.05",
            "JOBTRACKER_POLL_INTERVAL_MAX": "0.1",
        },
        cwd=tmp_path,
    )
    monkeypatch.setattr(poll, "get_client", lambda *a: UnencodableClient())
    for job_id in ("a", "bad", "b"):
        track("image_animate", job_id, settings=settings)
    step(settings)
    assert statuses(settings) == {"a": "succeeded", "bad": "pending", "b": "succeeded"}
    with session_scope(settings) as session:
        bad = session.execute(select(TrackedJob).where(TrackedJob.job_id == "bad")).scalar_one()
        assert (bad.polls, bad.last_error_code, bad.lease_expires_at) == (
            1,
            "Tracker.Unstorable",
            None,
        )
    advance_clock(2.5)  # past its deadline (2 s): it is polled once more, then expires
    for _ in range(2):
        step(settings)
    with session_scope(settings) as session:
        bad = session.execute(select(TrackedJob).where(TrackedJob.job_id == "bad")).scalar_one()
        assert bad.status == "expired" and bad.error_code == "Tracker.DeadlineExceeded"
