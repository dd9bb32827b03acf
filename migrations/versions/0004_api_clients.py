"""Service API clients and tokens; tracked_jobs.client_id (who enqueued a job over HTTP).

Self-contained: it creates two tables and adds one nullable column, and assumes nothing about
the rows already there (existing jobs get client_id NULL, like every job of the other ways in).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, **kwargs: object) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), **kwargs)  # type: ignore[arg-type]


def upgrade() -> None:
    op.create_table(
        "api_clients",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("secret_generation", sa.Integer(), server_default="1", nullable=False),
        sa.Column("previous_secret_generation", sa.Integer()),
        _ts("previous_secret_until"),
        _ts("created_at", server_default=sa.func.now(), nullable=False),
        _ts("revoked_at"),
        sa.CheckConstraint(
            "length(name) BETWEEN 1 AND 64", name=op.f("ck_api_clients_name_length")
        ),
        sa.CheckConstraint(
            "secret_generation >= 1", name=op.f("ck_api_clients_secret_generation_positive")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_clients")),
        sa.UniqueConstraint("name", name=op.f("uq_api_clients_name")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        _ts("created_at", server_default=sa.func.now(), nullable=False),
        _ts("expires_at"),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.id"],
            name=op.f("fk_api_tokens_client_id_api_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index("ix_api_tokens_client_id", "api_tokens", ["client_id"])

    fk = op.f("fk_tracked_jobs_client_id_api_clients")
    if op.get_bind().dialect.name == "sqlite":
        # Alembic would add the foreign key as a separate ALTER, which SQLite cannot do, and batch
        # mode would copy tracked_jobs (maybe millions of rows). SQLite does accept a REFERENCES
        # clause on a nullable column in a plain ADD COLUMN.
        op.execute(
            f"ALTER TABLE tracked_jobs ADD COLUMN client_id INTEGER "
            f"CONSTRAINT {fk} REFERENCES api_clients (id)"
        )
    else:
        op.add_column("tracked_jobs", sa.Column("client_id", sa.Integer(), nullable=True))
        op.create_foreign_key(fk, "tracked_jobs", "api_clients", ["client_id"], ["id"])
    op.create_index("ix_tracked_jobs_client_id", "tracked_jobs", ["client_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_tracked_jobs_client_id", table_name="tracked_jobs")
    if op.get_bind().dialect.name == "sqlite":
        # Not batch mode: rebuilding tracked_jobs would drop it, and with foreign keys on, the
        # CASCADE would empty job_transitions and webhook_deliveries. SQLite >= 3.35 drops the
        # column in place.
        op.execute("ALTER TABLE tracked_jobs DROP COLUMN client_id")
    else:
        op.drop_constraint(
            op.f("fk_tracked_jobs_client_id_api_clients"), "tracked_jobs", type_="foreignkey"
        )
        op.drop_column("tracked_jobs", "client_id")
    op.drop_index("ix_api_tokens_client_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("api_clients")
