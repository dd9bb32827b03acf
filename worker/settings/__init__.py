"""One typed settings object, read from the environment once and validated at start.

Every ``JOBTRACKER_*`` / ``TENCENTCLOUD_*`` variable is declared on its field below, with its
default, bounds and one line of doc (:mod:`worker.settings.declare`), and read here and nowhere
else. A bad value raises :class:`~worker.errors.ConfigError` naming the variable, so a typo is
refused when the process starts instead of being discovered mid-run. ``jobtracker settings``
shows them all; the README's table is ``jobtracker settings --markdown``.

Nothing here imports SQLAlchemy, Celery or the flow: ``jobtracker settings`` starts in a blink.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from worker.catalogue.table import PROVIDERS
from worker.errors import ConfigError
from worker.settings import declare, parse
from worker.settings.declare import Members, setting
from worker.settings.parse import REGION_RE, redact_url

__all__ = ["KINDS", "REGION_RE", "Settings", "get_settings", "redact_url", "reset_settings"]

#: One variable per kind of the provider table.
KINDS = Members(
    "KIND",
    doc="a kind of the provider table: " + ", ".join(f"`{k.upper()}`" for k in PROVIDERS),
    names=lambda environ: tuple(PROVIDERS),
)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated configuration. Durations are seconds; the unit is in each name."""

    database_url: str = setting(
        "JOBTRACKER_DATABASE_URL",
        default_in=lambda cwd: f"sqlite:///{cwd / 'jobtracker.db'}",
        parse=parse.database_url,
        url=True,
        unset="a file in the working directory",
        doc="SQLAlchemy URL (`postgresql+psycopg://user:pw@host/db` or `sqlite:///path`; "
        "`postgresql://` also works)",
    )
    broker_url: str = setting(
        "JOBTRACKER_BROKER_URL",
        "filesystem://",
        parse=parse.broker_url,
        url=True,
        unset="an embedded broker with no server, in `JOBTRACKER_BROKER_DIR`",
        doc="Celery broker (`redis://host:6379/0` in production)",
    )
    broker_dir: Path = setting(
        "JOBTRACKER_BROKER_DIR",
        default_in=lambda cwd: cwd / ".jobtracker-broker",
        parse=parse.path,
        unset="in the working directory",
        doc="where the embedded broker (`filesystem://`) keeps its messages",
    )
    secret_id: str | None = setting(
        "TENCENTCLOUD_SECRET_ID",
        secret=True,
        doc="API credentials: the SecretId (set both or neither); never logged or stored",
    )
    secret_key: str | None = setting(
        "TENCENTCLOUD_SECRET_KEY",
        secret=True,
        doc="API credentials: the SecretKey; never logged or stored",
    )
    region: str = setting(
        "TENCENTCLOUD_REGION",
        "ap-guangzhou",
        parse=parse.region,
        doc="default region for enqueued jobs",
    )
    #: kind -> base URL with scheme, e.g. ``https://facefusion.tencentcloudapi.com``.
    endpoints: Mapping[str, str] = setting(
        "JOBTRACKER_{KIND}_ENDPOINT",
        per=KINDS,
        default_for=lambda kind: PROVIDERS[kind].default_endpoint,
        parse=parse.endpoint,
        url=True,
        doc="base URL with scheme, e.g. `http://127.0.0.1:18081`",
    )
    #: kind -> queries per second allowed for all workers together.
    qps: Mapping[str, float] = setting(
        "JOBTRACKER_{KIND}_QPS",
        20.0,
        per=KINDS,
        minimum=0.1,
        doc="queries per second, for all workers together: a ceiling; the rate adapts below it "
        'to what the provider accepts (see "How jobs are polled")',
    )
    tick_seconds: float = setting(
        "JOBTRACKER_TICK_SECONDS", 5.0, minimum=0.1, doc="beat period, seconds"
    )
    poll_interval_min_s: float = setting(
        "JOBTRACKER_POLL_INTERVAL_MIN",
        1.0,
        minimum=0.01,
        doc="the least time between two polls of one job, seconds. The learned schedule needs "
        "short gaps where finishes are dense; the shared rate limit, not this floor, protects "
        "the provider. The plain backoff still starts at 5 s",
    )
    poll_interval_max_s: float = setting(
        "JOBTRACKER_POLL_INTERVAL_MAX",
        300.0,
        minimum=0.01,
        doc="the most time between two polls of one job, seconds (at least the minimum)",
    )
    poll_schedule: str = setting(
        "JOBTRACKER_POLL_SCHEDULE",
        "adaptive",
        choices=("adaptive", "backoff"),
        doc='`adaptive` (learned per kind, see "How jobs are polled") or `backoff` (from 5 s, '
        "each gap 1.5 times the last, up to the maximum)",
    )
    poll_seconds_per_call: float = setting(
        "JOBTRACKER_POLL_SECONDS_PER_CALL",
        8.0,
        minimum=0.01,
        doc="the adaptive schedule's one knob: how many seconds of mean detection latency one "
        "provider call is worth. Lower: sooner detection, more calls",
    )
    poll_early_check: bool = setting(
        "JOBTRACKER_POLL_EARLY_CHECK",
        False,
        doc="also poll once at enqueue (the adaptive schedule otherwise waits until the kind's "
        "jobs start to finish)",
    )
    job_deadline_s: float = setting(
        "JOBTRACKER_JOB_DEADLINE",
        86400.0,
        minimum=1,
        doc="seconds after enqueue when a job becomes `expired`",
    )
    not_found_grace_s: float = setting(
        "JOBTRACKER_NOT_FOUND_GRACE",
        300.0,
        minimum=0,
        doc='seconds during which "job not found" counts as transient (new jobs can be briefly '
        "invisible)",
    )
    lease_s: float = setting(
        "JOBTRACKER_LEASE_SECONDS",
        120.0,
        minimum=1,
        doc="how long a claimed job belongs to one worker; after that, another worker may claim "
        "it. Must exceed connect + read timeout plus max(1 s, 10 % of the lease) to write the "
        "batch (checked at start)",
    )
    batch_size: int = setting("JOBTRACKER_BATCH_SIZE", 50, minimum=1, doc="jobs per poll task")
    worker_concurrency: int = setting(
        "JOBTRACKER_WORKER_CONCURRENCY", 8, minimum=1, doc="worker threads"
    )
    connect_timeout_s: float = setting(
        "JOBTRACKER_CONNECT_TIMEOUT",
        3.0,
        minimum=0.1,
        doc="seconds a provider call may take to connect",
    )
    read_timeout_s: float = setting(
        "JOBTRACKER_READ_TIMEOUT",
        10.0,
        minimum=0.1,
        doc="seconds a provider call may take after connecting: one call takes at most connect "
        "+ read in all, however its answer trickles in",
    )
    webhook_secrets: tuple[str, ...] = setting(
        "JOBTRACKER_WEBHOOK_SECRET",
        (),
        parse=parse.webhook_secrets,
        secret=True,
        unset="callbacks are not sent; see below",
        doc="`whsec_…` signing secret. Several secrets, separated by spaces or commas, all sign "
        "each message (for rotation)",
    )
    webhook_retry_schedule_s: tuple[float, ...] = setting(
        "JOBTRACKER_WEBHOOK_RETRY_SCHEDULE",
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        parse=parse.schedule,
        doc="comma-separated seconds between attempts",
    )
    webhook_block_private: bool = setting(
        "JOBTRACKER_WEBHOOK_BLOCK_PRIVATE",
        False,
        doc="also refuse callback URLs that resolve to private, loopback or CGNAT addresses, "
        "for jobs enqueued with Celery, Python, the CLI, SQL or by an `admin` API client (the "
        "other API clients' callbacks reach only public addresses and the networks allowed for "
        'them: see "What a client can and cannot see or reach")',
    )
    delivery_threads: int = setting(
        "JOBTRACKER_DELIVERY_THREADS",
        32,
        minimum=2,
        maximum=512,
        doc="callback-sending threads in each worker process. One receiver gets at most 4 of "
        "them at once (1 until it answers, and while it times out), one API client at most "
        'half (see "Delivery rules")',
    )
    log_format: str = setting(
        "JOBTRACKER_LOG_FORMAT",
        "text",
        choices=("text", "json"),
        doc="`text`, or `json`: one JSON object per line",
    )
    log_level: str = setting(
        "JOBTRACKER_LOG_LEVEL",
        "INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        doc="the least severe records logged",
    )
    metrics_port: int = setting(
        "JOBTRACKER_METRICS_PORT",
        0,
        minimum=0,
        maximum=65535,
        doc="Prometheus endpoint port of the worker (or of `jobtracker api`); 0 turns it off",
    )
    client_secret_key: bytes | None = setting(
        "JOBTRACKER_CLIENT_SECRET_KEY",
        parse=parse.master_key,
        secret=True,
        unset="API clients cannot be added; their callbacks are not sent",
        doc="master key the per-client webhook secrets are derived from (32+ random "
        "characters); needed by the worker and by `jobtracker clients add/rotate-secret`, not "
        "by `jobtracker api`; never logged or stored",
    )
    client_secret_key_previous: bytes | None = setting(
        "JOBTRACKER_CLIENT_SECRET_KEY_PREVIOUS",
        parse=parse.master_key,
        secret=True,
        unset="no master key rotation under way",
        doc="during a master key rotation, the previous `JOBTRACKER_CLIENT_SECRET_KEY`: the "
        "secrets derived from it sign each callback too, next to the new ones, until it is "
        "unset (see Clients, tokens and webhook secrets); never logged or stored",
    )
    api_host: str = setting(
        "JOBTRACKER_API_HOST",
        "127.0.0.1",
        parse=parse.host,
        doc="the address `jobtracker api` listens on",
    )
    api_port: int = setting(
        "JOBTRACKER_API_PORT",
        8080,
        minimum=1,
        maximum=65535,
        doc="the port `jobtracker api` listens on",
    )
    api_trusted_proxies: tuple[str, ...] = setting(
        "JOBTRACKER_API_TRUSTED_PROXIES",
        ("127.0.0.1",),
        parse=parse.proxies,
        doc="IPs or networks (`10.0.0.0/8`), comma-separated, or `*`, whose `X-Forwarded-For` / "
        "`X-Forwarded-Proto` are believed: your TLS proxy",
    )
    api_max_body_bytes: int = setting(
        "JOBTRACKER_API_MAX_BODY_BYTES",
        64 * 1024,
        minimum=1024,
        maximum=16 * 1024 * 1024,
        doc="larger request bodies are refused (413) before they are read",
    )
    api_rate_per_s: float = setting(
        "JOBTRACKER_API_RATE",
        20.0,
        minimum=0.01,
        doc="requests per second each API client may make on average (shared through Redis "
        "when the broker is Redis)",
    )
    api_burst: int = setting(
        "JOBTRACKER_API_BURST",
        40,
        minimum=1,
        doc="requests each API client may make at once, above its average",
    )
    api_auth_failures_per_min: float = setting(
        "JOBTRACKER_API_AUTH_FAILURES",
        60.0,
        minimum=0.01,
        doc="failed authentications (well-formed tokens that are not valid) each client address "
        "may make per minute, after 20 at once; past that the address gets 429 without a token "
        "lookup until its budget refills",
    )
    api_rotation_grace_s: float = setting(
        "JOBTRACKER_API_ROTATION_GRACE",
        86400.0,
        minimum=0,
        doc="seconds a rotated token or webhook secret keeps working next to the new one",
    )
    retention_days: float = setting(
        "JOBTRACKER_RETENTION_DAYS",
        30.0,
        minimum=0,
        doc="finished jobs older than this are pruned with their transitions, callbacks and "
        "attempts (see Retention); `0` keeps everything",
    )
    attempt_retention_days: float = setting(
        "JOBTRACKER_ATTEMPT_RETENTION_DAYS",
        7.0,
        minimum=0,
        doc="attempts of *delivered* callbacks go sooner (never later than their job); `0`: "
        "with their job",
    )
    tombstone_days: float = setting(
        "JOBTRACKER_TOMBSTONE_DAYS",
        365.0,
        minimum=0,
        doc="how long a pruned job's tombstone keeps a re-enqueue of it from tracking it "
        "again; `0`: forever",
    )
    prune_batch: int = setting(
        "JOBTRACKER_PRUNE_BATCH",
        500,
        minimum=1,
        maximum=10_000,
        doc="jobs removed per transaction by the retention",
    )
    archive_dir: Path | None = setting(
        "JOBTRACKER_ARCHIVE_DIR",
        parse=parse.path,
        unset="not archived",
        doc="if set, pruned jobs are first written there as gzipped JSON Lines",
    )

    @property
    def request_deadline_s(self) -> float:
        """The most one provider request may take in all: connecting, then the whole answer."""
        return self.connect_timeout_s + self.read_timeout_s

    @property
    def lease_margin_s(self) -> float:
        """The end of a lease kept for writing a poll batch."""
        return max(1.0, 0.1 * self.lease_s)

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def has_credentials(self) -> bool:
        return bool(self.secret_id and self.secret_key)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Settings:
        """Read and validate the environment (``os.environ`` unless given)."""
        env = os.environ if environ is None else environ
        settings = cls(**declare.read(cls, env, Path.cwd() if cwd is None else cwd))
        settings._check_together()
        return settings

    def _check_together(self) -> None:
        """What no variable can be refused for on its own."""
        if self.poll_interval_max_s < self.poll_interval_min_s:
            raise ConfigError(
                f"JOBTRACKER_POLL_INTERVAL_MAX ({self.poll_interval_max_s:g}) is below "
                f"JOBTRACKER_POLL_INTERVAL_MIN ({self.poll_interval_min_s:g})"
            )
        if bool(self.secret_id) != bool(self.secret_key):
            raise ConfigError(
                "set both TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY, or neither"
            )
        if self.client_secret_key_previous is not None and (
            self.client_secret_key in (None, self.client_secret_key_previous)
        ):
            raise ConfigError(
                "JOBTRACKER_CLIENT_SECRET_KEY_PREVIOUS is set: set JOBTRACKER_CLIENT_SECRET_KEY "
                "to the new master key, different from the previous one"
            )
        if self.lease_s <= self.request_deadline_s + self.lease_margin_s:
            # A claim must outlast one whole request and the batch's write, or no job is polled.
            raise ConfigError(
                f"JOBTRACKER_LEASE_SECONDS ({self.lease_s:g}) must exceed "
                f"JOBTRACKER_CONNECT_TIMEOUT + JOBTRACKER_READ_TIMEOUT "
                f"({self.request_deadline_s:g}) plus {self.lease_margin_s:g} s to write "
                "the batch"
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
