"""Prometheus metrics, served over HTTP by the worker when ``JOBTRACKER_METRICS_PORT`` > 0.

Two sources:

* **events** counted in this process as they happen (polls, provider errors, deliveries, ticks):
  counters and histograms updated by one-line calls in :mod:`worker.flow.poll`,
  :mod:`worker.flow.tick` and :mod:`worker.flow.deliver`;
* **state** read from the database at scrape time by :class:`DatabaseCollector` (jobs by kind
  and status, the oldest active job, paused and throttled providers, pending callbacks). The
  database is the source of truth shared by every worker, so these gauges are the same whichever
  worker is scraped. No scrape counts rows: totals are the tallies the database keeps by
  trigger (:mod:`worker.lifecycle.tally`), the oldest active jobs one index seek each, so a
  scrape costs the same at 10 million rows as at 10 thousand.

Workers run a *threads* pool (``worker_pool = "threads"``) in one process, so the default
in-process registry sees every task and no multiprocess mode is needed. Should the pool ever fork
(prefork), counters would have to be aggregated across children: set ``PROMETHEUS_MULTIPROC_DIR``
to an empty directory before start and serve a ``MultiProcessCollector`` registry instead (see the
prometheus-client documentation, "Multiprocess Mode").

Metric names (all prefixed ``jobtracker_``): ``polls_total{kind,outcome}``,
``poll_duration_seconds{kind}``, ``api_errors_total{kind,code}``,
``deliveries_total{outcome}``, ``delivery_duration_seconds``, ``tick_duration_seconds``,
``jobs{kind,status}``, ``oldest_active_job_age_seconds{kind,status}``,
``provider_paused{kind}``, ``provider_throttled{kind}``, ``deliveries_pending``,
``detection_latency_seconds{kind}``, ``polls_per_job{kind}``,
``unpollable_jobs{kind}``, ``database_up``; and in the service API process (``jobtracker api``):
``api_requests_total{route,method,status}``, ``api_request_duration_seconds{route,method}``,
``api_waiting_requests``. ``route`` is the route's template (``/v1/jobs/{id}``), never the
path itself, so the label set stays small whatever the callers send.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from models import DeliveryStatus, JobStatus
from worker import clock
from worker.db import session_scope
from worker.errors import ErrorClass, ProviderError, ThrottledError
from worker.lifecycle import tally
from worker.ops.inspection import unpollable
from worker.providers.state import load_states
from worker.providers.table import PROVIDERS
from worker.settings import Settings

log = logging.getLogger(__name__)

POLLS = Counter(
    "jobtracker_polls",
    "Provider queries made, by kind and outcome (ok, transient, job_terminal, configuration, "
    "throttled).",
    ["kind", "outcome"],
)
POLL_SECONDS = Histogram(
    "jobtracker_poll_duration_seconds",
    "Time one provider query took (network and parsing), by kind.",
    ["kind"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
API_ERRORS = Counter(
    "jobtracker_api_errors",
    "Provider error answers and transport faults, by kind and error code.",
    ["kind", "code"],
)
DELIVERIES = Counter(
    "jobtracker_deliveries",
    "Callback attempts by outcome: delivered, retry (another attempt is scheduled), failed "
    "(given up).",
    ["outcome"],
)
DELIVERY_SECONDS = Histogram(
    "jobtracker_delivery_duration_seconds",
    "Time one callback attempt took, until the receiver's answer or the error.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
)
PROVIDER_RATE = Gauge(
    "jobtracker_provider_rate",
    "Calls per second this process last saw allowed by the provider's shared pace (at most "
    "the configured QPS; less after refusals), by kind.",
    ["kind"],
)
SLOTS_DROPPED = Counter(
    "jobtracker_rate_slots_dropped",
    "Rate-limit slots a batch reached too late and dropped rather than call late, by kind.",
    ["kind"],
)
DETECTION_SECONDS = Histogram(
    "jobtracker_detection_latency_seconds",
    "Upper bound of the time from a job's finish to the poll that saw it (the terminal poll "
    "minus the last poll that found the job unfinished, or its enqueue), by kind.",
    ["kind"],
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0),
)
POLLS_PER_JOB = Histogram(
    "jobtracker_polls_per_job",
    "Provider calls a job took until its terminal answer, by kind.",
    ["kind"],
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100),
)
TICK_SECONDS = Histogram(
    "jobtracker_tick_duration_seconds",
    "Time one tick took to claim due jobs and send their poll tasks.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

API_REQUESTS = Counter(
    "jobtracker_api_requests",
    "Service API requests answered, by route template, method and HTTP status.",
    ["route", "method", "status"],
)
API_REQUEST_SECONDS = Histogram(
    "jobtracker_api_request_duration_seconds",
    "Time the service API took to answer, by route template and method (?wait= included).",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0),
)
API_WAITING = Gauge(
    "jobtracker_api_waiting_requests",
    "Service API requests held open by ?wait= until their job ends.",
)


def record_api_request(route: str, method: str, status: int, seconds: float) -> None:
    API_REQUESTS.labels(route, method, str(status)).inc()
    API_REQUEST_SECONDS.labels(route, method).observe(seconds)


def record_finish(kind: str, polls: int, detection_bound_s: float) -> None:
    """Count a job the provider ended: its calls and how late its end could have been seen."""
    POLLS_PER_JOB.labels(kind).observe(polls)
    DETECTION_SECONDS.labels(kind).observe(max(0.0, detection_bound_s))


def record_poll(kind: str, error: ProviderError | None, error_class: ErrorClass | None) -> None:
    """Count one provider query: ``error`` None means the provider answered."""
    if error is None:
        outcome = "ok"
    elif isinstance(error, ThrottledError):
        outcome = "throttled"
    else:
        outcome = str(error_class or error.error_class)
    POLLS.labels(kind, outcome).inc()
    if error is not None:
        API_ERRORS.labels(kind, error.code).inc()


def record_delivery(status: object, latency_ms: int | None) -> None:
    """Count one callback attempt; ``status`` is the message's new status (None: retrying)."""
    outcome = {
        DeliveryStatus.DELIVERED.value: "delivered",
        DeliveryStatus.FAILED.value: "failed",
    }.get(str(status), "retry")
    DELIVERIES.labels(outcome).inc()
    if latency_ms:  # 0: refused before any network traffic (no secret, unsafe URL)
        DELIVERY_SECONDS.observe(latency_ms / 1000)


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterator[Metric]:
        # Without describe(), registering would call collect() and query the database.
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "jobtracker_jobs",
                "Tracked jobs by kind and status (exact: tallies kept by database triggers, "
                "not a count at scrape time).",
                labels=["kind", "status"],
            ),
            GaugeMetricFamily(
                "jobtracker_oldest_active_job_age_seconds",
                "Age of the oldest job still pending, queued or running, by kind and status.",
                labels=["kind", "status"],
            ),
            GaugeMetricFamily(
                "jobtracker_provider_paused",
                "1 while a configuration error (AuthFailure...) has polling of the kind paused.",
                labels=["kind"],
            ),
            GaugeMetricFamily(
                "jobtracker_provider_throttled",
                "1 while the provider's rate limit has every poll of the kind backed off.",
                labels=["kind"],
            ),
            GaugeMetricFamily(
                "jobtracker_deliveries_pending",
                "Callback messages waiting for their first or next attempt (exact: tallies kept "
                "by database triggers).",
            ),
            GaugeMetricFamily(
                "jobtracker_unpollable_jobs",
                "Active jobs of a kind no provider of this tracker polls (they expire at their "
                "deadline), by kind.",
                labels=["kind"],
            ),
            GaugeMetricFamily(
                "jobtracker_database_up", "1 if the last scrape could read the database."
            ),
        )

    def collect(self) -> Iterator[Metric]:
        jobs, oldest, paused, throttled, pending, stuck, up = self._families()
        now = clock.now(self.settings)
        try:
            with session_scope(self.settings) as session:
                tallies = tally.read(session)
                oldest_at = tally.oldest_active(session, tallies.active_kinds())
                states = load_states(session)
                unknown = unpollable(session)
        except Exception as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        kinds = sorted(set(PROVIDERS) | set(tallies.kinds()))
        for kind in kinds:
            for status in JobStatus:
                counted = tallies.jobs.get((kind, status.value))
                jobs.add_metric([kind, status.value], counted.rows if counted else 0)
                created = oldest_at.get((kind, status.value))
                if created is not None:
                    age_s = max(0.0, (now - created).total_seconds())
                    oldest.add_metric([kind, status.value], age_s)
            state = states.get(kind)
            paused.add_metric([kind], 1 if state is not None and state.paused else 0)
            is_throttled = state is not None and state.is_throttled(now)
            throttled.add_metric([kind], 1 if is_throttled else 0)
        pending.add_metric([], tallies.deliveries.get(DeliveryStatus.PENDING.value, 0))
        for kind, count in sorted(unknown.items()):
            stuck.add_metric([kind], count)
        up.add_metric([], 1)
        yield from (jobs, oldest, paused, throttled, pending, stuck, up)


_lock = threading.Lock()
_serving_port: int | None = None


def start_metrics_server(settings: Settings, *, addr: str = "0.0.0.0") -> int | None:
    """Serve ``/metrics`` on ``settings.metrics_port`` (once per process); return the port.

    Does nothing when the port is 0. A port already taken is logged, not fatal: the worker's
    job is polling, and a metrics endpoint must never stop it.
    """
    global _serving_port
    if settings.metrics_port <= 0:
        return None
    with _lock:
        if _serving_port is not None:
            return _serving_port
        collector = DatabaseCollector(settings)
        REGISTRY.register(collector)
        try:
            start_http_server(settings.metrics_port, addr=addr)
        except OSError as exc:
            REGISTRY.unregister(collector)
            log.error(
                "metrics endpoint not started: %s",
                exc,
                extra={"port": settings.metrics_port},
            )
            return None
        _serving_port = settings.metrics_port
    log.info("metrics endpoint listening", extra={"port": settings.metrics_port, "addr": addr})
    return _serving_port
