"""Poll a batch of claimed jobs: ask the provider for each, then write every outcome at once.

Per job: wait for a rate-limit slot, query, classify the answer (:mod:`worker.flow.outcome`
decides what it means). The provider's client (and its connections) is shared by the batch; the
writes go in one transaction at the end. A throttled or misconfigured provider stops the batch
early; the jobs not yet polled are released to poll again when the provider may be asked.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from models import ACTIVE_STATUSES, TrackedJob
from worker import clock
from worker.db import session_scope
from worker.errors import ErrorClass, ProviderError, ThrottledError
from worker.flow.outcome import (
    BatchReport,
    Outcome,
    decide,
    expire_if_overdue,
    unstorable,
    write_outcomes,
)
from worker.ops import metrics
from worker.ops.logs import log_context
from worker.policy import PollPolicy
from worker.providers import state as provider_state
from worker.providers.client import ProviderClient, get_client
from worker.providers.normalize import effective_error_class
from worker.providers.ratelimit import get_rate_limiter, slot_times
from worker.settings import Settings

log = logging.getLogger(__name__)

#: How long a batch may wait for its rate-limit slots, in ticks; jobs whose slot would come later
#: are released to a later tick instead of holding a worker thread asleep.
MAX_SLOT_WAIT_TICKS = 2.0
#: A released job (not polled: provider throttled, paused, or out of slots) is due again after.
RELEASE_DELAY_S = 1.0


def load_claimed(
    session: Session, claims: list[tuple[int, datetime]]
) -> list[tuple[TrackedJob, datetime]]:
    """The claimed rows this batch still owns (a row re-claimed after its lease ran out is not)."""
    leases = dict(claims)
    rows = session.execute(
        select(TrackedJob).where(
            TrackedJob.id.in_(list(leases)),
            TrackedJob.status.in_([s.value for s in ACTIVE_STATUSES]),
        )
    ).scalars()
    owned = {row.id: row for row in rows if row.lease_expires_at == leases[row.id]}
    return [(owned[job_id], lease) for job_id, lease in claims if job_id in owned]


def poll_batch(
    kind: str,
    region: str,
    claims: list[tuple[int, datetime]],
    settings: Settings,
    *,
    rand: Any = random.random,
) -> BatchReport:
    """Poll every claimed job still owned, then write all outcomes in one transaction."""
    with log_context(kind=kind, region=region):
        return _poll_batch(kind, region, claims, settings, rand)


def _poll_batch(
    kind: str, region: str, claims: list[tuple[int, datetime]], settings: Settings, rand: Any
) -> BatchReport:
    report = BatchReport()
    policy = PollPolicy.from_settings(settings)
    with session_scope(settings) as session:
        owned = load_claimed(session, claims)
        state = provider_state.load_states(session).get(kind)
    report.skipped = len(claims) - len(owned)
    probing = state is not None and state.paused
    client: ProviderClient | None = None
    limiter = get_rate_limiter(settings.broker_url)
    stop_until: datetime | None = None
    outcomes: list[Outcome] = []
    provider_ok = False

    slots: deque[float] = deque()
    max_wait = settings.tick_seconds * MAX_SLOT_WAIT_TICKS
    for index, (job, lease) in enumerate(owned):
        now = clock.now(settings)
        outcome = Outcome(job=job, lease=lease)
        outcomes.append(outcome)
        if stop_until is not None:
            outcome.next_poll_at = stop_until
            expire_if_overdue(outcome, settings, now)  # cannot ask the provider: give up on time
            continue
        if not slots:
            # Slots for the rest of the batch in one call (one Redis round trip per batch).
            try:
                slots.extend(
                    slot_times(limiter, kind, settings.qps[kind], len(owned) - index, max_wait)
                )
            except Exception as exc:  # the shared limiter (Redis) is down: do not poll blind
                log.warning("rate limiter unavailable: %s", exc)
                stop_until = now + timedelta(seconds=RELEASE_DELAY_S * (1 + rand()))
        if not slots:
            outcome.next_poll_at = stop_until or now + timedelta(
                seconds=RELEASE_DELAY_S * (1 + rand())
            )
            expire_if_overdue(outcome, settings, now)
            continue
        time.sleep(max(0.0, slots.popleft() - time.monotonic()))
        outcome.polled = True
        with log_context(job_id=job.job_id, tracked_job_id=job.id):
            client, stop_until, ok = _ask(kind, region, client, outcome, settings)
        provider_ok = provider_ok or ok
        decide(outcome, settings, policy, clock.now(settings))
        metrics.record_poll(kind, outcome.error, outcome.error_class)

    _finish(kind, outcomes, settings, report, resume=probing and provider_ok)
    return report


def _ask(
    kind: str,
    region: str,
    client: ProviderClient | None,
    outcome: Outcome,
    settings: Settings,
) -> tuple[ProviderClient | None, datetime | None, bool]:
    """Query the provider for one job; fill in the outcome's answer or error.

    Returns the client (built on first use), until when the whole provider must rest (throttled,
    paused) and whether the provider answered sensibly.
    """
    job = outcome.job
    stop_until: datetime | None = None
    provider_ok = False
    try:
        # Inside the try: a missing credential is a configuration error like AuthFailure.
        client = client or get_client(kind, region, settings)
        with metrics.POLL_SECONDS.labels(kind).time():
            outcome.answer = client.query(job.job_id, now=clock.now(settings))
        provider_ok = True
    except ProviderError as error:
        outcome.error = error
        age_s = (clock.now(settings) - job.created_at).total_seconds()
        outcome.error_class = effective_error_class(
            error, job_age_s=age_s, grace_s=settings.not_found_grace_s
        )
        if isinstance(error, ThrottledError):
            with session_scope(settings) as session:
                stop_until = provider_state.throttle(session, kind, clock.now(settings))
            outcome.next_poll_at = stop_until
        elif outcome.error_class is ErrorClass.CONFIGURATION:
            with session_scope(settings) as session:
                stop_until = provider_state.pause(session, kind, str(error), clock.now(settings))
            outcome.next_poll_at = stop_until
        else:
            provider_ok = outcome.error_class is ErrorClass.JOB_TERMINAL
        # Configuration errors are logged loudly once, by provider_state.pause.
        log.info(
            "poll failed: %s",
            error.message,
            extra={
                "code": error.code,
                "error_class": str(outcome.error_class),
                "request_id": error.request_id,
            },
        )
    return client, stop_until, provider_ok


def _finish(
    kind: str, outcomes: list[Outcome], settings: Settings, report: BatchReport, *, resume: bool
) -> None:
    """Write the batch in one transaction; if the database refuses it, job by job, so that one
    outcome it cannot store (whatever the exception) never sinks its neighbours."""
    now = clock.now(settings)
    try:
        with session_scope(settings) as session:
            write_outcomes(session, outcomes, now, report)
            _provider_news(session, kind, outcomes, now, resume=resume)
        return
    except Exception as exc:
        if _database_away(exc):
            raise  # the leases run out and the jobs are polled again
        log.error("batch write refused (%s); writing job by job", _name(exc))
    report.delivery_ids.clear()
    report.polled = report.transitions = report.errors = report.released = 0
    policy = PollPolicy.from_settings(settings)
    for outcome in outcomes:
        try:
            with session_scope(settings) as session:
                write_outcomes(session, [outcome], now, report)
            continue
        except Exception as exc:
            if _database_away(exc):
                raise
            refused = exc
        log.error(
            "could not record a poll (%s); recording the error instead",
            _name(refused),
            extra={"tracked_job_id": outcome.job.id, "job_id": outcome.job.job_id},
        )
        try:
            with session_scope(settings) as session:
                fallback = unstorable(outcome, refused, settings, policy, now)
                write_outcomes(session, [fallback], now, report)
        except Exception as exc:
            if _database_away(exc):
                raise
            log.exception("could not record a poll; its lease runs out and it is polled again")
    with session_scope(settings) as session:
        _provider_news(session, kind, outcomes, now, resume=resume)


def _provider_news(
    session: Session, kind: str, outcomes: list[Outcome], now: datetime, *, resume: bool
) -> None:
    """What the batch says of the whole provider: a probe that worked resumes it, answers with
    no throttle clear its throttle count."""
    if resume:
        provider_state.resume(session, kind, now)
    throttled = any(isinstance(o.error, ThrottledError) for o in outcomes)
    if not throttled and any(o.answer is not None for o in outcomes):
        provider_state.clear_throttle(session, kind, now)


def _database_away(exc: Exception) -> bool:
    """The database cannot be reached (as opposed to refusing a row)."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def _name(exc: Exception) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return type(orig or exc).__name__
