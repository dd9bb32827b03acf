"""Engines and sessions. One engine per database URL per process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from worker.settings import Settings, get_settings

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def normalize_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs (SQLAlchemy would otherwise pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """A PostgreSQL URL as libpq (psycopg.connect) takes it, for a connection outside the pool."""
    parsed = make_url(normalize_url(url)).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the CLI read while the worker writes; busy_timeout makes writers queue instead of
    # failing with "database is locked"; SQLite ignores foreign keys unless asked.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # An INSERT OR REPLACE deletes the row it replaces; only with this do its delete triggers
    # run (the row tallies of migration 0006 would drift otherwise).
    cursor.execute("PRAGMA recursive_triggers=ON")
    cursor.close()


def lock_for_write(session: Session) -> None:
    """On SQLite, take the database's write lock now, for reads that decide a later write.

    The sqlite3 driver opens a transaction only at the first write, so the reads before it run
    outside of it and another writer may change what they saw. Any write statement takes the
    lock, even one that matches no row. PostgreSQL: nothing to do (lock the rows instead).
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE row_tallies SET rows = rows WHERE 0"))


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine configured for jobtracker's workload (not cached).

    Its errors never quote a statement's parameters (``hide_parameters``): they carry callback
    URLs with their tokens, metadata and JobIds, and an error's text ends up in logs.
    """
    url = normalize_url(url)
    kwargs.setdefault("hide_parameters", True)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 10)
    return create_engine(url, pool_pre_ping=True, **kwargs)


def get_engine(settings: Settings | None = None) -> Engine:
    url = (settings or get_settings()).database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
            _sessionmakers[url] = sessionmaker(engine, expire_on_commit=False)
        return engine


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session in a transaction: committed on success, rolled back on error."""
    settings = settings or get_settings()
    get_engine(settings)
    factory = _sessionmakers[settings.database_url]
    with factory.begin() as session:
        # Read by the after-commit hook that hands new callbacks to delivery (flow.deliver).
        session.info["settings"] = settings
        yield session


def dispose_engines() -> None:
    """Close every pooled connection (tests, and after fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _sessionmakers.clear()
