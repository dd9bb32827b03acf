"""What every ``jobtracker`` command shares: settings, exit codes, JSON output, time options."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from worker.errors import ConfigError
from worker.inspection.queries import parse_age, parse_time
from worker.observe.logs import configure_logging
from worker.runtime.migrate import ensure_schema
from worker.settings import Settings, get_settings


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``jobtracker: message`` on stderr and exit (1: not found / failed, 2: bad input)."""
    click.echo(f"jobtracker: {message}", err=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        fail(str(exc), 2)


def ready_settings(*, quiet: bool = True) -> Settings:
    """Settings, with the logging set up and the database schema checked.

    Commands other than ``run`` print their result on stdout; their log shows warnings only.
    """
    settings = settings_or_exit()
    configure_logging(settings, level="WARNING" if quiet else None)
    try:
        ensure_schema(settings)
    except ConfigError as exc:
        fail(str(exc), 2)
    return settings


def read_settings() -> Settings:
    """Settings for a command that reads the database, which must already exist.

    Inspecting a SQLite file that is not there would create an empty one and show nothing, a
    confusing answer to "where are my jobs?": refuse instead, naming the file.
    """
    settings = settings_or_exit()
    url = make_url(settings.database_url)
    database = url.database if url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not Path(database).exists():
        fail(
            f"no database at {database}; set JOBTRACKER_DATABASE_URL "
            "(after `jobtracker demo`: JOBTRACKER_DATABASE_URL=sqlite:///jobtracker-demo.db)",
            2,
        )
    try:
        return ready_settings()
    except SQLAlchemyError as exc:
        fail(f"cannot read the database: {getattr(exc, 'orig', None) or exc}", 2)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


class _Age(click.ParamType):
    """``30s``, ``10m``, ``2h``, ``3d``, ``1w``, ``1h30m``."""

    name = "AGE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_age(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclass(frozen=True)
class TimeArg:
    """A TIME as typed: an age is counted back from the database's now, when the command runs
    (:meth:`at` with :func:`worker.clock.now`), not from this host's clock."""

    text: str

    def at(self, now: datetime) -> datetime:
        return parse_time(self.text, now=now)


class _Time(click.ParamType):
    """An age before now (``2h``) or an ISO-8601 time: a :class:`TimeArg`."""

    name = "TIME"
    #: Any moment checks the syntax (an age's bounds do not depend on it).
    _CHECKED_AT = datetime(2000, 1, 1, tzinfo=UTC)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, TimeArg):
            return value
        try:
            parse_time(str(value), now=self._CHECKED_AT)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return TimeArg(str(value))


AGE = _Age()
TIME = _Time()
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
LIMIT_OPTION = click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many."
)
