"""One clock: a worker whose host clock is ten minutes off runs on the database's time, so it
neither steals another worker's lease nor fails a fresh job as not found."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from jobtracker.models import TrackedJob
from tests.drive import step
from worker import clock
from worker.db import session_scope
from worker.devtools.simulator import Simulator
from worker.flow.enqueue import track
from worker.flow.tick import claim_all
from worker.settings import Settings

SKEW = timedelta(minutes=10)


@pytest.fixture
def skew(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[timedelta], None]]:
    """Play a host whose clock is off by the given amount (a new process: no offset known)."""
    real = clock.wall

    def set_skew(by: timedelta) -> None:
        monkeypatch.setattr(clock, "wall", lambda: real() + by)
        clock.reset()

    yield set_skew
    clock.reset()


def settings_for(db_url: str, sim: Simulator, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_NOT_FOUND_GRACE": "300",
            "JOBTRACKER_LEASE_SECONDS": "120",
            **sim.env(),
        },
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("holder", "other"),
    [(timedelta(0), SKEW), (-SKEW, timedelta(0))],
    ids=["a-fast-worker-claims-after-a-good-one", "a-good-worker-claims-after-a-slow-one"],
)
def test_a_lease_holds_whatever_the_workers_clocks(
    db_url: str,
    sim: Simulator,
    tmp_path: Path,
    skew: Callable[[timedelta], None],
    holder: timedelta,
    other: timedelta,
) -> None:
    """A fast worker would see the lease as run out; a slow one would write a lease that has
    already run out. Both run on the database's clock instead."""
    settings = settings_for(db_url, sim, tmp_path)
    track("image_animate", "succeed-3-lease", settings=settings)
    skew(holder)
    [claimed] = claim_all(settings)["image_animate"]
    skew(other)
    assert claim_all(settings) == {}
    with session_scope(settings) as session:
        job = session.execute(select(TrackedJob)).scalar_one()
    assert job.lease_expires_at == claimed.lease
    assert abs(clock.now(settings) - (clock.wall() - other)) < timedelta(seconds=5)


def test_a_fast_worker_does_not_fail_a_fresh_job_as_not_found(
    db_url: str, sim: Simulator, tmp_path: Path, skew: Callable[[timedelta], None]
) -> None:
    """Within the not-found grace period (300 s here) "not found" is transient: a job that
    looks ten minutes old to a fast clock is seconds old to the database."""
    settings = settings_for(db_url, sim, tmp_path)
    skew(SKEW)
    track("video_face_fusion", "notfound-2-fresh", settings=settings)
    step(settings)
    with session_scope(settings) as session:
        job = session.execute(select(TrackedJob)).scalar_one()
    assert (job.status, job.polls, job.last_error_code) == (
        "pending",
        1,
        "FailedOperation.JobNotExist",
    )
    # Its deadline counts on the database's clock too.
    assert job.deadline_at is not None
    assert abs(job.deadline_at - job.created_at - timedelta(days=1)) < timedelta(seconds=5)


def test_the_offset_is_measured_not_assumed(
    db_url: str, sim: Simulator, tmp_path: Path, skew: Callable[[timedelta], None]
) -> None:
    settings = settings_for(db_url, sim, tmp_path)
    skew(SKEW)
    offset = clock.offset(settings)
    assert abs(offset + SKEW) < timedelta(seconds=2), offset
    assert isinstance(clock.now(settings), datetime)
