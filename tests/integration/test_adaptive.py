"""The adaptive schedule in the engine: learned from finished jobs in the database, it puts off
a new job's first poll until finishes start, follows a duration hint, falls back to the backoff
without history, polls on time, and shows what it learned."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from jobtracker.models import TrackedJob, utcnow
from tests.drive import drive, step
from worker.adaptive.model import SCHEDULES
from worker.cli import main
from worker.db import session_scope
from worker.devtools.simulator import Simulator
from worker.flow.enqueue import track
from worker.settings import Settings

KIND = "video_face_fusion"


@pytest.fixture(autouse=True)
def _forget_learned() -> Iterator[None]:
    SCHEDULES.clear()
    yield
    SCHEDULES.clear()


def settings_for(db_url: str, sim: Simulator, tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {"JOBTRACKER_DATABASE_URL": db_url, "JOBTRACKER_POLL_INTERVAL_MAX": "60", **sim.env(),
         **env},
        cwd=tmp_path,
    )  # fmt: skip


def seed_history(settings: Settings, n: int = 120, median: float = 20.0) -> None:
    """``n`` finished jobs as polls every 3 s would have seen them: each finish lies between
    the last 'not finished' answer and the terminal poll."""
    rng = random.Random(4)
    now = utcnow()
    with session_scope(settings) as session:
        for i in range(n):
            duration = math.exp(math.log(median) + 0.3 * rng.gauss(0, 1))
            created = now - timedelta(minutes=10, seconds=i)
            seen = created + timedelta(seconds=duration)
            session.add(
                TrackedJob(
                    kind=KIND,
                    region="ap-guangzhou",
                    job_id=f"history-{i}",
                    status="succeeded",
                    polls=1 + int(duration // 3),
                    created_at=created,
                    last_unfinished_at=seen - timedelta(seconds=3 - duration % 3),
                    finished_at=seen + timedelta(seconds=duration % 3),
                    next_poll_at=created,
                )
            )


def job(settings: Settings, job_id: str) -> TrackedJob:
    with session_scope(settings) as session:
        return session.execute(select(TrackedJob).where(TrackedJob.job_id == job_id)).scalar_one()


def test_with_history_the_first_poll_waits_until_finishes_start(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sim, tmp_path)
    seed_history(settings)
    track(KIND, "succeed-1-new", settings=settings)
    left = {"kind": KIND, "reason": "first_poll_deferred"}
    left_before = REGISTRY.get_sample_value("jobtracker_polls_left_total", left) or 0.0
    step(settings)
    assert sim.calls("succeed-1-new") == 0  # no call at enqueue: nothing finishes that early
    assert REGISTRY.get_sample_value("jobtracker_polls_left_total", left) == left_before + 1
    fresh = job(settings, "succeed-1-new")
    first = (fresh.next_poll_at - fresh.created_at).total_seconds()
    assert fresh.polls == 0 and 10 < first < 25, first
    # When that time comes (here: the job is made older), it is polled.
    with session_scope(settings) as session:
        session.execute(
            update(TrackedJob)
            .where(TrackedJob.job_id == "succeed-1-new")
            .values(created_at=utcnow() - timedelta(seconds=first), next_poll_at=utcnow())
        )
    step(settings)
    assert sim.calls("succeed-1-new") == 1


def test_an_early_check_can_be_kept(db_url: str, sim: Simulator, tmp_path: Path) -> None:
    settings = settings_for(db_url, sim, tmp_path, JOBTRACKER_POLL_EARLY_CHECK="true")
    seed_history(settings)
    track(KIND, "succeed-2-early", settings=settings)
    step(settings)
    assert sim.calls("succeed-2-early") == 1


def test_without_history_the_backoff_polls_at_once(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sim, tmp_path)
    track(KIND, "succeed-2-fresh", settings=settings)
    step(settings)
    assert sim.calls("succeed-2-fresh") == 1
    polled = job(settings, "succeed-2-fresh")
    gap = (polled.next_poll_at - polled.last_polled_at).total_seconds()  # type: ignore[operator]
    assert 4 <= gap <= 6  # the backoff's first step: 5 s, jittered


def test_a_duration_hint_shapes_the_schedule(db_url: str, sim: Simulator, tmp_path: Path) -> None:
    """No history, but the caller says two minutes: no call until the jobs of such a length
    start to finish."""
    settings = settings_for(db_url, sim, tmp_path, JOBTRACKER_POLL_INTERVAL_MAX="300")
    track(KIND, "succeed-1-hinted", settings=settings, expected_duration_s=120)
    step(settings)
    assert sim.calls("succeed-1-hinted") == 0
    hinted = job(settings, "succeed-1-hinted")
    first = (hinted.next_poll_at - hinted.created_at).total_seconds()
    assert hinted.expected_duration_s == 120 and 50 < first < 120, first


def test_answers_record_the_detection_bound_and_the_calls(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sim, tmp_path, JOBTRACKER_POLL_INTERVAL_MIN="0.05",
                            JOBTRACKER_POLL_INTERVAL_MAX="0.1")  # fmt: skip
    # The registry is this process's, shared with every test before: only differences count.
    labels = {"kind": KIND}
    before = REGISTRY.get_sample_value("jobtracker_polls_per_job_count", labels) or 0
    detected = REGISTRY.get_sample_value("jobtracker_detection_latency_seconds_count", labels) or 0
    track(KIND, "succeed-3-bound", settings=settings)
    drive(settings)
    done = job(settings, "succeed-3-bound")
    assert done.status == "succeeded" and done.polls == 3
    assert done.last_unfinished_at is not None and done.finished_at is not None
    assert done.last_unfinished_at < done.finished_at
    assert REGISTRY.get_sample_value("jobtracker_polls_per_job_count", labels) == before + 1
    assert (
        REGISTRY.get_sample_value("jobtracker_detection_latency_seconds_count", labels)
        == detected + 1
    )


def test_stats_show_what_was_learned(db_url: str, sim: Simulator, tmp_path: Path) -> None:
    settings = settings_for(db_url, sim, tmp_path)
    seed_history(settings)
    result = CliRunner().invoke(main, ["stats", "--json"], env={"JOBTRACKER_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    learned = json.loads(result.stdout)["durations"][KIND]
    assert learned["schedule"] == "adaptive" and learned["jobs"] == 120
    assert 13 < learned["p50_s"] < 27 and learned["p10_s"] < learned["p50_s"] < learned["p90_s"]
    assert learned["calls_per_job"] > 1 and learned["detection_bound_s"] == pytest.approx(
        3, abs=0.1
    )
    text = CliRunner().invoke(main, ["stats"], env={"JOBTRACKER_DATABASE_URL": db_url}).stdout
    assert f"schedule {KIND}: adaptive, learned from 120 jobs" in text
    assert "schedule image_animate: backoff (0 finished jobs" in text


@pytest.mark.serial  # bounds on wall time
def test_a_job_due_before_the_next_tick_is_polled_on_time(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """A tick takes the jobs due before the next tick and each is polled at its own instant,
    not rounded up to the next tick (5 s here)."""
    settings = settings_for(db_url, sim, tmp_path, JOBTRACKER_TICK_SECONDS="5")
    track(KIND, "succeed-2-timed", settings=settings)
    due = utcnow() + timedelta(seconds=2)
    with session_scope(settings) as session:
        session.execute(update(TrackedJob).values(next_poll_at=due))
    started = time.monotonic()
    step(settings)
    waited = time.monotonic() - started
    polled = job(settings, "succeed-2-timed")
    assert sim.calls("succeed-2-timed") == 1 and 1.5 < waited < 4, waited
    assert polled.last_polled_at is not None
    assert abs((polled.last_polled_at - due).total_seconds()) < 0.5
