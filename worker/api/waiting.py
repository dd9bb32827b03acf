"""``?wait=``: requests held open until their job ends, woken by one watcher per process.

No waiter polls the database. Each waiter registers the job it waits for and sleeps on an
:class:`asyncio.Event` (one per job, shared by every waiter of that job). One thread per API
process learns which jobs ended and wakes their waiters through the event loop:

* **PostgreSQL**: ``LISTEN jobtracker_terminal``. The one status writer
  (:func:`worker.flow.transition.transition_many`) sends the ids of the jobs it ends with
  ``pg_notify`` in the same transaction, and PostgreSQL delivers a notification only when, and if,
  its transaction commits: a waiter wakes when the terminal status is visible, not before. Every
  few seconds, and after a reconnection, one query also checks all waited jobs at once, so a
  notification lost while the listening connection was down (or a status changed by hand in
  SQL) still ends the wait.
* **SQLite** (one machine, no notifications): the thread checks all waited jobs in one query a
  few times a second, and only while someone waits.

A waiter re-reads its job after registering, so a job that ended between the request's first
read and the registration is not missed.

**Nothing stops the watcher for good.** Any database role may ``NOTIFY jobtracker_terminal``
with any payload: what is not a list of ids is ignored. Whatever else goes wrong (a lost
connection, a bug), :meth:`Waiters._supervise` logs it, counts it in
``jobtracker_api_wait_watcher_restarts_total`` and starts the watcher again (after 1 s, doubling
up to 30 s while it keeps failing); its first act is the sweep, so no end is missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from jobtracker.models import TERMINAL_STATUSES, TrackedJob
from worker.api.errors import ApiError
from worker.db import get_engine, libpq_url
from worker.flow.transition import TERMINAL_CHANNEL
from worker.observe.metrics import API_WAIT_WATCHER_RESTARTS, API_WAITING
from worker.settings import Settings

log = logging.getLogger(__name__)

#: How often the SQLite poller checks the waited jobs.
SQLITE_POLL_S = 0.2
#: How often the PostgreSQL listener checks all waited jobs anyway (a notification that was lost).
SAFETY_SWEEP_S = 5.0
#: Waited jobs per query.
_CHUNK = 500
_TERMINAL = [s.value for s in TERMINAL_STATUSES]
#: The wait before restarting a failed watcher: doubling from the first to the last while it
#: keeps failing, back to the first after it ran :data:`HEALTHY_RUN_S`.
RESTART_DELAYS_S = (1.0, 30.0)
HEALTHY_RUN_S = 60.0
#: How the listening connection shows in ``pg_stat_activity``.
APPLICATION_NAME = "jobtracker-api-waiters"


def job_ids(payload: str) -> list[int]:
    """The tracked job ids of a notification's payload (``"12,13"``); whatever is not one (a
    stray ``NOTIFY`` from another program) is left out."""
    ids = []
    for part in payload.split(","):
        part = part.strip()
        # At most 18 digits: any such number is a valid BIGINT, and no larger id exists.
        if part.isascii() and part.isdigit() and len(part) <= 18:
            ids.append(int(part))
    return ids


class Waiters:
    """The requests of one process waiting for jobs to end, and the thread that wakes them."""

    def __init__(self, settings: Settings, *, max_waiters: int = 10_000) -> None:
        self.settings = settings
        self.max_waiters = max_waiters
        self._events: dict[int, asyncio.Event] = {}
        self._counts: dict[int, int] = {}
        # The watcher thread reads the waited ids; the event loop changes them.
        self._lock = threading.Lock()
        self._total = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The server is stopping: answer at once instead of waiting.
        self._closing = False

    # -- the event loop's side ---------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        postgres = get_engine(self.settings).dialect.name == "postgresql"
        target = self._listen if postgres else self._poll
        self._thread = threading.Thread(
            target=self._supervise, args=(target,), name="jobtracker-api-waiters", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def waiting(self) -> int:
        return self._total

    async def wait(
        self, job_pk: int, timeout_s: float, still_active: Callable[[], Awaitable[bool]]
    ) -> None:
        """Return when job ``job_pk`` ends, ``timeout_s`` passes, or the server stops."""
        if self._closing:
            return
        if self._total >= self.max_waiters:
            raise ApiError(
                503,
                f"this server already holds {self.max_waiters} waiting requests; retry, or "
                "ask without ?wait=",
                code="too_many_waiters",
                headers={"Retry-After": "1"},
            )
        event = self._enter(job_pk)
        try:
            if not await still_active():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        finally:
            self._leave(job_pk)

    def _enter(self, job_pk: int) -> asyncio.Event:
        with self._lock:
            event = self._events.get(job_pk)
            if event is None:
                event = self._events[job_pk] = asyncio.Event()
            self._counts[job_pk] = self._counts.get(job_pk, 0) + 1
            self._total += 1
        API_WAITING.inc()
        return event

    def _leave(self, job_pk: int) -> None:
        with self._lock:
            left = self._counts[job_pk] - 1
            if left:
                self._counts[job_pk] = left
            else:
                del self._counts[job_pk]
                del self._events[job_pk]
            self._total -= 1
        API_WAITING.dec()

    def _wake(self, job_pks: Iterable[int]) -> None:
        for job_pk in job_pks:
            event = self._events.get(job_pk)
            if event is not None:
                event.set()

    def release_all(self) -> None:
        """Answer every waiter now with its job as it is (the server is stopping)."""
        self._closing = True
        self._wake(list(self._events))

    def release_all_soon(self) -> None:
        """:meth:`release_all` from another thread or a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.release_all)

    # -- the watcher thread's side -----------------------------------------------------------

    def _watched(self) -> list[int]:
        with self._lock:
            return list(self._counts)

    def _ended(self, job_pks: Iterable[int]) -> None:
        with self._lock:
            mine = [pk for pk in job_pks if pk in self._counts]
        if mine and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake, mine)

    def _supervise(self, watch: Callable[[], None]) -> None:
        """Run ``watch`` until :meth:`stop`; restart it, counted, whenever it fails."""
        first, last = RESTART_DELAYS_S
        delay = first
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                watch()
            except Exception as exc:
                API_WAIT_WATCHER_RESTARTS.inc()
                if time.monotonic() - started >= HEALTHY_RUN_S:
                    delay = first
                # A lost connection is the database's to tell; anything else is a bug here.
                lost = isinstance(exc, psycopg.OperationalError)
                log.log(
                    logging.WARNING if lost else logging.ERROR,
                    "wait: the watcher failed (%s: %s); restarting it in %g s",
                    type(exc).__name__,
                    str(exc)[:200],
                    delay,
                    exc_info=not lost,
                )
                self._stop.wait(delay)
                delay = min(last, delay * 2)

    def _poll(self) -> None:
        """SQLite (or any database without notifications): one query for all waiters."""
        engine = get_engine(self.settings)
        while not self._stop.wait(SQLITE_POLL_S):
            watched = self._watched()
            if not watched:
                continue
            try:
                with engine.connect() as conn:
                    for start in range(0, len(watched), _CHUNK):
                        chunk = watched[start : start + _CHUNK]
                        self._ended(
                            conn.execute(
                                select(TrackedJob.id).where(
                                    TrackedJob.id.in_(chunk), TrackedJob.status.in_(_TERMINAL)
                                )
                            ).scalars()
                        )
            except SQLAlchemyError as exc:
                log.warning("wait: cannot read the database: %s", exc)

    def _listen(self) -> None:
        """PostgreSQL: LISTEN for the ids the status writer NOTIFYs at commit, on one
        connection, until :meth:`stop` (or until it fails: :meth:`_supervise` starts again)."""
        dsn = libpq_url(self.settings.database_url)
        with psycopg.connect(
            dsn, autocommit=True, connect_timeout=5, application_name=APPLICATION_NAME
        ) as conn:
            conn.execute(f"LISTEN {TERMINAL_CHANNEL}")
            log.debug("wait: listening on %s", TERMINAL_CHANNEL)
            self._sweep(conn)  # whatever ended while we were not listening
            next_sweep = time.monotonic() + SAFETY_SWEEP_S
            while not self._stop.is_set():
                # notifies(timeout=) needs psycopg 3.2 (pyproject's lower bound).
                for note in conn.notifies(timeout=0.5):
                    self._ended(job_ids(note.payload))
                if time.monotonic() >= next_sweep:
                    self._sweep(conn)
                    next_sweep = time.monotonic() + SAFETY_SWEEP_S

    def _sweep(self, conn: psycopg.Connection[Any]) -> None:
        watched = self._watched()
        for start in range(0, len(watched), _CHUNK):
            rows = conn.execute(
                "SELECT id FROM tracked_jobs WHERE id = ANY(%s) AND status = ANY(%s)",
                (watched[start : start + _CHUNK], _TERMINAL),
            ).fetchall()
            self._ended(row[0] for row in rows)
