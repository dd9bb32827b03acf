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

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import ACTIVE_STATUSES, TrackedJob, utcnow
from worker import metrics
from worker.db import session_scope
from worker.provider_state import load_states, take_probe
from worker.providers.table import PROVIDERS
from worker.settings import Settings

log = logging.getLogger(__name__)

#: The most rows one tick claims for one kind, whatever the rate limit.
MAX_CLAIM_PER_KIND = 5000
_ACTIVE = [s.value for s in ACTIVE_STATUSES]


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
    """Reserve up to ``limit`` due, non-terminal jobs of ``kind``, oldest due first."""
    lease = now + timedelta(seconds=lease_s)
    due = (
        select(TrackedJob.id)
        .where(
            TrackedJob.status.in_(_ACTIVE),
            TrackedJob.next_poll_at <= now,
            TrackedJob.kind == kind,
        )
        .order_by(TrackedJob.next_poll_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(TrackedJob)
        .where(
            TrackedJob.id.in_(due.scalar_subquery()),
            # Re-checked by the UPDATE itself: the compare-and-set half of the claim.
            TrackedJob.status.in_(_ACTIVE),
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
    from worker.tasks import poll

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
