"""Circuit breakers per callback destination (a receiver's ``host:port``), shared by every worker.

A receiver that accepts connections and never answers holds a delivery thread for the whole
deadline of each attempt. After :attr:`~worker.policy.DeliveryPolicy.breaker_timeouts` timeouts
in a row (counted in ``delivery_breakers`` by every worker), the breaker *opens*: messages to
that destination are skipped, without an attempt, and one probe attempt goes out every
:attr:`~worker.policy.DeliveryPolicy.breaker_probe_s`. Any answer (even an error status) deletes
the row: the breaker is closed and the destination is sent to normally again.

The row exists only while a destination times out, so the table stays as small as the set of
troubled receivers. A process remembers for :data:`CLOSED_TTL_S` that a destination has no
open breaker, so a healthy receiver costs no query per attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobtracker.models import DeliveryBreaker
from worker.observe import metrics
from worker.policy import DeliveryPolicy
from worker.webhooks.classify import AttemptError

log = logging.getLogger(__name__)

#: How long a process trusts that a destination had no open breaker.
CLOSED_TTL_S = 2.0
#: Outcomes that show the destination answers (or refuses at once): they close its breaker.
ANSWERED = frozenset({None, AttemptError.HTTP.value, AttemptError.CONNECTION.value,
                       AttemptError.TLS.value})  # fmt: skip

_closed_lock = threading.Lock()
_closed: dict[tuple[str, str], float] = {}
_MAX_REMEMBERED = 10_000


def key(destination: tuple[str, int]) -> str:
    """``host:port`` (an IPv6 host in brackets), as ``delivery_breakers.destination``."""
    host, port = destination
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Gate:
    """May a message to a destination be attempted now?"""

    #: No: its breaker is open; ``retry_at`` is when the next probe may go.
    open: bool = False
    #: Yes, as the one probe of an open breaker.
    probe: bool = False
    retry_at: datetime | None = None


def gate(
    session: Session, database: str, destination: str, *, now: datetime, policy: DeliveryPolicy
) -> Gate:
    """Whether an attempt may go to ``destination`` now; claims the probe when one is due."""
    if _recently_closed(database, destination):
        return Gate()
    row = session.execute(
        select(DeliveryBreaker.opened_at, DeliveryBreaker.probe_at).where(
            DeliveryBreaker.destination == destination
        )
    ).first()
    if row is None:
        _remember_closed(database, destination)
        return Gate()
    if row.opened_at is None:  # counting: its next answer must reset the count (note())
        return Gate()
    probe_at = row.probe_at or now
    if probe_at <= now:
        claimed = session.execute(
            update(DeliveryBreaker)
            .where(DeliveryBreaker.destination == destination, DeliveryBreaker.probe_at == probe_at)
            .values(probe_at=now + timedelta(seconds=policy.breaker_probe_s))
            .returning(DeliveryBreaker.destination)
        ).first()
        if claimed is not None:
            return Gate(probe=True)
        probe_at = now + timedelta(seconds=policy.breaker_probe_s)
    return Gate(open=True, retry_at=probe_at)


def note(
    session: Session,
    database: str,
    destination: str,
    error_class: str | None,
    *,
    now: datetime,
    policy: DeliveryPolicy,
) -> None:
    """Count an attempt's outcome against its destination, in the attempt's transaction."""
    if error_class == AttemptError.TIMEOUT.value:
        _forget_closed(database, destination)
        _count_timeout(session, destination, now, policy)
    elif error_class in ANSWERED:
        if _recently_closed(database, destination):
            return
        opened = session.execute(
            delete(DeliveryBreaker)
            .where(DeliveryBreaker.destination == destination)
            .returning(DeliveryBreaker.opened_at)
        ).first()
        _remember_closed(database, destination)
        if opened is not None and opened.opened_at is not None:
            log.info(
                "callbacks to %s resumed: it answered the probe",
                destination,
                extra={"destination": destination},
            )


def _count_timeout(
    session: Session, destination: str, now: datetime, policy: DeliveryPolicy
) -> None:
    threshold = policy.breaker_timeouts
    table = DeliveryBreaker.__table__
    opens = and_(table.c.opened_at.is_(None), table.c.timeouts + 1 >= threshold)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    first_opens = threshold <= 1
    probe_at = now + timedelta(seconds=policy.breaker_probe_s)
    values = insert(DeliveryBreaker).values(
        destination=destination,
        timeouts=1,
        opened_at=now if first_opens else None,
        probe_at=probe_at if first_opens else None,
        updated_at=now,
    )
    stmt = values.on_conflict_do_update(
        index_elements=["destination"],
        set_={
            "timeouts": table.c.timeouts + 1,
            "opened_at": case((opens, now), else_=table.c.opened_at),
            "probe_at": case((opens, probe_at), else_=table.c.probe_at),
            "updated_at": now,
        },
    ).returning(DeliveryBreaker.timeouts, DeliveryBreaker.opened_at)
    row = session.execute(stmt).one()
    if row.opened_at is not None and row.timeouts == threshold:
        metrics.BREAKERS_OPENED.inc()
        log.warning(
            "callbacks to %s paused: %d timeouts in a row; one probe every %g s until it answers",
            destination,
            row.timeouts,
            policy.breaker_probe_s,
            extra={"destination": destination, "timeouts": row.timeouts},
        )


def _recently_closed(database: str, destination: str) -> bool:
    with _closed_lock:
        seen = _closed.get((database, destination))
    return seen is not None and time.monotonic() - seen < CLOSED_TTL_S


def _remember_closed(database: str, destination: str) -> None:
    with _closed_lock:
        if len(_closed) >= _MAX_REMEMBERED:
            _closed.clear()
        _closed[(database, destination)] = time.monotonic()


def _forget_closed(database: str, destination: str) -> None:
    with _closed_lock:
        _closed.pop((database, destination), None)


def reset_memory() -> None:
    """Forget what this process remembered (for tests that change rows behind its back)."""
    with _closed_lock:
        _closed.clear()
