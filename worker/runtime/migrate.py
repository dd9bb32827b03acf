"""Alembic, driven from code: ``jobtracker db upgrade`` and friends."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from worker.db import get_engine, normalize_url
from worker.errors import ConfigError
from worker.settings import Settings, get_settings

#: The Alembic revisions, installed as package data of ``jobtracker.migrations``.
MIGRATIONS_DIR = Path(str(files("jobtracker.migrations")))


def alembic_config(settings: Settings | None = None, database_url: str | None = None) -> Config:
    url = database_url or (settings or get_settings()).database_url
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in URL-encoded passwords.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(revision: str = "head", settings: Settings | None = None) -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(revision: str, settings: Settings | None = None) -> None:
    command.downgrade(alembic_config(settings), revision)


def current_revision(settings: Settings | None = None) -> str | None:
    with get_engine(settings).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _file_lock(database: str | None) -> Iterator[None]:
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url="sqlite://")).get_current_head()


def ensure_schema(settings: Settings | None = None) -> None:
    """Make sure the database is at the newest revision before using it.

    The embedded SQLite default is upgraded on the spot (nobody else shares it); any other
    database must be upgraded by an operator (``jobtracker db upgrade``), so a deploy never
    migrates a shared database by accident.
    """
    settings = settings or get_settings()
    current, head = current_revision(settings), head_revision()
    if current == head:
        return
    engine = get_engine(settings)
    if engine.dialect.name == "sqlite":
        # `jobtracker run` and `jobtracker enqueue` may start together on a new file.
        with _file_lock(engine.url.database):
            if current_revision(settings) != head:
                upgrade("head", settings)
        return
    raise ConfigError(
        f"the database is at revision {current or 'none (empty)'}, this jobtracker needs {head}: "
        "run `jobtracker db upgrade`"
    )
