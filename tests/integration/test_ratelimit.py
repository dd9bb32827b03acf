"""The shared rate limit holds across workers (threads with separate Redis clients)."""

from __future__ import annotations

import threading
import time

from worker.ratelimit import RedisRateLimiter


def test_workers_together_never_exceed_the_limit(redis_url: str) -> None:
    qps, duration = 40.0, 1.5
    stamps: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        limiter = RedisRateLimiter(redis_url)  # each "worker" its own connection
        while time.monotonic() < stop:
            if limiter.acquire("video_face_fusion", qps, max_wait_s=0.5):
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
    assert limiter.acquire("image_animate", 1.0, max_wait_s=0.0)
    started = time.monotonic()
    assert not limiter.acquire("image_animate", 1.0, max_wait_s=0.1)
    assert time.monotonic() - started < 0.1
