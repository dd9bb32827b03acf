"""What one poll decided, and how a batch's decisions are written.

:func:`decide` reads an answer (or an error) and fills in the job's next status and next poll
time; :func:`expire_if_overdue` gives up on a job past its deadline. :func:`write_outcomes`
writes a whole batch in the caller's transaction: status changes through
:func:`~worker.flow.transition.transition_many`, everything else (counters, next poll time,
last error) in one executemany UPDATE guarded by the lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from jobtracker.models import ALLOWED_TRANSITIONS, JobStatus, TrackedJob
from worker.adaptive.model import next_poll_at
from worker.errors import ErrorClass, JobTerminalError, ProviderError, UnexpectedAnswer
from worker.flow.transition import JOBS, Move, expiry, transition_many
from worker.policy import PollPolicy
from worker.providers.normalize import Answer
from worker.settings import Settings

log = logging.getLogger(__name__)

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
        last_unfinished_at=bindparam("b_last_unfinished_at"),
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
    #: When the request went out: the moment the answer describes.
    polled_at: datetime | None = None
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
    #: Not polled yet and put off to their schedule's first poll (no call made).
    deferred: int = 0
    delivery_ids: list[str] = field(default_factory=list)


def _deadline(job: TrackedJob, settings: Settings) -> datetime:
    return job.deadline_at or job.created_at + timedelta(seconds=settings.job_deadline_s)


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
        seen_at = outcome.polled_at or now
        if answer.status != current and answer.status in ALLOWED_TRANSITIONS[current]:
            outcome.to_status = answer.status
            if answer.status.is_terminal:
                outcome.values.update(
                    result=answer.result,
                    result_expires_at=answer.result_expires_at,
                    error_code=answer.error_code,
                    error_message=answer.error_message,
                    # When the end was seen (the write, and the callback, come just after).
                    finished_at=seen_at,
                )
        if not answer.status.is_terminal:
            # The finish lies after this answer: what the schedule learns from (and plans by).
            outcome.values["last_unfinished_at"] = seen_at
            outcome.next_poll_at = next_poll_at(job, now, settings, policy)
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
    outcome.reason, values = expiry(deadline)
    outcome.values.update(values)


def unstorable(
    outcome: Outcome, exc: Exception, settings: Settings, policy: PollPolicy, now: datetime
) -> Outcome:
    """What to write instead of ``outcome`` when the database refused it.

    The poll counts, the job is released with a recorded error and polled again on the error
    backoff; past its deadline it expires. Nothing of the answer is kept, so this write cannot
    fail the way the first one did, and a job whose answers can never be stored still ends.
    """
    fallback = Outcome(job=outcome.job, lease=outcome.lease, polled=outcome.polled)
    fallback.error = UnexpectedAnswer(
        f"the poll's outcome could not be stored ({type(exc).__name__}); polling again",
        code="Tracker.Unstorable",
    )
    fallback.error_class = ErrorClass.TRANSIENT
    decide(fallback, settings, policy, now)
    return fallback


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
            counters.update(polls=job.polls + 1, last_polled_at=outcome.polled_at or now)
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
                    lease=outcome.lease,
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
                "b_last_unfinished_at": outcome.values.get(
                    "last_unfinished_at", job.last_unfinished_at
                ),
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
    report.transitions += len(applied)
    report.delivery_ids += [result.delivery_id for result in applied if result.delivery_id]
    if plain:
        session.connection().execute(_TOUCH, [{**row, "b_now": now} for row in plain])
