"""Gauges read from the database at scrape time: the same whichever process is scraped, since
the database is the source of truth every worker shares. No scrape counts rows: totals are the
tallies the database keeps by trigger (:mod:`worker.lifecycle.tally`), the oldest active jobs one
index seek each, so a scrape costs the same at 10 million rows as at 10 thousand."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from jobtracker.models import DeliveryStatus, JobStatus
from worker import clock
from worker.catalogue.table import PROVIDERS
from worker.db import session_scope
from worker.inspection.queries import open_breakers, unpollable
from worker.lifecycle import tally
from worker.providers.state import load_states
from worker.settings import Settings

log = logging.getLogger(__name__)


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
                "jobtracker_delivery_breakers_open",
                "Callback destinations whose circuit breaker is open (5 timeouts in a row); "
                "which ones: `jobtracker breakers`.",
            ),
            GaugeMetricFamily(
                "jobtracker_database_up", "1 if the last scrape could read the database."
            ),
        )

    def collect(self) -> Iterator[Metric]:
        jobs, oldest, paused, throttled, pending, stuck, breakers, up = self._families()
        now = clock.now(self.settings)
        try:
            with session_scope(self.settings) as session:
                tallies = tally.read(session)
                oldest_at = tally.oldest_active(session, tallies.active_kinds())
                states = load_states(session)
                unknown = unpollable(session)
                opened = open_breakers(session)
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
        breakers.add_metric([], opened)
        up.add_metric([], 1)
        yield from (jobs, oldest, paused, throttled, pending, stuck, breakers, up)
