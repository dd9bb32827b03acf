"""Poll a batch of claimed jobs: ask the provider for each, then write every outcome at once.

Per job: wait for a slot of the provider's shared pace, query, classify the answer
(:mod:`worker.flow.outcome` decides what it means). The provider's client (and its connections)
is shared by the batch; the writes go in one transaction at the end.

The claim's lease is a promise for the whole poll: a job is asked only if its answer can come
(each request is bounded as a whole: connect + read timeout) and be written before the lease
runs out, so no other worker can claim it meanwhile. What cannot be asked in time, and what a
paused provider or a process shutting down leaves, is released to poll again soon.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from jobtracker.models import ACTIVE_STATUSES, TrackedJob
from worker import clock, http
from worker.adaptive.model import first_poll_at
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
from worker.observe import metrics
from worker.observe.logs import log_context
from worker.policy import PollPolicy
from worker.providers import state as provider_state
from worker.providers.client import ProviderClient, get_client
from worker.providers.normalize import effective_error_class
from worker.providers.ratelimit import Pacer, get_rate_limiter
from worker.settings import Settings

log = logging.getLogger(__name__)

#: How long a batch may wait for its next rate-limit slot, in ticks; jobs whose slot would come
#: later are released to a later tick instead of holding a worker thread asleep.
MAX_SLOT_WAIT_TICKS = 2.0
#: A released job (not polled: provider paused, out of slots, lease too short) is due again after.
RELEASE_DELAY_S = 1.0
#: A first poll planned this soon is made now rather than put off.
FIRST_POLL_SLACK_S = 0.5
#: A batch about to wait longer than this for its next job writes the status changes it has first
#: (a finish, and its callback, must not wait for a later job of the batch).
FLUSH_BEFORE_WAIT_S = 0.2

_stopping = threading.Event()


def stop_soon() -> None:
    """The process is shutting down: every batch stops asking, the requests under way are cut,
    and each batch writes what it has (the polls that were answered, the rest released)."""
    _stopping.set()
    http.cut_all()


#: One claim as a poll task carries it: (tracked job id, lease, due time); no due time: now.
ClaimItem = tuple[int, datetime] | tuple[int, datetime, datetime]


def load_claimed(
    session: Session, claims: Sequence[ClaimItem]
) -> list[tuple[TrackedJob, datetime, datetime | None]]:
    """The claimed rows this batch still owns (a row re-claimed after its lease ran out is not),
    each with its lease and due time, in the claims' order."""
    leases = {item[0]: item for item in claims}
    rows = session.execute(
        select(TrackedJob).where(
            TrackedJob.id.in_(list(leases)),
            TrackedJob.status.in_([s.value for s in ACTIVE_STATUSES]),
        )
    ).scalars()
    owned = {row.id: row for row in rows if row.lease_expires_at == leases[row.id][1]}
    return [
        (owned[item[0]], item[1], item[2] if len(item) > 2 else None)
        for item in claims
        if item[0] in owned
    ]


def poll_batch(
    kind: str,
    region: str,
    claims: Sequence[ClaimItem],
    settings: Settings,
    *,
    rand: Any = random.random,
) -> BatchReport:
    """Poll every claimed job still owned, then write all outcomes in one transaction."""
    with log_context(kind=kind, region=region):
        return _poll_batch(kind, region, claims, settings, rand)


def _poll_batch(
    kind: str, region: str, claims: Sequence[ClaimItem], settings: Settings, rand: Any
) -> BatchReport:
    report = BatchReport()
    policy = PollPolicy.from_settings(settings)
    with session_scope(settings) as session:
        owned = load_claimed(session, claims)
        state = provider_state.load_states(session).get(kind)
    report.skipped = len(claims) - len(owned)
    probing = state is not None and state.paused
    client: ProviderClient | None = None
    pacer = Pacer(
        get_rate_limiter(settings),
        kind,
        settings.qps[kind],
        max_wait_s=settings.tick_seconds * MAX_SLOT_WAIT_TICKS,
    )
    # A request may take connect + read timeout in all, and the batch must still be written.
    needed_s = settings.request_deadline_s + settings.lease_margin_s
    stop_until: datetime | None = None
    outcomes: list[Outcome] = []
    provider_ok = False
    # None until the first call: an answer right after a refusal ends the run of refusals.
    answered_last: bool | None = None

    for index, (job, lease, due) in enumerate(owned):
        now = clock.now(settings)
        outcome = Outcome(job=job, lease=lease)
        outcomes.append(outcome)
        if stop_until is not None or _stopping.is_set():
            # Paused or resting: cannot ask; shutting down: another worker asks right away.
            _release(outcome, settings, now, at=stop_until or now)
            continue
        first = first_poll_at(job, settings) if job.polls == 0 else None
        if first is not None and first > now + timedelta(seconds=FIRST_POLL_SLACK_S):
            # Not polled yet, and its kind rarely finishes this early: no call until then.
            _release(outcome, settings, now, at=first)
            report.deferred += 1
            continue
        if due is not None and due > now:
            # Claimed ahead of its time (due before the next tick): wait for its instant, but
            # first write the status changes answered so far.
            news = any(o.to_status is not None for o in outcomes[:-1])
            if news and (due - now).total_seconds() > FLUSH_BEFORE_WAIT_S:
                _finish(kind, outcomes[:-1], settings, report, resume=probing and provider_ok,
                        answered=answered_last is True)  # fmt: skip
                del outcomes[:-1]
                probing = probing and not provider_ok  # a resumed provider stays resumed
            if _stopping.wait((due - now).total_seconds()):
                _release(outcome, settings, now, at=due)
                continue
            now = clock.now(settings)
        try:
            slot = pacer.next_slot(len(owned) - index)
        except Exception as exc:  # the shared limiter is away: do not poll blind
            log.warning("rate limiter unavailable: %s", exc)
            stop_until = now + timedelta(seconds=RELEASE_DELAY_S * (1 + rand()))
            _release(outcome, settings, now, at=stop_until)
            continue
        # The lease in this process's time: the answer must come and be written before it ends.
        lease_left_s = (lease - now).total_seconds()
        if slot is None or slot - time.monotonic() + needed_s > lease_left_s:
            _release(
                outcome, settings, now, at=now + timedelta(seconds=RELEASE_DELAY_S * (1 + rand()))
            )
            continue
        if _stopping.wait(max(0.0, slot - time.monotonic())):
            _release(outcome, settings, now, at=now)
            continue
        outcome.polled, outcome.polled_at = True, clock.now(settings)
        with log_context(job_id=job.job_id, tracked_job_id=job.id):
            client, stop_until, ok = _ask(kind, region, client, outcome, pacer, settings)
        if _stopping.is_set() and outcome.error is not None and outcome.answer is None:
            # Cut by the shutdown, not failed by the provider: not a poll.
            outcome.polled, outcome.error, outcome.error_class = False, None, None
            _release(outcome, settings, now, at=now)
            continue
        provider_ok = provider_ok or ok
        refused = isinstance(outcome.error, ThrottledError)
        if answered_last is False and not refused and outcome.polled:
            # An answer right after a refusal: the run of refusals is over, now (a batch can
            # hold many refusals among its answers, and each must not count as one in a row).
            with session_scope(settings) as session:
                provider_state.clear_throttle(session, kind, clock.now(settings))
        answered_last = not refused
        decide(outcome, settings, policy, clock.now(settings))
        metrics.record_poll(kind, outcome.error, outcome.error_class)

    pacer.close()
    metrics.PROVIDER_RATE.labels(kind).set(pacer.rate)
    if pacer.dropped:
        metrics.SLOTS_DROPPED.labels(kind).inc(pacer.dropped)
    resume = probing and provider_ok
    _finish(kind, outcomes, settings, report, resume=resume, answered=answered_last is True)
    log.debug(
        "batch done",
        extra={
            "kind": kind,
            "polled": report.polled,
            "released": report.released,
            "deferred": report.deferred,
            "skipped": report.skipped,
            "dropped_slots": pacer.dropped,
        },
    )
    return report


def _release(outcome: Outcome, settings: Settings, now: datetime, *, at: datetime) -> None:
    """Not asked in this batch: due again ``at`` (expired instead, past its deadline)."""
    outcome.next_poll_at = at
    expire_if_overdue(outcome, settings, now)


def _ask(
    kind: str,
    region: str,
    client: ProviderClient | None,
    outcome: Outcome,
    pacer: Pacer,
    settings: Settings,
) -> tuple[ProviderClient | None, datetime | None, bool]:
    """Query the provider for one job; fill in the outcome's answer or error.

    Returns the client (built on first use), until when the whole provider must rest (paused,
    or refusing every call) and whether the provider answered sensibly.
    """
    job = outcome.job
    stop_until: datetime | None = None
    provider_ok = False
    try:
        # Inside the try: a missing credential is a configuration error like AuthFailure.
        client = client or get_client(kind, region, settings)
        with metrics.POLL_SECONDS.labels(kind).time():
            outcome.answer = client.query(job.job_id, now=outcome.polled_at or clock.now(settings))
        provider_ok = True
        pacer.answered()
    except ProviderError as error:
        outcome.error = error
        age_s = (clock.now(settings) - job.created_at).total_seconds()
        outcome.error_class = effective_error_class(
            error, job_age_s=age_s, grace_s=settings.not_found_grace_s
        )
        if isinstance(error, ThrottledError):
            pace = pacer.refused()
            with session_scope(settings) as session:
                stop_until = provider_state.throttle(
                    session, kind, clock.now(settings), rate=pace.rate, run=pace.run
                )
            # Asked again soon, at the new pace (or when the provider rests no more).
            outcome.next_poll_at = stop_until or clock.now(settings) + timedelta(
                seconds=RELEASE_DELAY_S
            )
        elif outcome.error_class is ErrorClass.CONFIGURATION:
            with session_scope(settings) as session:
                stop_until = provider_state.pause(session, kind, str(error), clock.now(settings))
            outcome.next_poll_at = stop_until
        else:
            provider_ok = outcome.error_class is ErrorClass.JOB_TERMINAL
            if error.request_id is not None:
                pacer.answered()  # the provider answered (an error): the call was let through
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
    kind: str,
    outcomes: list[Outcome],
    settings: Settings,
    report: BatchReport,
    *,
    resume: bool,
    answered: bool,
) -> None:
    """Write the batch in one transaction; if the database refuses it, job by job, so that one
    outcome it cannot store (whatever the exception) never sinks its neighbours."""
    now = clock.now(settings)
    counted = replace(report, delivery_ids=list(report.delivery_ids))
    try:
        with session_scope(settings) as session:
            write_outcomes(session, outcomes, now, report)
            _provider_news(session, kind, now, resume=resume, answered=answered)
        return
    except Exception as exc:
        if _database_away(exc):
            raise  # the leases run out and the jobs are polled again
        log.error("batch write refused (%s); writing job by job", _name(exc))
    # Undo what the failed write counted (a batch written in parts keeps its earlier parts).
    report.delivery_ids[:] = counted.delivery_ids
    report.polled, report.transitions = counted.polled, counted.transitions
    report.errors, report.released = counted.errors, counted.released
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
        _provider_news(session, kind, now, resume=resume, answered=answered)


def _provider_news(
    session: Session, kind: str, now: datetime, *, resume: bool, answered: bool
) -> None:
    """What the batch says of the whole provider: a probe that worked resumes it; an answer
    after the last refusal ends the run of refusals."""
    if resume:
        provider_state.resume(session, kind, now)
    if answered:
        provider_state.clear_throttle(session, kind, now)


def _database_away(exc: Exception) -> bool:
    """The database cannot be reached (as opposed to refusing a row)."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def _name(exc: Exception) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return type(orig or exc).__name__
