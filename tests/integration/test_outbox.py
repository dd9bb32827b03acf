"""Callbacks end to end: terminal transition -> outbox row -> signed POST -> a real receiver that
verifies with the standardwebhooks library. Both backends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from jobtracker.models import TrackedJob, WebhookAttempt, WebhookDelivery, utcnow
from tests.drive import drive
from worker import clock
from worker.db import get_engine, session_scope
from worker.devtools.receiver import Receiver, Reply
from worker.devtools.simulator import Simulator
from worker.flow import deliver
from worker.flow.enqueue import track
from worker.settings import Settings

OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


@pytest.fixture
def delivered_now(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run the 'send right after commit' step inline instead of through a broker."""
    sent: list[str] = []

    def inline(ids: list[str], settings: object = None, **_: object) -> None:
        sent.extend(ids)

    monkeypatch.setattr(deliver, "deliver_soon", inline)
    return sent


def make(db_url: str, sim: Simulator, tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_POLL_INTERVAL_MIN": "0.05",
            "JOBTRACKER_POLL_INTERVAL_MAX": "0.1",
            "JOBTRACKER_WEBHOOK_SECRET": OLD,
            "JOBTRACKER_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2",
            "JOBTRACKER_NOT_FOUND_GRACE": "0",
            **sim.env(),
            **env,
        },
        cwd=tmp_path,
    )


def send_all(settings: Settings, ids: list[str]) -> list[str | None]:
    results = [deliver.deliver_one(i, settings) for i in ids]
    ids.clear()
    return results


def deliveries(settings: Settings) -> list[WebhookDelivery]:
    with session_scope(settings) as session:
        return list(
            session.execute(select(WebhookDelivery).order_by(WebhookDelivery.created_at)).scalars()
        )


def attempts(settings: Settings, delivery_id: str) -> list[WebhookAttempt]:
    with session_scope(settings) as session:
        return list(
            session.execute(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            ).scalars()
        )


def test_each_terminal_status_sends_one_verified_callback(
    db_url: str,
    sim: Simulator,
    tmp_path: Path,
    delivered_now: list[str],
    advance_clock: Callable[[float], None],
) -> None:
    with Receiver(secrets=[OLD]) as rx:
        # The deadline is passed on the clock once the others have ended (a short real one
        # expired succeed-2-w too on a busy machine).
        settings = make(db_url, sim, tmp_path, JOBTRACKER_JOB_DEADLINE="60")
        sim.script("never", ["running"])
        for job_id in ("succeed-2-w", "fail-1-w", "cancel-1-w", "never"):
            track(
                "image_animate",
                job_id,
                callback_url=rx.url,
                metadata={"j": job_id},
                settings=settings,
            )
        track("image_animate", "succeed-1-nocallback", settings=settings)
        with session_scope(settings) as session:
            ids = session.execute(
                select(TrackedJob.id).where(TrackedJob.job_id != "never")
            ).scalars()
            ending = list(ids)
        drive(settings, jobs=ending)
        advance_clock(61)
        drive(settings)
        assert sorted(send_all(settings, delivered_now)) == ["delivered"] * 4
        messages = rx.wait_for(4, timeout=10)
    assert all(m.verified for m in messages)
    by_job = {m.payload["data"]["job_id"]: m for m in messages}
    assert {j: m.type for j, m in by_job.items()} == {
        "succeed-2-w": "job.succeeded",
        "fail-1-w": "job.failed",
        "cancel-1-w": "job.canceled",
        "never": "job.expired",
    }
    ok = by_job["succeed-2-w"].payload["data"]
    assert ok["status"] == "succeeded" and ok["result"]["ResultVideoUrl"]
    assert ok["metadata"] == {"j": "succeed-2-w"}
    assert by_job["fail-1-w"].payload["data"]["error"]["code"]
    assert by_job["never"].payload["data"]["error"]["code"] == "Tracker.DeadlineExceeded"
    # The webhook-id is the outbox row's id.
    assert {m.msg_id for m in messages} == {d.id for d in deliveries(settings)}


def test_receiver_down_then_up_is_retried_with_the_same_id(
    db_url: str,
    sim: Simulator,
    tmp_path: Path,
    delivered_now: list[str],
    advance_clock: Callable[[float], None],
) -> None:
    rx = Receiver(secrets=[OLD]).start()
    url = rx.url
    rx.stop()
    settings = make(db_url, sim, tmp_path)
    track("video_face_fusion", "succeed-1-down", callback_url=url, settings=settings)
    drive(settings)
    assert send_all(settings, delivered_now) == ["pending"]
    [delivery] = deliveries(settings)
    [first] = attempts(settings, delivery.id)
    assert first.error_class == "connection" and first.status_code is None
    assert delivery.next_attempt_at is not None
    rx.start()
    try:
        rx.script([503])
        for _ in range(3):
            advance_clock(0.35)  # past the next retry (0.2 s)
            with session_scope(settings) as session:
                due = deliver.due_deliveries(session, clock.now(settings))
            for delivery_id in due:
                deliver.deliver_one(delivery_id, settings)
        [message] = rx.wait_for(1, timeout=5)
    finally:
        rx.stop()
    assert message.msg_id == delivery.id and message.verified
    log = attempts(settings, delivery.id)
    assert [a.error_class for a in log] == ["connection", "http", None]
    assert [a.status_code for a in log] == [None, 503, 200]
    assert all(a.latency_ms is not None for a in log)
    [done] = deliveries(settings)
    assert (done.status, done.attempts) == ("delivered", 3)


@pytest.mark.parametrize(
    ("reply", "error_class", "status"),
    [
        (Reply.gone(), "http", "failed"),
        (Reply.redirect("http://127.0.0.1:9/elsewhere"), "http", "pending"),
    ],
)
def test_gone_stops_and_redirects_are_not_followed(
    db_url: str,
    sim: Simulator,
    tmp_path: Path,
    delivered_now: list[str],
    reply: Reply,
    error_class: str,
    status: str,
) -> None:
    with Receiver(secrets=[OLD], default=reply) as rx:
        settings = make(db_url, sim, tmp_path)
        track("image_animate", "succeed-1-g", callback_url=rx.url, settings=settings)
        drive(settings)
        assert send_all(settings, delivered_now) == [status]
    [delivery] = deliveries(settings)
    [attempt] = attempts(settings, delivery.id)
    assert attempt.error_class == error_class
    assert attempt.status_code == reply.status


def test_retries_run_out_and_the_message_stays_visible_as_failed(
    db_url: str, sim: Simulator, tmp_path: Path, delivered_now: list[str]
) -> None:
    with Receiver(secrets=[OLD], default=500) as rx:
        settings = make(db_url, sim, tmp_path, JOBTRACKER_WEBHOOK_RETRY_SCHEDULE="0,0")
        track("image_animate", "succeed-1-x", callback_url=rx.url, settings=settings)
        drive(settings)
        [delivery_id] = delivered_now
        results = [deliver.deliver_one(delivery_id, settings) for _ in range(4)]
    assert results == ["pending", "pending", "failed", None]
    [delivery] = deliveries(settings)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 500)

    # Redelivery: a new attempt of the same message.
    with Receiver(secrets=[OLD]) as rx2:
        with session_scope(settings) as session:
            session.execute(update(WebhookDelivery).values(url=rx2.url))
        since = utcnow() - timedelta(minutes=5)
        assert deliver.redeliver_failed(settings, since) == [delivery.id]
        assert deliver.deliver_one(delivery.id, settings) == "delivered"
        [message] = rx2.wait_for(1)
    assert message.msg_id == delivery.id
    assert len(attempts(settings, delivery.id)) == 4


def test_a_crashed_sender_leaves_the_message_to_the_sweep(
    db_url: str,
    sim: Simulator,
    tmp_path: Path,
    delivered_now: list[str],
    advance_clock: Callable[[float], None],
) -> None:
    with Receiver(secrets=[OLD]) as rx:
        settings = make(db_url, sim, tmp_path)
        track("image_animate", "succeed-1-crash", callback_url=rx.url, settings=settings)
        drive(settings)
        [delivery_id] = delivered_now
        # A sender took the lease and died before posting (kill -9 mid-delivery).
        with session_scope(settings) as session:
            session.execute(
                update(WebhookDelivery).values(lease_expires_at=utcnow() + timedelta(seconds=0.3))
            )
        assert deliver.deliver_one(delivery_id, settings) is None  # leased: not ours
        advance_clock(0.4)  # the dead sender's lease runs out
        with session_scope(settings) as session:
            assert deliver.due_deliveries(session, clock.now(settings)) == [delivery_id]
        assert deliver.deliver_one(delivery_id, settings) == "delivered"
        [message] = rx.wait_for(1)
    assert message.msg_id == delivery_id


def test_a_redelivery_during_a_send_never_makes_two_concurrent_posts(
    db_url: str, sim: Simulator, tmp_path: Path, delivered_now: list[str]
) -> None:
    """The redelivery keeps the sender's lease (no second sender can claim the message while
    the POST is in flight) and the attempt's own update keeps the redelivery's "due now"."""
    with Receiver(secrets=[OLD], default=Reply(200, delay_s=1.0)) as rx:
        settings = make(db_url, sim, tmp_path)
        track("image_animate", "succeed-1-redeliver", callback_url=rx.url, settings=settings)
        drive(settings)
        [delivery_id] = delivered_now
        first = threading.Thread(target=deliver.deliver_one, args=(delivery_id, settings))
        first.start()
        rx.wait_for_requests(1, timeout=5)
        deliver.redeliver(settings, delivery_id)  # while the receiver holds the first POST
        # Every other way a sender could take it now: a direct send, the sweep.
        assert deliver.deliver_one(delivery_id, settings) is None
        assert deliver.sweep(settings) == 0
        first.join(timeout=10)
        [during] = deliveries(settings)
        assert (during.status, during.attempts, during.lease_expires_at) == ("pending", 1, None)
        assert during.next_attempt_at is not None and during.next_attempt_at <= utcnow()
        with session_scope(settings) as session:
            assert deliver.due_deliveries(session, utcnow()) == [delivery_id]
        assert deliver.deliver_one(delivery_id, settings) == "delivered"
        one, two = rx.wait_for_requests(2, timeout=5)
    assert one.msg_id == two.msg_id == delivery_id
    # The second POST arrived after the first was answered (the receiver held it 1 s).
    assert two.received_monotonic >= one.received_monotonic + 1.0
    assert [a.status_code for a in attempts(settings, delivery_id)] == [200, 200]
    [after] = deliveries(settings)
    assert (after.status, after.attempts) == ("delivered", 2)


def test_rotation_two_secrets_each_receiver_verifies(
    db_url: str, sim: Simulator, tmp_path: Path, delivered_now: list[str]
) -> None:
    with Receiver(secrets=[OLD]) as old_rx, Receiver(secrets=[NEW]) as new_rx:
        settings = make(db_url, sim, tmp_path, JOBTRACKER_WEBHOOK_SECRET=f"{NEW} {OLD}")
        track("image_animate", "succeed-1-r1", callback_url=old_rx.url, settings=settings)
        track("image_animate", "succeed-1-r2", callback_url=new_rx.url, settings=settings)
        drive(settings)
        assert send_all(settings, delivered_now) == ["delivered", "delivered"]
        [a] = old_rx.wait_for(1)
        [b] = new_rx.wait_for(1)
    assert a.verified and b.verified
    assert len(a.headers["webhook-signature"].split(" ")) == 2


def test_no_secret_or_signature_in_logs(
    db_url: str,
    sim: Simulator,
    tmp_path: Path,
    delivered_now: list[str],
    caplog: pytest.LogCaptureFixture,
    advance_clock: Callable[[float], None],
) -> None:
    caplog.set_level(logging.DEBUG)
    with Receiver(secrets=[OLD]) as rx:
        rx.script([500])
        settings = make(db_url, sim, tmp_path)
        track("image_animate", "succeed-1-log", callback_url=rx.url, settings=settings)
        drive(settings)
        [delivery_id] = delivered_now
        deliver.deliver_one(delivery_id, settings)
        advance_clock(0.3)  # past the retry (0.2 s)
        deliver.deliver_one(delivery_id, settings)
        [message] = rx.wait_for(1)
    text = caplog.text
    assert OLD not in text and OLD.removeprefix("whsec_") not in text
    assert message.headers["webhook-signature"].split(",", 1)[1] not in text
    assert settings.secret_key and settings.secret_key not in text


def test_the_outbox_row_commits_with_the_transition(
    db_url: str, sim: Simulator, tmp_path: Path, delivered_now: list[str]
) -> None:
    """A job is terminal iff its message exists (when it has a callback URL)."""
    settings = make(db_url, sim, tmp_path)
    for n in range(10):
        track(
            "image_animate",
            f"succeed-1-o{n}",
            callback_url="http://127.0.0.1:9/h",
            settings=settings,
        )
    drive(settings)
    with session_scope(settings) as session:
        terminal = session.execute(
            select(func.count()).select_from(TrackedJob).where(TrackedJob.finished_at.is_not(None))
        ).scalar_one()
        messages = session.execute(select(func.count()).select_from(WebhookDelivery)).scalar_one()
    assert terminal == messages == 10


def test_the_sweep_reserves_what_it_hands_out(
    db_url: str, sim: Simulator, tmp_path: Path, delivered_now: list[str]
) -> None:
    """A receiver that hangs must not get the same message queued again at every sweep."""
    settings = make(db_url, sim, tmp_path)
    for n in range(3):
        track(
            "image_animate",
            f"succeed-1-s{n}",
            callback_url="http://127.0.0.1:9/h",
            settings=settings,
        )
    drive(settings)
    delivered_now.clear()  # the after-commit sends were lost (say, the process died)
    assert deliver.sweep(settings) == 3
    assert sorted(delivered_now) == sorted(d.id for d in deliveries(settings))
    assert deliver.sweep(settings) == 0  # reserved: not handed out again while they wait
    # The reservation lets exactly its holder send.
    [first, *_] = deliveries(settings)
    assert deliver.deliver_one(first.id, settings) is None
    assert deliver.deliver_one(first.id, settings, reserved=first.lease_expires_at) == "pending"


def test_two_sweeps_at_once_never_hand_out_one_message_twice(
    db_url: str, sim: Simulator, tmp_path: Path, delivered_now: list[str]
) -> None:
    """Sweep B runs whole between sweep A's choice of messages and A's reservation of them (on
    SQLite no row lock holds them for A): A's reservation re-checks each message and takes none
    that B took."""
    settings = make(db_url, sim, tmp_path)
    for n in range(3):
        track("image_animate", f"succeed-1-race{n}", callback_url="http://127.0.0.1:9/h",
              settings=settings)  # fmt: skip
    drive(settings)
    delivered_now.clear()  # the after-commit sends were lost: the sweeps must send them
    engine = get_engine(settings)
    interleaved = threading.Event()

    def after_select(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (
            threading.current_thread().name == "sweep-a"
            and statement.lstrip().startswith("SELECT webhook_deliveries.id")
            and not interleaved.is_set()
        ):
            interleaved.set()
            b = threading.Thread(target=lambda: counts.append(deliver.sweep(settings)))
            b.start()
            b.join()

    counts: list[int] = []
    event.listen(engine, "after_cursor_execute", after_select)
    try:
        a = threading.Thread(target=lambda: counts.append(deliver.sweep(settings)), name="sweep-a")
        a.start()
        a.join()
    finally:
        event.remove(engine, "after_cursor_execute", after_select)
    assert interleaved.is_set()
    assert sorted(counts) == [0, 3]
    assert sorted(delivered_now) == sorted(set(delivered_now)) and len(delivered_now) == 3
