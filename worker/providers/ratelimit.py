"""Each provider's pace, shared by every worker: when the next calls may go, and how fast.

The pace is a slot pointer (the GCRA "theoretical arrival time": the next free slot) and an
adaptive rate (:class:`~worker.policy.RatePolicy`: never above the configured QPS, cut a little on
each ``RequestLimitExceeded``, raised back with each success). A poll batch reserves a short run
of slots (:meth:`RateLimiter.reserve`, a fraction of a second's worth, so a cut takes effect at
once), calls within the policy's allowances of each slot, drops a slot it reached too late, and
tells the pace how the calls went: answers with its next reservation (one transaction),
refusals at once (:meth:`RateLimiter.report`).

The arithmetic is one pure function pair (:func:`plan`, :func:`learn`); where the pace lives is
a store that applies them atomically on its own clock:

- :class:`RedisStore` when the broker is Redis (one hash per provider, an optimistic
  WATCH/MULTI transaction, Redis's clock);
- :class:`DatabaseStore` otherwise (the ``rate_limits`` table, a row lock, the database's clock),
  so workers sharing any other broker, or the embedded default, still share one limit;
- :class:`LocalStore` in one process (tests, and the pure arithmetic).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import redis
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from jobtracker.models import RateLimit
from worker import clock
from worker.db import session_scope
from worker.policy import RatePolicy
from worker.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Pace:
    """One provider's shared pace. Times are seconds on the store's clock."""

    #: The next free slot.
    tat: float
    #: Calls per second allowed now (at most the ceiling).
    rate: float
    #: The rate at which the provider refused a call after an answer, the last time (0: never).
    learned: float = 0.0
    #: Refusals in a row since the last answer.
    run: int = 0


@dataclass(frozen=True)
class Slots:
    """Reserved call times, as ``time.monotonic()`` instants, ``interval`` apart."""

    instants: list[float]
    interval: float
    rate: float
    #: How long until the first free slot (when none was reserved: how far away it is).
    wait_s: float = 0.0


def plan(
    pace: Pace | None,
    now: float,
    ceiling: float,
    n: int,
    *,
    max_wait_s: float,
    span_s: float,
    policy: RatePolicy,
) -> tuple[Pace, float, int, float]:
    """Reserve up to ``n`` slots: the first within ``max_wait_s``, all within ``span_s`` of it.

    Returns (new pace, wait before the first slot, slots reserved, interval); 0 slots when the
    next free slot is further than ``max_wait_s`` away.
    """
    pace = pace or Pace(tat=now, rate=ceiling)
    rate = min(pace.rate, ceiling)
    interval = policy.interval(rate, ceiling)
    tat = max(pace.tat, now)
    wait = tat - now
    if wait > max_wait_s:
        return replace(pace, rate=rate), wait, 0, interval
    count = max(1, min(n, int(span_s / interval + 1e-9) + 1))
    return replace(pace, tat=tat + count * interval, rate=rate), wait, count, interval


def learn(
    pace: Pace | None, now: float, ceiling: float, *, ok: int, throttled: int, policy: RatePolicy
) -> Pace:
    """The pace after ``ok`` answered calls then ``throttled`` refused ones (a batch reports its
    answers when a refusal comes, so the refusal is the provider's last word)."""
    pace = pace or Pace(tat=now, rate=ceiling)
    rate, learned, tat = min(pace.rate, ceiling), pace.learned, pace.tat
    rate = policy.after_successes(rate, learned, ceiling, ok)
    run = 0 if ok else pace.run
    for _ in range(throttled):
        run += 1
        if run == 1:
            # The first refusal after an answer marks the rate the provider would not take; the
            # ones right after it (a window still full) cut harder but teach nothing new.
            learned = rate
        rate = policy.after_throttle(rate, ceiling, run)
        # Give the provider's window one slot of air at the new pace.
        tat = max(tat, now) + policy.interval(rate, ceiling)
    return Pace(tat=tat, rate=rate, learned=learned, run=run)


class Store(Protocol):
    def transact(
        self, key: str, change: Callable[[Pace | None, float], tuple[Pace, T]]
    ) -> tuple[T, float]:
        """Apply ``change(pace, now)`` atomically (``now``: the store's clock); return its
        second value, and this process's ``time.monotonic()`` when ``now`` was read (so slots
        land on the local clock without the store's round trip in them: its jitter would put
        two calls closer than the pace allows)."""
        ...


class RateLimiter:
    """A provider pace in a shared store."""

    #: Bounds of the lead: slots are planned this far past the store's reading, so they are
    #: still ahead when the transaction that reserved them returns.
    MIN_LEAD_S = 0.002
    MAX_LEAD_S = 0.25

    def __init__(
        self, store: Store, policy: RatePolicy | None = None, *, plan_ahead: bool = True
    ) -> None:
        """``plan_ahead=False``: slots from the store's reading itself, for a gate that only
        admits or refuses (nothing waits for the instant, so a round trip cannot make it late)."""
        self.store = store
        self.policy = policy or RatePolicy()
        self.plan_ahead = plan_ahead
        # A moving estimate of the store's round trip (its commit included). Planned from the
        # reading alone, every slot would already be behind when the reservation returns, and
        # at a high rate the poll loop would drop them all as late.
        self._trip_s = 0.005

    def reserve(
        self,
        key: str,
        ceiling: float,
        n: int,
        *,
        max_wait_s: float,
        span_s: float,
        answered: int = 0,
    ) -> Slots:
        """Up to ``n`` slots (none when the next one is over ``max_wait_s`` away), after telling
        the pace of ``answered`` calls (one transaction for both)."""

        lead = (
            min(self.MAX_LEAD_S, max(self.MIN_LEAD_S, 1.5 * self._trip_s))
            if self.plan_ahead
            else 0.0
        )

        def change(pace: Pace | None, now: float) -> tuple[Pace, tuple[float, int, float, float]]:
            if answered:
                pace = learn(pace, now, ceiling, ok=answered, throttled=0, policy=self.policy)
            new, wait, count, interval = plan(
                pace,
                now + lead,
                ceiling,
                n,
                max_wait_s=max_wait_s,
                span_s=span_s,
                policy=self.policy,
            )
            return new, (wait, count, interval, new.rate)

        (wait, count, interval, rate), read_at = self.store.transact(key, change)
        # Round trips are jittery: lean towards the slow ones (a slot planned too near is lost).
        took = time.monotonic() - read_at
        self._trip_s = took if took > self._trip_s else 0.9 * self._trip_s + 0.1 * took
        start = read_at + lead + wait
        return Slots([start + i * interval for i in range(count)], interval, rate, wait)

    def report(self, key: str, ceiling: float, *, ok: int = 0, throttled: int = 0) -> Pace:
        """Tell the pace how calls went; return the new pace."""

        def change(pace: Pace | None, now: float) -> tuple[Pace, Pace]:
            new = learn(pace, now, ceiling, ok=ok, throttled=throttled, policy=self.policy)
            return new, new

        return self.store.transact(key, change)[0]

    def rate(self, key: str, ceiling: float) -> float:
        """The rate allowed now (the ceiling until the provider refused a call)."""

        def read(pace: Pace | None, now: float) -> tuple[Pace, float]:
            pace = pace or Pace(tat=now, rate=ceiling)
            return pace, min(ceiling, pace.rate)

        return self.store.transact(key, read)[0]


class LocalStore:
    """The pace in this process only (``clock``: its time source, seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._paces: dict[str, Pace] = {}
        self._clock = clock

    def transact(
        self, key: str, change: Callable[[Pace | None, float], tuple[Pace, T]]
    ) -> tuple[T, float]:
        with self._lock:
            read_at = time.monotonic()
            pace, result = change(self._paces.get(key), self._clock())
            self._paces[key] = pace
            return result, read_at


class RedisStore:
    """The pace in Redis: every worker on every host shares it, on Redis's clock."""

    #: A pace untouched this long is forgotten (it starts again at the ceiling).
    TTL_S = 3600

    def __init__(self, url: str, prefix: str = "jobtracker:pace:", *, timeout_s: float = 5) -> None:
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._prefix = prefix

    def transact(
        self, key: str, change: Callable[[Pace | None, float], tuple[Pace, T]]
    ) -> tuple[T, float]:
        name = self._prefix + key
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(name)
                    seconds, micros = pipe.time()
                    read_at = time.monotonic()  # within a round trip of Redis's reading
                    raw = pipe.hgetall(name)
                    pace = _parse(raw)
                    new, result = change(pace, seconds + micros / 1_000_000)
                    pipe.multi()
                    pipe.hset(
                        name,
                        mapping={
                            "tat": new.tat,
                            "rate": new.rate,
                            "learned": new.learned,
                            "run": new.run,
                        },
                    )
                    pipe.expire(name, self.TTL_S)
                    pipe.execute()
                    return result, read_at
                except redis.WatchError:  # another worker moved the pace first: read it again
                    continue


def _parse(raw: Mapping[Any, Any]) -> Pace | None:
    try:
        return Pace(
            tat=float(raw[b"tat"]),
            rate=float(raw[b"rate"]),
            learned=float(raw[b"learned"]),
            run=int(raw.get(b"run", b"0")),
        )
    except (KeyError, ValueError, TypeError):
        return None


class DatabaseStore:
    """The pace in the ``rate_limits`` table: shared by every worker of any broker, under a row
    lock, on the database's clock (:mod:`worker.clock`)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def transact(
        self, key: str, change: Callable[[Pace | None, float], tuple[Pace, T]]
    ) -> tuple[T, float]:
        with session_scope(self._settings) as session:
            dialect = session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            # Creating the row first also takes SQLite's write lock before the read, so two
            # processes cannot both read the same pace and both move it.
            session.execute(
                insert(RateLimit)
                .values(key=key, tat=0.0, rate=0.0, learned=0.0, run=0)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            row = session.execute(
                select(RateLimit).where(RateLimit.key == key).with_for_update()
            ).scalar_one()
            now = clock.now(self._settings).timestamp()
            read_at = time.monotonic()
            pace = Pace(row.tat, row.rate, row.learned, row.run) if row.rate > 0 else None
            new, result = change(pace, now)
            row.tat, row.rate, row.learned, row.run = new.tat, new.rate, new.learned, new.run
            row.updated_at = clock.now(self._settings)
        return result, read_at


_limiters: dict[tuple[str, str], RateLimiter] = {}
_limiters_lock = threading.Lock()


def get_rate_limiter(settings: Settings) -> RateLimiter:
    """The process's limiter: in Redis when the broker is Redis, else in the database."""
    key = (settings.broker_url, settings.database_url)
    with _limiters_lock:
        limiter = _limiters.get(key)
        if limiter is None:
            if settings.broker_url.startswith(("redis://", "rediss://")):
                store: Store = RedisStore(settings.broker_url)
            else:
                store = DatabaseStore(settings)
            limiter = _limiters[key] = RateLimiter(store)
        return limiter


class Pacer:
    """One poll batch's use of a provider's pace: slots a fraction of a second at a time, each
    call within the policy's allowances of its slot (a slot reached later is dropped), answers
    told with the next reservation, refusals at once.

    One store transaction per reservation: at a real quota a reservation holds the next
    quarter of a second's slots; at a ceiling that cannot bind (see
    :class:`~worker.policy.RatePolicy`) it holds the whole batch.

    Not thread-safe: one batch, one thread.
    """

    #: Slots are reserved this far ahead at a time, so a cut in the rate applies within it.
    SPAN_S = 0.25

    def __init__(
        self, limiter: RateLimiter, key: str, ceiling: float, *, max_wait_s: float
    ) -> None:
        self.limiter = limiter
        self.key = key
        self.ceiling = ceiling
        self.max_wait_s = max_wait_s
        self.rate = ceiling
        #: Slots dropped because this batch reached them too late.
        self.dropped = 0
        #: Store transactions this batch made (reservations and reports).
        self.trips = 0
        self._slots: list[float] = []
        self._next = 0
        self._early_s = limiter.policy.early_s(ceiling)
        self._late_s = limiter.policy.late_s(ceiling)
        self._answered = 0

    def next_slot(self, wanted: int) -> float | None:
        """The ``time.monotonic()`` instant the next call may go (its slot, or now if the slot
        is past or within the policy's early allowance), or None when the next free slot is over
        ``max_wait_s`` away.
        ``wanted``: calls this batch still means to make."""
        for _ in range(3):
            now = time.monotonic()
            while self._next < len(self._slots):
                slot = self._slots[self._next]
                self._next += 1
                if now - slot <= self._late_s:
                    return slot if slot - now > self._early_s else now
                self.dropped += 1  # fired late it would land next to the following call
            answered, self._answered = self._answered, 0
            self.trips += 1
            try:
                slots = self.limiter.reserve(
                    self.key,
                    self.ceiling,
                    wanted,
                    max_wait_s=self.max_wait_s,
                    span_s=self.SPAN_S,
                    answered=answered,
                )
            except Exception:
                self._answered += answered  # not told: still to tell
                raise
            self._slots, self._next, self.rate = slots.instants, 0, slots.rate
            if not slots.instants:
                return None
        return None

    def answered(self) -> None:
        """The provider answered a call (anything but a refusal counts: it was let through)."""
        self._answered += 1

    def refused(self) -> Pace:
        """The provider refused a call (RequestLimitExceeded): cut the rate now, drop the slots
        reserved at the old one. Returns the shared pace after the cut."""
        self._slots, self._next = [], 0
        answered, self._answered = self._answered, 0
        self.trips += 1
        pace = self.limiter.report(self.key, self.ceiling, ok=answered, throttled=1)
        self.rate = pace.rate
        return pace

    def close(self) -> None:
        """Tell the pace of the answers not yet told (call once the batch is done)."""
        if self._answered:
            answered, self._answered = self._answered, 0
            self.trips += 1
            self.rate = self.limiter.report(self.key, self.ceiling, ok=answered).rate
