"""One typed settings object, read from the environment once and validated at start.

Every ``JOBTRACKER_*`` / ``TENCENTCLOUD_*`` variable is read here and nowhere else. A bad value
raises :class:`~worker.errors.ConfigError` naming the variable, so a typo is refused when the
process starts instead of being discovered mid-run.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from worker.catalogue.table import PROVIDERS
from worker.errors import ConfigError

#: Tencent region names: ``ap-guangzhou``, ``na-siliconvalley``, ``ap-shanghai-fsi``...
REGION_RE = re.compile(r"^[a-z]{2,}(-[a-z0-9]+){1,3}$")

DEFAULT_REGION = "ap-guangzhou"
DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)
#: The embedded broker: kombu's filesystem transport, which needs no server.
EMBEDDED_BROKER = "filesystem://"


def _env_name(kind: str, suffix: str) -> str:
    return f"JOBTRACKER_{kind.upper()}_{suffix}"


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Durations are seconds; the unit is in each name."""

    database_url: str
    broker_url: str
    #: Where the embedded broker keeps its messages (only used with ``filesystem://``).
    broker_dir: Path
    region: str = DEFAULT_REGION
    #: kind -> base URL with scheme, e.g. ``https://facefusion.tencentcloudapi.com``.
    endpoints: Mapping[str, str] = field(default_factory=dict)
    #: kind -> queries per second allowed for all workers together.
    qps: Mapping[str, float] = field(default_factory=dict)
    secret_id: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    tick_seconds: float = 5.0
    poll_interval_min_s: float = 1.0
    poll_interval_max_s: float = 300.0
    #: ``adaptive`` (learned from the kind's recent durations) or ``backoff`` (the plain one).
    poll_schedule: str = "adaptive"
    #: Seconds of mean detection latency one provider call is worth (the adaptive schedule).
    poll_seconds_per_call: float = 8.0
    #: Poll once at enqueue anyway (the adaptive schedule would wait for the first finishes).
    poll_early_check: bool = False
    job_deadline_s: float = 86400.0
    #: How long a JobNotExist / JobNotFound answer is treated as transient after enqueue.
    not_found_grace_s: float = 300.0
    #: How long a claimed job is reserved for one worker before another may take it.
    lease_s: float = 120.0
    #: How many jobs one poll task handles.
    batch_size: int = 50
    worker_concurrency: int = 8
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    #: ``whsec_...`` secrets; every one signs each message (rotation).
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    #: Refuse callback URLs that resolve to private (RFC 1918, ULA, loopback) addresses.
    webhook_block_private: bool = False
    log_format: str = "text"
    log_level: str = "INFO"
    #: Port of the Prometheus endpoint; 0 turns it off.
    metrics_port: int = 0
    #: ``jobtracker api``: the address and port it listens on.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: Proxies whose ``X-Forwarded-For`` / ``-Proto`` headers are believed (IPs, networks, ``*``).
    api_trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    #: Larger request bodies are refused with 413 before they are read.
    api_max_body_bytes: int = 64 * 1024
    #: Requests per second each API client may make on average, and how many at once.
    api_rate_per_s: float = 20.0
    api_burst: int = 40
    #: How long a rotated token or webhook secret keeps working next to the new one.
    api_rotation_grace_s: float = 86400.0
    #: The master key per-client webhook secrets are derived from (never logged or stored).
    client_secret_key: bytes | None = field(default=None, repr=False)
    #: Finished jobs older than this (with their history and callbacks) are pruned; 0 keeps all.
    retention_days: float = 30.0
    #: The attempts of delivered callbacks go sooner (at most ``retention_days``); 0: with the job.
    attempt_retention_days: float = 7.0
    #: Tombstones of pruned jobs (which keep re-enqueues idempotent) go after this; 0: never.
    tombstone_days: float = 365.0
    #: Rows deleted per transaction by the retention.
    prune_batch: int = 500
    #: Pruned rows are first written here as gzipped JSON Lines (None: not archived).
    archive_dir: Path | None = None

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
        here = Path.cwd() if cwd is None else cwd
        reader = _Reader(env)

        database_url = (
            reader.text("JOBTRACKER_DATABASE_URL") or f"sqlite:///{here / 'jobtracker.db'}"
        )
        _check_database_url(database_url)
        broker_url = reader.text("JOBTRACKER_BROKER_URL") or EMBEDDED_BROKER
        _check_broker_url(broker_url)

        region = reader.text("TENCENTCLOUD_REGION") or DEFAULT_REGION
        if not REGION_RE.match(region):
            raise ConfigError(f"TENCENTCLOUD_REGION={region!r} is not a Tencent region name")

        endpoints = {}
        qps = {}
        for kind, spec in PROVIDERS.items():
            name = _env_name(kind, "ENDPOINT")
            endpoints[kind] = _check_endpoint(name, reader.text(name) or spec.default_endpoint)
            qps[kind] = reader.number(_env_name(kind, "QPS"), 20.0, minimum=0.1)

        poll_min = reader.number("JOBTRACKER_POLL_INTERVAL_MIN", 1.0, minimum=0.01)
        poll_max = reader.number("JOBTRACKER_POLL_INTERVAL_MAX", 300.0, minimum=0.01)
        if poll_max < poll_min:
            raise ConfigError(
                f"JOBTRACKER_POLL_INTERVAL_MAX ({poll_max:g}) is below "
                f"JOBTRACKER_POLL_INTERVAL_MIN ({poll_min:g})"
            )

        log_format = (reader.text("JOBTRACKER_LOG_FORMAT") or "text").lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"JOBTRACKER_LOG_FORMAT={log_format!r}: use 'text' or 'json'")
        log_level = (reader.text("JOBTRACKER_LOG_LEVEL") or "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"JOBTRACKER_LOG_LEVEL={log_level!r}: use DEBUG, INFO, WARNING or ERROR"
            )

        secret_id = reader.text("TENCENTCLOUD_SECRET_ID")
        secret_key = reader.text("TENCENTCLOUD_SECRET_KEY")
        if bool(secret_id) != bool(secret_key):
            raise ConfigError(
                "set both TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY, or neither"
            )

        settings = cls(
            database_url=database_url,
            broker_url=broker_url,
            broker_dir=Path(reader.text("JOBTRACKER_BROKER_DIR") or here / ".jobtracker-broker"),
            region=region,
            endpoints=endpoints,
            qps=qps,
            secret_id=secret_id,
            secret_key=secret_key,
            tick_seconds=reader.number("JOBTRACKER_TICK_SECONDS", 5.0, minimum=0.1),
            poll_interval_min_s=poll_min,
            poll_interval_max_s=poll_max,
            poll_schedule=_choice(reader, "JOBTRACKER_POLL_SCHEDULE", ("adaptive", "backoff")),
            poll_seconds_per_call=reader.number(
                "JOBTRACKER_POLL_SECONDS_PER_CALL", 8.0, minimum=0.01
            ),
            poll_early_check=reader.flag("JOBTRACKER_POLL_EARLY_CHECK"),
            job_deadline_s=reader.number("JOBTRACKER_JOB_DEADLINE", 86400.0, minimum=1),
            not_found_grace_s=reader.number("JOBTRACKER_NOT_FOUND_GRACE", 300.0, minimum=0),
            lease_s=reader.number("JOBTRACKER_LEASE_SECONDS", 120.0, minimum=1),
            batch_size=int(reader.number("JOBTRACKER_BATCH_SIZE", 50, minimum=1, integer=True)),
            worker_concurrency=int(
                reader.number("JOBTRACKER_WORKER_CONCURRENCY", 8, minimum=1, integer=True)
            ),
            connect_timeout_s=reader.number("JOBTRACKER_CONNECT_TIMEOUT", 3.0, minimum=0.1),
            read_timeout_s=reader.number("JOBTRACKER_READ_TIMEOUT", 10.0, minimum=0.1),
            webhook_secrets=_parse_secrets(reader.text("JOBTRACKER_WEBHOOK_SECRET")),
            webhook_retry_schedule_s=_parse_schedule(
                reader.text("JOBTRACKER_WEBHOOK_RETRY_SCHEDULE")
            ),
            webhook_block_private=reader.flag("JOBTRACKER_WEBHOOK_BLOCK_PRIVATE"),
            log_format=log_format,
            log_level=log_level,
            metrics_port=int(
                reader.number("JOBTRACKER_METRICS_PORT", 0, minimum=0, integer=True, maximum=65535)
            ),
            api_host=_check_host(reader.text("JOBTRACKER_API_HOST") or "127.0.0.1"),
            api_port=int(
                reader.number("JOBTRACKER_API_PORT", 8080, minimum=1, integer=True, maximum=65535)
            ),
            api_trusted_proxies=_parse_proxies(reader.text("JOBTRACKER_API_TRUSTED_PROXIES")),
            api_max_body_bytes=int(
                reader.number(
                    "JOBTRACKER_API_MAX_BODY_BYTES",
                    64 * 1024,
                    minimum=1024,
                    maximum=16 * 1024 * 1024,
                    integer=True,
                )
            ),
            api_rate_per_s=reader.number("JOBTRACKER_API_RATE", 20.0, minimum=0.01),
            api_burst=int(reader.number("JOBTRACKER_API_BURST", 40, minimum=1, integer=True)),
            api_rotation_grace_s=reader.number("JOBTRACKER_API_ROTATION_GRACE", 86400.0, minimum=0),
            client_secret_key=_parse_master_key(reader.text("JOBTRACKER_CLIENT_SECRET_KEY")),
            retention_days=reader.number("JOBTRACKER_RETENTION_DAYS", 30.0, minimum=0),
            attempt_retention_days=reader.number(
                "JOBTRACKER_ATTEMPT_RETENTION_DAYS", 7.0, minimum=0
            ),
            tombstone_days=reader.number("JOBTRACKER_TOMBSTONE_DAYS", 365.0, minimum=0),
            prune_batch=int(
                reader.number(
                    "JOBTRACKER_PRUNE_BATCH", 500, minimum=1, maximum=10_000, integer=True
                )
            ),
            archive_dir=(
                here / archive if (archive := reader.text("JOBTRACKER_ARCHIVE_DIR")) else None
            ),
        )
        if settings.lease_s <= settings.request_deadline_s + settings.lease_margin_s:
            # A claim must outlast one whole request and the batch's write, or no job is polled.
            raise ConfigError(
                f"JOBTRACKER_LEASE_SECONDS ({settings.lease_s:g}) must exceed "
                f"JOBTRACKER_CONNECT_TIMEOUT + JOBTRACKER_READ_TIMEOUT "
                f"({settings.request_deadline_s:g}) plus {settings.lease_margin_s:g} s to write "
                "the batch"
            )
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float,
        maximum: float | None = None,
        integer: bool = False,
    ) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise ConfigError(f"{name}={raw!r} is not {kind}") from None
        if value != value or value < minimum or (maximum is not None and value > maximum):
            bound = (
                f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
            )
            raise ConfigError(f"{name}={raw!r} must be {bound}")
        return value

    def flag(self, name: str) -> bool:
        raw = (self.text(name) or "false").lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r}: use true or false")


def _choice(reader: _Reader, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first by default), case-insensitive."""
    value = (reader.text(name) or choices[0]).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: use {' or '.join(choices)}")
    return value


def _check_database_url(url: str) -> None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"JOBTRACKER_DATABASE_URL is not a SQLAlchemy URL: {redact_url(url)}"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"JOBTRACKER_DATABASE_URL: backend {parsed.get_backend_name()!r} is not supported "
            "(use postgresql+psycopg://... or sqlite:///...)"
        )


def _check_broker_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "filesystem", "memory", "amqp", "pyamqp", "sentinel"):
        raise ConfigError(
            f"JOBTRACKER_BROKER_URL: unsupported scheme {scheme!r} in {redact_url(url)}"
        )


def _check_endpoint(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={url!r} must be a base URL with scheme, e.g. https://host")
    return url.rstrip("/")


def _parse_secrets(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    secrets = tuple(s for s in re.split(r"[\s,]+", raw) if s)
    for index, secret in enumerate(secrets, 1):
        body = secret.removeprefix("whsec_")
        try:
            ok = body != secret and len(base64.b64decode(body, validate=True)) >= 16
        except ValueError:
            ok = False
        if not ok:
            # Never echo the secret itself.
            raise ConfigError(
                f"JOBTRACKER_WEBHOOK_SECRET: secret #{index} is not 'whsec_' followed by "
                "base64 of at least 16 bytes"
            )
    return secrets


#: The shortest master key accepted: 32 characters of ``secrets.token_urlsafe(32)`` carry 192 bits.
MIN_CLIENT_SECRET_KEY_CHARS = 32


def _parse_master_key(raw: str | None) -> bytes | None:
    if raw is None:
        return None
    if len(raw) < MIN_CLIENT_SECRET_KEY_CHARS:
        # Never echo the key itself.
        raise ConfigError(
            f"JOBTRACKER_CLIENT_SECRET_KEY is {len(raw)} characters long; use at least "
            f"{MIN_CLIENT_SECRET_KEY_CHARS} random ones, e.g. from "
            '`python3 -c "import secrets; print(secrets.token_urlsafe(32))"`'
        )
    return raw.encode()


def _check_host(host: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", host):
        raise ConfigError(f"JOBTRACKER_API_HOST={host!r} is not an address or host name")
    return host.strip("[]")


def _parse_proxies(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ("127.0.0.1",)
    entries = tuple(p for p in re.split(r"[\s,]+", raw) if p)
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"JOBTRACKER_API_TRUSTED_PROXIES: {entry!r} is not an IP address, a network "
                "(10.0.0.0/8) or *"
            ) from None
    return entries


def _parse_schedule(raw: str | None) -> tuple[float, ...]:
    if not raw:
        return DEFAULT_RETRY_SCHEDULE
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"JOBTRACKER_WEBHOOK_RETRY_SCHEDULE={raw!r} is not a list of seconds"
        ) from None
    if not values or any(v < 0 or v != v for v in values):
        raise ConfigError(
            f"JOBTRACKER_WEBHOOK_RETRY_SCHEDULE={raw!r} must be non-negative seconds, "
            "comma-separated"
        )
    return values


def redact_url(url: str) -> str:
    """A URL with its password hidden, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
