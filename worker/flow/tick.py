"""The tick: claim due jobs and cut them into poll batches.

A claim moves the row's ``next_poll_at`` to the end of its lease, so claimed rows drop out of the
due index by themselves, and a row whose worker died becomes due again when the lease ends: no
separate reaper, and nothing depends on the broker keeping a message. Claims go through
:func:`worker.flow.leases.claim`, so two beats ticking at once claim disjoint rows.

The tick also gives up on overdue jobs of a provider that cannot be asked (paused, throttled);
a reachable provider's overdue jobs get one last poll instead (:mod:`worker.flow.outcome`).
Sending the batches to the workers is the Celery task's business (:mod:`worker.runtime.tasks`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, or_, select, update
from sqlalchemy.orm import Session

from jobtracker.models import JobStatus, TrackedJob
from jobtracker.models.jobs import ACTIVE_PREDICATE, NO_DEADLINE_PREDICATE, unknown_kind
from worker import clock
from worker.catalogue.table import PROVIDERS
from worker.db import session_scope
from worker.flow.leases import claim
from worker.flow.transition import JOBS, Move, expiry, transition_many
from worker.inspection.queries import unpollable
from worker.observe import metrics
from worker.providers.ratelimit import get_rate_limiter
from worker.providers.state import load_states, take_probe
from worker.settings import Settings

log = logging.getLogger(__name__)


_SET_DEADLINE = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("b_id"), JOBS.c.deadline_at.is_(None))
    .values(deadline_at=bindparam("b_deadline"))
)

#: The most rows one tick claims for one kind, whatever the rate limit.
MAX_CLAIM_PER_KIND = 5000
#: The most overdue jobs of an unreachable provider one tick expires.
MAX_EXPIRE_PER_KIND = 500
#: The most rows inserted without a deadline one tick gives theirs.
MAX_DEADLINES_PER_TICK = 5000


@dataclass(frozen=True)
class Claim:
    """A job reserved for one poll until ``lease`` (also the token proving the reservation),
    due at ``due`` (a claim takes jobs due before the next tick, to poll each on time)."""

    id: int
    region: str
    lease: datetime
    due: datetime


@dataclass(frozen=True)
class Batch:
    """Claimed jobs of one kind and region, polled together by one ``jobtracker.poll`` task."""

    kind: str
    region: str
    claims: list[Claim]


def claim_limit(settings: Settings, kind: str, rate: float | None = None) -> int:
    """What the provider's pace (``rate``, its configured QPS by default) lets one kind poll
    before the next tick.

    No more: jobs claimed beyond that would hold worker threads asleep waiting for rate-limit
    slots, starving the other kinds' polls.
    """
    per_tick = (settings.qps[kind] if rate is None else rate) * settings.tick_seconds
    return max(1, min(MAX_CLAIM_PER_KIND, math.ceil(per_tick)))


def _rate(settings: Settings, kind: str) -> float | None:
    try:
        return get_rate_limiter(settings).rate(kind, settings.qps[kind])
    except Exception as exc:  # the shared limiter is away; the batches will say so too
        log.debug("cannot read the provider's pace: %s", exc)
        return None


def claim_due(
    session: Session,
    kind: str,
    limit: int,
    *,
    now: datetime,
    lease_s: float,
    window_s: float = 0.0,
) -> list[Claim]:
    """Reserve up to ``limit`` non-terminal jobs of ``kind`` due by ``now + window_s``, soonest
    first. Each claim keeps its job's due time: a tick takes what falls due before the next
    tick, and the poll waits for each job's own instant (a schedule is only as good as the
    moment a poll happens; rounding every due time up to the next tick would waste it).

    The status test is literal SQL (``ACTIVE_PREDICATE``), the same text as the partial index's
    predicate, because SQLite only uses a partial index when the query repeats its predicate,
    and a bound-parameter IN list does not.
    """
    horizon = now + timedelta(seconds=window_s)
    # The lease counts from the last instant the window reaches, not from now: a job claimed
    # ahead of its time still holds a whole lease when its poll starts (a lease from now would
    # leave a poll waiting for its instant too little time to ask, and it would be released).
    lease = horizon + timedelta(seconds=lease_s)
    rows = claim(
        session,
        TrackedJob,
        due=[
            ACTIVE_PREDICATE,
            TrackedJob.next_poll_at <= horizon,
            TrackedJob.kind == kind,
            # A claimed row's next_poll_at is its lease's end, which the window may reach: only
            # a lease that ran out frees the row.
            or_(TrackedJob.lease_expires_at.is_(None), TrackedJob.lease_expires_at <= now),
        ],
        order_by=TrackedJob.next_poll_at,
        limit=limit,
        values={"next_poll_at": lease, "lease_expires_at": lease},
        returning=[TrackedJob.id, TrackedJob.region],
        before=[TrackedJob.next_poll_at],
    )
    return [
        Claim(id=job_pk, region=region, lease=lease, due=max(due, now))
        for job_pk, region, due in rows
    ]


def claim_all(settings: Settings, now: datetime | None = None) -> dict[str, list[Claim]]:
    """One tick's claims per kind, committed; throttled kinds are skipped, paused ones probed."""
    now = now or clock.now(settings)
    # Read before the claim's transaction: the pace may live in this same database (SQLite
    # would make the second writer wait for the first, in this very thread).
    rates = {kind: _rate(settings, kind) for kind in PROVIDERS}
    claims: dict[str, list[Claim]] = {}
    with session_scope(settings) as session:
        states = load_states(session)
        for kind in PROVIDERS:
            state = states.get(kind)
            limit = claim_limit(settings, kind, rates[kind])
            if state is not None:
                if state.is_throttled(now):
                    continue
                if state.paused:
                    if not take_probe(session, kind, now):
                        continue
                    limit = 1
            claimed = claim_due(
                session,
                kind,
                limit,
                now=now,
                lease_s=settings.lease_s,
                window_s=settings.tick_seconds,
            )
            if claimed:
                claims[kind] = claimed
    return claims


def expire_unreachable(settings: Settings, now: datetime | None = None) -> int:
    """Expire overdue jobs that cannot be polled now: their provider is paused or throttled, or
    their kind is unknown. Returns how many; their callbacks go out once this commits.

    Also gives deadlines to rows inserted without one, and reports unpollable rows.
    """
    now = now or clock.now(settings)
    expired = 0
    with session_scope(settings) as session:
        fill_deadlines(session, settings.job_deadline_s)
        _report_unpollable(session, now)
        unreachable: list[tuple[ColumnElement[bool], str]] = [
            (
                TrackedJob.kind == kind,
                "deadline passed while the provider was "
                + ("paused" if state.paused else "throttled"),
            )
            for kind, state in load_states(session).items()
            if kind in PROVIDERS and (state.paused or state.is_throttled(now))
        ]
        unreachable.append((unknown_kind(PROVIDERS), "deadline passed; no provider polls its kind"))
        for which, why in unreachable:
            overdue = session.execute(
                select(TrackedJob)
                .where(
                    ACTIVE_PREDICATE,
                    which,
                    TrackedJob.deadline_at <= now,
                    # Not while a worker holds it: its poll decides.
                    or_(TrackedJob.lease_expires_at.is_(None), TrackedJob.lease_expires_at <= now),
                )
                .order_by(TrackedJob.deadline_at)
                .limit(MAX_EXPIRE_PER_KIND)
                .with_for_update(skip_locked=True)
            ).scalars()
            moves = []
            for job in overdue:
                assert job.deadline_at is not None  # selected on it
                reason, values = expiry(job.deadline_at, why)
                # The lease as read (none, or one that ran out): a poll that claims the job
                # meanwhile wins.
                moves.append(
                    Move(
                        job,
                        JobStatus.EXPIRED,
                        reason=reason,
                        values=values,
                        lease=job.lease_expires_at,
                    )
                )
            applied, _ = transition_many(session, moves, now=now)
            expired += len(applied)
    return expired


#: How often each process repeats the warning about unpollable rows.
UNPOLLABLE_WARNING_EVERY_S = 300.0
_warned_at: dict[str, float] = {}


def _report_unpollable(session: Session, now: datetime) -> None:
    found = unpollable(session)
    moment = now.timestamp()
    for kind, count in found.items():
        if moment - _warned_at.get(kind, float("-inf")) >= UNPOLLABLE_WARNING_EVERY_S:
            _warned_at[kind] = moment
            log.warning(
                "%d active job(s) of kind %r can never be polled: no provider of this tracker "
                "knows the kind; they expire at their deadline",
                count,
                kind,
                extra={"kind": kind, "unpollable": count},
            )


def fill_deadlines(session: Session, deadline_s: float) -> int:
    """Give active rows inserted without a deadline (plain SQL) theirs: ``created_at`` +
    ``deadline_s``, whether or not their provider can be polled, so they expire on time even
    while it is paused. Reads only the partial index of such rows (usually empty)."""
    rows = session.execute(
        select(TrackedJob.id, TrackedJob.created_at)
        .where(NO_DEADLINE_PREDICATE)
        .limit(MAX_DEADLINES_PER_TICK)
    ).all()
    if rows:
        session.execute(
            _SET_DEADLINE,
            [
                {"b_id": row.id, "b_deadline": row.created_at + timedelta(seconds=deadline_s)}
                for row in rows
            ],
        )
    return len(rows)


def batches(kind: str, claims: list[Claim], size: int) -> list[Batch]:
    """Claims grouped by region (one provider client each), cut into batches of ``size``."""
    by_region: dict[str, list[Claim]] = defaultdict(list)
    for one in claims:
        by_region[one.region].append(one)
    return [
        Batch(kind, region, group[start : start + size])
        for region, group in by_region.items()
        for start in range(0, len(group), size)
    ]  # each in due order: the claim read them soonest first


@metrics.TICK_SECONDS.time()
def tick(settings: Settings, now: datetime | None = None) -> list[Batch]:
    """Expire what cannot be asked, claim due jobs; return the poll batches to send."""
    expire_unreachable(settings, now)
    work: list[Batch] = []
    for kind, claimed in claim_all(settings, now).items():
        log.info("claimed due jobs", extra={"kind": kind, "claimed": len(claimed)})
        work += batches(kind, claimed, settings.batch_size)
    return work
