"""The shared pace holds across workers, in Redis and in the database (threads with separate
connections stand for workers), and a refusal seen by one worker slows them all."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.providers.ratelimit import (
    DatabaseStore,
    Pace,
    Pacer,
    RateLimiter,
    RedisStore,
    Store,
    T,
    get_rate_limiter,
)
from worker.settings import Settings


@pytest.fixture(params=["redis", "postgresql", "sqlite"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A factory: each call is another worker's own connection to the shared pace."""
    if request.param == "redis":
        url = str(request.getfixturevalue("redis_url"))
        return lambda: RedisStore(url)
    db_url = str(
        request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    )
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    return lambda: DatabaseStore(settings)


def acquire(limiter: RateLimiter, key: str, qps: float, max_wait_s: float) -> float | None:
    """One slot, waited for (what a poll does per job): its planned instant, or None if none
    within max_wait_s."""
    slots = limiter.reserve(key, qps, 1, max_wait_s=max_wait_s, span_s=0)
    if slots.instants:
        time.sleep(max(0.0, slots.instants[0] - time.monotonic()))
        return slots.instants[0]
    return None


@pytest.mark.serial  # slots planned against wall time
def test_workers_together_never_exceed_the_limit(new_store: Callable[[], Store]) -> None:
    qps, duration = 20.0, 2.0
    stamps: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        limiter = RateLimiter(new_store())  # each "worker" its own connection
        while time.monotonic() < stop:
            # The slot's instant, not when this thread happened to wake (the poll loop drops a
            # slot it reaches late instead of calling late).
            instant = acquire(limiter, "video_face_fusion", qps, max_wait_s=0.5)
            if instant is not None:
                with lock:
                    stamps.append(instant)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    # In any one-second window, at most qps calls: slots keep a margin below the rate.
    worst = max(sum(1 for s in stamps if start <= s < start + 1.0) for start in stamps)
    assert worst <= qps, worst
    # And the limit is used, not starved: close to qps per second overall.
    rate = len(stamps) / (stamps[-1] - stamps[0])
    assert rate >= qps * 0.85, rate


@pytest.mark.serial  # slots planned against wall time
def test_a_slot_too_far_away_is_refused_not_reserved(new_store: Callable[[], Store]) -> None:
    limiter = RateLimiter(new_store())
    assert acquire(limiter, "image_animate", 1.0, max_wait_s=0.0) is not None
    started = time.monotonic()
    assert acquire(limiter, "image_animate", 1.0, max_wait_s=0.1) is None
    assert time.monotonic() - started < 0.5


@pytest.mark.serial  # slots planned against wall time
def test_batches_share_slots_and_a_refusal_slows_every_worker(
    new_store: Callable[[], Store],
) -> None:
    a, b = RateLimiter(new_store()), RateLimiter(new_store())
    first = a.reserve("k", 10.0, 5, max_wait_s=10, span_s=1)
    second = b.reserve("k", 10.0, 5, max_wait_s=10, span_s=1)
    assert len(first.instants) == len(second.instants) == 5
    for slots in (first, second):  # within a reservation, exactly one interval apart
        gaps = [y - x for x, y in itertools.pairwise(slots.instants)]
        assert min(gaps) >= slots.interval - 1e-6 >= 0.1
    # Across workers: b's slots come after a's (the instants are this process's clock readings
    # after each store call, so a busy machine may shift them by a few milliseconds).
    assert second.instants[0] >= first.instants[-1] + first.interval - 0.05
    # Worker a is refused once: worker b's next slots come at the lower rate.
    assert a.report("k", 10.0, throttled=1).rate == pytest.approx(9.5)
    assert b.rate("k", 10.0) == pytest.approx(9.5)
    assert b.reserve("k", 10.0, 3, max_wait_s=10, span_s=1).interval == pytest.approx(
        1 / (9.5 * 0.98)
    )
    # Answers win the rate back, never above the configured ceiling.
    assert b.report("k", 10.0, ok=1000).rate == 10.0


class Counted:
    """A store that counts its transactions (each one round trip to Redis or the database)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.trips = 0

    def transact(
        self, key: str, change: Callable[[Pace | None, float], tuple[Pace, T]]
    ) -> tuple[T, float]:
        self.trips += 1
        return self.store.transact(key, change)


def test_a_batch_goes_out_on_one_reservation_where_the_ceiling_cannot_bind(
    new_store: Callable[[], Store],
) -> None:
    """At a QPS far above what any deployment calls, slots are microseconds apart and each call
    may go seconds from its slot: 50 calls of a few milliseconds each make one transaction for
    their slots and one for their answers (there were two per call)."""
    store = Counted(new_store())
    pacer = Pacer(RateLimiter(store), "k", 1_000_000.0, max_wait_s=1.0)
    for left in range(50, 0, -1):
        instant = pacer.next_slot(left)
        assert instant is not None
        time.sleep(max(0.0, instant - time.monotonic()) + 0.002)  # its slot, then the call
        pacer.answered()
    pacer.close()
    assert (store.trips, pacer.dropped) == (2, 0)


def test_answers_go_with_the_next_reservation_and_a_refusal_at_once(
    new_store: Callable[[], Store],
) -> None:
    store = Counted(new_store())
    limiter = RateLimiter(store)
    limiter.report("k", 20.0, throttled=1)  # below the ceiling: answers move the rate
    before = limiter.rate("k", 20.0)
    pacer = Pacer(limiter, "k", 20.0, max_wait_s=1.0)
    trips = store.trips
    for left in range(5, 0, -1):  # a quarter of a second's slots: one reservation
        instant = pacer.next_slot(left)
        assert instant is not None
        time.sleep(max(0.0, instant - time.monotonic()))
        pacer.answered()
    assert store.trips == trips + 1
    assert limiter.rate("k", 20.0) == before  # the answers are not told yet
    trips = store.trips
    assert pacer.next_slot(5) is not None
    assert store.trips == trips + 1  # ... they go with the next reservation
    assert limiter.rate("k", 20.0) > before
    trips = store.trips
    assert pacer.refused().rate < before  # a refusal is told at once
    assert store.trips == trips + 1


def test_the_limiter_is_shared_whatever_the_broker(tmp_path: Path, redis_url: str) -> None:
    """Redis when the broker is Redis; the database for any other broker (and the embedded
    default), never a per-process limiter that each worker would spend in full."""
    sqlite = f"sqlite:///{tmp_path / 'x.db'}"
    for broker, kind in [
        (redis_url, RedisStore),
        ("amqp://guest@localhost//", DatabaseStore),
        ("filesystem://", DatabaseStore),
    ]:
        env = {"JOBTRACKER_DATABASE_URL": sqlite, "JOBTRACKER_BROKER_URL": broker}
        limiter = get_rate_limiter(Settings.from_env(env, cwd=tmp_path))
        assert isinstance(limiter.store, kind), broker
