"""Rate limits: each provider's shared pace, for deployments whose broker is not Redis.

Workers that share a Redis broker keep the pace in Redis; any other broker (and the embedded
default) keeps it in this table, under a row lock, on the database's clock.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("tat", sa.Float(precision=53), nullable=False),
        sa.Column("rate", sa.Float(precision=53), nullable=False),
        sa.Column("learned", sa.Float(precision=53), nullable=False),
        sa.Column("run", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limits")),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
