"""A per-provider rate limit shared by every worker.

GCRA (the "virtual scheduling" form of a token bucket): each call reserves the next free slot,
slots are ``1 / qps`` apart, and the caller sleeps until its slot. With Redis the slot pointer
lives in one key that every worker updates atomically (a Lua script using the server's clock), so
all workers together never exceed the limit. Without Redis (the embedded broker: one process) the
same arithmetic runs under a lock.

Slots are spaced evenly with no burst, because the provider counts requests per second: a burst
at a second boundary would be throttled even when the average is under the limit.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

#: Reserve a slot unless it is more than ARGV[2] microseconds away; return the wait in
#: microseconds (0 = go now), or -wait when the slot is too far to reserve.
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > max_wait then return -wait end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.floor(wait / 1000) + 60000)
return wait
"""


class RateLimiter(Protocol):
    def acquire(self, key: str, qps: float, max_wait_s: float) -> bool:
        """Wait for a slot; False if the next slot is further than ``max_wait_s`` away."""
        ...


class LocalRateLimiter:
    """The GCRA in one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def reserve(self, key: str, qps: float, max_wait_s: float, now: float) -> float | None:
        with self._lock:
            tat = max(self._tat.get(key, 0.0), now)
            wait = tat - now
            if wait > max_wait_s:
                return None
            self._tat[key] = tat + 1.0 / qps
            return wait

    def acquire(self, key: str, qps: float, max_wait_s: float) -> bool:
        wait = self.reserve(key, qps, max_wait_s, time.monotonic())
        if wait is None:
            return False
        if wait > 0:
            time.sleep(wait)
        return True


class RedisRateLimiter:
    """The GCRA in Redis, shared by every worker on every host."""

    def __init__(self, url: str, prefix: str = "jobtracker:ratelimit:") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._redis.register_script(_GCRA_LUA)
        self._prefix = prefix

    def acquire(self, key: str, qps: float, max_wait_s: float) -> bool:
        micros = self._script(
            keys=[self._prefix + key], args=[int(1_000_000 / qps), int(max_wait_s * 1_000_000)]
        )
        wait = int(micros)
        if wait < 0:
            return False
        if wait > 0:
            time.sleep(wait / 1_000_000)
        return True


_limiters: dict[str, RateLimiter] = {}
_limiters_lock = threading.Lock()


def get_rate_limiter(broker_url: str) -> RateLimiter:
    """Redis-backed when the broker is Redis, else in-process."""
    with _limiters_lock:
        limiter = _limiters.get(broker_url)
        if limiter is None:
            if broker_url.startswith(("redis://", "rediss://")):
                limiter = RedisRateLimiter(broker_url)
            else:
                limiter = LocalRateLimiter()
            _limiters[broker_url] = limiter
        return limiter
