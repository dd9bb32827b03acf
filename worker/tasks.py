"""Celery tasks. Names are public (``jobtracker.*``); bodies delegate to the flow modules."""

from __future__ import annotations

import logging
from typing import Any

from worker.app import app
from worker.enqueue import track as _track
from worker.errors import EnqueueError

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
    """Claim due jobs and send poll batches (Celery beat runs this every tick_seconds)."""
    from worker.settings import get_settings
    from worker.tick import tick as run_tick

    return run_tick(get_settings())


@app.task(name="jobtracker.poll", ignore_result=True)
def poll(kind: str, region: str, claims: list[list[Any]]) -> dict[str, int]:
    """Poll a batch of claimed jobs: ``claims`` is ``[[tracked_job_id, lease_iso], ...]``."""
    from datetime import datetime

    from worker.poll import poll_batch
    from worker.settings import get_settings

    parsed = [(int(job_id), datetime.fromisoformat(lease)) for job_id, lease in claims]
    report = poll_batch(kind, region, parsed, get_settings())
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
    from worker.outbox import sweep
    from worker.settings import get_settings

    return sweep(get_settings())
