"""Every scheduling policy as a value: when to poll a job next, how long a whole provider rests,
when to retry a callback and how long one attempt may take.

Each is a frozen dataclass whose docstring states its formula, and a pure function of its inputs
(``polls``, ``errors``, ``attempts``, a random draw): testable without a clock, a database or a
network.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from worker.errors import ConfigError
from worker.settings import Settings

Rand = Callable[[], float]


def jitter(delay: float, fraction: float, rand: Rand = random.random) -> float:
    """``delay`` scaled by a uniform factor in [1 - fraction, 1 + fraction]."""
    r = rand()
    if not 0 <= r <= 1:
        raise ValueError(f"rand() must return a number in [0, 1], got {r!r}")
    return delay * (1.0 + fraction * (2.0 * r - 1.0))


#: Where the plain backoff starts (before JOBTRACKER_POLL_INTERVAL_MIN could go below it).
BACKOFF_START_S = 5.0


@dataclass(frozen=True)
class PollPolicy:
    """When a job is polled next by the plain backoff: the schedule of kinds with too little
    history to learn from, of jobs that outlive what was learned, and of everything when
    ``JOBTRACKER_POLL_SCHEDULE=backoff`` (the adaptive schedule is in :mod:`worker.adaptive`).

    After an answer with no error, the ``n``-th poll of a job (n = polls made, from 1) waits
    ``clamp(start_s * growth ** (n - 1), min_s, max_s)`` (``start_s`` defaults to ``min_s``),
    jittered by ±``jitter`` and clamped again, so young jobs are polled often and old ones
    settle at ``max_s``. After ``e`` consecutive errors it waits
    ``clamp(start_s * error_growth ** e, min_s, max_s)`` jittered the same way: transient errors
    back off harder than healthy polls.
    """

    min_s: float = BACKOFF_START_S
    max_s: float = Settings.poll_interval_max_s
    growth: float = 1.5
    error_growth: float = 3.0
    jitter: float = 0.2
    start_s: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PollPolicy:
        # The backoff starts at 5 s as it always did, even with the lower interval floor the
        # adaptive schedule is allowed (JOBTRACKER_POLL_INTERVAL_MIN, 1 s by default).
        return cls(
            min_s=settings.poll_interval_min_s,
            max_s=settings.poll_interval_max_s,
            start_s=max(BACKOFF_START_S, settings.poll_interval_min_s),
        )

    def _clamp(self, delay: float) -> float:
        return max(self.min_s, min(self.max_s, delay))

    @property
    def _start(self) -> float:
        return self.min_s if self.start_s is None else self.start_s

    def next_delay(self, polls: int, rand: Rand = random.random) -> float:
        base = self._clamp(self._start * self.growth ** max(0, min(polls - 1, 64)))
        return self._clamp(jitter(base, self.jitter, rand))

    def error_delay(self, errors: int, rand: Rand = random.random) -> float:
        base = self._clamp(self._start * self.error_growth ** max(1, min(errors, 64)))
        return self._clamp(jitter(base, self.jitter, rand))


@dataclass(frozen=True)
class AdaptivePolicy:
    """The adaptive schedule's knobs (:mod:`worker.adaptive`).

    ``seconds_per_call``: how many seconds of mean detection latency one provider call is worth
    (``JOBTRACKER_POLL_SECONDS_PER_CALL``). The schedule minimises, over the learned durations
    of the kind, ``calls + detection latency / seconds_per_call``: polls come where finishes are
    likely, and a call is spent only where it is expected to save that much waiting. Each gap is
    jittered by ±``jitter`` (fresh answers at varied ages also keep the learning sharp).

    A kind needs ``min_samples`` finished jobs among the last ``window`` before its schedule is
    learned; until then, and for a job that outlives what was learned, the backoff
    (:class:`PollPolicy`) applies. Recent jobs weigh more: a job ``half_life`` finishes older
    than the newest counts half, so a change of the provider's speed shows within tens of jobs.
    ``early_check``: poll once at enqueue anyway (``JOBTRACKER_POLL_EARLY_CHECK``).
    """

    seconds_per_call: float = Settings.poll_seconds_per_call
    jitter: float = 0.1
    min_samples: int = 30
    window: int = 400
    half_life: int = 80
    early_check: bool = Settings.poll_early_check
    min_s: float = Settings.poll_interval_min_s
    max_s: float = Settings.poll_interval_max_s

    @classmethod
    def from_settings(cls, settings: Settings) -> AdaptivePolicy:
        return cls(
            seconds_per_call=settings.poll_seconds_per_call,
            early_check=settings.poll_early_check,
            min_s=settings.poll_interval_min_s,
            max_s=settings.poll_interval_max_s,
        )


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
        return jitter(base, self.jitter, rand)

    def probe_delay(self, paused_for_s: float) -> float:
        return max(self.probe_base_s, min(self.probe_max_s, paused_for_s))


@dataclass(frozen=True)
class RatePolicy:
    """How fast a provider is called: never above the configured QPS (the ceiling), and at
    what the provider accepts below it (additive increase, multiplicative decrease).

    Pacing: slots are ``interval = (1 + slack) / rate`` seconds apart, shared by every worker,
    and a call goes at most ``early * slack`` before its slot and at most ``late * slack`` after
    it (a slot reached later is dropped, never fired late). A 1-second window then only holds
    calls whose slots lie within ``1 + (early + late) * slack`` s of one another, at most
    ``floor((1 + (early + late) * slack) / interval) + 1`` of them, which is at most ``rate``
    (an integer rate) because ``early + late < 1``: whatever the rate, the number of workers and
    how their calls interleave. The rest of the slack, ``(1 - early - late) * slack``, is left
    for the way to the provider (signing, the network, a thread that waits for the CPU).

    ``slack = max(margin / (1 - margin), min(max_slack, ceiling / ample_qps - 1))``. While the
    ceiling could bind (up to ``ample_qps``) that is ``margin / (1 - margin)``, so ``interval = 1
    / (rate * (1 - margin))``: with a 2 % margin, 20.4 ms of slack, a call goes up to 12 ms after
    its slot (never before: going early buys nothing when a slot is reserved ahead) and 8 ms are
    left. Above ``ample_qps`` (more calls per second than a deployment of jobtracker makes) the
    ceiling cannot bind, and the slack grows with it: the pace still allows ``ceiling / (1 +
    slack)``, ``ample_qps`` or more, while its slots lie microseconds apart and a call may go up
    to ``late * max_slack`` (5.4 s) after its slot, so a whole batch goes out on one reservation.

    Adapting, with ``rate`` starting at the ceiling and ``run`` counting refusals in a row:

    - each ``RequestLimitExceeded``: ``run += 1``; the first of a run records
      ``learned = rate``; then ``rate = max(floor, rate * (1 - min(max_cut, cut * 2 ** (run -
      1))))``. One refusal among answers costs ``cut`` (5 %) of the rate, not the provider;
      refusals in a row cut harder (5, 10, 20, 40, 50 % ...), so a QPS configured 2.5 times
      too high is brought down within a second or two;
    - each answer: ``run = 0`` and ``rate = min(ceiling, rate + step / rate)``, so one second of
      answers adds ``step``: ``fast_step * ceiling`` while ``rate < approach * learned`` (or
      nothing was learned yet), else ``slow_step * learned``: quick to recover, slow near the
      rate refused last, and still probing above it (the quota others leave may grow again).

    ``floor`` is ``min_fraction * ceiling``; at it, refusals in a row make the whole provider rest
    (``worker.providers.state``).
    """

    margin: float = 0.02
    early: float = 0.0
    late: float = 0.6
    ample_qps: float = 10_000.0
    max_slack: float = 9.0
    cut: float = 0.05
    max_cut: float = 0.5
    fast_step: float = 0.25
    slow_step: float = 0.01
    approach: float = 0.9
    min_fraction: float = 0.02

    def __post_init__(self) -> None:
        if not (self.early >= 0.0 and self.late >= 0.0 and self.early + self.late < 1.0):
            raise ValueError("early + late must be below 1 for the window bound")

    def slack(self, ceiling: float) -> float:
        return max(
            self.margin / (1.0 - self.margin), min(self.max_slack, ceiling / self.ample_qps - 1.0)
        )

    def interval(self, rate: float, ceiling: float) -> float:
        """Seconds between two slots at ``rate`` (a provider configured at ``ceiling``)."""
        return (1.0 + self.slack(ceiling)) / rate

    def early_s(self, ceiling: float) -> float:
        """How long before its slot a call may go."""
        return self.early * self.slack(ceiling)

    def late_s(self, ceiling: float) -> float:
        """How long after its slot a call may still go."""
        return self.late * self.slack(ceiling)

    def floor(self, ceiling: float) -> float:
        return max(0.01, self.min_fraction * ceiling)

    def after_throttle(self, rate: float, ceiling: float, run: int) -> float:
        """The rate after the ``run``-th refusal in a row at ``rate``."""
        cut = min(self.max_cut, self.cut * 2 ** max(0, min(run - 1, 30)))
        return max(self.floor(ceiling), min(rate, ceiling) * (1.0 - cut))

    def after_successes(self, rate: float, learned: float, ceiling: float, n: int) -> float:
        rate = min(rate, ceiling)
        for _ in range(n):
            near = learned > 0 and rate >= self.approach * learned
            step = self.slow_step * learned if near else self.fast_step * ceiling
            rate = min(ceiling, rate + step / rate)
        return rate


class AttemptResult(Protocol):
    """What :class:`DeliveryPolicy` reads of one attempt (a ``webhooks.send.AttemptOutcome``)."""

    @property
    def ok(self) -> bool: ...
    @property
    def final(self) -> bool: ...
    @property
    def retry_after_s(self) -> float | None: ...


#: How much of a receiver's answer is kept for the attempt log (``webhook_attempts``).
LOG_BODY_BYTES = 1024


@dataclass(frozen=True)
class DeliveryPolicy:
    """When to retry a callback, and how long one attempt may take.

    After the n-th failed attempt (n = 1, 2, ...) the next one waits::

        delay(n) = max(schedule[n-1] * (1 + jitter * (2 * rand() - 1)),
                       min(retry_after, retry_after_cap_s))

    where ``rand()`` is uniform in [0, 1) and ``retry_after`` is the receiver's Retry-After (sent
    with 429 or 503; 0 when absent). There is no next attempt (``None``, the message ends
    ``failed``) when n > len(schedule), after 410 Gone, or when the URL is refused. So a message
    gets at most ``1 + len(schedule)`` attempts; the default schedule is Svix's (5 s, 5 min,
    30 min, 2 h, 5 h, 10 h, 10 h). A missing secret is retried like any failure, so setting one
    within the schedule still delivers.

    One attempt: connecting may take ``connect_timeout_s``, everything (DNS, connect, TLS, request,
    answer) ``total_timeout_s``; at most ``body_cap_bytes`` of the answer are read.

    Sharing the ``threads`` of one process (a *destination* is a receiver's (host, port)):

    - a destination gets ``per_destination`` attempts at once once it answered, and 1 while it
      has not answered yet in this process or its last attempt timed out;
    - one API client's callbacks hold at most ``max(1, floor(threads * share))`` threads, and so
      do all the destinations whose last attempt timed out, together;
    - waiting for a thread: at most ``backlog`` first sends (handed over at commit) and
      ``backlog / 2`` messages of the sweep (retries, lost sends), kept apart and served in
      turn; once either queue is half full, a destination adds to it only while it has fewer
      than ``queue_per_destination`` waiting (once it answered; else ``queue_per_unproven``).
      A message refused a place stays in the outbox, due, for the sweep (a swept one
      ``busy_defer_s`` to ``2 * busy_defer_s`` later, so the next sweep reaches others first);
    - a destination's circuit breaker opens after ``breaker_timeouts`` timeouts in a row (every
      worker's, in ``delivery_breakers``); while it is open one probe attempt goes out every
      ``breaker_probe_s``, and any other message to it is skipped: no attempt, no attempt row,
      ``attempts`` unchanged, due again at the next probe time plus up to ``breaker_probe_s``.
      Any answer closes it.
    """

    retry_schedule_s: tuple[float, ...] = Settings.webhook_retry_schedule_s
    #: Each delay varies by up to this fraction either way, so retries do not arrive in waves.
    jitter: float = 0.1
    retry_after_cap_s: float = 3600.0
    connect_timeout_s: float = 5.0
    total_timeout_s: float = 15.0
    body_cap_bytes: int = 64 * 1024
    #: Also refuse private, loopback, ULA and CGNAT addresses (JOBTRACKER_WEBHOOK_BLOCK_PRIVATE).
    block_private: bool = Settings.webhook_block_private
    threads: int = Settings.delivery_threads
    per_destination: int = 4
    share: float = 0.5
    backlog: int = 1024
    queue_per_destination: int = 256
    queue_per_unproven: int = 8
    busy_defer_s: float = 5.0
    breaker_timeouts: int = 5
    breaker_probe_s: float = 30.0

    def __post_init__(self) -> None:
        if any(not s >= 0 for s in self.retry_schedule_s):
            raise ConfigError("webhook retry delays must be non-negative seconds")
        if not 0 <= self.jitter < 1:
            raise ConfigError("webhook retry jitter must be in [0, 1)")
        if not 0 < self.connect_timeout_s <= self.total_timeout_s:
            raise ConfigError("webhook timeouts must satisfy 0 < connect <= total")
        if self.retry_after_cap_s < 0 or self.body_cap_bytes < LOG_BODY_BYTES:
            raise ConfigError(
                f"webhook Retry-After cap must be >= 0 and body cap >= {LOG_BODY_BYTES} bytes"
            )
        if self.threads < 2 or not 0 < self.share < 1 or self.per_destination < 1:
            raise ConfigError("delivery needs >= 2 threads, a share in (0, 1), >= 1 per receiver")
        if min(self.backlog, self.queue_per_unproven, self.breaker_timeouts) < 1:
            raise ConfigError("delivery backlog, queues and breaker threshold must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            retry_schedule_s=tuple(float(s) for s in settings.webhook_retry_schedule_s),
            block_private=settings.webhook_block_private,
            threads=settings.delivery_threads,
        )

    @property
    def held_at_most(self) -> int:
        """Threads one API client, or all timing-out destinations together, may hold."""
        return max(1, int(self.threads * self.share))

    @property
    def max_attempts(self) -> int:
        return 1 + len(self.retry_schedule_s)

    @property
    def lease_s(self) -> float:
        """How long a sender holds a message: one attempt ends within ``total_timeout_s`` (the
        sender enforces it), so a sender that died mid-POST delays the retry by at most this."""
        return self.total_timeout_s + 5.0

    def next_attempt_delay(
        self, attempts_made: int, outcome: AttemptResult, *, rand: Rand = random.random
    ) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` attempts, or None if none."""
        if outcome.ok:
            raise ValueError("the message was delivered; there is no next attempt")
        if attempts_made < 1:
            raise ValueError("attempts_made counts the attempt just made, so it is >= 1")
        if outcome.final or attempts_made > len(self.retry_schedule_s):
            return None
        delay = jitter(self.retry_schedule_s[attempts_made - 1], self.jitter, rand)
        if outcome.retry_after_s is not None:
            delay = max(delay, min(outcome.retry_after_s, self.retry_after_cap_s))
        return delay
