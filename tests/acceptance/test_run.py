"""The real ``jobtracker run`` in a subprocess against the fake provider and a real receiver."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import services
from tests.acceptance.proc import Tracker, enqueue, query, wait_until
from worker.db import dispose_engines
from worker.devtools.receiver import Receiver
from worker.devtools.simulator import Simulator
from worker.flow.enqueue import track
from worker.runtime.migrate import ensure_schema
from worker.settings import Settings

pytestmark = pytest.mark.slow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: job_id -> (terminal status, transitions)
MIX = {
    "succeed-3-acc": ("succeeded", "pending>queued,queued>running,running>succeeded"),
    "fail-2-acc": ("failed", "pending>queued,queued>failed"),
    "cancel-2-acc": ("canceled", "pending>queued,queued>canceled"),
    "notfound-acc": ("failed", "pending>failed"),
    "internal-2-acc": ("succeeded", "pending>succeeded"),
    "html502-1-acc": ("succeeded", "pending>succeeded"),
    "throttle-1-acc": ("succeeded", "pending>succeeded"),
    "never-acc": ("expired", "pending>running,running>expired"),
}
TERMINAL = "('succeeded', 'failed', 'canceled', 'expired')"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        simulator.script("never-acc", ["running"])
        yield simulator


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(secrets=[SECRET]) as rx:
        yield rx


@pytest.fixture(params=["embedded", "postgresql+redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "embedded":
        return {}  # SQLite file and filesystem broker in the working directory
    pg = request.getfixturevalue("pg_url")
    redis_url = request.getfixturevalue("redis_url")
    return {"JOBTRACKER_DATABASE_URL": pg, "JOBTRACKER_BROKER_URL": redis_url}


def tracker_env(sim: Simulator, backend: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **sim.env(),
        **backend,
        "JOBTRACKER_TICK_SECONDS": "0.5",
        "JOBTRACKER_POLL_INTERVAL_MIN": "0.2",
        "JOBTRACKER_POLL_INTERVAL_MAX": "0.5",
        "JOBTRACKER_NOT_FOUND_GRACE": "0",
        "JOBTRACKER_JOB_DEADLINE": "8",
        "JOBTRACKER_CONNECT_TIMEOUT": "0.5",
        "JOBTRACKER_READ_TIMEOUT": "1",
        "JOBTRACKER_LEASE_SECONDS": "3",
        "JOBTRACKER_WEBHOOK_SECRET": SECRET,
        "JOBTRACKER_WEBHOOK_RETRY_SCHEDULE": "0.5,1,1",
        **extra,
    }


def db_url_of(env: dict[str, str], cwd: Path) -> str:
    return env.get("JOBTRACKER_DATABASE_URL", f"sqlite:///{cwd / 'jobtracker.db'}")


def statuses(url: str) -> dict[str, str]:
    return {str(j): str(s) for j, s in query(url, "SELECT job_id, status FROM tracked_jobs")}


def histories(url: str) -> dict[str, str]:
    rows = query(
        url,
        "SELECT j.job_id, t.from_status, t.to_status FROM job_transitions t "
        "JOIN tracked_jobs j ON j.id = t.tracked_job_id ORDER BY t.id",
    )
    out: dict[str, list[str]] = {}
    for job_id, a, b in rows:
        out.setdefault(str(job_id), []).append(f"{a}>{b}")
    return {k: ",".join(v) for k, v in out.items()}


def all_terminal(url: str, n: int) -> bool:
    return query(url, f"SELECT count(*) FROM tracked_jobs WHERE status IN {TERMINAL}")[0][0] == n


def test_a_mix_of_lifecycles_ends_right_with_callbacks_then_stops_cleanly(
    sim: Simulator, receiver: Receiver, backend: dict[str, str], tmp_path: Path
) -> None:
    env = tracker_env(sim, backend)
    url = db_url_of(env, tmp_path)
    tracker = Tracker(env, tmp_path).start()
    try:
        enqueue(env, tmp_path, list(MIX), callback_url=receiver.url, cli=1)
        wait_until(lambda: all_terminal(url, len(MIX)), 60, "every job terminal", tracker)
        messages = receiver.wait_for(len(MIX), timeout=30)
        assert tracker.children() == [], "jobtracker run must not fork helpers"
        elapsed = tracker.stop(signal.SIGTERM)
    finally:
        tracker.kill()
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    assert tracker.proc is not None and tracker.proc.returncode == 0, tracker.output()[-3000:]
    assert statuses(url) == {job: status for job, (status, _) in MIX.items()}
    assert histories(url) == {job: history for job, (_, history) in MIX.items()}
    assert all(m.verified for m in messages)
    assert sorted(m.payload["data"]["job_id"] for m in messages) == sorted(MIX)
    assert not receiver.duplicates
    assert TencentSecretNotLogged(sim, tracker.output())


def TencentSecretNotLogged(sim: Simulator, output: str) -> bool:
    secret_key = sim.env()["TENCENTCLOUD_SECRET_KEY"]
    return secret_key not in output and SECRET not in output


def test_sigint_also_stops_within_ten_seconds(sim: Simulator, tmp_path: Path) -> None:
    """... and the run says what it runs on, and leaves no beat schedule files behind."""
    tracker = Tracker(tracker_env(sim, {}), tmp_path).start()
    try:
        wait_until(lambda: "ready" in tracker.output().lower(), 30, "the worker to start", tracker)
        elapsed = tracker.stop(signal.SIGINT)
    finally:
        tracker.kill()
    assert elapsed < 10
    output = tracker.output()
    assert f"database   sqlite:///{tmp_path / 'jobtracker.db'}" in output
    assert f"broker     embedded, in {tmp_path / '.jobtracker-broker'}" in output
    for kind in ("video_face_fusion", "image_animate"):
        assert f"provider   {kind}: {sim.url}, 20 QPS, ready" in output
    assert "metrics    off" in output
    assert not list(tmp_path.glob("celerybeat-schedule*")), sorted(
        p.name for p in tmp_path.iterdir()
    )


def run_through(
    env: dict[str, str],
    cwd: Path,
    receiver: Receiver,
    jobs: list[str],
    disrupt: Callable[[Tracker], Tracker],
) -> None:
    """Start a tracker, enqueue ``jobs``, disrupt it once polling is under way, then wait until
    every job is terminal and every callback arrived. ``disrupt`` returns the tracker to wait on.
    """
    url = db_url_of(env, cwd)
    tracker = Tracker(env, cwd).start()
    try:
        enqueue(env, cwd, jobs, callback_url=receiver.url)
        wait_until(
            lambda: query(url, "SELECT count(*) FROM tracked_jobs WHERE polls >= 2")[0][0] >= 5,
            60, "polling under way", tracker,
        )  # fmt: skip
        tracker = disrupt(tracker)
        wait_until(lambda: all_terminal(url, len(jobs)), 120, "every job terminal", tracker)
        receiver.wait_for(len(jobs), timeout=60)
        tracker.stop(signal.SIGTERM)
    finally:
        tracker.kill()
    assert set(statuses(url).values()) == {"succeeded"}
    for job_id, history in histories(url).items():
        # An answer whose write was cut off (kill, restart) is simply not recorded, so a job may
        # skip `queued`; but it never repeats or reverses a step.
        assert history in FORWARD_HISTORIES, (job_id, history)
    assert sorted(receiver.unique_ids()) == sorted(
        str(r[0]) for r in query(url, "SELECT id FROM webhook_deliveries")
    )


FORWARD_HISTORIES = {
    "pending>queued,queued>running,running>succeeded",
    "pending>running,running>succeeded",
    "pending>queued,queued>succeeded",
    "pending>succeeded",
}


def test_sigkill_mid_run_loses_no_job(
    sim: Simulator, receiver: Receiver, backend: dict[str, str], tmp_path: Path
) -> None:
    env = tracker_env(sim, backend, JOBTRACKER_JOB_DEADLINE="120")

    def kill_and_restart(tracker: Tracker) -> Tracker:
        tracker.stop(signal.SIGKILL)
        return Tracker(env, tmp_path, name="tracker2").start()

    run_through(
        env, tmp_path, receiver, [f"succeed-6-kill{n}" for n in range(40)], kill_and_restart
    )


def test_redis_flushall_mid_run_loses_no_job(
    sim: Simulator, receiver: Receiver, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    import redis

    backend = {"JOBTRACKER_DATABASE_URL": pg_url, "JOBTRACKER_BROKER_URL": redis_url}
    env = tracker_env(sim, backend, JOBTRACKER_JOB_DEADLINE="120")

    def flush(tracker: Tracker) -> Tracker:
        redis.Redis.from_url(redis_url).flushdb()
        return tracker

    run_through(env, tmp_path, receiver, [f"succeed-5-flush{n}" for n in range(30)], flush)


@pytest.mark.serial  # restarts the PostgreSQL every test uses
def test_a_postgresql_restart_mid_run_is_survived(
    sim: Simulator, receiver: Receiver, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    if not Path("/etc/postgresql").is_dir():
        pytest.skip("no local PostgreSQL cluster to restart")
    backend = {"JOBTRACKER_DATABASE_URL": pg_url, "JOBTRACKER_BROKER_URL": redis_url}
    env = tracker_env(sim, backend, JOBTRACKER_JOB_DEADLINE="120")

    def restart_postgresql(tracker: Tracker) -> Tracker:
        version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            check=True, timeout=120,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while services.pg_error() is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        return tracker

    run_through(
        env, tmp_path, receiver, [f"succeed-5-pg{n}" for n in range(20)], restart_postgresql
    )


def test_two_trackers_with_two_beats_poll_each_job_without_duplicates(
    sim: Simulator, receiver: Receiver, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Two `jobtracker run` (so two beats) on one database: a common deployment accident."""
    env = tracker_env(
        sim,
        {"JOBTRACKER_DATABASE_URL": pg_url, "JOBTRACKER_BROKER_URL": redis_url},
        JOBTRACKER_JOB_DEADLINE="120",
        JOBTRACKER_LEASE_SECONDS="30",
    )
    jobs = [f"succeed-4-twin{n}" for n in range(40)]
    first = Tracker(env, tmp_path, name="one").start()
    second = Tracker(env, tmp_path, name="two").start()
    try:
        enqueue(env, tmp_path, jobs, callback_url=receiver.url, kind="image_animate")
        wait_until(lambda: all_terminal(pg_url, len(jobs)), 90, "every job terminal", first)
        receiver.wait_for(len(jobs), timeout=60)
        first.stop(signal.SIGTERM)
        second.stop(signal.SIGTERM)
    finally:
        first.kill()
        second.kill()
    assert set(histories(pg_url).values()) == {"pending>queued,queued>running,running>succeeded"}
    # Each job was asked exactly as often as its lifecycle needs: no double polling.
    assert {job: sim.calls(job) for job in jobs} == dict.fromkeys(jobs, 4)
    assert len(query(pg_url, "SELECT id FROM webhook_deliveries")) == len(jobs)
    assert not receiver.duplicates


def test_a_tracker_killed_mid_delivery_delivers_after_restart_with_the_same_id(
    sim: Simulator, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    from worker.devtools.receiver import Reply

    env = tracker_env(sim, {"JOBTRACKER_DATABASE_URL": pg_url, "JOBTRACKER_BROKER_URL": redis_url})
    with Receiver(secrets=[SECRET]) as rx:
        rx.script([Reply(status=200, delay_s=5)])  # the first POST hangs...
        tracker = Tracker(env, tmp_path).start()
        try:
            enqueue(env, tmp_path, ["succeed-1-middeliver"], callback_url=rx.url)
            rx.wait_for_requests(1, timeout=30)
            tracker.stop(signal.SIGKILL)  # ...and the tracker dies while it waits
            tracker = Tracker(env, tmp_path, name="tracker2").start()
            wait_until(
                lambda: query(pg_url, "SELECT status FROM webhook_deliveries")
                == [("delivered",)],
                90, "the delivery to complete after the restart", tracker,
            )  # fmt: skip
            tracker.stop(signal.SIGTERM)
        finally:
            tracker.kill()
        ids = {m.msg_id for m in rx.received}
    [(delivery_id,)] = query(pg_url, "SELECT id FROM webhook_deliveries")
    assert ids == {delivery_id}
    assert len(rx.received) >= 2  # the interrupted POST, then the retry with the same webhook-id


def test_sigterm_mid_batch_writes_the_polls_already_answered(tmp_path: Path) -> None:
    """A batch of slow answers outlasts the shutdown's time limit: on SIGTERM it stops asking,
    the request under way is cut, and the answers it already had are written (before, the whole
    batch was thrown away when the time limit ended the process)."""
    with Simulator(slow_s=1.0) as sim:
        env = tracker_env(
            sim,
            {},
            JOBTRACKER_LEASE_SECONDS="60",
            JOBTRACKER_READ_TIMEOUT="3",
            JOBTRACKER_JOB_DEADLINE="600",
            JOBTRACKER_TICK_SECONDS="1",
            JOBTRACKER_POLL_INTERVAL_MIN="60",  # one poll each: one batch of 12 (20 QPS x 1 s)
            JOBTRACKER_POLL_INTERVAL_MAX="60",
        )
        url = db_url_of(env, tmp_path)
        settings = Settings.from_env(env, cwd=tmp_path)
        ensure_schema(settings)  # the embedded SQLite file, as `jobtracker run` would
        for n in range(12):
            track("image_animate", f"slow-term{n}", settings=settings)
        dispose_engines()
        tracker = Tracker(env, tmp_path).start()
        try:
            wait_until(lambda: sum(sim.lifecycles.polls().values()) >= 3, 30, "3 answers", tracker)
            elapsed = tracker.stop(signal.SIGTERM)
        finally:
            tracker.kill()
        answered = sum(sim.lifecycles.polls().values())
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    [(recorded,)] = query(url, "SELECT coalesce(sum(polls), 0) FROM tracked_jobs")
    running = query(url, "SELECT count(*) FROM tracked_jobs WHERE status = 'running'")[0][0]
    # Every answer that came back is recorded; only the one cut mid-answer may be missing.
    assert answered - 1 <= recorded <= answered, (answered, recorded)
    assert running == recorded >= 2
    # The rest are released for the next worker, none left leased.
    assert query(url, "SELECT count(*) FROM tracked_jobs WHERE lease_expires_at IS NOT NULL") == [
        (0,)
    ]
