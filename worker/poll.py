"""Poll a batch of claimed jobs: ask the provider, then write every outcome in one transaction.

Per job: check the deadline, wait for a rate-limit slot, query, classify the answer. The
provider's client (and its connections) is shared by the batch; the writes go in one
transaction at the end (one UPDATE per job, plus a transition row where the status moved).
A throttled or misconfigured provider stops the batch early; the jobs not yet polled are released
to poll again when the provider may be asked.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from models import ACTIVE_STATUSES, ALLOWED_TRANSITIONS, JobStatus, TrackedJob, utcnow
from worker import metrics, provider_state
from worker.db import session_scope
from worker.errors import ErrorClass, JobTerminalError, ProviderError, ThrottledError
from worker.policy import PollPolicy
from worker.providers.client import ProviderClient, get_client
from worker.providers.normalize import Answer, effective_error_class
from worker.ratelimit import get_rate_limiter, slot_times
from worker.settings import Settings
from worker.transition import JOBS, Move, transition_many

log = logging.getLogger(__name__)

#: How long a batch may wait for its rate-limit slots, in ticks; jobs whose slot would come later
#: are released to a later tick instead of holding a worker thread asleep.
MAX_SLOT_WAIT_TICKS = 2.0
#: A released job (not polled: provider throttled, paused, or out of slots) is due again after.
RELEASE_DELAY_S = 1.0

#: A poll that changed no status: counters, next poll time, last error; only while we hold the
#: lease (a row re-claimed by another worker after our lease ran out is theirs).
_TOUCH = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("b_id"), JOBS.c.lease_expires_at == bindparam("b_lease"))
    .values(
        polls=bindparam("b_polls"),
        last_polled_at=bindparam("b_last_polled_at"),
        next_poll_at=bindparam("b_next_poll_at"),
        provider_status=bindparam("b_provider_status"),
        last_error_code=bindparam("b_last_error_code"),
        last_error_message=bindparam("b_last_error_message"),
        consecutive_errors=bindparam("b_consecutive_errors"),
        deadline_at=bindparam("b_deadline_at"),
        lease_expires_at=None,
        updated_at=bindparam("b_now"),
    )
)


@dataclass
class Outcome:
    """What one job's poll decided; written by :func:`write_outcomes`."""

    job: TrackedJob
    lease: datetime
    polled: bool = False
    answer: Answer | None = None
    error: ProviderError | None = None
    error_class: ErrorClass | None = None
    to_status: JobStatus | None = None
    reason: str | None = None
    next_poll_at: datetime | None = None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchReport:
    polled: int = 0
    transitions: int = 0
    errors: int = 0
    released: int = 0
    skipped: int = 0
    delivery_ids: list[str] = field(default_factory=list)


def _deadline(job: TrackedJob, settings: Settings) -> datetime:
    return job.deadline_at or job.created_at + timedelta(seconds=settings.job_deadline_s)


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


def decide(outcome: Outcome, settings: Settings, policy: PollPolicy, now: datetime) -> None:
    """Fill in the outcome's target status and next poll time from its answer or error."""
    job = outcome.job
    current = job.job_status
    deadline = _deadline(job, settings)
    outcome.values["deadline_at"] = deadline
    if outcome.answer is not None:
        answer = outcome.answer
        outcome.values.update(last_error_code=None, last_error_message=None, consecutive_errors=0)
        # A stale or out-of-order answer (running, then queued) is not a transition, and its
        # raw status is not recorded either.
        if answer.status == current or answer.status in ALLOWED_TRANSITIONS[current]:
            outcome.values["provider_status"] = answer.provider_status
        if answer.status != current and answer.status in ALLOWED_TRANSITIONS[current]:
            outcome.to_status = answer.status
            if answer.status.is_terminal:
                outcome.values.update(
                    result=answer.result,
                    result_expires_at=answer.result_expires_at,
                    error_code=answer.error_code,
                    error_message=answer.error_message,
                )
        outcome.next_poll_at = now + timedelta(seconds=policy.next_delay(job.polls + 1))
    elif outcome.error is not None:
        error = outcome.error
        if outcome.error_class is ErrorClass.JOB_TERMINAL:
            # Only JobTerminalError is ever classed job-terminal; it names its status.
            assert isinstance(error, JobTerminalError)
            outcome.to_status = error.terminal_status
            outcome.values.update(error_code=error.code, error_message=error.message)
            outcome.reason = f"{error.code}: {error.message}"
        else:
            errors = job.consecutive_errors + 1
            outcome.values.update(
                last_error_code=error.code,
                last_error_message=error.message[:2000],
                consecutive_errors=errors,
            )
            if outcome.next_poll_at is None:
                outcome.next_poll_at = now + timedelta(seconds=policy.error_delay(errors))
    expire_if_overdue(outcome, settings, now)
    still_active = outcome.to_status is None or not outcome.to_status.is_terminal
    if still_active and outcome.next_poll_at is not None:
        # Never sleep past the deadline: the job is asked once more then, and expired on time.
        outcome.next_poll_at = min(outcome.next_poll_at, deadline)


def expire_if_overdue(outcome: Outcome, settings: Settings, now: datetime) -> None:
    """Past its deadline, a job whose last answer was not terminal becomes ``expired``.

    Called after the final poll (a job that finished in the meantime still gets its real
    status), or without one when the provider cannot be asked now (throttled, paused, no slot).
    """
    deadline = _deadline(outcome.job, settings)
    if now < deadline or (outcome.to_status is not None and outcome.to_status.is_terminal):
        return
    outcome.to_status = JobStatus.EXPIRED
    outcome.values.update(
        deadline_at=deadline,
        error_code="Tracker.DeadlineExceeded",
        error_message=f"no terminal answer by the deadline {deadline.isoformat()}",
    )
    outcome.reason = "deadline passed"


def poll_batch(
    kind: str,
    region: str,
    claims: list[tuple[int, datetime]],
    settings: Settings,
    *,
    rand: Any = random.random,
) -> BatchReport:
    """Poll every claimed job still owned, then write all outcomes in one transaction."""
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
        now = utcnow()
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
                log.warning("rate limiter unavailable: %s", exc, extra={"kind": kind})
                stop_until = now + timedelta(seconds=RELEASE_DELAY_S * (1 + rand()))
        if not slots:
            outcome.next_poll_at = stop_until or now + timedelta(
                seconds=RELEASE_DELAY_S * (1 + rand())
            )
            expire_if_overdue(outcome, settings, now)
            continue
        time.sleep(max(0.0, slots.popleft() - time.monotonic()))
        outcome.polled = True
        try:
            # Inside the try: a missing credential is a configuration error like AuthFailure.
            client = client or get_client(kind, region, settings)
            with metrics.POLL_SECONDS.labels(kind).time():
                outcome.answer = client.query(job.job_id)
            provider_ok = True
        except ProviderError as error:
            outcome.error = error
            age_s = (utcnow() - job.created_at).total_seconds()
            outcome.error_class = effective_error_class(
                error, job_age_s=age_s, grace_s=settings.not_found_grace_s
            )
            if isinstance(error, ThrottledError):
                with session_scope(settings) as session:
                    stop_until = provider_state.throttle(session, kind, utcnow())
                outcome.next_poll_at = stop_until
            elif outcome.error_class is ErrorClass.CONFIGURATION:
                with session_scope(settings) as session:
                    stop_until = provider_state.pause(session, kind, str(error), utcnow())
                outcome.next_poll_at = stop_until
            else:
                provider_ok = provider_ok or outcome.error_class is ErrorClass.JOB_TERMINAL
            _log_error(kind, job, error, outcome.error_class)
        decide(outcome, settings, policy, utcnow())
        metrics.record_poll(kind, outcome.error, outcome.error_class)

    _finish(kind, outcomes, settings, report, resume=probing and provider_ok)
    return report


def _log_error(kind: str, job: TrackedJob, error: ProviderError, cls: ErrorClass | None) -> None:
    context = {
        "kind": kind,
        "job_id": job.job_id,
        "tracked_job_id": job.id,
        "code": error.code,
        "error_class": str(cls),
        "request_id": error.request_id,
    }
    # Configuration errors are logged loudly once, by provider_state.pause.
    log.info("poll failed: %s", error.message, extra=context)


def _finish(
    kind: str, outcomes: list[Outcome], settings: Settings, report: BatchReport, *, resume: bool
) -> None:
    now = utcnow()
    throttled = any(isinstance(o.error, ThrottledError) for o in outcomes)
    answered = any(o.answer is not None for o in outcomes)
    try:
        with session_scope(settings) as session:
            write_outcomes(session, outcomes, now, report)
            if resume:
                provider_state.resume(session, kind, now)
            if answered and not throttled:
                provider_state.clear_throttle(session, kind, now)
    except DBAPIError as exc:
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            raise  # the database is away: the leases run out and the jobs are polled again
        # One row the database refuses must not sink the batch: write the outcomes one by one.
        log.error("batch write refused (%s); writing job by job", type(exc.orig).__name__)
        report.delivery_ids.clear()
        report.polled = report.transitions = report.errors = report.released = 0
        for outcome in outcomes:
            try:
                with session_scope(settings) as session:
                    write_outcomes(session, [outcome], now, report)
            except DBAPIError as single:
                log.error(
                    "could not record a poll; the job will be polled again: %s",
                    type(single.orig).__name__,
                    extra={"kind": kind, "tracked_job_id": outcome.job.id},
                )
    if report.delivery_ids:
        from worker.outbox import deliver_soon

        deliver_soon(report.delivery_ids, settings)


def write_outcomes(
    session: Session, outcomes: list[Outcome], now: datetime, report: BatchReport
) -> None:
    """Write a batch's outcomes: the status changes through :func:`transition_many`, the rest
    (counters, next poll time, last error) in one executemany UPDATE guarded by the lease."""
    plain: list[dict[str, Any]] = []
    moves: list[Move] = []
    for outcome in outcomes:
        job = outcome.job
        counters: dict[str, Any] = {}
        if outcome.polled:
            counters.update(polls=job.polls + 1, last_polled_at=now)
            report.polled += 1
        if outcome.error is not None and outcome.error_class is not ErrorClass.JOB_TERMINAL:
            report.errors += 1
        if outcome.to_status is not None:
            values = {**outcome.values, **counters}
            if not outcome.to_status.is_terminal:
                values.update(next_poll_at=outcome.next_poll_at or now, lease_expires_at=None)
            answer = outcome.answer
            request_id = (answer.request_id if answer else None) or (
                outcome.error.request_id if outcome.error else None
            )
            moves.append(
                Move(
                    job,
                    outcome.to_status,
                    provider_status=answer.provider_status if answer else None,
                    request_id=request_id,
                    reason=outcome.reason,
                    values=values,
                )
            )
            continue
        if not outcome.polled:
            report.released += 1
        plain.append(
            {
                "b_id": job.id,
                "b_lease": outcome.lease,
                "b_polls": counters.get("polls", job.polls),
                "b_last_polled_at": counters.get("last_polled_at", job.last_polled_at),
                "b_next_poll_at": outcome.next_poll_at or now,
                "b_provider_status": outcome.values.get("provider_status", job.provider_status),
                "b_last_error_code": outcome.values.get("last_error_code", job.last_error_code),
                "b_last_error_message": outcome.values.get(
                    "last_error_message", job.last_error_message
                ),
                "b_consecutive_errors": outcome.values.get(
                    "consecutive_errors", job.consecutive_errors
                ),
                "b_deadline_at": outcome.values.get("deadline_at", job.deadline_at),
            }
        )
    applied, conflicts = transition_many(session, moves, now=now)
    for move in conflicts:
        log.info(
            "job changed under the poll; answer dropped", extra={"tracked_job_id": move.job.id}
        )
    for result in applied:
        job = result.job
        report.transitions += 1
        log.info(
            "job %s -> %s",
            result.from_status.value,
            job.status,
            extra={
                "kind": job.kind,
                "job_id": job.job_id,
                "tracked_job_id": job.id,
                "status": job.status,
            },
        )
        if result.delivery_id:
            report.delivery_ids.append(result.delivery_id)
    if plain:
        session.connection().execute(_TOUCH, [{**row, "b_now": now} for row in plain])
