"""Totals that cost the same at 10 million rows as at 10 thousand.

Triggers (migration 0006) append a row to ``row_tallies`` for every change to the number of
``tracked_jobs`` per (kind, status) and of ``webhook_deliveries`` per status; :func:`read` sums
them, and :func:`compact` (every 30 s, ``jobtracker.compact_tallies``) folds them back into
one row per key, so a read sums a few dozen rows. Finished jobs also carry their polls and
detection bounds, so calls per job and detection latency come from the same rows.

The oldest active job per (kind, status) is one seek each on ``ix_tracked_jobs_active_created``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from jobtracker.models import ACTIVE_STATUSES, TERMINAL_STATUSES, RowTally, TrackedJob
from jobtracker.models.jobs import ACTIVE_PREDICATE

JOB = "job"
DELIVERY = "delivery"


@dataclass(frozen=True)
class Tally:
    rows: int = 0
    #: Finished jobs only: their polls, how many have a detection bound, and the bounds' sum.
    polls: int = 0
    bounded: int = 0
    bound_s: float = 0.0


@dataclass(frozen=True)
class Tallies:
    """Rows per (kind, status) of ``tracked_jobs`` and per status of ``webhook_deliveries``."""

    jobs: dict[tuple[str, str], Tally]
    deliveries: dict[str, int]

    def kinds(self) -> list[str]:
        return sorted({kind for kind, _ in self.jobs})

    def active_kinds(self) -> list[str]:
        active = {s.value for s in ACTIVE_STATUSES}
        return sorted({k for (k, s), t in self.jobs.items() if s in active and t.rows > 0})

    def finished(self, kind: str) -> Tally:
        """Every finished job of ``kind`` together."""
        parts = [self.jobs.get((kind, s.value), Tally()) for s in TERMINAL_STATUSES]
        return Tally(
            rows=sum(p.rows for p in parts),
            polls=sum(p.polls for p in parts),
            bounded=sum(p.bounded for p in parts),
            bound_s=sum(p.bound_s for p in parts),
        )


def read(session: Session) -> Tallies:
    rows = session.execute(
        select(
            RowTally.subject,
            RowTally.kind,
            RowTally.status,
            func.sum(RowTally.rows),
            func.sum(RowTally.polls),
            func.sum(RowTally.bounded),
            func.sum(RowTally.bound_s),
        ).group_by(RowTally.subject, RowTally.kind, RowTally.status)
    ).all()
    jobs: dict[tuple[str, str], Tally] = {}
    deliveries: dict[str, int] = {}
    for subject, kind, status, n, polls, bounded, bound_s in rows:
        if subject == JOB:
            tally = Tally(int(n or 0), int(polls or 0), int(bounded or 0), float(bound_s or 0))
            if tally.rows:
                jobs[(kind, status)] = tally
        elif subject == DELIVERY and n:
            deliveries[status] = int(n)
    return Tallies(jobs=jobs, deliveries=deliveries)


def oldest_active(session: Session, kinds: Iterable[str]) -> dict[tuple[str, str], datetime]:
    """The oldest ``created_at`` per active (kind, status): one index seek each."""
    out: dict[tuple[str, str], datetime] = {}
    for kind in kinds:
        for status in sorted(s.value for s in ACTIVE_STATUSES):
            # The literal predicate lets SQLite use the partial index (see tick.claim_due).
            oldest = session.execute(
                select(func.min(TrackedJob.created_at)).where(
                    ACTIVE_PREDICATE, TrackedJob.kind == kind, TrackedJob.status == status
                )
            ).scalar_one()
            if oldest is not None:
                out[(kind, status)] = oldest
    return out


_COLUMNS = "subject, kind, status, rows, polls, bounded, bound_s"
_SUMS = "sum(rows), sum(polls), sum(bounded), sum(bound_s)"
_NONZERO = "sum(rows) <> 0 OR sum(polls) <> 0 OR sum(bounded) <> 0 OR sum(bound_s) <> 0"

# One statement, one snapshot: the rows deleted are exactly the rows summed, whatever commits
# meanwhile (two statements would lose a tally committed between them).
_PG_COMPACT = text(
    f"""
    WITH gone AS (DELETE FROM row_tallies RETURNING {_COLUMNS}),
    kept AS (
        INSERT INTO row_tallies ({_COLUMNS})
        SELECT subject, kind, status, {_SUMS} FROM gone
        GROUP BY subject, kind, status HAVING {_NONZERO}
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM kept)
    """
)


def compact(session: Session) -> int:
    """Fold the tallies into one row per key; return how many rows fewer there are.

    Two compactions at once do no harm (PostgreSQL: the second skips, or finds the rows gone;
    SQLite: writers take turns)."""
    if session.get_bind().dialect.name == "postgresql":
        if not session.execute(text("SELECT pg_try_advisory_xact_lock(74, 6006)")).scalar_one():
            return 0
        return int(session.execute(_PG_COMPACT).scalar_one())
    # SQLite: one writer at a time, and rows up to ``top`` are all committed.
    top = session.execute(text("SELECT max(id) FROM row_tallies")).scalar_one()
    if top is None:
        return 0
    count = session.execute(
        text("SELECT count(*) FROM row_tallies WHERE id <= :top"), {"top": top}
    ).scalar_one()
    if count <= 1:
        return 0
    kept = session.execute(  # type: ignore[attr-defined]
        text(
            f"INSERT INTO row_tallies ({_COLUMNS}) SELECT subject, kind, status, {_SUMS} "
            f"FROM row_tallies WHERE id <= :top GROUP BY subject, kind, status HAVING {_NONZERO}"
        ),
        {"top": top},
    ).rowcount
    session.execute(text("DELETE FROM row_tallies WHERE id <= :top"), {"top": top})
    return int(count) - int(kept)
