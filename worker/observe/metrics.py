"""Prometheus metrics, served over HTTP by the worker when ``JOBTRACKER_METRICS_PORT`` > 0.

Two sources:

* **events** counted in this process as they happen (polls, provider errors, deliveries, ticks):
  the counters and histograms here, updated by one-line calls in :mod:`worker.flow.poll`,
  :mod:`worker.flow.tick` and :mod:`worker.flow.deliver`;
* **state** read from the database at scrape time (jobs by kind and status, the oldest active
  job, paused and throttled providers, pending callbacks): the collector of
  :mod:`worker.inspection.gauges`, which the process hands to :func:`start_metrics_server`.

Workers run a *threads* pool (``worker_pool = "threads"``) in one process, so the default
in-process registry sees every task and no multiprocess mode is needed. Should the pool ever fork
(prefork), counters would have to be aggregated across children: set ``PROMETHEUS_MULTIPROC_DIR``
to an empty directory before start and serve a ``MultiProcessCollector`` registry instead (see the
prometheus-client documentation, "Multiprocess Mode").

Metric names (all prefixed ``jobtracker_``): ``polls_total{kind,outcome}``,
``polls_left_total{kind,reason}``, ``poll_duration_seconds{kind}``, ``api_errors_total{kind,code}``,
``deliveries_total{outcome}``, ``delivery_duration_seconds``, ``tick_duration_seconds``,
``jobs{kind,status}``, ``oldest_active_job_age_seconds{kind,status}``,
``provider_paused{kind}``, ``provider_throttled{kind}``, ``deliveries_pending``,
``detection_latency_seconds{kind}``, ``polls_per_job{kind}``,
``unpollable_jobs{kind}``, ``database_up``; and in the service API process (``jobtracker api``):
``api_requests_total{route,method,status}``, ``api_request_duration_seconds{route,method}``,
``api_waiting_requests``, ``api_wait_watcher_restarts_total``,
``api_rate_gate_fallbacks_total``, ``api_rate_gate_local``, ``api_auth_refusals_total{reason}``.
``route`` is the route's template (``/v1/jobs/{id}``), never the path itself, so the label set
stays small whatever the callers send.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import Collector

from jobtracker.models import DeliveryStatus
from worker.errors import ErrorClass, ProviderError, ThrottledError
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
POLLS_LEFT = Counter(
    "jobtracker_polls_left",
    "Claimed jobs a poll batch left unasked (released, to be polled again later), by kind and "
    "reason (why the batch could not ask: the provider paused or resting, a shutdown, a first "
    "poll put off, no rate-limit slot in time...).",
    ["kind", "reason"],
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
BREAKERS_OPENED = Counter(
    "jobtracker_delivery_breakers_opened",
    "Callback destinations whose circuit breaker this process opened (after their timeouts in a "
    "row); which ones is in the log line and `jobtracker breakers`.",
)
DELIVERIES_SKIPPED = Counter(
    "jobtracker_deliveries_skipped",
    "Callback messages left in the outbox without an attempt, by reason: breaker (their "
    "destination's breaker is open), busy (no room for them in this process now).",
    ["reason"],
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
API_AUTH_REFUSALS = Counter(
    "jobtracker_api_auth_refusals",
    "Service API requests refused for their token, by reason: no_token, malformed, "
    "refused_before (a token refused within the last minute: no lookup), source_limited (the "
    "address is over its budget of failed authentications: 429, no lookup), unknown (looked up: "
    "no such token, expired or revoked).",
    ["reason"],
)
API_RATE_GATE_FALLBACKS = Counter(
    "jobtracker_api_rate_gate_fallbacks",
    "Times the service API's shared per-client rate gate (Redis) stopped answering and this "
    "process began to gate its clients on its own.",
)
API_RATE_GATE_LOCAL = Gauge(
    "jobtracker_api_rate_gate_local",
    "1 while this service API process gates its clients on its own because Redis does not "
    "answer; 0 while the shared gate holds them (or there is no Redis to share).",
)
API_WAIT_WATCHER_RESTARTS = Counter(
    "jobtracker_api_wait_watcher_restarts",
    "Times the service API's ?wait= watcher failed (a lost database connection, an error) and "
    "was started again.",
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


_lock = threading.Lock()
_serving_port: int | None = None


def start_metrics_server(
    settings: Settings, collector: Collector | None = None, *, addr: str = "0.0.0.0"
) -> int | None:
    """Serve ``/metrics`` on ``settings.metrics_port`` (once per process), with ``collector``'s
    metrics besides this module's (the database gauges: :mod:`worker.inspection.gauges`);
    return the port.

    Does nothing when the port is 0. A port already taken is logged, not fatal: the worker's
    job is polling, and a metrics endpoint must never stop it.
    """
    global _serving_port
    if settings.metrics_port <= 0:
        return None
    with _lock:
        if _serving_port is not None:
            return _serving_port
        if collector is not None:
            REGISTRY.register(collector)
        try:
            start_http_server(settings.metrics_port, addr=addr)
        except OSError as exc:
            if collector is not None:
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
