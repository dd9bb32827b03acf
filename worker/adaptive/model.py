"""Learned schedules, per kind (and per region where the data supports it), kept fresh in memory.

Every ``REFRESH_S`` (``REFRESH_UNLEARNED_S`` until a kind has a plan) a process reads the newest
finished jobs of a kind (at most ``AdaptivePolicy.window``, through the index on
``(kind, finished_at)``: never a scan), turns each into a censored observation of its duration
(finished between the last poll that found it unfinished and the one that found it finished;
expired: longer than its last unfinished poll), estimates the distribution
(:mod:`worker.adaptive.distribution`) and plans the schedule (:mod:`worker.adaptive.planner`). A
poll then costs a dictionary lookup.

A region gets its own schedule once it has ``min_samples`` jobs in the window; a job with a
duration hint (``expected_duration_s``) gets its kind's schedule rescaled to the hint (or, with no
history, one for a lognormal around it), cached per hint rounded to 5 %.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from jobtracker.models import JobStatus, TrackedJob
from jobtracker.models.jobs import FINISHED_PREDICATE
from worker.adaptive.distribution import Distribution, Observation, estimate, lognormal
from worker.adaptive.planner import Plan, plan
from worker.db import session_scope
from worker.policy import AdaptivePolicy, PollPolicy, jitter
from worker.settings import Settings

log = logging.getLogger(__name__)

#: How often a process learns a kind's schedule again; sooner while it has none yet (too few
#: finished jobs), so that the first plan follows the first finishes closely.
REFRESH_S = 30.0
REFRESH_UNLEARNED_S = 5.0
#: The spread assumed around a duration hint when the kind has no history to shape it.
HINT_SIGMA = 0.5
#: Error codes that say nothing about how long the job ran (it never ran, or we gave up on a row).
_NOT_A_DURATION = ("FailedOperation.JobNotExist", "FailedOperation.JobNotFound", "Tracker.")


@dataclass(frozen=True)
class Learned:
    """What a process knows of one kind: its distribution and plan, and its regions'."""

    at: float
    dist: Distribution | None
    plan: Plan | None
    regions: dict[str, tuple[Distribution, Plan]]
    #: Jobs read, their polls and detection bounds (for ``jobtracker stats``).
    finished: int
    polls_per_job: float | None
    detection_bound_s: float | None


class Schedules:
    """The process's learned schedules (thread-safe; a stale plan serves while one learns)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._learning: set[tuple[str, str]] = set()
        self._kinds: dict[tuple[str, str], Learned] = {}
        self._hinted: dict[tuple[str, str, int], Plan] = {}

    def plan_for(
        self, settings: Settings, kind: str, region: str, hint_s: float | None = None
    ) -> Plan | None:
        """The schedule for a job of ``kind`` in ``region`` (None: too little history, and no
        hint: the backoff applies)."""
        learned = self.learned(settings, kind)
        if hint_s is not None and hint_s > 0:
            return self._for_hint(settings, kind, learned, hint_s)
        if learned is None:
            return None
        regional = learned.regions.get(region)
        return regional[1] if regional is not None else learned.plan

    def learned(self, settings: Settings, kind: str) -> Learned | None:
        """What this process knows of ``kind``, learned again when it is over ``REFRESH_S``
        old (by one caller; the others go on with the old knowledge meanwhile)."""
        key = (settings.database_url, kind)
        with self._lock:
            known = self._kinds.get(key)
            every = (
                REFRESH_S if known is not None and known.plan is not None else REFRESH_UNLEARNED_S
            )
            if known is not None and time.monotonic() - known.at < every:
                return known
            if key in self._learning:
                return known
            self._learning.add(key)
        try:
            learned: Learned | None = learn(settings, kind, AdaptivePolicy.from_settings(settings))
        except Exception as exc:  # the database is away: keep what we knew, try again later
            log.warning("cannot learn the durations of %s: %s", kind, type(exc).__name__)
            learned = known
        finally:
            with self._lock:
                self._learning.discard(key)
        if learned is not None:
            with self._lock:
                self._kinds[key] = learned
                # Hinted plans are rescaled from the kind's distribution: learn them again too.
                self._hinted = {k: v for k, v in self._hinted.items() if k[1] != kind}
        return learned

    def _for_hint(
        self, settings: Settings, kind: str, learned: Learned | None, hint_s: float
    ) -> Plan:
        bucket = round(math.log(hint_s) / math.log(1.05))
        key = (settings.database_url, kind, bucket)
        with self._lock:
            known = self._hinted.get(key)
        if known is not None:
            return known
        policy = AdaptivePolicy.from_settings(settings)
        median = 1.05**bucket
        base = learned.dist if learned is not None else None
        learned_median = base.quantile(0.5) if base is not None else None
        dist = (
            base.scaled(median / learned_median)
            if base is not None and learned_median
            else lognormal(median, HINT_SIGMA)
        )
        made = plan(
            dist,
            latency_cost_s=policy.seconds_per_call,
            min_gap_s=policy.min_s,
            max_gap_s=policy.max_s,
        )
        with self._lock:
            if len(self._hinted) > 512:
                self._hinted.clear()
            self._hinted[key] = made
        return made

    def clear(self) -> None:
        """Forget everything learned (tests)."""
        with self._lock:
            self._kinds.clear()
            self._hinted.clear()


SCHEDULES = Schedules()


def observation(
    created_at: datetime,
    last_unfinished_at: datetime | None,
    finished_at: datetime,
    status: str,
    error_code: str | None,
) -> Observation | None:
    """What one finished job says of how long its kind takes (None: nothing)."""
    if status == JobStatus.CANCELED.value:
        return None
    if error_code and error_code.startswith(_NOT_A_DURATION) and status != "expired":
        return None
    after = (last_unfinished_at - created_at).total_seconds() if last_unfinished_at else 0.0
    if status == JobStatus.EXPIRED.value:
        return Observation(max(0.0, after), None) if last_unfinished_at else None
    by = (finished_at - created_at).total_seconds()
    return Observation(max(0.0, after), max(by, after, 1e-3))


def learn(settings: Settings, kind: str, policy: AdaptivePolicy) -> Learned:
    """Read the kind's newest finished jobs and learn their schedule (and their regions')."""
    with session_scope(settings) as session:
        rows = session.execute(
            select(
                TrackedJob.region,
                TrackedJob.created_at,
                TrackedJob.last_unfinished_at,
                TrackedJob.finished_at,
                TrackedJob.status,
                TrackedJob.error_code,
                TrackedJob.polls,
            )
            .where(FINISHED_PREDICATE, TrackedJob.kind == kind)
            .order_by(TrackedJob.finished_at.desc())
            .limit(policy.window * 3)
        ).all()
    by_region: dict[str, list[Observation]] = defaultdict(list)
    everyone: list[Observation] = []
    polls: list[int] = []
    bounds: list[float] = []
    for row in rows:
        assert row.finished_at is not None  # selected on it
        obs = observation(
            row.created_at, row.last_unfinished_at, row.finished_at, row.status, row.error_code
        )
        if obs is None:
            continue
        if len(everyone) < policy.window:
            weight = 0.5 ** (len(everyone) / policy.half_life)
            everyone.append(Observation(obs.after_s, obs.by_s, weight))
            polls.append(row.polls)
            if obs.by_s is not None:
                bounds.append(obs.by_s - obs.after_s)
        region = by_region[row.region]
        if len(region) < policy.window:
            region.append(
                Observation(obs.after_s, obs.by_s, 0.5 ** (len(region) / policy.half_life))
            )
    dist = plan_ = None
    regions: dict[str, tuple[Distribution, Plan]] = {}
    if len(everyone) >= policy.min_samples:
        dist = estimate(everyone)
        plan_ = _plan(dist, policy)
        if len(by_region) > 1:
            for name, observations in by_region.items():
                if len(observations) >= policy.min_samples:
                    regional = estimate(observations)
                    regions[name] = (regional, _plan(regional, policy))
    return Learned(
        at=time.monotonic(),
        dist=dist,
        plan=plan_,
        regions=regions,
        finished=len(everyone),
        polls_per_job=sum(polls) / len(polls) if polls else None,
        detection_bound_s=sum(bounds) / len(bounds) if bounds else None,
    )


def _plan(dist: Distribution, policy: AdaptivePolicy) -> Plan:
    return plan(
        dist,
        latency_cost_s=policy.seconds_per_call,
        min_gap_s=policy.min_s,
        max_gap_s=policy.max_s,
    )


def next_poll_at(
    job: TrackedJob, now: datetime, settings: Settings, backoff: PollPolicy
) -> datetime:
    """When to poll ``job`` next, just after an answer at ``now`` found it unfinished: its
    kind's learned schedule (jittered), or the backoff when there is too little history, when
    ``JOBTRACKER_POLL_SCHEDULE=backoff``, or when the job outlives what was learned."""
    gap = _planned_gap(job, now, settings)
    if gap is None:
        gap = backoff.next_delay(job.polls + 1)
    return now + timedelta(seconds=gap)


def first_poll_at(job: TrackedJob, settings: Settings) -> datetime | None:
    """When a job not polled yet should be: ``created_at`` plus its schedule's first age (None:
    now, with the backoff or ``JOBTRACKER_POLL_EARLY_CHECK``)."""
    policy = AdaptivePolicy.from_settings(settings)
    if settings.poll_schedule != "adaptive" or policy.early_check:
        return None
    schedule = SCHEDULES.plan_for(settings, job.kind, job.region, job.expected_duration_s)
    if schedule is None:
        return None
    return job.created_at + timedelta(seconds=schedule.first_age())


def _planned_gap(job: TrackedJob, now: datetime, settings: Settings) -> float | None:
    if settings.poll_schedule != "adaptive":
        return None
    schedule = SCHEDULES.plan_for(settings, job.kind, job.region, job.expected_duration_s)
    if schedule is None:
        return None
    seen = (now - job.created_at).total_seconds()
    age = schedule.next_age(seen)
    if age is None:
        return None
    policy = AdaptivePolicy.from_settings(settings)
    gap = jitter(max(0.0, age - seen), policy.jitter)
    return max(policy.min_s, min(policy.max_s, gap))
