"""Provider-wide state every worker sees: throttled (back off) and paused (configuration error).

Kept in the ``provider_states`` table so that it survives restarts and an operator can read it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobtracker.models import ProviderState
from worker.policy import ProviderBackoff

log = logging.getLogger(__name__)
BACKOFF = ProviderBackoff()
#: Refusals in a row, with no answer between them, before the whole provider rests (the pace's
#: cuts of 5, 10, 20, 40, 50 % ... have brought the rate to its floor well before).
PARK_AFTER_THROTTLES = 10


def load_states(session: Session) -> dict[str, ProviderState]:
    return {state.kind: state for state in session.execute(select(ProviderState)).scalars()}


def _ensure_row(session: Session, kind: str, now: datetime) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(ProviderState)
        .values(kind=kind, paused=False, consecutive_throttles=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=["kind"])
    )


def _locked(session: Session, kind: str, now: datetime) -> ProviderState:
    _ensure_row(session, kind, now)
    return session.execute(
        select(ProviderState).where(ProviderState.kind == kind).with_for_update()
    ).scalar_one()


def throttle(
    session: Session, kind: str, now: datetime, *, rate: float, run: int
) -> datetime | None:
    """Record a RequestLimitExceeded (``run``: refusals in a row in the shared pace, after which
    the pace's ``rate`` is cut). One refusal costs a little rate, not the provider: only
    :data:`PARK_AFTER_THROTTLES` refusals in a row, with no answer between them (by then the rate
    is at its floor), make the whole provider rest. Returns until when it rests, or None."""
    state = _locked(session, kind, now)
    if state.is_throttled(now):
        return state.throttled_until  # another worker already backed it off
    state.consecutive_throttles = max(run, 1)
    state.updated_at = now
    context = {"kind": kind, "n": state.consecutive_throttles, "rate": round(rate, 2)}
    if state.consecutive_throttles < PARK_AFTER_THROTTLES:
        log.info("provider throttled", extra=context)
        return None
    rests = BACKOFF.throttle_delay(state.consecutive_throttles - PARK_AFTER_THROTTLES + 1)
    state.throttled_until = now + timedelta(seconds=rests)
    log.warning(
        "provider throttled: every call refused; resting %.1f s",
        rests,
        extra={**context, "until": state.throttled_until.isoformat()},
    )
    return state.throttled_until


def clear_throttle(session: Session, kind: str, now: datetime) -> None:
    """The provider answered after its last refusal: the refusals in a row start again at 0."""
    session.execute(
        update(ProviderState)
        .where(
            ProviderState.kind == kind,
            ProviderState.consecutive_throttles > 0,
            # A back-off still running was set by a newer answer than ours: leave it.
            or_(ProviderState.throttled_until.is_(None), ProviderState.throttled_until <= now),
        )
        .values(consecutive_throttles=0, throttled_until=None, updated_at=now)
    )


def pause(session: Session, kind: str, reason: str, now: datetime) -> datetime:
    """Stop polling ``kind`` after a configuration error; return when the next probe may run."""
    state = _locked(session, kind, now)
    if not state.paused or state.paused_at is None:
        # Loud once: this needs a human (credentials, permissions, a retired API).
        log.error("provider paused: %s", reason, extra={"kind": kind, "event": "provider_paused"})
        state.paused_at = now
    paused_for_s = (now - state.paused_at).total_seconds()
    state.paused = True
    state.paused_reason = reason
    state.next_probe_at = now + timedelta(seconds=BACKOFF.probe_delay(paused_for_s))
    state.updated_at = now
    return state.next_probe_at


def resume(session: Session, kind: str, now: datetime) -> None:
    resumed = session.execute(
        update(ProviderState)
        .where(ProviderState.kind == kind, ProviderState.paused.is_(True))
        .values(
            paused=False, paused_reason=None, paused_at=None, next_probe_at=None, updated_at=now
        )
        .returning(ProviderState.kind)
    ).first()
    if resumed is not None:
        log.warning("provider resumed: a probe poll succeeded", extra={"kind": kind})


def take_probe(session: Session, kind: str, now: datetime) -> bool:
    """While ``kind`` is paused: claim the right to send one probe poll, if it is due."""
    state = _locked(session, kind, now)
    if not state.paused:
        return True
    if state.next_probe_at is not None and state.next_probe_at > now:
        return False
    # Until the probe answers, no second probe: it will set a new time when it fails.
    state.next_probe_at = now + timedelta(seconds=BACKOFF.probe_max_s)
    return True
