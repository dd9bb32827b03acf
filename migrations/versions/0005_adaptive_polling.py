"""Adaptive polling: what each job tells of how long its kind takes.

``last_unfinished_at`` (the last answer that said "not finished": a finish lies between it and
``finished_at``), ``expected_duration_s`` (a caller's optional hint, positive) and an index on the
newest finished jobs of a kind, which the schedule learns from.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from jobtracker.migrations.rules import Rule, add, drop

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED = "finished_at IS NOT NULL"
HINT_POSITIVE = Rule(
    "expected_duration_positive",
    "expected_duration_s must be above 0",
    ("expected_duration_s",),
    postgresql="expected_duration_s IS NULL OR expected_duration_s > 0",
    sqlite="{row}.expected_duration_s IS NULL OR {row}.expected_duration_s > 0",
)


def upgrade() -> None:
    # Plain ADD COLUMN on both backends: a batch rebuild on SQLite would drop the rule triggers.
    op.add_column("tracked_jobs", sa.Column("last_unfinished_at", sa.DateTime(timezone=True)))
    op.add_column("tracked_jobs", sa.Column("expected_duration_s", sa.Float(precision=53)))
    add(HINT_POSITIVE)
    op.create_index(
        "ix_tracked_jobs_finished",
        "tracked_jobs",
        ["kind", "finished_at"],
        postgresql_where=sa.text(FINISHED),
        sqlite_where=sa.text(FINISHED),
    )


def downgrade() -> None:
    op.drop_index("ix_tracked_jobs_finished", table_name="tracked_jobs")
    drop(HINT_POSITIVE)
    op.drop_column("tracked_jobs", "expected_duration_s")
    op.drop_column("tracked_jobs", "last_unfinished_at")
