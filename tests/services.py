"""Real PostgreSQL and Redis for the tests: throwaway databases, found or refused loudly.

A missing service skips the tests that need it on a developer's machine, but fails them under
``CI=true``, where a skip would hide that nothing was tested (dramatiq's ``check_redis``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "JOBTRACKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("JOBTRACKER_TEST_REDIS_URL", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(service: str, error: BaseException | None) -> None:
    if error is None:
        return
    message = f"{service} is not reachable: {error}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service fails the run)", pytrace=False)
    pytest.skip(message)


def pg_error() -> BaseException | None:
    import psycopg

    try:
        with psycopg.connect(_libpq(PG_ADMIN_URL), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return exc


def redis_error() -> BaseException | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        return None
    except redis.RedisError as exc:
        return exc


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def create_database(name: str, template: str | None = None) -> str:
    _admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return pg_url(name)


def drop_database(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, whatever of it still sits in its WAL."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class TemplateClones:
    """Databases cloned from ``template`` by a thread, a few ahead of the tests that take them,
    and dropped by it behind them: a test waits for neither (each costs 0.3-1.5 s here)."""

    def __init__(self, template: str, ahead: int = 2) -> None:
        self.template = template
        self.ahead = ahead
        self._ready: list[str | BaseException] = []
        self._to_drop: list[str] = []
        self._undropped: list[str] = []
        self._stopping = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pg-clones", daemon=True)
        self._thread.start()

    def take(self) -> str:
        """A fresh clone (made now if none is ready)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._ready, timeout=120):
                raise TimeoutError(f"no clone of {self.template} within 120 s")
            name = self._ready.pop(0)
            self._changed.notify_all()
        if isinstance(name, BaseException):
            raise name
        return name

    def give_back(self, name: str) -> None:
        """Drop ``name`` once no clone is wanted sooner."""
        with self._changed:
            self._to_drop.append(name)
            self._changed.notify_all()

    def close(self) -> None:
        """Drop every clone, taken or not; return when done."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join()

    def _create(self, name: str) -> str | BaseException:
        """``name``, cloned; or why not, after half a minute of tries (a server restarting)."""
        error: BaseException = RuntimeError(f"could not create {name}")
        for _ in range(30):
            try:
                create_database(name, template=self.template)
                return name
            except Exception as exc:  # handed to the test that takes it, if it lasts
                error = exc
                time.sleep(1)
        return error

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: self._stopping or len(self._ready) < self.ahead or self._to_drop
                )
                if self._stopping:
                    leftover = self._to_drop + self._undropped
                    leftover += [n for n in self._ready if isinstance(n, str)]
                    break
                create = len(self._ready) < self.ahead
                name = unique_name("jt_test") if create else self._to_drop.pop(0)
            if not create:
                try:
                    drop_database(name)
                except Exception:  # the server is away (a test restarts it): try again at close
                    with self._changed:
                        self._undropped.append(name)
                continue
            made = self._create(name)
            with self._changed:
                self._ready.append(made)
                self._changed.notify_all()
        for name in leftover:
            with contextlib.suppress(Exception):  # never a reason to fail a test run
                drop_database(name)


@contextmanager
def redis_db() -> Iterator[str]:
    """A Redis DB number nobody else uses right now, flushed before and after."""
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
        # Claim the DB with a marker key; an empty DB without a marker is free.
        if client.dbsize() == 0 and client.set("jobtracker-test-owner", os.getpid(), nx=True):
            try:
                yield f"{REDIS_URL}/{number}"
            finally:
                client.flushdb()
                client.close()
            return
    raise RuntimeError("no free Redis DB number (1-15) for the tests")


class TcpProxy:
    """A TCP proxy on loopback that a test can cut (a network blip) and restore.

    ``cut()`` stops listening and drops every open connection, so a client sees refused and
    reset connections, as when a database host goes away; ``restore()`` listens again on the
    same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            open_sockets, self._open = self._open, []
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by this proxy's."""
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
