"""Poll a batch of claimed jobs: ask the provider for each, then write every outcome at once.

The batch loads the claimed rows it still owns, then gives each job its turn, a sequence of
stages (:data:`STAGES`): still asking (the provider not paused or resting, the process not
stopping), the first poll not put off, the job's due time reached, a slot of the provider's
shared pace in time for the lease, the call. Any stage may leave the job unasked, with a reason
(:class:`Left`, counted by kind and reason); an asked job's answer is classified
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
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


class Left(StrEnum):
    """Why a claimed job was left unasked in a batch (released to be polled again later, or
    expired if past its deadline); counted in ``jobtracker_polls_left_total{kind,reason}``."""

    #: A configuration error paused the provider earlier in the batch: asked again at the probe.
    PROVIDER_PAUSED = "provider_paused"
    #: The provider refuses every call and rests: asked again when the rest is over.
    PROVIDER_RESTING = "provider_resting"
    #: The process is stopping: another worker (or this one, restarted) asks it right away.
    SHUTTING_DOWN = "shutting_down"
    #: Not polled yet, and its kind rarely finishes this early: put off to its first poll.
    FIRST_POLL_DEFERRED = "first_poll_deferred"
    #: The provider's shared pace has no slot within the wait a batch may take.
    NO_RATE_SLOT = "no_rate_slot"
    #: Its slot comes too late for the answer to be written before the lease ends.
    LEASE_TOO_SHORT = "lease_too_short"
    #: The shared pace cannot be read (Redis or the database away): no call without it.
    LIMITER_UNAVAILABLE = "limiter_unavailable"


@dataclass(frozen=True)
class Leave:
    """A stage's verdict on a job: not asked in this batch, why, and when it is due again."""

    reason: Left
    at: datetime


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


@dataclass
class _Batch:
    """What the stages of one batch share."""

    kind: str
    region: str
    settings: Settings
    policy: PollPolicy
    rand: Any
    pacer: Pacer
    report: BatchReport
    #: The outcomes not written yet; a job's is appended as its turn comes.
    outcomes: list[Outcome] = field(default_factory=list)
    #: A paused provider's batch is its probe: an answer resumes the provider.
    probing: bool = False
    client: ProviderClient | None = None
    #: Until when, and why, this batch asks no more (the provider paused or resting, the
    #: limiter away).
    halt: Leave | None = None
    provider_ok: bool = False
    #: None until the first call: an answer right after a refusal ends the run of refusals.
    answered_last: bool | None = None


@dataclass
class _Turn:
    """One job's turn in the batch."""

    outcome: Outcome
    due: datetime | None
    #: Calls the batch still means to make, this one included.
    wanted: int
    #: The database's time, read at the start of the turn and again after waiting for it.
    now: datetime


def _poll_batch(
    kind: str, region: str, claims: Sequence[ClaimItem], settings: Settings, rand: Any
) -> BatchReport:
    with session_scope(settings) as session:
        owned = load_claimed(session, claims)
        state = provider_state.load_states(session).get(kind)
    batch = _Batch(
        kind=kind,
        region=region,
        settings=settings,
        policy=PollPolicy.from_settings(settings),
        rand=rand,
        pacer=Pacer(
            get_rate_limiter(settings),
            kind,
            settings.qps[kind],
            max_wait_s=settings.tick_seconds * MAX_SLOT_WAIT_TICKS,
        ),
        report=BatchReport(skipped=len(claims) - len(owned)),
        probing=state is not None and state.paused,
    )
    for index, (job, lease, due) in enumerate(owned):
        turn = _Turn(Outcome(job=job, lease=lease), due, len(owned) - index, clock.now(settings))
        batch.outcomes.append(turn.outcome)
        _take_turn(batch, turn)
    return _close(batch)


def _take_turn(batch: _Batch, turn: _Turn) -> None:
    """The job's stages in order (:data:`STAGES`); the first to leave it ends its turn."""
    for stage in STAGES:
        leave = stage(batch, turn)
        if leave is not None:
            _release(turn.outcome, batch.settings, turn.now, at=leave.at)
            metrics.POLLS_LEFT.labels(batch.kind, leave.reason).inc()
            return
    _record(batch, turn)


def _still_asking(batch: _Batch, turn: _Turn) -> Leave | None:
    """Paused or resting since a call earlier in the batch: cannot ask; shutting down: another
    worker asks right away."""
    if batch.halt is not None:
        return batch.halt
    if _stopping.is_set():
        return Leave(Left.SHUTTING_DOWN, turn.now)
    return None


def _first_poll(batch: _Batch, turn: _Turn) -> Leave | None:
    """Not polled yet, and its kind rarely finishes this early: no call until then."""
    job = turn.outcome.job
    first = first_poll_at(job, batch.settings) if job.polls == 0 else None
    if first is not None and first > turn.now + timedelta(seconds=FIRST_POLL_SLACK_S):
        batch.report.deferred += 1
        return Leave(Left.FIRST_POLL_DEFERRED, first)
    return None


def _due(batch: _Batch, turn: _Turn) -> Leave | None:
    """Claimed ahead of its time (due before the next tick): wait for its instant, but first
    write the status changes answered so far (a finish, and its callback, must not wait for a
    later job of the batch)."""
    if turn.due is None or turn.due <= turn.now:
        return None
    wait_s = (turn.due - turn.now).total_seconds()
    if wait_s > FLUSH_BEFORE_WAIT_S and any(o.to_status is not None for o in batch.outcomes[:-1]):
        _flush(batch)
    if _stopping.wait(wait_s):
        return Leave(Left.SHUTTING_DOWN, turn.due)
    turn.now = clock.now(batch.settings)
    return None


def _slot(batch: _Batch, turn: _Turn) -> Leave | None:
    """A slot of the provider's shared pace, early enough for the answer to come and be
    written before the lease ends; then wait for it."""
    settings = batch.settings
    try:
        slot = batch.pacer.next_slot(turn.wanted)
    except Exception as exc:  # the shared limiter is away: do not poll blind
        log.warning("rate limiter unavailable: %s", exc)
        batch.halt = Leave(Left.LIMITER_UNAVAILABLE, _soon(batch, turn.now))
        return batch.halt
    if slot is None:
        return Leave(Left.NO_RATE_SLOT, _soon(batch, turn.now))
    # A request may take connect + read timeout in all, and the batch must still be written;
    # the lease in this process's time.
    needed_s = settings.request_deadline_s + settings.lease_margin_s
    if slot - time.monotonic() + needed_s > (turn.outcome.lease - turn.now).total_seconds():
        return Leave(Left.LEASE_TOO_SHORT, _soon(batch, turn.now))
    if _stopping.wait(max(0.0, slot - time.monotonic())):
        return Leave(Left.SHUTTING_DOWN, turn.now)
    return None


def _ask_provider(batch: _Batch, turn: _Turn) -> Leave | None:
    """The call itself; a call cut by the shutdown, not failed by the provider, is no poll."""
    outcome = turn.outcome
    outcome.polled, outcome.polled_at = True, clock.now(batch.settings)
    with log_context(job_id=outcome.job.job_id, tracked_job_id=outcome.job.id):
        batch.client, batch.halt, ok = _ask(
            batch.kind, batch.region, batch.client, outcome, batch.pacer, batch.settings
        )
    if _stopping.is_set() and outcome.error is not None and outcome.answer is None:
        outcome.polled, outcome.error, outcome.error_class = False, None, None
        return Leave(Left.SHUTTING_DOWN, turn.now)
    batch.provider_ok = batch.provider_ok or ok
    return None


#: A job's turn, stage by stage: each stage may leave the job, saying why.
STAGES: tuple[Callable[[_Batch, _Turn], Leave | None], ...] = (
    _still_asking,
    _first_poll,
    _due,
    _slot,
    _ask_provider,
)


def _record(batch: _Batch, turn: _Turn) -> None:
    """An asked job: what its answer means, and what it says of the provider."""
    outcome, settings = turn.outcome, batch.settings
    refused = isinstance(outcome.error, ThrottledError)
    if batch.answered_last is False and not refused:
        # An answer right after a refusal: the run of refusals is over, now (a batch can
        # hold many refusals among its answers, and each must not count as one in a row).
        with session_scope(settings) as session:
            provider_state.clear_throttle(session, batch.kind, clock.now(settings))
    batch.answered_last = not refused
    decide(outcome, settings, batch.policy, clock.now(settings))
    metrics.record_poll(batch.kind, outcome.error, outcome.error_class)


def _soon(batch: _Batch, now: datetime) -> datetime:
    """When a job released for want of a slot (or a limiter) is due again: a second or two."""
    return now + timedelta(seconds=RELEASE_DELAY_S * (1 + batch.rand()))


def _flush(batch: _Batch) -> None:
    """Write the outcomes so far (all but the job whose turn it is)."""
    _finish(
        batch.kind,
        batch.outcomes[:-1],
        batch.settings,
        batch.report,
        resume=batch.probing and batch.provider_ok,
        answered=batch.answered_last is True,
    )
    del batch.outcomes[:-1]
    batch.probing = batch.probing and not batch.provider_ok  # a resumed provider stays resumed


def _close(batch: _Batch) -> BatchReport:
    """Tell the pace what it has not heard yet, then write the rest of the batch."""
    kind, pacer, report = batch.kind, batch.pacer, batch.report
    pacer.close()
    metrics.PROVIDER_RATE.labels(kind).set(pacer.rate)
    if pacer.dropped:
        metrics.SLOTS_DROPPED.labels(kind).inc(pacer.dropped)
    _finish(
        kind,
        batch.outcomes,
        batch.settings,
        report,
        resume=batch.probing and batch.provider_ok,
        answered=batch.answered_last is True,
    )
    log.debug(
        "batch done",
        extra={
            "kind": kind,
            "polled": report.polled,
            "released": report.released,
            "deferred": report.deferred,
            "skipped": report.skipped,
            "dropped_slots": pacer.dropped,
            "pace_trips": pacer.trips,
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
) -> tuple[ProviderClient | None, Leave | None, bool]:
    """Query the provider for one job; fill in the outcome's answer or error.

    Returns the client (built on first use), whether (and until when) the batch must ask no
    more (the provider paused, or resting from refusing every call) and whether the provider
    answered sensibly.
    """
    job = outcome.job
    halt: Leave | None = None
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
                rests_until = provider_state.throttle(
                    session, kind, clock.now(settings), rate=pace.rate, run=pace.run
                )
            if rests_until is not None:
                halt = Leave(Left.PROVIDER_RESTING, rests_until)
            # Asked again soon, at the new pace (or when the provider rests no more).
            outcome.next_poll_at = rests_until or clock.now(settings) + timedelta(
                seconds=RELEASE_DELAY_S
            )
        elif outcome.error_class is ErrorClass.CONFIGURATION:
            with session_scope(settings) as session:
                probe_at = provider_state.pause(session, kind, str(error), clock.now(settings))
            halt = Leave(Left.PROVIDER_PAUSED, probe_at)
            outcome.next_poll_at = probe_at
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
    return client, halt, provider_ok


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
