"""Driving the engine inline in tests: claim due jobs, poll each batch, until all are terminal."""

from __future__ import annotations

import time
from collections.abc import Collection

from sqlalchemy import select

from jobtracker.models import TrackedJob
from worker.db import session_scope
from worker.flow.poll import ClaimItem, poll_batch
from worker.flow.tick import claim_all, expire_unreachable
from worker.settings import Settings


def step(settings: Settings) -> int:
    """One tick's worth of work, done inline: claim due jobs, poll each batch."""
    expire_unreachable(settings)
    claims = claim_all(settings)
    for kind, claimed in claims.items():
        by_region: dict[str, list[ClaimItem]] = {}
        for c in claimed:
            by_region.setdefault(c.region, []).append((c.id, c.lease, c.due))
        for region, batch in by_region.items():
            poll_batch(kind, region, batch, settings)
    return sum(len(c) for c in claims.values())


def drive(
    settings: Settings, *, seconds: float = 15.0, jobs: Collection[int] | None = None
) -> None:
    """Run steps until every job (or every one of ``jobs``) is terminal, or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        step(settings)
        query = select(TrackedJob.id).where(TrackedJob.status.in_(["pending", "queued", "running"]))
        if jobs is not None:
            query = query.where(TrackedJob.id.in_(list(jobs)))
        with session_scope(settings) as session:
            active = session.execute(query).all()
        if not active:
            return
        time.sleep(0.05)
