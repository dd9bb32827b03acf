"""The tick: claim due jobs and send poll work.

A claim moves the row's ``next_poll_at`` to the end of its lease, so claimed rows drop out of the
due index by themselves, and a row whose worker died becomes due again when the lease ends: no
separate reaper, and nothing depends on the broker keeping a message. On PostgreSQL the claim
skips rows locked by a concurrent claim (``FOR UPDATE SKIP LOCKED``); on SQLite writers are
serialized and the UPDATE re-checks that each row is still due (compare-and-set). Either way two
beats ticking at once claim disjoint rows.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from models import JobStatus, TrackedJob, utcnow
from models.jobs import ACTIVE_PREDICATE
from worker import metrics
from worker.db import session_scope
from worker.provider_state import load_states, take_probe
from worker.providers.table import PROVIDERS
from worker.settings import Settings
from worker.transition import Move, transition_many

log = logging.getLogger(__name__)

#: The most rows one tick claims for one kind, whatever the rate limit.
MAX_CLAIM_PER_KIND = 5000


@dataclass(frozen=True)
class Claim:
    """A job reserved for one poll until ``lease`` (also the token proving the reservation)."""

    id: int
    region: str
    lease: datetime


def claim_limit(settings: Settings, kind: str) -> int:
    """What the rate limit lets one kind poll before the next tick.

    No more: jobs claimed beyond that would hold worker threads asleep waiting for rate-limit
    slots, starving the other kinds' polls.
    """
    per_tick = settings.qps[kind] * settings.tick_seconds
    return max(1, min(MAX_CLAIM_PER_KIND, math.ceil(per_tick)))


def claim_due(
    session: Session, kind: str, limit: int, *, now: datetime, lease_s: float
) -> list[Claim]:
    """Reserve up to ``limit`` due, non-terminal jobs of ``kind``, oldest due first.

    Two statements, not ``UPDATE ... WHERE id IN (SELECT ... LIMIT n)``: PostgreSQL may run such
    a subquery once per outer row, and with SKIP LOCKED each run then locks the next row, so
    the LIMIT would not hold. The status test is literal SQL (``ACTIVE_PREDICATE``), the same
    text as the partial index's predicate, because SQLite only uses a partial index when the
    query repeats its predicate, and a bound-parameter IN list does not.
    """
    lease = now + timedelta(seconds=lease_s)
    ids = list(
        session.execute(
            select(TrackedJob.id)
            .where(ACTIVE_PREDICATE, TrackedJob.next_poll_at <= now, TrackedJob.kind == kind)
            .order_by(TrackedJob.next_poll_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if not ids:
        return []
    rows = session.execute(
        update(TrackedJob)
        .where(
            TrackedJob.id.in_(ids),
            # Re-checked by the UPDATE itself: the compare-and-set half of the claim (SQLite
            # takes no row locks; another tick may have claimed a row since the SELECT).
            ACTIVE_PREDICATE,
            TrackedJob.next_poll_at <= now,
        )
        .values(next_poll_at=lease, lease_expires_at=lease)
        .returning(TrackedJob.id, TrackedJob.region),
        execution_options={"synchronize_session": False},
    ).all()
    return [Claim(id=row.id, region=row.region, lease=lease) for row in rows]


def claim_all(settings: Settings, now: datetime | None = None) -> dict[str, list[Claim]]:
    """One tick's claims per kind, committed; throttled kinds are skipped, paused ones probed."""
    now = now or utcnow()
    claims: dict[str, list[Claim]] = {}
    with session_scope(settings) as session:
        states = load_states(session)
        for kind in PROVIDERS:
            state = states.get(kind)
            limit = claim_limit(settings, kind)
            if state is not None:
                if state.throttled_until is not None and state.throttled_until > now:
                    continue
                if state.paused:
                    if not take_probe(session, kind, now):
                        continue
                    limit = 1
            claimed = claim_due(session, kind, limit, now=now, lease_s=settings.lease_s)
            if claimed:
                claims[kind] = claimed
    return claims


#: The most overdue jobs of an unreachable provider one tick expires.
MAX_EXPIRE_PER_KIND = 500


def expire_unreachable(settings: Settings, now: datetime | None = None) -> list[str]:
    """Expire overdue jobs of providers that cannot be asked now (paused or throttled).

    A reachable provider's overdue jobs get one last poll instead (see ``worker.poll``), so a
    job that finished at the last moment still gets its real status. Return the webhook ids of
    the callbacks written, to send after commit.
    """
    now = now or utcnow()
    delivery_ids: list[str] = []
    with session_scope(settings) as session:
        for kind, state in load_states(session).items():
            throttled = state.throttled_until is not None and state.throttled_until > now
            if kind not in PROVIDERS or not (state.paused or throttled):
                continue
            overdue = session.execute(
                select(TrackedJob)
                .where(
                    ACTIVE_PREDICATE,
                    TrackedJob.kind == kind,
                    TrackedJob.deadline_at <= now,
                    # Not while a worker holds it: its poll decides.
                    or_(TrackedJob.lease_expires_at.is_(None), TrackedJob.lease_expires_at <= now),
                )
                .order_by(TrackedJob.deadline_at)
                .limit(MAX_EXPIRE_PER_KIND)
                .with_for_update(skip_locked=True)
            ).scalars()
            reason = "deadline passed while the provider was " + (
                "paused" if state.paused else "throttled"
            )
            moves = [
                Move(
                    job,
                    JobStatus.EXPIRED,
                    reason=reason,
                    values={
                        "error_code": "Tracker.DeadlineExceeded",
                        "error_message": f"no terminal answer by the deadline; {reason}",
                    },
                )
                for job in overdue
            ]
            applied, _ = transition_many(session, moves, now=now)
            for result in applied:
                log.info(
                    "job %s -> expired (%s)",
                    result.from_status.value,
                    reason,
                    extra={"kind": kind, "job_id": result.job.job_id, "status": "expired"},
                )
            delivery_ids += [r.delivery_id for r in applied if r.delivery_id]
    return delivery_ids


def batches(claims: list[Claim], size: int) -> list[tuple[str, list[Claim]]]:
    """Claims grouped by region (one provider client each), cut into batches of ``size``."""
    by_region: dict[str, list[Claim]] = defaultdict(list)
    for claim in claims:
        by_region[claim.region].append(claim)
    return [
        (region, group[start : start + size])
        for region, group in by_region.items()
        for start in range(0, len(group), size)
    ]


@metrics.TICK_SECONDS.time()
def tick(settings: Settings, now: datetime | None = None) -> int:
    """Claim due jobs and send one ``jobtracker.poll`` task per batch; return jobs claimed."""
    from worker.outbox import deliver_soon
    from worker.tasks import poll

    expired_callbacks = expire_unreachable(settings, now)
    if expired_callbacks:
        deliver_soon(expired_callbacks, settings)
    claims = claim_all(settings, now)
    sent = 0
    for kind, claimed in claims.items():
        log.info("claimed due jobs", extra={"kind": kind, "claimed": len(claimed)})
        for region, batch in batches(claimed, settings.batch_size):
            # If sending fails (broker down), the leases run out and a later tick re-claims.
            poll.apply_async(
                kwargs={
                    "kind": kind,
                    "region": region,
                    "claims": [[c.id, c.lease.isoformat()] for c in batch],
                }
            )
            sent += len(batch)
    if sent:
        log.debug("tick claimed jobs", extra={"claimed": sent})
    return sent
