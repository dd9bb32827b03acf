"""Row rules on ``tracked_jobs`` that the database enforces, for plain SQL INSERTs too.

PostgreSQL gets CHECK constraints. SQLite cannot add a CHECK to an existing table without
rebuilding it, and a rebuild would refuse the whole upgrade over one old bad row, so there each
rule is a pair of triggers (before INSERT, before UPDATE of the rule's columns) that abort with the
rule's name, as a CHECK would.

Rows that already break a rule when it is added neither fail the upgrade nor vanish: an *active*
one could never be polled or updated (PostgreSQL checks every UPDATE against the constraint), so
it is ended as ``failed`` with ``error_code = 'Tracker.InvalidRow'`` and a history row; a
finished one is left as it is. Each is reported in the upgrade's log. On PostgreSQL the
constraint is added ``NOT VALID`` and validated when no row breaks it.

Revisions call these helpers with the rule's SQL written out in the revision itself, so an old
revision keeps doing what it did when a rule changes later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import op

log = logging.getLogger("jobtracker.migrations")

TABLE = "tracked_jobs"
ACTIVE = "status IN ('pending', 'queued', 'running')"
INVALID_ROW = "Tracker.InvalidRow"


@dataclass(frozen=True)
class Rule:
    """A rule: ``postgresql`` and ``sqlite`` are boolean SQL over the row's columns; in the
    SQLite form ``{row}.`` prefixes each column (``NEW.`` in a trigger)."""

    name: str
    message: str
    columns: tuple[str, ...]
    postgresql: str
    sqlite: str

    @property
    def constraint(self) -> str:
        return f"ck_{TABLE}_{self.name}"

    def check(self, dialect: str, row: str = TABLE) -> str:
        return self.postgresql if dialect == "postgresql" else self.sqlite.format(row=row)


def add(rule: Rule) -> None:
    """Enforce ``rule`` from now on; end or report the rows that already break it."""
    bind = op.get_bind()
    dialect = bind.dialect.name
    broken = f"NOT ({rule.check(dialect)})"
    breaking = bind.execute(sa.text(f"SELECT count(*) FROM {TABLE} WHERE {broken}")).scalar_one()
    # Ended rows still break the rule (they are kept as they were), so with any such row the
    # constraint stays NOT VALID: enforced for every new or updated row, not for theirs.
    ended = _end_active_rows(rule, broken) if breaking else 0
    finished = breaking - ended
    if dialect == "postgresql":
        op.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {rule.constraint} "
            f"CHECK ({rule.postgresql}) NOT VALID"
        )
        if breaking == 0:
            op.execute(f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {rule.constraint}")
    else:
        _create_triggers(rule)
    if ended or finished:
        log.warning(
            "%s (%s): %d active row(s) broke it and were ended as failed (%s); %d finished row(s) "
            "break it and are kept as they are. Find them with: SELECT * FROM %s WHERE %s",
            rule.constraint,
            rule.message,
            ended,
            INVALID_ROW,
            finished,
            TABLE,
            broken,
        )


def drop(rule: Rule) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {rule.constraint}")
    else:
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {rule.constraint}_{event}")


def _create_triggers(rule: Rule) -> None:
    check = rule.check("sqlite", row="NEW")
    abort = f"SELECT RAISE(ABORT, 'CHECK constraint failed: {rule.constraint} ({rule.message})')"
    columns = ", ".join(rule.columns)
    op.execute(
        f"CREATE TRIGGER {rule.constraint}_insert BEFORE INSERT ON {TABLE} "
        f"WHEN NOT ({check}) BEGIN {abort}; END"
    )
    op.execute(
        f"CREATE TRIGGER {rule.constraint}_update BEFORE UPDATE OF {columns} ON {TABLE} "
        f"WHEN NOT ({check}) BEGIN {abort}; END"
    )


def _end_active_rows(rule: Rule, broken: str) -> int:
    """End the active rows breaking ``rule`` as failed, with their history row; return how many."""
    bind = op.get_bind()
    reason = f"{rule.constraint}: {rule.message}; the row was ended when the rule was added"
    where = f"{ACTIVE} AND {broken}"
    bind.execute(
        sa.text(
            "INSERT INTO job_transitions (tracked_job_id, from_status, to_status, reason, at) "
            f"SELECT id, status, 'failed', :reason, CURRENT_TIMESTAMP FROM {TABLE} WHERE {where}"
        ),
        {"reason": reason},
    )
    result = bind.execute(
        sa.text(
            f"UPDATE {TABLE} SET status = 'failed', error_code = :code, error_message = :reason, "
            "finished_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP, "
            f"lease_expires_at = NULL WHERE {where}"
        ),
        {"code": INVALID_ROW, "reason": reason},
    )
    return int(result.rowcount or 0)
