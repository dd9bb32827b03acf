"""Celery tasks. Names are public (``jobtracker.*``); each body hands over to a stage of
:mod:`worker.flow`, and this module is the only place those stages meet Celery."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from worker.errors import EnqueueError
from worker.flow import deliver
from worker.flow import poll as poll_stage
from worker.flow import tick as tick_stage
from worker.flow.enqueue import track as _track
from worker.runtime.app import app
from worker.settings import get_settings

log = logging.getLogger(__name__)


@app.task(name="jobtracker.track", acks_late=False)
def track(
    kind: str,
    job_id: str,
    callback_url: str | None = None,
    region: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Enqueue a job for tracking (for other services' ``send_task``).

    Bad input is logged and dropped: retrying a message that can never be valid would loop.
    """
    try:
        return _track(kind, job_id, callback_url=callback_url, region=region, metadata=metadata)
    except EnqueueError as exc:
        log.error("refused to track job: %s", exc, extra={"kind": kind, "job_id": job_id})
        return None


@app.task(name="jobtracker.tick", acks_late=False, ignore_result=True)
def tick() -> int:
    """Claim due jobs and send one ``jobtracker.poll`` per batch (beat runs this every tick)."""
    sent = 0
    for batch in tick_stage.tick(get_settings()):
        # If sending fails (broker down), the leases run out and a later tick re-claims.
        poll.apply_async(
            kwargs={
                "kind": batch.kind,
                "region": batch.region,
                "claims": [[c.id, c.lease.isoformat()] for c in batch.claims],
            }
        )
        sent += len(batch.claims)
    return sent


@app.task(name="jobtracker.poll", ignore_result=True)
def poll(kind: str, region: str, claims: list[list[Any]]) -> dict[str, int]:
    """Poll a batch of claimed jobs: ``claims`` is ``[[tracked_job_id, lease_iso], ...]``."""
    parsed = [(int(job_id), datetime.fromisoformat(lease)) for job_id, lease in claims]
    report = poll_stage.poll_batch(kind, region, parsed, get_settings())
    return {
        "polled": report.polled,
        "transitions": report.transitions,
        "errors": report.errors,
        "released": report.released,
        "skipped": report.skipped,
    }


@app.task(name="jobtracker.sweep_deliveries", acks_late=False, ignore_result=True)
def sweep_deliveries() -> int:
    """Send every due callback message whose first send was lost or whose retry is due."""
    return deliver.sweep(get_settings())
