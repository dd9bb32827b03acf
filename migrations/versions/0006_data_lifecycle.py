"""Data lifecycle: tombstones of pruned jobs, tallies kept by triggers, indexes for retention.

- ``pruned_jobs``: one compact row per job the retention removed. A trigger skips any INSERT
  into ``tracked_jobs`` of a (kind, region, job_id) found there, whoever inserts (the tracker,
  the API, a plain SQL INSERT): a pruned job is never tracked, nor called back, a second time.
- ``row_tallies``: changes to the number of rows per (kind, status) of ``tracked_jobs`` and per
  status of ``webhook_deliveries``, appended by triggers on every INSERT, UPDATE and DELETE, so
  metrics and ``jobtracker stats`` sum a few rows instead of counting millions. Filled here from
  one count of the existing rows, with the tables locked against writes meanwhile.
- Indexes: the oldest active job per (kind, status), and attempts by time.

On PostgreSQL, inserts and deletes are tallied once per statement over its transition tables (a
prune's batch of 500 appends a few tallies) and updates by a row trigger that fires only when a
tally changes (a status move, a finished row); SQLite has only row triggers, with the same WHEN.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = "status IN ('pending', 'queued', 'running')"
TERMINAL = "('succeeded', 'failed', 'canceled', 'expired')"
TALLY_COLUMNS = "subject, kind, status, rows, polls, bounded, bound_s"

# Per job row: its polls and detection bound count only once it finished.
PG_POLLS = f"CASE WHEN r.status IN {TERMINAL} THEN r.polls ELSE 0 END"
PG_BOUNDED = (
    f"CASE WHEN r.status IN {TERMINAL} AND r.last_unfinished_at IS NOT NULL "
    "AND r.finished_at IS NOT NULL THEN 1 ELSE 0 END"
)
PG_BOUND_S = (
    f"CASE WHEN r.status IN {TERMINAL} AND r.last_unfinished_at IS NOT NULL "
    "AND r.finished_at IS NOT NULL "
    "THEN extract(epoch FROM (r.finished_at - r.last_unfinished_at))::float8 ELSE 0 END"
)


def _pg_job_terms(rows: str, sign: str) -> str:
    return (
        f"SELECT r.kind, r.status, {sign}1 AS rows, {sign}({PG_POLLS}) AS polls, "
        f"{sign}({PG_BOUNDED}) AS bounded, {sign}({PG_BOUND_S}) AS bound_s FROM {rows} r"
    )


def _pg_delivery_terms(rows: str, sign: str) -> str:
    return (
        f"SELECT '' AS kind, r.status, {sign}1 AS rows, 0 AS polls, 0 AS bounded, "
        f"0::float8 AS bound_s FROM {rows} r"
    )


def _pg_tally_function(name: str, subject: str, make: Callable[[str, str], str]) -> str:
    def insert(source: str) -> str:
        return (
            f"INSERT INTO row_tallies ({TALLY_COLUMNS}) "
            f"SELECT '{subject}', kind, status, sum(rows), sum(polls), sum(bounded), sum(bound_s) "
            f"FROM ({source}) d GROUP BY kind, status "
            "HAVING sum(rows) <> 0 OR sum(polls) <> 0 OR sum(bounded) <> 0 OR sum(bound_s) <> 0;"
        )

    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        {insert(make("(SELECT NEW.*)", "+") + " UNION ALL " + make("(SELECT OLD.*)", "-"))}
    ELSIF TG_OP = 'INSERT' THEN
        {insert(make("new_rows", "+"))}
    ELSE
        {insert(make("old_rows", "-"))}
    END IF;
    RETURN NULL;
END
$$
"""


def _pg_tally_triggers(table: str, function: str, update_when: str) -> list[str]:
    # Updates are row triggers with a WHEN: a statement trigger over transition tables ran on
    # every poll's write and every claim, and made a 50-row poll write 34 % slower, though
    # almost none of them changes a tally. Inserts and deletes (a prune's batch) stay per
    # statement.
    return [
        f"CREATE TRIGGER {table}_tally_insert AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_tally_update AFTER UPDATE ON {table} "
        f"FOR EACH ROW WHEN ({update_when}) EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_tally_delete AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


# A job row locked by a pruner (or being deleted by one) makes the check wait for it, and the
# tombstone is read after: an INSERT racing a prune of the same job is skipped, not let in.
# KEY SHARE: it waits for a pruner's FOR UPDATE or DELETE, not for a poll's plain UPDATE.
PG_SKIP_PRUNED = """
CREATE FUNCTION jobtracker_skip_pruned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM tracked_jobs t
     WHERE t.kind = NEW.kind AND t.region = NEW.region AND t.job_id = NEW.job_id
       FOR KEY SHARE;
    IF EXISTS (SELECT 1 FROM pruned_jobs p
                WHERE p.kind = NEW.kind AND p.region = NEW.region AND p.job_id = NEW.job_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$
"""


def _sqlite_job_values(row: str, sign: str) -> str:
    terminal = f"{row}.status IN {TERMINAL}"
    bounded = (
        f"{terminal} AND {row}.last_unfinished_at IS NOT NULL AND {row}.finished_at IS NOT NULL"
    )
    return (
        f"('job', {row}.kind, {row}.status, {sign}1, "
        f"{sign}(CASE WHEN {terminal} THEN {row}.polls ELSE 0 END), "
        f"{sign}(CASE WHEN {bounded} THEN 1 ELSE 0 END), "
        f"{sign}(CASE WHEN {bounded} THEN "
        f"(julianday({row}.finished_at) - julianday({row}.last_unfinished_at)) * 86400.0 "
        "ELSE 0.0 END))"
    )


def _sqlite_delivery_values(row: str, sign: str) -> str:
    return f"('delivery', '', {row}.status, {sign}1, 0, 0, 0.0)"


def _sqlite_triggers(table: str, make: Callable[[str, str], str], update_when: str) -> list[str]:
    insert = f"INSERT INTO row_tallies ({TALLY_COLUMNS}) VALUES "
    return [
        f"CREATE TRIGGER {table}_tally_insert AFTER INSERT ON {table} "
        f"BEGIN {insert}{make('NEW', '+')}; END",
        f"CREATE TRIGGER {table}_tally_delete AFTER DELETE ON {table} "
        f"BEGIN {insert}{make('OLD', '-')}; END",
        f"CREATE TRIGGER {table}_tally_update AFTER UPDATE ON {table} WHEN {update_when} "
        f"BEGIN {insert}{make('OLD', '-')}, {make('NEW', '+')}; END",
    ]


SQLITE_SKIP_PRUNED = """
CREATE TRIGGER tracked_jobs_skip_pruned BEFORE INSERT ON tracked_jobs
WHEN EXISTS (SELECT 1 FROM pruned_jobs p
              WHERE p.kind = NEW.kind AND p.region = NEW.region AND p.job_id = NEW.job_id)
BEGIN SELECT RAISE(IGNORE); END
"""

# What a job row's tallies depend on: a change of anything else (a poll's counters, a lease)
# appends nothing. A finished row's polls and bound count, so any change to one re-tallies it.
# (PostgreSQL uses the same conditions, with IS DISTINCT FROM.)
SQLITE_JOB_CHANGED = (
    "OLD.status IS NOT NEW.status OR OLD.kind IS NOT NEW.kind "
    f"OR NEW.status IN {TERMINAL} OR OLD.status IN {TERMINAL}"
)
SQLITE_DELIVERY_CHANGED = "OLD.status IS NOT NEW.status"

BACKFILL_JOBS = f"""
INSERT INTO row_tallies ({TALLY_COLUMNS})
SELECT 'job', kind, status, count(*),
       coalesce(sum(CASE WHEN status IN {TERMINAL} THEN polls ELSE 0 END), 0),
       coalesce(sum(CASE WHEN status IN {TERMINAL} AND last_unfinished_at IS NOT NULL
                          AND finished_at IS NOT NULL THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN status IN {TERMINAL} AND last_unfinished_at IS NOT NULL
                          AND finished_at IS NOT NULL THEN {{bound}} ELSE 0 END), 0)
  FROM tracked_jobs GROUP BY kind, status
"""
BACKFILL_DELIVERIES = f"""
INSERT INTO row_tallies ({TALLY_COLUMNS})
SELECT 'delivery', '', status, count(*), 0, 0, 0 FROM webhook_deliveries GROUP BY status
"""


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.create_table(
        "pruned_jobs",
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("region", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(128), primary_key=True),
        sa.Column("tracked_job_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("client_id", sa.Integer()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column(
            "pruned_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("kind", "region", "job_id", name="pk_pruned_jobs"),
    )
    op.create_index("ix_pruned_jobs_pruned_at", "pruned_jobs", ["pruned_at"])
    op.create_table(
        "row_tallies",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("subject", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("polls", sa.BigInteger(), nullable=False),
        sa.Column("bounded", sa.BigInteger(), nullable=False),
        sa.Column("bound_s", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_row_tallies"),
    )
    op.create_index(
        "ix_tracked_jobs_active_created",
        "tracked_jobs",
        ["kind", "status", "created_at"],
        postgresql_where=sa.text(ACTIVE),
        sqlite_where=sa.text(ACTIVE),
    )
    op.create_index("ix_webhook_attempts_attempted_at", "webhook_attempts", ["attempted_at", "id"])

    if dialect == "postgresql":
        # No write may land between the count below and the triggers taking over.
        op.execute("LOCK TABLE tracked_jobs, webhook_deliveries IN SHARE ROW EXCLUSIVE MODE")
        op.execute(_pg_tally_function("jobtracker_tally_jobs", "job", _pg_job_terms))
        op.execute(
            _pg_tally_function("jobtracker_tally_deliveries", "delivery", _pg_delivery_terms)
        )
        for statement in [
            *_pg_tally_triggers(
                "tracked_jobs",
                "jobtracker_tally_jobs",
                SQLITE_JOB_CHANGED.replace(" IS NOT ", " IS DISTINCT FROM "),
            ),
            *_pg_tally_triggers(
                "webhook_deliveries",
                "jobtracker_tally_deliveries",
                SQLITE_DELIVERY_CHANGED.replace(" IS NOT ", " IS DISTINCT FROM "),
            ),
        ]:
            op.execute(statement)
        op.execute(PG_SKIP_PRUNED)
        op.execute(
            "CREATE TRIGGER tracked_jobs_skip_pruned BEFORE INSERT ON tracked_jobs "
            "FOR EACH ROW EXECUTE FUNCTION jobtracker_skip_pruned()"
        )
        bound = "extract(epoch FROM (finished_at - last_unfinished_at))::float8"
    else:
        # SQLite's driver opens a transaction only at the first write, so take the write lock
        # with one before the triggers: no write may land between them and the count below,
        # and a failed count takes the triggers back with it.
        op.execute("UPDATE row_tallies SET rows = rows WHERE 0")
        for statement in [
            *_sqlite_triggers("tracked_jobs", _sqlite_job_values, SQLITE_JOB_CHANGED),
            *_sqlite_triggers(
                "webhook_deliveries", _sqlite_delivery_values, SQLITE_DELIVERY_CHANGED
            ),
        ]:
            op.execute(statement)
        op.execute(SQLITE_SKIP_PRUNED)
        bound = "(julianday(finished_at) - julianday(last_unfinished_at)) * 86400.0"
    op.execute(BACKFILL_JOBS.format(bound=bound))
    op.execute(BACKFILL_DELIVERIES)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in ("tracked_jobs", "webhook_deliveries"):
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_tally_{event} ON {table}")
        op.execute("DROP TRIGGER IF EXISTS tracked_jobs_skip_pruned ON tracked_jobs")
        for function in (
            "jobtracker_tally_jobs",
            "jobtracker_tally_deliveries",
            "jobtracker_skip_pruned",
        ):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    else:
        for table in ("tracked_jobs", "webhook_deliveries"):
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_tally_{event}")
        op.execute("DROP TRIGGER IF EXISTS tracked_jobs_skip_pruned")
    op.drop_index("ix_webhook_attempts_attempted_at", table_name="webhook_attempts")
    op.drop_index("ix_tracked_jobs_active_created", table_name="tracked_jobs")
    op.drop_table("row_tallies")
    op.drop_index("ix_pruned_jobs_pruned_at", table_name="pruned_jobs")
    op.drop_table("pruned_jobs")
