"""The polling engine against the fake Tencent API over HTTP, on SQLite and PostgreSQL.

These drive the engine's two halves directly (claim, then poll a batch) so every step is
observable; tests/acceptance runs the same flow through ``jobtracker run``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from jobtracker.models import JobTransition, ProviderState, TrackedJob, utcnow
from tests.drive import drive, step
from worker.db import session_scope
from worker.devtools.simulator import Simulator
from worker.flow.enqueue import track
from worker.flow.outcome import BatchReport, Outcome, decide, write_outcomes
from worker.flow.poll import load_claimed, poll_batch
from worker.flow.tick import claim_all
from worker.policy import PollPolicy
from worker.providers.client import clear_clients, get_client
from worker.providers.ratelimit import get_rate_limiter
from worker.providers.state import PARK_AFTER_THROTTLES
from worker.runtime.runner import describe
from worker.settings import Settings, redact_url


def engine_settings(db_url: str, sim: Simulator, tmp_path: Path, **env: str) -> Settings:
    base = {
        "JOBTRACKER_DATABASE_URL": db_url,
        "JOBTRACKER_POLL_INTERVAL_MIN": "0.05",
        "JOBTRACKER_POLL_INTERVAL_MAX": "0.1",
        "JOBTRACKER_READ_TIMEOUT": "1",
        "JOBTRACKER_NOT_FOUND_GRACE": "0",
        "JOBTRACKER_VIDEO_FACE_FUSION_QPS": "1000",
        "JOBTRACKER_IMAGE_ANIMATE_QPS": "1000",
        **sim.env(),
        **env,
    }
    return Settings.from_env(base, cwd=tmp_path)


def jobs_by_id(settings: Settings) -> dict[str, TrackedJob]:
    with session_scope(settings) as session:
        return {j.job_id: j for j in session.execute(select(TrackedJob)).scalars()}


def history(settings: Settings, job: TrackedJob) -> list[tuple[str, str]]:
    with session_scope(settings) as session:
        rows = session.execute(
            select(JobTransition)
            .where(JobTransition.tracked_job_id == job.id)
            .order_by(JobTransition.id)
        ).scalars()
        return [(t.from_status, t.to_status) for t in rows]


LIFECYCLES = {
    # job_id: (expected status, expected history, expected error code)
    "succeed-3-a": ("succeeded", ["pending>queued", "queued>running", "running>succeeded"], None),
    "fail-2-a": ("failed", ["pending>queued", "queued>failed"], "present"),
    "cancel-2-a": ("canceled", ["pending>queued", "queued>canceled"], "present"),
    "notfound-a": ("failed", ["pending>failed"], "present"),
    "internal-2-a": ("succeeded", ["pending>succeeded"], None),
    "html502-1-a": ("succeeded", ["pending>succeeded"], None),
    "junk-1-a": ("succeeded", ["pending>succeeded"], None),
    "drop-1-a": ("succeeded", ["pending>succeeded"], None),
    "noresponse-1-a": ("succeeded", ["pending>succeeded"], None),
    "badstatus-1-a": ("succeeded", ["pending>succeeded"], None),
    "charset.fail-1-a": ("failed", ["pending>failed"], "present"),
}


@pytest.mark.parametrize("kind", ["video_face_fusion", "image_animate"])
def test_every_lifecycle_reaches_its_terminal_state(
    db_url: str, sim: Simulator, tmp_path: Path, kind: str
) -> None:
    settings = engine_settings(db_url, sim, tmp_path)
    for job_id in LIFECYCLES:
        track(kind, job_id, settings=settings)
    drive(settings)
    jobs = jobs_by_id(settings)
    for job_id, (status, expected_history, error) in LIFECYCLES.items():
        job = jobs[job_id]
        assert job.status == status, (job_id, job.status, job.last_error_code)
        assert [f"{a}>{b}" for a, b in history(settings, job)] == expected_history, job_id
        assert job.finished_at is not None
        assert (job.error_code is not None) == (error is not None), (job_id, job.error_code)
        if status == "succeeded":
            assert job.result, job_id
            assert job.provider_status is not None
    ok = jobs["succeed-3-a"]
    assert ok.polls == 3
    if kind == "image_animate":
        assert ok.result and ok.result["ResultVideoUrl"].startswith("http")
        assert ok.result_expires_at is not None
        assert timedelta(hours=23) < ok.result_expires_at - ok.finished_at <= timedelta(hours=24)
    else:
        assert ok.result and set(ok.result) >= {"VideoUrl", "VideoMD5", "Width", "Height", "FPS"}
    # A transient error is recorded while it lasts; a good answer clears it.
    assert jobs["internal-2-a"].polls == 3
    assert jobs["internal-2-a"].consecutive_errors == 0


def test_a_stale_answer_never_moves_a_job_backwards(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = engine_settings(db_url, sim, tmp_path)
    sim.script("zigzag", ["running", "queued", "running", "queued", "done"])
    track("image_animate", "zigzag", settings=settings)
    drive(settings)
    job = jobs_by_id(settings)["zigzag"]
    assert job.status == "succeeded"
    assert history(settings, job) == [("pending", "running"), ("running", "succeeded")]
    assert sim.calls("zigzag") == 5


def test_terminal_rows_are_never_claimed_or_changed(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = engine_settings(db_url, sim, tmp_path)
    track("image_animate", "fail-1-t", settings=settings)
    drive(settings)
    job = jobs_by_id(settings)["fail-1-t"]
    assert job.status == "failed"
    # Even a forged claim with the old lease cannot touch it.
    report = poll_batch("image_animate", job.region, [(job.id, utcnow())], settings)
    assert report.skipped == 1 and report.polled == 0
    with session_scope(settings) as session:
        session.execute(update(TrackedJob).values(next_poll_at=utcnow() - timedelta(days=1)))
    assert step(settings) == 0
    assert sim.calls("fail-1-t") == 1


def test_not_found_is_transient_within_the_grace_period(
    db_url: str, sim: Simulator, tmp_path: Path, advance_clock: Callable[[float], None]
) -> None:
    settings = engine_settings(db_url, sim, tmp_path, JOBTRACKER_NOT_FOUND_GRACE="3600")
    track("video_face_fusion", "notfound-nf", settings=settings)
    for _ in range(3):
        step(settings)
        advance_clock(1)  # past the next poll (0.1 s at most), well within the grace period
    job = jobs_by_id(settings)["notfound-nf"]
    assert job.status == "pending"
    assert job.last_error_code == "FailedOperation.JobNotExist"  # this API's word for it
    assert (job.polls, job.consecutive_errors) == (3, 3)


def test_deadline_expires_a_job_that_never_finishes(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = engine_settings(db_url, sim, tmp_path, JOBTRACKER_JOB_DEADLINE="1")
    sim.script("forever", ["running"])
    track("image_animate", "forever", settings=settings)
    drive(settings, seconds=5)
    job = jobs_by_id(settings)["forever"]
    assert job.status == "expired"
    assert job.error_code == "Tracker.DeadlineExceeded"
    assert history(settings, job)[-1] == ("running", "expired")
    assert job.finished_at is not None
    assert job.finished_at - job.created_at < timedelta(seconds=3)


def test_a_wrong_secret_pauses_the_provider_and_a_probe_resumes_it(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    bad = engine_settings(db_url, sim, tmp_path, TENCENTCLOUD_SECRET_KEY="wrong-key")
    for n in range(5):
        track("video_face_fusion", f"succeed-1-auth{n}", settings=bad)
    track("image_animate", "succeed-1-other", settings=bad)
    left = {"kind": "video_face_fusion", "reason": "provider_paused"}
    left_before = REGISTRY.get_sample_value("jobtracker_polls_left_total", left) or 0.0
    step(bad)
    # The rest of the batch is left unasked, and counted as such.
    assert REGISTRY.get_sample_value("jobtracker_polls_left_total", left) == left_before + 4
    jobs = jobs_by_id(bad)
    paused = [jobs[f"succeed-1-auth{n}"] for n in range(5)]
    assert all(j.status == "pending" for j in paused), "a configuration error is never terminal"
    assert sum(j.polls for j in paused) == 1, "the batch stops at the first auth failure"
    assert {j.last_error_code for j in paused if j.polls} == {"AuthFailure.SignatureFailure"}
    with session_scope(bad) as session:
        state = session.get(ProviderState, "video_face_fusion")
        assert state is not None and state.paused
        assert state.paused_reason and "AuthFailure" in state.paused_reason
    assert jobs["succeed-1-other"].status == "pending"  # image_animate shares the wrong key too
    # While paused, ticks send nothing (no poll storm).
    calls = sim.counters().total
    for _ in range(3):
        step(bad)
    assert sim.counters().total == calls

    # The operator fixes the key; the next probe succeeds and the provider resumes.
    clear_clients()
    good = engine_settings(db_url, sim, tmp_path)
    with session_scope(good) as session:
        session.execute(update(ProviderState).values(next_probe_at=utcnow() - timedelta(seconds=1)))
        session.execute(update(TrackedJob).values(next_poll_at=utcnow() - timedelta(seconds=1)))
    drive(good)
    with session_scope(good) as session:
        assert not any(s.paused for s in session.execute(select(ProviderState)).scalars())
    assert {j.status for j in jobs_by_id(good).values()} == {"succeeded"}


def test_one_refusal_costs_a_little_rate_not_the_provider(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """RequestLimitExceeded among answers: the batch goes on (the other jobs are asked), the
    shared pace is cut a little, nothing rests, and the refused job is asked again soon."""
    settings = engine_settings(db_url, sim, tmp_path)
    sim.script("throttled", ["throttle", "done"])
    track("image_animate", "throttled", settings=settings)
    for n in range(3):
        track("image_animate", f"succeed-1-t{n}", settings=settings)
    step(settings)
    assert sim.counters().total == 4
    with session_scope(settings) as session:
        state = session.get(ProviderState, "image_animate")
        assert state is not None and state.throttled_until is None
    rate = get_rate_limiter(settings).rate("image_animate", 1000.0)
    assert 900.0 <= rate < 1000.0
    jobs = jobs_by_id(settings)
    assert jobs["throttled"].status == "pending"
    assert jobs["throttled"].next_poll_at <= utcnow() + timedelta(seconds=2)
    drive(settings)
    assert {j.status for j in jobs_by_id(settings).values()} == {"succeeded"}


def test_a_provider_refusing_every_call_rests(db_url: str, sim: Simulator, tmp_path: Path) -> None:
    settings = engine_settings(db_url, sim, tmp_path)
    for n in range(PARK_AFTER_THROTTLES + 3):
        track("image_animate", f"throttle-20-r{n}", settings=settings)
    step(settings)
    with session_scope(settings) as session:
        state = session.get(ProviderState, "image_animate")
        assert state is not None and state.consecutive_throttles == PARK_AFTER_THROTTLES
        assert state.throttled_until is not None and state.throttled_until > utcnow()
    # Once it rests, nothing more is asked of it until the back-off ends.
    assert sim.counters().total == PARK_AFTER_THROTTLES
    step(settings)
    assert sim.counters().total == PARK_AFTER_THROTTLES


def test_two_ticks_at_once_claim_disjoint_rows(db_url: str, sim: Simulator, tmp_path: Path) -> None:
    settings = engine_settings(db_url, sim, tmp_path)
    for n in range(200):
        track("image_animate", f"succeed-1-c{n}", settings=settings)
    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def claimer() -> None:
        barrier.wait()
        got = claim_all(settings)
        results.append([c.id for c in got.get("image_animate", [])])

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for r in results for i in r]
    assert len(claimed) == len(set(claimed)) == 200


def test_an_expired_lease_is_claimed_again_and_the_stale_batch_is_ignored(
    db_url: str, sim: Simulator, tmp_path: Path, advance_clock: Callable[[float], None]
) -> None:
    settings = engine_settings(
        db_url,
        sim,
        tmp_path,
        # Long enough that the new holder's poll fits in it on a busy machine (a request and
        # the write need 1.7 s of it); the clock is moved past it, not waited for.
        JOBTRACKER_LEASE_SECONDS="10",
        JOBTRACKER_CONNECT_TIMEOUT="0.2",
        JOBTRACKER_READ_TIMEOUT="0.5",
        JOBTRACKER_TICK_SECONDS="0.2",
    )
    track("image_animate", "succeed-2-lease", settings=settings)
    first = claim_all(settings)["image_animate"]  # a worker claims, then dies
    assert claim_all(settings) == {}  # leased: nobody else may take it
    # The lease runs from the end of the tick's window (a job claimed ahead of its instant
    # holds a whole lease when its poll starts).
    assert (first[0].lease - first[0].due).total_seconds() >= 10.0
    advance_clock(10.3)  # the lease runs out
    second = claim_all(settings)["image_animate"]
    assert [c.id for c in second] == [c.id for c in first]
    # The dead worker's batch arrives late: it no longer owns the row.
    stale = poll_batch("image_animate", "ap-guangzhou", [(first[0].id, first[0].lease)], settings)
    assert (stale.skipped, stale.polled) == (1, 0)
    fresh = poll_batch("image_animate", "ap-guangzhou", [(second[0].id, second[0].lease)], settings)
    assert fresh.polled == 1
    assert sim.calls("succeed-2-lease") == 1


def test_a_claim_takes_at_most_its_limit_on_a_fresh_table(db_url: str, tmp_path: Path) -> None:
    """No ANALYZE yet: PostgreSQL's planner must not turn LIMIT 1 into 'every due row'."""
    from sqlalchemy import text

    from tests.acceptance.proc import query

    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    with session_scope(settings) as session:
        session.execute(
            text(
                "INSERT INTO tracked_jobs (kind, job_id) VALUES "
                + ", ".join(f"('image_animate', 'j{n}')" for n in range(50))
            )
        )
    from worker.flow.tick import claim_due

    with session_scope(settings) as session:
        claimed = claim_due(
            session, "image_animate", 1, now=utcnow() + timedelta(seconds=1), lease_s=60
        )
    assert len(claimed) == 1
    assert query(
        db_url, "SELECT count(*) FROM tracked_jobs WHERE lease_expires_at IS NOT NULL"
    ) == [(1,)]


def test_the_claim_query_reads_the_due_index(db_url: str, tmp_path: Path) -> None:
    from sqlalchemy import select, text

    from jobtracker.models.jobs import ACTIVE_PREDICATE
    from worker.db import get_engine

    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    engine = get_engine(settings)
    stmt = (
        select(TrackedJob.id)
        .where(ACTIVE_PREDICATE, TrackedJob.next_poll_at <= utcnow(), TrackedJob.kind == "k")
        .order_by(TrackedJob.next_poll_at)
        .limit(100)
    )
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            plan = " ".join(str(r[0]) for r in conn.execute(text("EXPLAIN " + sql)))
        else:
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert "ix_tracked_jobs_due" in plan, plan


def test_run_describes_a_paused_setup(sqlite_url: str, tmp_path: Path) -> None:
    """Without credentials every provider is paused: `jobtracker run` says so, and what to set."""
    settings = Settings.from_env(
        {"JOBTRACKER_DATABASE_URL": sqlite_url, "JOBTRACKER_METRICS_PORT": "9464"}, cwd=tmp_path
    )
    lines = describe(settings, beat=True, concurrency=8, port=9464)
    text = "\n".join(lines)
    assert lines[0] == "jobtracker starting: worker (8 threads) and beat (a tick every 5 s)"
    assert "paused until TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY are set" in text
    assert "not sent until JOBTRACKER_WEBHOOK_SECRET is set" in text
    assert "metrics    http://0.0.0.0:9464/metrics" in text
    pg = Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": "postgresql://jt:s3cret@db/jt",
            "JOBTRACKER_BROKER_URL": "redis://:hunter2@redis:6379/0",
        },
        cwd=tmp_path,
    )
    assert "s3cret" not in redact_url(pg.database_url) and "hunter2" not in redact_url(
        pg.broker_url
    )


def test_a_stale_batch_loses_its_status_move_to_the_new_holder(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """A batch whose lease ran out (and was claimed again) before it wrote: its terminal answer
    must not land under the new holder's lease; the status move checks the lease too."""
    settings = engine_settings(db_url, sim, tmp_path)
    track("image_animate", "succeed-1-stale", settings=settings)
    [first] = claim_all(settings)["image_animate"]
    with session_scope(settings) as session:
        [(job, lease, _)] = load_claimed(session, [(first.id, first.lease)])
    stale = Outcome(job=job, lease=lease, polled=True)
    stale.answer = get_client("image_animate", "ap-guangzhou", settings).query(job.job_id)
    decide(stale, settings, PollPolicy.from_settings(settings), utcnow())
    assert stale.to_status is not None and stale.to_status.value == "succeeded"
    # Meanwhile the lease runs out and another worker claims the job.
    with session_scope(settings) as session:
        session.execute(
            update(TrackedJob).values(
                next_poll_at=utcnow() - timedelta(seconds=1),
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    [second] = claim_all(settings)["image_animate"]
    report = BatchReport()
    with session_scope(settings) as session:
        write_outcomes(session, [stale], utcnow(), report)
    assert report.transitions == 0
    now = jobs_by_id(settings)["succeed-1-stale"]
    assert (now.status, now.lease_expires_at) == ("pending", second.lease)


def test_a_dribbling_provider_never_sees_one_job_polled_twice_at_once(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """Every answer dribbles (each byte within the read timeout, the whole ~2.5 s late) while
    two workers poll the same jobs under a 2.5 s lease: each request ends at its deadline, a
    batch stops asking before its lease runs out, so no job is ever asked twice at once."""
    settings = engine_settings(
        db_url,
        sim,
        tmp_path,
        JOBTRACKER_LEASE_SECONDS="2.5",
        JOBTRACKER_CONNECT_TIMEOUT="0.2",
        JOBTRACKER_READ_TIMEOUT="1",
        JOBTRACKER_TICK_SECONDS="0.2",
    )
    sim.dribble_s = 0.01
    for n in range(6):
        track("image_animate", f"dribble-d{n}", settings=settings)
    stop = time.monotonic() + 7
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while time.monotonic() < stop:
                step(settings)
                time.sleep(0.05)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    counters = sim.counters()
    assert sum(counters.polls.values()) >= 6  # every job was asked, some several times
    assert counters.overlaps == 0


@pytest.mark.serial  # a bound on wall time
def test_refusals_among_answers_cost_rate_not_the_provider(db_url: str, tmp_path: Path) -> None:
    """Another service spends 5 of the account's 20 calls/s: some calls are refused while most
    pass. Every job finishes at about the 15 calls/s left, and the provider never rests (before,
    a batch with any refusal never reset the run of refusals, each step of which parked the
    whole provider longer: 1, 2, 4 ... 60 s; a soak finished none of its jobs)."""
    with Simulator(qps=20, limiter="window", other_qps=5) as sim:
        settings = engine_settings(
            db_url,
            sim,
            tmp_path,
            JOBTRACKER_IMAGE_ANIMATE_QPS="20",
            JOBTRACKER_TICK_SECONDS="1",
        )
        for n in range(90):
            track("image_animate", f"succeed-1-p{n}", settings=settings)
        started = time.monotonic()
        worst = 0
        while time.monotonic() - started < 25:
            step(settings)
            with session_scope(settings) as session:
                state = session.get(ProviderState, "image_animate")
                worst = max(worst, state.consecutive_throttles if state else 0)
            if {j.status for j in jobs_by_id(settings).values()} == {"succeeded"}:
                break
        elapsed = time.monotonic() - started
        refused = sim.counters().throttled
    assert {j.status for j in jobs_by_id(settings).values()} == {"succeeded"}
    assert elapsed < 12, elapsed  # about 6 s at 15 calls/s
    assert refused > 0, "the other service's share was never felt: the test proves nothing"
    assert worst < PARK_AFTER_THROTTLES, worst
