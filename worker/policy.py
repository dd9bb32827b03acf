"""Scheduling policies as values: when to poll a job next, how long to back a provider off.

Pure functions of their inputs (``polls``, ``errors``, a random draw): testable without a clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from worker.settings import Settings

Rand = Callable[[], float]


def _jitter(delay: float, fraction: float, rand: Rand) -> float:
    """``delay`` scaled by a uniform factor in [1 - fraction, 1 + fraction]."""
    return delay * (1.0 + fraction * (2.0 * rand() - 1.0))


@dataclass(frozen=True)
class PollPolicy:
    """When a job is polled next.

    After an answer with no error, the ``n``-th poll of a job (n = polls made, from 1) waits
    ``clamp(min_s * growth ** (n - 1), min_s, max_s)``, jittered by ±``jitter`` and clamped again,
    so young jobs are polled often and old ones settle at ``max_s``.
    After ``e`` consecutive errors it waits ``clamp(min_s * error_growth ** e, min_s, max_s)``
    jittered the same way: transient errors back off harder than healthy polls.
    """

    min_s: float = 5.0
    max_s: float = 300.0
    growth: float = 1.5
    error_growth: float = 3.0
    jitter: float = 0.2

    @classmethod
    def from_settings(cls, settings: Settings) -> PollPolicy:
        return cls(min_s=settings.poll_interval_min_s, max_s=settings.poll_interval_max_s)

    def _clamp(self, delay: float) -> float:
        return max(self.min_s, min(self.max_s, delay))

    def next_delay(self, polls: int, rand: Rand = random.random) -> float:
        base = self._clamp(self.min_s * self.growth ** max(0, min(polls - 1, 64)))
        return self._clamp(_jitter(base, self.jitter, rand))

    def error_delay(self, errors: int, rand: Rand = random.random) -> float:
        base = self._clamp(self.min_s * self.error_growth ** max(1, min(errors, 64)))
        return self._clamp(_jitter(base, self.jitter, rand))


@dataclass(frozen=True)
class ProviderBackoff:
    """How long a whole provider rests.

    Throttled (``RequestLimitExceeded``) for the ``n``-th time in a row: ``min(throttle_max_s,
    throttle_base_s * 2 ** (n - 1))`` jittered by ±``jitter``. Paused by a configuration error:
    the next probe waits as long as the provider has been paused already, clamped to
    [``probe_base_s``, ``probe_max_s``], so probes thin out geometrically.
    """

    throttle_base_s: float = 1.0
    throttle_max_s: float = 60.0
    probe_base_s: float = 15.0
    probe_max_s: float = 300.0
    jitter: float = 0.2

    def throttle_delay(self, consecutive: int, rand: Rand = random.random) -> float:
        base = min(
            self.throttle_max_s, self.throttle_base_s * 2 ** max(0, min(consecutive - 1, 32))
        )
        return _jitter(base, self.jitter, rand)

    def probe_delay(self, paused_for_s: float) -> float:
        return max(self.probe_base_s, min(self.probe_max_s, paused_for_s))
