"""The per-client request rate limit: ``JOBTRACKER_API_RATE`` requests per second on average,
``JOBTRACKER_API_BURST`` at once.

The providers' pace (:mod:`worker.providers.ratelimit`) used as a gate rather than a queue, at a
fixed rate (nothing reports refusals, so it never adapts) and without the providers' safety
margin: a request is admitted when its slot is at most ``burst - 1`` intervals in the future,
and otherwise refused at once with how long to wait. With a Redis broker the state lives in
Redis, so every API process together holds each client to its rate; without one (the embedded
default: one process) it lives in the process, which spares the database a write per request.
"""

from __future__ import annotations

import math

from worker.policy import RatePolicy
from worker.providers.ratelimit import LocalStore, RateLimiter, RedisStore, Store
from worker.settings import Settings

_KEY = "api-client:{}"


class ClientRateLimit:
    def __init__(self, settings: Settings, limiter: RateLimiter | None = None) -> None:
        if limiter is None:
            redis = settings.broker_url.startswith(("redis://", "rediss://"))
            store: Store = RedisStore(settings.broker_url) if redis else LocalStore()
            limiter = RateLimiter(store, RatePolicy(margin=0.0), plan_ahead=False)
        self.limiter = limiter
        self.rate = settings.api_rate_per_s
        #: How far ahead of now a client's next slot may be and still be admitted.
        self.tolerance_s = (settings.api_burst - 1) / settings.api_rate_per_s

    def admit(self, client_id: int) -> int | None:
        """None when the request may go on; else the seconds to wait (Retry-After, >= 1)."""
        slots = self.limiter.reserve(
            _KEY.format(client_id), self.rate, 1, max_wait_s=self.tolerance_s, span_s=0.0
        )
        if slots.instants:
            return None
        return max(1, math.ceil(slots.wait_s - self.tolerance_s))
