"""``jobtracker run``: a worker and the beat scheduler in one process.

Celery's own ``worker -B`` forks beat into a child process, which can outlive a worker stuck in warm
shutdown. Here beat is a thread of the worker process, so one signal stops both, and a watchdog
ends the process if a warm shutdown overruns its budget.
"""

from __future__ import annotations

import logging
import os
import threading

from celery.apps import worker as celery_worker_module
from celery.beat import EmbeddedService, Scheduler
from celery.signals import worker_shutting_down

from worker.catalogue.table import PROVIDERS
from worker.db import session_scope
from worker.inspection.gauges import DatabaseCollector
from worker.observe.metrics import start_metrics_server
from worker.providers.state import load_states
from worker.runtime.app import app
from worker.settings import Settings, redact_url

log = logging.getLogger(__name__)

#: How long a warm shutdown may take before the process exits anyway.
SHUTDOWN_BUDGET_S = 8.0


def _arm_watchdog(**_: object) -> None:
    def expire() -> None:
        log.error("warm shutdown took over %.0f s; exiting now", SHUTDOWN_BUDGET_S)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(SHUTDOWN_BUDGET_S, expire)
    timer.daemon = True
    timer.start()


def _say(msg: str, f: object = None) -> None:
    """Celery's signal handlers print their notices ("worker: Warm shutdown") straight to the
    real stdout; log them instead, so JOBTRACKER_LOG_FORMAT=json output stays JSON lines."""
    logging.getLogger("celery.apps.worker").warning("%s", msg.strip())


def run(settings: Settings, *, concurrency: int | None = None, beat: bool = True) -> int:
    """Run until SIGINT / SIGTERM; return the exit code."""
    worker_shutting_down.connect(_arm_watchdog, weak=False)
    celery_worker_module.safe_say = _say
    # Beat sleeps until its next due entry; a short max_interval lets it notice a stop quickly.
    # The in-memory scheduler: the schedule is a few fixed intervals, so the default
    # PersistentScheduler's celerybeat-schedule.* files in the working directory buy nothing.
    embedded_beat = (
        EmbeddedService(
            app,
            thread=True,
            max_interval=min(1.0, settings.tick_seconds),
            scheduler_cls=Scheduler,
        )
        if beat
        else None
    )

    def stop_beat(**_: object) -> None:
        if embedded_beat is not None:
            embedded_beat.service.stop(wait=False)  # no new ticks while the worker drains

    worker_shutting_down.connect(stop_beat, weak=False)
    worker = app.Worker(
        pool="threads",
        concurrency=concurrency or settings.worker_concurrency,
        loglevel=settings.log_level,
        # Gossip and mingle chat with other workers over the broker at start; useless here and
        # unsupported by the embedded broker.
        without_mingle=True,
        without_gossip=True,
        quiet=True,
    )
    # Before the worker's start-up (connecting to the broker), so a scrape can tell "up, but
    # stuck connecting" from "down"; worker_init calls it again, which is a no-op.
    metrics_port = start_metrics_server(settings, DatabaseCollector(settings))
    for line in describe(settings, beat=beat, concurrency=worker.concurrency, port=metrics_port):
        log.info("%s", line)
    if embedded_beat is not None:
        embedded_beat.start()
    try:
        worker.start()
    finally:
        if embedded_beat is not None:
            stop_beat()
            embedded_beat.join(timeout=2.0)
    return int(worker.exitcode or 0)


def describe(settings: Settings, *, beat: bool, concurrency: int, port: int | None) -> list[str]:
    """What ``jobtracker run`` runs on, in a few lines: enough for a newcomer to see it is
    working, what is missing, and what to do next. No password, no secret."""
    paused = {kind for kind, state in _states(settings).items() if state}
    lines = [
        f"jobtracker starting: worker ({concurrency} threads)"
        + (f" and beat (a tick every {settings.tick_seconds:g} s)" if beat else ", no beat"),
        f"  database   {redact_url(settings.database_url)}",
        "  broker     "
        + (
            f"embedded, in {settings.broker_dir}"
            if settings.embedded_broker
            else redact_url(settings.broker_url)
        ),
    ]
    for kind in PROVIDERS:
        if not settings.has_credentials:
            state = "paused until TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY are set"
        elif kind in paused:
            state = "paused by a configuration error (see `jobtracker stats`); probing"
        else:
            state = "ready"
        lines.append(
            f"  provider   {kind}: {settings.endpoints[kind]}, {settings.qps[kind]:g} QPS, {state}"
        )
    lines.append(
        "  callbacks  "
        + (
            f"signed with {len(settings.webhook_secrets)} secret(s)"
            if settings.webhook_secrets
            else "not sent until JOBTRACKER_WEBHOOK_SECRET is set (recorded as no_secret)"
        )
    )
    lines.append(
        f"  metrics    http://0.0.0.0:{port}/metrics"
        if port
        else "  metrics    off (set JOBTRACKER_METRICS_PORT)"
    )
    lines.append(
        "  next: `jobtracker enqueue KIND JOB_ID` in another shell, then `jobtracker jobs`"
    )
    return lines


def _states(settings: Settings) -> dict[str, bool]:
    with session_scope(settings) as session:
        return {kind: bool(state.paused) for kind, state in load_states(session).items()}
