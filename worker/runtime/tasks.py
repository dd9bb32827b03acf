"""Celery tasks. Names are public (``jobtracker.*``); each body hands over to a stage of
:mod:`worker.flow`, and this module is the only place those stages meet Celery."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery import Task
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker import clock
from worker.db import session_scope
from worker.errors import EnqueueError
from worker.flow import deliver
from worker.flow import poll as poll_stage
from worker.flow import tick as tick_stage
from worker.flow.enqueue import track as _track
from worker.flow.poll import ClaimItem
from worker.lifecycle import tally
from worker.lifecycle.prune import prune as prune_old
from worker.runtime.app import PRUNE_BUDGET_S, PRUNE_PAUSE_S, app
from worker.settings import get_settings
from worker.webhooks.urls import loggable_url

log = logging.getLogger(__name__)


#: Retries of a ``jobtracker.track`` message while the database is unreachable: 1, 2, 4 ... 60,
#: 60 ... seconds apart, about 20 minutes in all, then the request is logged whole at ERROR.
TRACK_MAX_RETRIES = 25
TRACK_RETRY_CAP_S = 60.0


@app.task(name="jobtracker.track", bind=True, acks_late=True, max_retries=TRACK_MAX_RETRIES)
def track(
    self: Task,
    kind: str,
    job_id: str,
    callback_url: str | None = None,
    region: str | None = None,
    metadata: dict[str, Any] | None = None,
    expected_duration_s: float | None = None,
) -> dict[str, Any] | None:
    """Enqueue a job for tracking (for other services' ``send_task``).

    The message is acknowledged once the row is committed (``acks_late``): a worker that dies
    mid-way leaves it to another. A database that cannot be reached is retried with backoff;
    bad input is logged and dropped, since retrying a message that can never be valid would loop.
    """
    try:
        return _track(
            kind,
            job_id,
            callback_url=callback_url,
            region=region,
            metadata=metadata,
            expected_duration_s=expected_duration_s,
        )
    except EnqueueError as exc:
        log.error("refused to track job: %s", exc, extra={"kind": kind, "job_id": job_id})
        return None
    except (OperationalError, InterfaceError) as exc:
        attempt = self.request.retries + 1
        if self.request.retries >= TRACK_MAX_RETRIES:
            # Nothing is stored: say everything needed to enqueue it again by hand.
            log.error(
                "gave up tracking a job after %d attempts, the database stayed unreachable: %s",
                attempt,
                type(exc.orig).__name__ if isinstance(exc, DBAPIError) else exc,
                extra={
                    "kind": kind,
                    "job_id": job_id,
                    "region": region,
                    # Without its query: a receiver's token may live there.
                    "callback_url": loggable_url(callback_url) if callback_url else None,
                    "metadata": metadata,
                },
            )
            raise
        delay = min(TRACK_RETRY_CAP_S, 2.0**self.request.retries)
        log.warning(
            "database unreachable while tracking a job; retry %d in %.0f s",
            attempt,
            delay,
            extra={"kind": kind, "job_id": job_id},
        )
        raise self.retry(countdown=delay) from None


@app.task(name="jobtracker.tick", acks_late=False, ignore_result=True)
def tick() -> int:
    """Claim jobs due before the next tick and send one ``jobtracker.poll`` per batch (beat runs
    this every tick), each to start at its first job's due time: a countdown of at most a tick,
    never a long ETA held in the broker."""
    settings = get_settings()
    now = clock.now(settings)
    sent = 0
    for batch in tick_stage.tick(settings, now):
        wait_s = (batch.claims[0].due - now).total_seconds()
        # If sending fails (broker down), the leases run out and a later tick re-claims.
        poll.apply_async(
            kwargs={
                "kind": batch.kind,
                "region": batch.region,
                "claims": [[c.id, c.lease.isoformat(), c.due.isoformat()] for c in batch.claims],
            },
            countdown=max(0.0, min(wait_s, settings.tick_seconds)),
        )
        sent += len(batch.claims)
    return sent


@app.task(name="jobtracker.poll", ignore_result=True)
def poll(kind: str, region: str, claims: list[list[Any]]) -> dict[str, int]:
    """Poll a batch of claimed jobs: ``claims`` is ``[[tracked_job_id, lease_iso, due_iso],
    ...]`` (the due time may be left out: due now)."""
    parsed: list[ClaimItem] = [
        (int(item[0]), datetime.fromisoformat(item[1]), datetime.fromisoformat(item[2]))
        if len(item) > 2
        else (int(item[0]), datetime.fromisoformat(item[1]))
        for item in claims
    ]
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


@app.task(name="jobtracker.compact_tallies", acks_late=False, ignore_result=True)
def compact_tallies() -> int:
    """Fold the row tallies (what metrics and ``jobtracker stats`` sum) into one row per key."""
    with session_scope(get_settings()) as session:
        return tally.compact(session)


@app.task(name="jobtracker.prune", acks_late=False, ignore_result=True)
def prune() -> dict[str, Any]:
    """Retention: remove finished jobs older than ``JOBTRACKER_RETENTION_DAYS``, in batches,
    for at most a couple of minutes (the next run goes on)."""
    settings = get_settings()
    if settings.retention_days <= 0:  # 0 keeps everything
        return {}
    return prune_old(settings, budget_s=PRUNE_BUDGET_S, pause_s=PRUNE_PAUSE_S).to_dict()
