"""One dark receiver must not delay the others: the real delivery threads, real HTTP, both
backends. A receiver that accepts connections and never answers holds one thread per attempt
for the whole deadline; the threads are shared per destination, so a healthy receiver's
callback goes at once. Circuit breakers: counted over real timeouts, shared through the
database; a send skipped by an open breaker is not an attempt."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import func, insert, select, update

from jobtracker.models import DeliveryBreaker, WebhookAttempt, WebhookDelivery, utcnow
from tests.drive import drive
from tests.integration.test_metrics import parse, value
from worker.cli import main
from worker.db import session_scope
from worker.devtools.blackhole import Blackhole
from worker.devtools.receiver import Receiver
from worker.devtools.simulator import Simulator
from worker.flow import breakers, deliver
from worker.flow.enqueue import track
from worker.inspection.gauges import DatabaseCollector
from worker.observe import metrics
from worker.policy import DeliveryPolicy
from worker.settings import Settings, reset_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def make(db_url: str, sim: Simulator, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_POLL_INTERVAL_MIN": "0.05",
            "JOBTRACKER_POLL_INTERVAL_MAX": "0.1",
            "JOBTRACKER_WEBHOOK_SECRET": SECRET,
            "JOBTRACKER_NOT_FOUND_GRACE": "0",
            **sim.env(),
        },
        cwd=tmp_path,
    )


@pytest.fixture
def dark() -> Iterator[Blackhole]:
    with Blackhole() as hole:
        yield hole


def settle(settings: Settings, dark: Blackhole) -> None:
    """End what the dark receiver holds (its attempts fail at once) and let the threads drain,
    so nothing writes to the database after the test drops it."""
    dark.stop()
    assert deliver.dispatcher(settings).wait_idle(60)


def test_eight_dark_callbacks_do_not_delay_a_healthy_receivers_callback(
    db_url: str, sim: Simulator, tmp_path: Path, dark: Blackhole
) -> None:
    """The issue's reproduction: 8 callbacks to a receiver that never answers delayed a healthy
    receiver's callback by 30 s (4 threads, one queue: two waves of 15 s deadlines)."""
    settings = make(db_url, sim, tmp_path)
    try:
        with Receiver(secrets=[SECRET]) as healthy:
            for n in range(8):
                track("image_animate", f"succeed-1-dark-{n}", callback_url=dark.url,
                      settings=settings)  # fmt: skip
            drive(settings)  # the 8 terminal commits hand their callbacks to the threads
            deadline = time.monotonic() + 10
            while dark.accepted < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert dark.accepted >= 1  # the dark receiver holds a thread now
            job = track("image_animate", "succeed-1-healthy", callback_url=healthy.url,
                        settings=settings)  # fmt: skip
            committed = time.monotonic()
            drive(settings, jobs=[job["id"]])
            [message] = healthy.wait_for(1, timeout=20)
        delay_s = message.received_monotonic - committed
        assert delay_s < 3.0, f"the healthy callback waited {delay_s:.1f} s"
        # A destination that has not answered yet gets one attempt at a time.
        assert dark.accepted == 1
    finally:
        settle(settings, dark)


def test_the_breaker_opens_after_five_timeouts_in_a_row_and_an_answer_closes_it(
    db_url: str,
    sim: Simulator,
    tmp_path: Path,
    dark: Blackhole,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real timeouts against a dark port (with short deadlines), counted in the database."""
    settings = make(db_url, sim, tmp_path)
    short = DeliveryPolicy(retry_schedule_s=(0.0,) * 8, connect_timeout_s=0.2, total_timeout_s=0.3)
    track("image_animate", "succeed-1-breaker", callback_url=dark.url, settings=settings)
    sent: list[str] = []
    real = deliver.deliver_soon
    deliver.deliver_soon = lambda ids, *a, **k: sent.extend(ids)  # type: ignore[assignment]
    try:
        drive(settings)
    finally:
        deliver.deliver_soon = real  # type: ignore[assignment]
    [delivery_id] = sent
    where = breakers.key(("127.0.0.1", dark.port))
    opened_before = metrics.BREAKERS_OPENED._value.get()
    caplog.set_level(logging.WARNING)

    def row() -> DeliveryBreaker | None:
        with session_scope(settings) as session:
            return session.get(DeliveryBreaker, where)

    for n in range(1, 5):
        assert deliver.deliver_one(delivery_id, settings, policy=short) == "pending"
        counted = row()
        assert counted is not None and counted.timeouts == n and counted.opened_at is None
    assert deliver.deliver_one(delivery_id, settings, policy=short) == "pending"
    opened = row()
    assert opened is not None and opened.timeouts == 5 and opened.opened_at is not None
    assert opened.probe_at == opened.opened_at + timedelta(seconds=short.breaker_probe_s)
    assert metrics.BREAKERS_OPENED._value.get() == opened_before + 1
    assert f"callbacks to {where} paused: 5 timeouts in a row" in caplog.text

    # One probe per interval: the first asker gets it, the next is told to wait.
    later = opened.probe_at + timedelta(seconds=1)
    with session_scope(settings) as session:
        first = breakers.gate(session, "x", where, now=later, policy=short)
        second = breakers.gate(session, "x", where, now=later, policy=short)
    assert first.probe and not first.open
    assert second.open and second.retry_at == later + timedelta(seconds=short.breaker_probe_s)

    # It answers again (here: the port refuses at once): the row goes, the breaker is closed.
    dark.stop()
    assert deliver.deliver_one(delivery_id, settings, policy=short) == "pending"
    assert row() is None
    with session_scope(settings) as session:
        assert not breakers.gate(session, "y", where, now=utcnow(), policy=short).open


def test_a_send_skipped_by_an_open_breaker_is_not_an_attempt(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """Through the real delivery threads: no POST, no attempt row, attempts unchanged, due
    again after the next probe; once the probe time comes the message goes."""
    settings = make(db_url, sim, tmp_path)
    with Receiver(secrets=[SECRET]) as rx:
        where = breakers.key(("127.0.0.1", rx.port))
        probe_at = utcnow() + timedelta(seconds=2)
        with session_scope(settings) as session:
            session.execute(
                insert(DeliveryBreaker).values(
                    destination=where, timeouts=5, opened_at=utcnow(), probe_at=probe_at
                )
            )
        skipped_before = metrics.DELIVERIES_SKIPPED.labels("breaker")._value.get()
        job = track("image_animate", "succeed-1-skipped", callback_url=rx.url, settings=settings)
        drive(settings, jobs=[job["id"]])
        assert deliver.dispatcher(settings).wait_idle(10)
        with session_scope(settings) as session:
            message = session.execute(select(WebhookDelivery)).scalar_one()
            attempts = session.execute(select(func.count()).select_from(WebhookAttempt))
            assert attempts.scalar_one() == 0
        assert rx.received == []
        assert (message.status, message.attempts, message.lease_expires_at) == ("pending", 0, None)
        assert message.next_attempt_at is not None
        spread = timedelta(seconds=DeliveryPolicy().breaker_probe_s + 1)
        assert probe_at - timedelta(seconds=1) <= message.next_attempt_at <= probe_at + spread
        assert metrics.DELIVERIES_SKIPPED.labels("breaker")._value.get() == skipped_before + 1
        # The probe time comes (and, sooner than its spread, the message's due time): the sweep
        # hands it out, it is the probe, and it is delivered.
        time.sleep(max(0.0, (probe_at - utcnow()).total_seconds()) + 0.5)
        with session_scope(settings) as session:
            session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))
        assert deliver.sweep(settings) == 1
        [delivered] = rx.wait_for(1, timeout=10)
        assert deliver.dispatcher(settings).wait_idle(10)
    assert delivered.msg_id == message.id
    with session_scope(settings) as session:
        assert session.get(DeliveryBreaker, where) is None
        assert session.execute(select(WebhookDelivery.attempts)).scalar_one() == 1


def test_breakers_are_shown_by_a_command_and_counted_by_a_gauge(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = make(db_url, sim, tmp_path)
    now = utcnow()
    with session_scope(settings) as session:
        session.execute(
            insert(DeliveryBreaker),
            [
                {"destination": "dark.example:443", "timeouts": 7, "opened_at": now,
                 "probe_at": now + timedelta(seconds=20)},
                {"destination": "[2001:db8::1]:8080", "timeouts": 2},
            ],
        )  # fmt: skip
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(settings))
    scraped = parse(generate_latest(registry).decode())
    assert value(scraped, "jobtracker_delivery_breakers_open") == 1

    def cli(*args: str) -> Result:
        reset_settings()
        env = {"JOBTRACKER_DATABASE_URL": db_url}
        return CliRunner().invoke(main, ["breakers", *args], env=env, catch_exceptions=False)

    shown = cli()
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "dark.example:443" in lines[1] and "open" in lines[1] and "in 1" in lines[1]
    assert "[2001:db8::1]:8080" in lines[2] and "counting" in lines[2]
    only_open = json.loads(cli("--open", "--json").output)
    assert [b["destination"] for b in only_open] == ["dark.example:443"]
    assert only_open[0]["timeouts"] == 7 and only_open[0]["state"] == "open"
