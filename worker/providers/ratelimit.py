"""A per-provider rate limit shared by every worker.

GCRA (the "virtual scheduling" form of a token bucket): calls take the next free slots, slots are
``1 / qps`` apart, and a caller sleeps until its slot. With Redis the slot pointer lives in one
key that every worker moves atomically (a Lua script on the server's clock), so all workers
together never exceed the limit. Without Redis (the embedded broker: one process) the same
arithmetic runs under a lock.

A poll batch reserves the slots for all its jobs in one call (one Redis round trip per batch,
not per poll), as many as fit within ``max_wait_s``. Slots are spaced evenly with no burst,
because the provider counts requests per second: a burst at a second boundary would be throttled
even when the average is under the limit.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import redis

#: Reserve up to ARGV[3] slots ARGV[1] microseconds apart, all within ARGV[2] microseconds from
#: now; return {wait before the first slot, slots reserved} (0 slots: the next is too far away).
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > max_wait then return {wait, 0} end
local n = math.min(want, math.floor((max_wait - wait) / interval) + 1)
local until_us = tat + n * interval
redis.call('SET', KEYS[1], tostring(until_us), 'PX', math.floor((until_us - now) / 1000) + 60000)
return {wait, n}
"""


class RateLimiter(Protocol):
    def reserve(self, key: str, qps: float, n: int, max_wait_s: float) -> tuple[float, int]:
        """Reserve up to ``n`` slots starting within ``max_wait_s``; return (wait, count)."""
        ...


def slot_times(
    limiter: RateLimiter, key: str, qps: float, n: int, max_wait_s: float
) -> list[float]:
    """``time.monotonic()`` instants of up to ``n`` reserved slots (empty: none within reach)."""
    wait, count = limiter.reserve(key, qps, n, max_wait_s)
    start = time.monotonic() + wait
    return [start + i / qps for i in range(count)]


class LocalRateLimiter:
    """The GCRA in one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def reserve_at(
        self, key: str, qps: float, n: int, max_wait_s: float, now: float
    ) -> tuple[float, int]:
        interval = 1.0 / qps
        with self._lock:
            tat = max(self._tat.get(key, 0.0), now)
            wait = tat - now
            if wait > max_wait_s:
                return wait, 0
            count = min(n, int((max_wait_s - wait) / interval + 1e-9) + 1)
            self._tat[key] = tat + count * interval
            return wait, count

    def reserve(self, key: str, qps: float, n: int, max_wait_s: float) -> tuple[float, int]:
        return self.reserve_at(key, qps, n, max_wait_s, time.monotonic())


class RedisRateLimiter:
    """The GCRA in Redis, shared by every worker on every host."""

    def __init__(self, url: str, prefix: str = "jobtracker:ratelimit:") -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._redis.register_script(_GCRA_LUA)
        self._prefix = prefix

    def reserve(self, key: str, qps: float, n: int, max_wait_s: float) -> tuple[float, int]:
        wait_us, count = self._script(
            keys=[self._prefix + key],
            args=[max(1, int(1_000_000 / qps)), int(max_wait_s * 1_000_000), max(1, n)],
        )
        return int(wait_us) / 1_000_000, int(count)


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
