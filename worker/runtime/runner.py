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
from celery.beat import EmbeddedService
from celery.signals import worker_shutting_down

from worker.ops.metrics import start_metrics_server
from worker.runtime.app import app
from worker.settings import Settings

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
    embedded_beat = (
        EmbeddedService(app, thread=True, max_interval=min(1.0, settings.tick_seconds))
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
    start_metrics_server(settings)
    if embedded_beat is not None:
        embedded_beat.start()
    try:
        worker.start()
    finally:
        if embedded_beat is not None:
            stop_beat()
            embedded_beat.join(timeout=2.0)
    return int(worker.exitcode or 0)
