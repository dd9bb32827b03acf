"""Prometheus metrics: the database gauges on both backends, the event counters moved by real polls
and deliveries, and the endpoint of a real ``jobtracker run`` scraped over HTTP."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobtracker.models import utcnow
from tests.acceptance.proc import Tracker, enqueue, query, wait_until
from tests.drive import drive
from worker.db import session_scope
from worker.devtools.receiver import Receiver
from worker.devtools.simulator import Simulator
from worker.flow import deliver
from worker.flow.enqueue import track
from worker.inspection.gauges import DatabaseCollector
from worker.providers import state as provider_state
from worker.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Exposition text -> {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def settings_for(url: str, sim: Simulator, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": url,
            "JOBTRACKER_POLL_INTERVAL_MIN": "0.05",
            "JOBTRACKER_POLL_INTERVAL_MAX": "0.1",
            "JOBTRACKER_NOT_FOUND_GRACE": "0",
            "JOBTRACKER_WEBHOOK_SECRET": SECRET,
            **sim.env(),
        },
        cwd=tmp_path,
    )


def scrape_collector(settings: Settings) -> Samples:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(settings))
    return parse(generate_latest(registry).decode())


def test_database_gauges_show_jobs_providers_and_pending_callbacks(
    db_url: str, sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        deliver, "deliver_soon", lambda ids, _settings, **_: None
    )  # leave them pending
    settings = settings_for(db_url, sim, tmp_path)
    before = scrape_collector(settings)
    assert value(before, "jobtracker_database_up") == 1
    # Every kind and status is there from the start (a series that appears late breaks rate()).
    assert value(before, "jobtracker_jobs", kind="image_animate", status="expired") == 0
    assert value(before, "jobtracker_provider_paused", kind="video_face_fusion") == 0

    for job_id in ("succeed-1-m", "fail-1-m", "internal-m"):
        track("video_face_fusion", job_id, callback_url="http://127.0.0.1:9/cb", settings=settings)
    track("image_animate", "succeed-1-m", settings=settings)
    drive(settings, seconds=0.8)
    with session_scope(settings) as session:
        provider_state.pause(session, "image_animate", "AuthFailure.SignatureFailure: x", utcnow())

    after = scrape_collector(settings)
    jobs = {
        status: value(after, "jobtracker_jobs", kind="video_face_fusion", status=status)
        for status in ("pending", "succeeded", "failed", "running")
    }
    assert jobs == {"pending": 1, "succeeded": 1, "failed": 1, "running": 0}
    assert value(after, "jobtracker_jobs", kind="image_animate", status="succeeded") == 1
    oldest = value(
        after,
        "jobtracker_oldest_active_job_age_seconds",
        kind="video_face_fusion",
        status="pending",
    )
    assert oldest is not None and 0 <= oldest < 60
    assert value(after, "jobtracker_provider_paused", kind="image_animate") == 1
    assert value(after, "jobtracker_provider_paused", kind="video_face_fusion") == 0
    assert value(after, "jobtracker_deliveries_pending") == 2


def test_an_unreadable_database_is_a_gauge_not_a_failed_scrape(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"JOBTRACKER_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, cwd=tmp_path
    )
    samples = scrape_collector(settings)
    assert value(samples, "jobtracker_database_up") == 0
    assert value(samples, "jobtracker_jobs", kind="image_animate", status="pending") is None


def test_polls_errors_and_deliveries_are_counted(
    sqlite_url: str, sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(deliver, "deliver_soon", lambda ids, _settings, **_: sent.extend(ids))
    settings = settings_for(sqlite_url, sim, tmp_path)

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    kind = "image_animate"
    ok = sample("jobtracker_polls_total", kind=kind, outcome="ok")
    throttled = sample("jobtracker_polls_total", kind=kind, outcome="throttled")
    terminal = sample("jobtracker_polls_total", kind=kind, outcome="job_terminal")
    limit_errors = sample("jobtracker_api_errors_total", kind=kind, code="RequestLimitExceeded")
    latency = sample("jobtracker_poll_duration_seconds_count", kind=kind)
    delivered = sample("jobtracker_deliveries_total", outcome="delivered")
    retried = sample("jobtracker_deliveries_total", outcome="retry")
    delivery_latency = sample("jobtracker_delivery_duration_seconds_count")
    not_found = sample("jobtracker_api_errors_total", kind=kind, code="FailedOperation.JobNotFound")

    with Receiver(secrets=[SECRET]) as receiver:
        receiver.script([503])
        for job_id in ("succeed-2-c", "throttle-1-c", "notfound-c"):
            track(kind, job_id, callback_url=receiver.url, settings=settings)
        drive(settings, seconds=10)
        ids = list(sent)
        assert len(ids) == 3
        outcomes = [deliver.deliver_one(i, settings) for i in ids]
    assert sorted(o or "" for o in outcomes) == ["delivered", "delivered", "pending"]

    # The registry is this process's, shared with every test before: only differences count.
    # succeed-2: 2 answers; throttle-1: a throttle, then an answer; notfound: terminal.
    assert sample("jobtracker_polls_total", kind=kind, outcome="ok") - ok == 3
    assert sample("jobtracker_polls_total", kind=kind, outcome="throttled") - throttled == 1
    assert sample("jobtracker_polls_total", kind=kind, outcome="job_terminal") - terminal == 1
    assert (
        sample("jobtracker_api_errors_total", kind=kind, code="RequestLimitExceeded") - limit_errors
        == 1
    )
    assert (
        sample("jobtracker_api_errors_total", kind=kind, code="FailedOperation.JobNotFound")
        - not_found
        == 1
    )
    # Every call is timed: 2 + 2 + 1.
    assert sample("jobtracker_poll_duration_seconds_count", kind=kind) - latency == 5
    assert sample("jobtracker_deliveries_total", outcome="delivered") - delivered == 2
    assert sample("jobtracker_deliveries_total", outcome="retry") - retried == 1
    assert sample("jobtracker_delivery_duration_seconds_count") - delivery_latency == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(secrets=[SECRET]) as rx:
        yield rx


@pytest.mark.slow
def test_jobtracker_run_serves_metrics_over_http(
    sim: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **sim.env(),
        "JOBTRACKER_METRICS_PORT": str(port),
        "JOBTRACKER_TICK_SECONDS": "0.5",
        "JOBTRACKER_POLL_INTERVAL_MIN": "0.2",
        "JOBTRACKER_POLL_INTERVAL_MAX": "0.5",
        "JOBTRACKER_NOT_FOUND_GRACE": "0",
        "JOBTRACKER_WEBHOOK_SECRET": SECRET,
        "JOBTRACKER_LOG_FORMAT": "json",
    }
    url = f"sqlite:///{tmp_path / 'jobtracker.db'}"
    tracker = Tracker(env, tmp_path).start()
    try:

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                return str(answer.read().decode())

        def serving() -> bool:
            try:
                scrape()
            except OSError:
                return False
            return True

        wait_until(serving, 30, "the metrics endpoint", tracker)
        jobs = ["succeed-2-h", "fail-1-h", "throttle-1-h"]
        enqueue(env, tmp_path, jobs, callback_url=receiver.url, kind="video_face_fusion")

        def finished() -> bool:
            rows = query(url, "SELECT count(*) FROM tracked_jobs WHERE finished_at IS NOT NULL")
            return rows[0][0] == 3

        wait_until(finished, 60, "every job terminal", tracker)
        receiver.wait_for(3, timeout=30)

        def counted() -> bool:  # the last delivery's counter moves after the receiver answered
            delivered = value(parse(scrape()), "jobtracker_deliveries_total", outcome="delivered")
            return delivered == 3

        wait_until(counted, 10, "the third delivery counted", tracker)
        text = scrape()
        samples = parse(text)
    finally:
        tracker.stop()
        tracker.kill()

    families = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "jobtracker_jobs",
        "jobtracker_oldest_active_job_age_seconds",
        "jobtracker_provider_paused",
        "jobtracker_provider_throttled",
        "jobtracker_deliveries_pending",
        "jobtracker_database_up",
        "jobtracker_polls",
        "jobtracker_poll_duration_seconds",
        "jobtracker_api_errors",
        "jobtracker_deliveries",
        "jobtracker_delivery_duration_seconds",
        "jobtracker_tick_duration_seconds",
    } <= families
    kind = "video_face_fusion"
    assert value(samples, "jobtracker_jobs", kind=kind, status="succeeded") == 2
    assert value(samples, "jobtracker_jobs", kind=kind, status="failed") == 1
    assert value(samples, "jobtracker_jobs", kind=kind, status="pending") == 0
    assert value(samples, "jobtracker_database_up") == 1
    assert value(samples, "jobtracker_provider_paused", kind=kind) == 0
    # A fresh process: its counters started at zero. succeed-2: 2 answers, fail-1: 1,
    # throttle-1: a refusal, then 1.
    assert value(samples, "jobtracker_polls_total", kind=kind, outcome="ok") == 4
    assert value(samples, "jobtracker_polls_total", kind=kind, outcome="throttled") == 1
    assert (
        value(samples, "jobtracker_api_errors_total", kind=kind, code="RequestLimitExceeded") == 1
    )
    assert value(samples, "jobtracker_deliveries_total", outcome="delivered") == 3
    assert value(samples, "jobtracker_delivery_duration_seconds_count") == 3
    assert (value(samples, "jobtracker_tick_duration_seconds_count") or 0) >= 3
    assert value(samples, "jobtracker_poll_duration_seconds_count", kind=kind) == 5
    assert value(samples, "jobtracker_deliveries_pending") == 0

    # The same run's log (JOBTRACKER_LOG_FORMAT=json): JSON lines only, Celery's included, with
    # job context on each event, and no secret or signature anywhere.
    output = tracker.output()
    entries = [json.loads(line) for line in output.splitlines() if line.strip()]
    by_message: dict[str, list[dict[str, object]]] = {}
    for entry in entries:
        by_message.setdefault(str(entry["message"]), []).append(entry)
    assert any(e["logger"].startswith("celery") for e in entries)
    moves = [e for e in entries if str(e["message"]).startswith("job pending -> ")]
    assert {e["job_id"] for e in moves} == {"succeed-2-h", "fail-1-h", "throttle-1-h"}
    assert all(e["kind"] == kind and e["tracked_job_id"] and e["status"] for e in moves)
    assert all(e["kind"] == kind for e in by_message["claimed due jobs"])
    assert by_message["provider throttled"][0]["kind"] == kind
    assert {e["code"] for e in entries if str(e["message"]).startswith("poll failed")} == {
        "RequestLimitExceeded"
    }
    assert len(by_message["callback delivered"]) == 3
    assert all(e["delivery_id"] and e["tracked_job_id"] for e in by_message["callback delivered"])
    signatures = [
        part.partition(",")[2]
        for message in receiver.received
        for part in message.headers["webhook-signature"].split()
    ]
    secrets = [SECRET, SECRET.removeprefix("whsec_"), sim.env()["TENCENTCLOUD_SECRET_KEY"]]
    for secret in [*secrets, *signatures]:
        assert secret not in output
