"""The per-client request rate limit: ``JOBTRACKER_API_RATE`` requests per second on average,
``JOBTRACKER_API_BURST`` at once.

The same GCRA as the providers' limit (:mod:`worker.providers.ratelimit`), used as a gate rather
than a queue: a request is admitted when its slot is at most ``burst - 1`` intervals in the
future, and otherwise refused at once with how long to wait. With a Redis broker the state lives
in Redis, so every API process together holds each client to its rate; without one (the embedded
default: one process) it lives in the process.
"""

from __future__ import annotations

import math

from worker.providers.ratelimit import RateLimiter, get_rate_limiter
from worker.settings import Settings

_KEY = "api-client:{}"


class ClientRateLimit:
    def __init__(self, settings: Settings, limiter: RateLimiter | None = None) -> None:
        self.limiter = limiter or get_rate_limiter(settings.broker_url)
        self.rate = settings.api_rate_per_s
        #: How far ahead of now a client's next slot may be and still be admitted.
        self.tolerance_s = (settings.api_burst - 1) / settings.api_rate_per_s

    def admit(self, client_id: int) -> int | None:
        """None when the request may go on; else the seconds to wait (Retry-After, >= 1)."""
        wait_s, taken = self.limiter.reserve(_KEY.format(client_id), self.rate, 1, self.tolerance_s)
        if taken:
            return None
        return max(1, math.ceil(wait_s - self.tolerance_s))
