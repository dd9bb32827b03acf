"""The per-client request rate limit: ``JOBTRACKER_API_RATE`` requests per second on average,
``JOBTRACKER_API_BURST`` at once.

The providers' pace (:mod:`worker.providers.ratelimit`) used as a gate rather than a queue, at a
fixed rate (nothing reports refusals, so it never adapts) and without the providers' safety
margin: a request is admitted when its slot is at most ``burst - 1`` intervals in the future,
and otherwise refused at once with how long to wait. With a Redis broker the state lives in
Redis, so every API process together holds each client to its rate; without one (the embedded
default: one process) it lives in the process, which spares the database a write per request.

**Redis away.** The gate is the API's only use of Redis, and a rate limiter that is down must not
take the API down with it (nor fail ``/readyz`` on every replica, which would make it a full
outage). When Redis does not answer, each process gates its clients on its own
(:class:`~worker.providers.ratelimit.LocalStore`: each client gets its rate from each replica
until Redis is back), says so once in the log, and counts it in
``jobtracker_api_rate_gate_fallbacks_total`` (``jobtracker_api_rate_gate_local`` is 1 meanwhile).
One request every :data:`PROBE_EVERY_S` tries Redis again; the first that gets an answer brings
the shared gate back. Redis gets :data:`REDIS_TIMEOUT_S` to answer, so a Redis that hangs costs
that long to one request per probe, not to every request.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import redis

from worker.observe.metrics import API_RATE_GATE_FALLBACKS, API_RATE_GATE_LOCAL
from worker.policy import RatePolicy
from worker.providers.ratelimit import LocalStore, RateLimiter, RedisStore, Slots
from worker.settings import Settings

log = logging.getLogger(__name__)

_KEY = "api-client:{}"
#: While Redis is away, how often one request tries it again.
PROBE_EVERY_S = 2.0
#: How long Redis may take to connect or answer before the gate falls back.
REDIS_TIMEOUT_S = 0.5


def _gate(store: LocalStore | RedisStore) -> RateLimiter:
    return RateLimiter(store, RatePolicy(margin=0.0), plan_ahead=False)


class ClientRateLimit:
    def __init__(self, settings: Settings, limiter: RateLimiter | None = None) -> None:
        if limiter is None and settings.broker_url.startswith(("redis://", "rediss://")):
            limiter = _gate(RedisStore(settings.broker_url, timeout_s=REDIS_TIMEOUT_S))
        #: The gate every process shares (Redis), if any; a given ``limiter`` plays it in tests.
        self.shared = limiter
        #: This process's own gate: the only one without Redis, the fallback while it is away.
        self.local = _gate(LocalStore())
        self.rate = settings.api_rate_per_s
        #: How far ahead of now a client's next slot may be and still be admitted.
        self.tolerance_s = (settings.api_burst - 1) / settings.api_rate_per_s
        self._lock = threading.Lock()
        #: Set while the shared gate is away: the monotonic time of the next try.
        self._retry_at: float | None = None

    def admit(self, client_id: int) -> int | None:
        """None when the request may go on; else the seconds to wait (Retry-After, >= 1)."""
        slots = self._reserve(_KEY.format(client_id))
        if slots.instants:
            return None
        return max(1, math.ceil(slots.wait_s - self.tolerance_s))

    @property
    def local_only(self) -> bool:
        """Whether this process gates on its own right now (no Redis, or Redis away)."""
        return self.shared is None or self._retry_at is not None

    def _reserve(self, key: str) -> Slots:
        shared = self.shared
        if shared is not None and self._may_try_shared():
            try:
                slots = self._slots(shared, key)
            except redis.RedisError as exc:
                self._fall_back(exc)
            else:
                self._recovered()
                return slots
        return self._slots(self.local, key)

    def _slots(self, limiter: RateLimiter, key: str) -> Slots:
        return limiter.reserve(key, self.rate, 1, max_wait_s=self.tolerance_s, span_s=0.0)

    def _may_try_shared(self) -> bool:
        with self._lock:
            if self._retry_at is None:
                return True
            now = time.monotonic()
            if now < self._retry_at:
                return False
            self._retry_at = now + PROBE_EVERY_S  # this request probes; the others go on locally
            return True

    def _fall_back(self, exc: redis.RedisError) -> None:
        with self._lock:
            first = self._retry_at is None
            self._retry_at = time.monotonic() + PROBE_EVERY_S
        if first:
            API_RATE_GATE_FALLBACKS.inc()
            API_RATE_GATE_LOCAL.set(1)
            log.warning(
                "the shared API rate gate (Redis) does not answer (%s: %s): each API process "
                "now holds each client to its rate on its own, until Redis answers again",
                type(exc).__name__,
                str(exc)[:200],
            )

    def _recovered(self) -> None:
        with self._lock:
            if self._retry_at is None:
                return
            self._retry_at = None
        API_RATE_GATE_LOCAL.set(0)
        log.info("the shared API rate gate (Redis) answers again; it holds every client again")
