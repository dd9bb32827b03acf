"""How the text of one variable becomes a value, or a :class:`~worker.errors.ConfigError` that
names the variable. Secrets are never echoed; URLs only with their password hidden."""

from __future__ import annotations

import base64
import ipaddress
import re
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from worker.errors import ConfigError


class Raw(NamedTuple):
    """One variable as set: its name, its text (stripped, never empty) and the directory a
    relative path in it is relative to."""

    name: str
    text: str
    cwd: Path


def text(raw: Raw) -> str:
    return raw.text


def number(raw: Raw, *, integer: bool, minimum: float | None, maximum: float | None) -> float:
    try:
        value = int(raw.text) if integer else float(raw.text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{raw.name}={raw.text!r} is not {kind}") from None
    low = minimum is not None and value < minimum
    high = maximum is not None and value > maximum
    if value != value or low or high:
        raise ConfigError(f"{raw.name}={raw.text!r} must be {bounds(minimum, maximum)}")
    return value


def bounds(minimum: float | None, maximum: float | None) -> str:
    """``between 1 and 65535``, ``>= 0.1``: the range in words."""
    if minimum is not None and maximum is not None:
        return f"between {_number(minimum)} and {_number(maximum)}"
    if minimum is not None:
        return f">= {_number(minimum)}"
    return f"<= {_number(maximum)}" if maximum is not None else "any number"


def _number(value: float) -> str:
    """``16777216``, never ``1.67772e+07``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def flag(raw: Raw) -> bool:
    value = raw.text.lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{raw.name}={value!r}: use true or false")


def choice(raw: Raw, choices: tuple[str, ...]) -> str:
    """One of ``choices``, whose spelling (``text``, ``INFO``) gives the case."""
    value = raw.text.upper() if choices[0].isupper() else raw.text.lower()
    if value not in choices:
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
        raise ConfigError(f"{raw.name}={value!r}: use {listed}")
    return value


def path(raw: Raw) -> Path:
    """A directory; a relative one is relative to the working directory."""
    return raw.cwd / raw.text


#: A SQLAlchemy URL, as ``sqlalchemy.engine.make_url`` parses it (``_parse_url``): checked here
#: without importing SQLAlchemy, which would cost every command's start ~0.3 s.
#: tests/unit/test_settings.py holds the two to the same verdicts.
_SQLALCHEMY_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)
DATABASE_BACKENDS = ("sqlite", "postgresql")


def database_url(raw: Raw) -> str:
    match = _SQLALCHEMY_URL.match(raw.text)
    if match is None or not _is_port(match["port"]):
        raise ConfigError(f"{raw.name} is not a SQLAlchemy URL: {redact_url(raw.text)}")
    backend = match["name"].split("+")[0]
    if backend not in DATABASE_BACKENDS:
        raise ConfigError(
            f"{raw.name}: backend {backend!r} is not supported "
            "(use postgresql+psycopg://... or sqlite:///...)"
        )
    return raw.text


def _is_port(port: str | None) -> bool:
    """What ``make_url`` takes for a port: none, or what ``int()`` reads (not an empty one)."""
    try:
        return port is None or isinstance(int(port), int)
    except ValueError:
        return False


BROKER_SCHEMES = ("redis", "rediss", "filesystem", "memory", "amqp", "pyamqp", "sentinel")


def broker_url(raw: Raw) -> str:
    scheme = urlsplit(raw.text).scheme
    if scheme not in BROKER_SCHEMES:
        raise ConfigError(f"{raw.name}: unsupported scheme {scheme!r} in {redact_url(raw.text)}")
    return raw.text


def endpoint(raw: Raw) -> str:
    parts = urlsplit(raw.text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{raw.name}={raw.text!r} must be a base URL with scheme, e.g. https://host"
        )
    return raw.text.rstrip("/")


#: Tencent region names: ``ap-guangzhou``, ``na-siliconvalley``, ``ap-shanghai-fsi``...
REGION_RE = re.compile(r"^[a-z]{2,}(-[a-z0-9]+){1,3}$")


def region(raw: Raw) -> str:
    if not REGION_RE.match(raw.text):
        raise ConfigError(f"{raw.name}={raw.text!r} is not a Tencent region name")
    return raw.text


def webhook_secrets(raw: Raw) -> tuple[str, ...]:
    """``whsec_`` + base64 of at least 16 bytes, separated by spaces or commas."""
    secrets = tuple(s for s in re.split(r"[\s,]+", raw.text) if s)
    for index, secret in enumerate(secrets, 1):
        body = secret.removeprefix("whsec_")
        try:
            ok = body != secret and len(base64.b64decode(body, validate=True)) >= 16
        except ValueError:
            ok = False
        if not ok:
            # Never echo the secret itself.
            raise ConfigError(
                f"{raw.name}: secret #{index} is not 'whsec_' followed by base64 of at least "
                "16 bytes"
            )
    return secrets


#: The shortest master key accepted: 32 characters of ``secrets.token_urlsafe(32)`` carry 192 bits.
MIN_CLIENT_SECRET_KEY_CHARS = 32


def master_key(raw: Raw) -> bytes:
    if len(raw.text) < MIN_CLIENT_SECRET_KEY_CHARS:
        # Never echo the key itself.
        raise ConfigError(
            f"{raw.name} is {len(raw.text)} characters long; use at least "
            f"{MIN_CLIENT_SECRET_KEY_CHARS} random ones, e.g. from "
            '`python3 -c "import secrets; print(secrets.token_urlsafe(32))"`'
        )
    return raw.text.encode()


def host(raw: Raw) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", raw.text):
        raise ConfigError(f"{raw.name}={raw.text!r} is not an address or host name")
    return raw.text.strip("[]")


def proxies(raw: Raw) -> tuple[str, ...]:
    """IP addresses or networks, or ``*``, separated by spaces or commas."""
    entries = tuple(p for p in re.split(r"[\s,]+", raw.text) if p)
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"{raw.name}: {entry!r} is not an IP address, a network (10.0.0.0/8) or *"
            ) from None
    return entries


def schedule(raw: Raw) -> tuple[float, ...]:
    """Seconds, comma-separated."""
    try:
        values = tuple(float(part) for part in raw.text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{raw.name}={raw.text!r} is not a list of seconds") from None
    if not values or any(v < 0 or v != v for v in values):
        raise ConfigError(f"{raw.name}={raw.text!r} must be non-negative seconds, comma-separated")
    return values


def redact_url(url: str) -> str:
    """A URL with its password hidden, for messages and logs."""
    try:
        password = urlsplit(url).password
    except ValueError:  # not even a URL (an unclosed "[" of an IPv6 host): hide what may be one
        return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)
    return url.replace(f":{password}@", ":***@", 1) if password else url
