"""The Celery app. Configuration is derived from :class:`~worker.settings.Settings` lazily, so
importing ``worker`` reads no environment and opens no connection."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init, worker_shutting_down

from worker.flow import deliver, poll
from worker.inspection.gauges import DatabaseCollector
from worker.observe.logs import configure_logging
from worker.observe.metrics import start_metrics_server
from worker.runtime.migrate import ensure_schema
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

QUEUE = "jobtracker"
#: How often the tallies are folded (a metrics scrape sums what piled up since).
COMPACT_TALLIES_EVERY_S = 30.0
#: How often the retention runs, and the most one run works before leaving the rest to the next.
PRUNE_EVERY_S = 600.0
PRUNE_BUDGET_S = 120.0
#: Rest between two prune batches, so pollers and enqueuers get the database in between.
PRUNE_PAUSE_S = 0.05


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for jobtracker's workload: short I/O-bound tasks, re-derivable messages."""
    config: dict[str, Any] = {
        # The embedded broker has no host; naming one spares a "No hostname" warning at start.
        "broker_url": "filesystem://localhost//"
        if settings.embedded_broker
        else settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": QUEUE,
        # Every message can be re-derived from the database, so results are never stored and
        # a message is acknowledged only after its task ran (a killed worker's batch comes back).
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Polls and deliveries wait on the network: threads, not processes.
        "worker_pool": "threads",
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # The schedule holds only fixed intervals: nothing worth persisting to a file.
        "beat_scheduler": "celery.beat:Scheduler",
        "beat_schedule": {
            "jobtracker-tick": {"task": "jobtracker.tick", "schedule": settings.tick_seconds},
            "jobtracker-sweep-deliveries": {
                "task": "jobtracker.sweep_deliveries",
                "schedule": max(settings.tick_seconds, 5.0),
            },
            "jobtracker-compact-tallies": {
                "task": "jobtracker.compact_tallies",
                "schedule": COMPACT_TALLIES_EVERY_S,
            },
            "jobtracker-prune": {"task": "jobtracker.prune", "schedule": PRUNE_EVERY_S},
        },
        # Stale tick messages (e.g. queued while every worker was down) are worthless.
        "task_annotations": {
            "jobtracker.tick": {"expires": settings.tick_seconds * 2},
            "jobtracker.sweep_deliveries": {"expires": max(settings.tick_seconds, 5.0) * 2},
            "jobtracker.compact_tallies": {"expires": COMPACT_TALLIES_EVERY_S},
            "jobtracker.prune": {"expires": PRUNE_EVERY_S},
        },
    }
    if settings.embedded_broker:
        config["broker_transport"] = "worker.runtime.embedded_broker:Transport"
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    else:
        # A message unacknowledged this long is redelivered (Redis); leases protect the rest.
        config["broker_transport_options"] = {"visibility_timeout": 3600}
    return config


app = Celery("jobtracker", include=["worker.runtime.tasks"])
app.add_defaults(lambda: celery_config(get_settings()))


@worker_init.connect
def _check_worker_start(**_: Any) -> None:
    """A worker refuses to start on an un-migrated shared database (clear message, no crash loop
    of half-working tasks); the embedded SQLite default is migrated on the spot."""
    settings = get_settings()
    configure_logging(settings)
    ensure_schema(settings)
    # `celery -A worker worker` and `jobtracker run` both pass here (once per process: the pool
    # is threads, so there are no child processes to serve metrics from).
    start_metrics_server(settings, DatabaseCollector(settings))
    # In the background: resolving the pending messages' hosts must not delay the start.
    threading.Thread(
        target=_refuse_unreachable, args=(settings,), name="jobtracker-recheck", daemon=True
    ).start()


def _refuse_unreachable(settings: Settings) -> None:
    try:
        refused = deliver.refuse_unreachable(settings)
    except Exception:  # each message is still checked at its next attempt
        log.exception("could not recheck the pending callbacks")
        return
    if refused:
        log.warning(
            "%d pending callback(s) failed at once: their URL is no longer allowed "
            "(webhook_attempts.error_class = 'refused_url')",
            refused,
        )


@beat_init.connect
def _configure_beat(**_: Any) -> None:
    configure_logging(get_settings())


@worker_shutting_down.connect
def _stop_polling(**_: Any) -> None:
    """A warm shutdown: batches stop asking and write what they have, instead of being cut off
    by the shutdown's time limit with every finished poll of theirs lost."""
    poll.stop_soon()
