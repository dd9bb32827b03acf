"""One clock for every comparison across workers: the database's.

Leases, due times, deadlines and the not-found grace period are compared between rows written by
different workers (and by the database's own ``now()`` defaults). If each worker used its own
clock, one whose clock is ten minutes fast would see every lease as expired and steal it, and
would fail a fresh job as "not found" because it looks ten minutes old. So every "now" the flow
uses is the database's time: :func:`now` is this host's clock plus an offset measured against
the database (``clock_timestamp()`` on PostgreSQL; SQLite runs in this process and its clock is
the host's), re-measured every :data:`REFRESH_S`. The callback's signed ``webhook-timestamp``
uses it too, so a receiver's freshness check does not reject callbacks from a skewed host.

Elapsed time within one process (sleeps, timeouts) stays on ``time.monotonic()``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from worker.db import get_engine
from worker.settings import Settings

log = logging.getLogger(__name__)

#: How often the offset to the database clock is measured again, per process and database.
REFRESH_S = 60.0
#: An offset this large is worth a warning: leases and deadlines run on the database's time.
WARN_OFFSET_S = 5.0

_lock = threading.Lock()
#: database URL -> (offset to add to the host's clock, monotonic time it was measured)
_offsets: dict[str, tuple[timedelta, float]] = {}


def wall() -> datetime:
    """This host's clock (the one thing tests skew to play a host whose clock is off)."""
    return datetime.now(UTC)


def now(settings: Settings) -> datetime:
    """The database's current time, as an aware UTC datetime."""
    return wall() + offset(settings)


def offset(settings: Settings) -> timedelta:
    """What to add to this host's clock to read the database's; measured at most once a
    :data:`REFRESH_S` (the last good measure is kept while the database cannot be reached)."""
    url = settings.database_url
    with _lock:
        known = _offsets.get(url)
    if known is not None and time.monotonic() - known[1] < REFRESH_S:
        return known[0]
    try:
        measured = _measure(settings)
    except Exception as exc:  # the database is away: keep the last offset, try again later
        log.warning("cannot read the database clock: %s", type(exc).__name__)
        measured = known[0] if known is not None else timedelta(0)
    with _lock:
        _offsets[url] = (measured, time.monotonic())
    if abs(measured.total_seconds()) >= WARN_OFFSET_S and (known is None or known[0] != measured):
        log.warning(
            "this host's clock is %.1f s off the database's; jobtracker uses the database's",
            -measured.total_seconds(),
        )
    return measured


def reset() -> None:
    """Forget every measured offset (tests; a process that knows its clock was set)."""
    with _lock:
        _offsets.clear()


def _measure(settings: Settings) -> timedelta:
    engine = get_engine(settings)
    if engine.dialect.name == "postgresql":
        query = "SELECT clock_timestamp()"
    else:
        query = "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"
    with engine.connect() as conn:
        before = wall()
        value = conn.execute(text(query)).scalar_one()
        after = wall()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # The database read its clock somewhere between the two host readings: take the middle.
    return value - (before + (after - before) / 2)
