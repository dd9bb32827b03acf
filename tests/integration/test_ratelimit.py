"""The shared rate limit holds across workers (threads with separate Redis clients)."""

from __future__ import annotations

import itertools
import threading
import time

from worker.providers.ratelimit import RateLimiter, RedisRateLimiter, slot_times


def acquire(limiter: RateLimiter, key: str, qps: float, max_wait_s: float) -> bool:
    """One slot, waited for (what a poll does per job); False if none within max_wait_s."""
    slots = slot_times(limiter, key, qps, 1, max_wait_s)
    if slots:
        time.sleep(max(0.0, slots[0] - time.monotonic()))
    return bool(slots)


def test_workers_together_never_exceed_the_limit(redis_url: str) -> None:
    qps, duration = 40.0, 1.5
    stamps: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        limiter = RedisRateLimiter(redis_url)  # each "worker" its own connection
        while time.monotonic() < stop:
            if acquire(limiter, "video_face_fusion", qps, max_wait_s=0.5):
                with lock:
                    stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    # In any one-second window, at most qps calls (+1 for the window's closed ends).
    worst = max(sum(1 for s in stamps if start <= s < start + 1.0) for start in stamps)
    assert worst <= qps + 1, worst
    # And the limit is used, not starved: close to qps per second overall.
    rate = len(stamps) / (stamps[-1] - stamps[0])
    assert rate >= qps * 0.8, rate


def test_a_slot_too_far_away_is_refused_not_reserved(redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url)
    assert acquire(limiter, "image_animate", 1.0, max_wait_s=0.0)
    started = time.monotonic()
    assert not acquire(limiter, "image_animate", 1.0, max_wait_s=0.1)
    assert time.monotonic() - started < 0.1


def test_a_batch_reserves_its_slots_in_one_call(redis_url: str) -> None:
    """Slots of one batch and of a concurrent one interleave without overlapping."""
    a, b = RedisRateLimiter(redis_url), RedisRateLimiter(redis_url)
    first = slot_times(a, "k", 10.0, 5, max_wait_s=10)
    second = slot_times(b, "k", 10.0, 5, max_wait_s=10)
    assert len(first) == len(second) == 5
    everything = sorted(first + second)
    gaps = [y - x for x, y in itertools.pairwise(everything)]
    assert min(gaps) >= 0.1 - 0.01  # never two slots closer than 1/qps
    assert second[0] >= first[-1] + 0.1 - 0.01
    # Only what fits within max_wait is reserved.
    assert len(slot_times(a, "k", 10.0, 50, max_wait_s=0.5)) <= 6
