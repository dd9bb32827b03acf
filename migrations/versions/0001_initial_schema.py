"""Initial schema: tracked jobs, their transitions, the webhook outbox, provider state.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("status IN ('pending', 'queued', 'running')")
STATUSES = "'canceled', 'expired', 'failed', 'pending', 'queued', 'running', 'succeeded'"
PENDING_DELIVERY = sa.text("status = 'pending'")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, **kwargs: object) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), **kwargs)  # type: ignore[arg-type]


def _now(name: str) -> sa.Column[object]:
    return _ts(name, server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "provider_states",
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("paused_reason", sa.Text()),
        _ts("paused_at"),
        _ts("next_probe_at"),
        _ts("throttled_until"),
        sa.Column("consecutive_throttles", sa.Integer(), server_default="0", nullable=False),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_provider_states")),
    )
    op.create_table(
        "tracked_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), server_default="ap-guangzhou", nullable=False),
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("provider_status", sa.String(64)),
        sa.Column("error_code", sa.String(128)),
        sa.Column("error_message", sa.Text()),
        sa.Column("result", _json()),
        _ts("result_expires_at"),
        sa.Column("callback_url", sa.Text()),
        sa.Column("metadata", _json(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("polls", sa.Integer(), server_default="0", nullable=False),
        _ts("last_polled_at"),
        _now("next_poll_at"),
        _ts("deadline_at"),
        _ts("lease_expires_at"),
        sa.Column("last_error_code", sa.String(128)),
        sa.Column("last_error_message", sa.Text()),
        sa.Column("consecutive_errors", sa.Integer(), server_default="0", nullable=False),
        _now("created_at"),
        _now("updated_at"),
        _ts("finished_at"),
        sa.CheckConstraint(
            "(finished_at IS NULL) = (status IN ('pending', 'queued', 'running'))",
            name=op.f("ck_tracked_jobs_finished_iff_terminal"),
        ),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_tracked_jobs_status")),
        sa.CheckConstraint(
            "length(job_id) BETWEEN 1 AND 128", name=op.f("ck_tracked_jobs_job_id_length")
        ),
        sa.CheckConstraint("polls >= 0", name=op.f("ck_tracked_jobs_polls_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracked_jobs")),
        sa.UniqueConstraint(
            "kind", "region", "job_id", name=op.f("uq_tracked_jobs_kind_region_job_id")
        ),
    )
    op.create_index(
        "ix_tracked_jobs_due",
        "tracked_jobs",
        ["kind", "next_poll_at"],
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.create_index(
        "ix_tracked_jobs_deadline",
        "tracked_jobs",
        ["kind", "deadline_at"],
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.create_index("ix_tracked_jobs_created_at", "tracked_jobs", ["created_at"])

    op.create_table(
        "job_transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tracked_job_id", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=False),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("provider_status", sa.String(64)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("reason", sa.Text()),
        _now("at"),
        sa.CheckConstraint(f"to_status IN ({STATUSES})", name=op.f("ck_job_transitions_to_status")),
        sa.ForeignKeyConstraint(
            ["tracked_job_id"],
            ["tracked_jobs.id"],
            name=op.f("fk_job_transitions_tracked_job_id_tracked_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_transitions")),
    )
    op.create_index(
        "ix_job_transitions_tracked_job_id", "job_transitions", ["tracked_job_id", "id"]
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tracked_job_id", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _ts("next_attempt_at", server_default=sa.func.now()),
        _ts("lease_expires_at"),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        _now("created_at"),
        _now("updated_at"),
        _ts("delivered_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.CheckConstraint(
            "attempts >= 0", name=op.f("ck_webhook_deliveries_attempts_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["tracked_job_id"],
            ["tracked_jobs.id"],
            name=op.f("fk_webhook_deliveries_tracked_job_id_tracked_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=PENDING_DELIVERY,
        sqlite_where=PENDING_DELIVERY,
    )
    op.create_index(
        "ix_webhook_deliveries_status_created_at", "webhook_deliveries", ["status", "created_at"]
    )
    op.create_index(
        "ix_webhook_deliveries_tracked_job_id", "webhook_deliveries", ["tracked_job_id"]
    )

    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=False),
        _now("attempted_at"),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error_class", sa.String(32)),
        sa.Column("error_message", sa.Text()),
        sa.Column("latency_ms", sa.Integer()),
        sa.Column("response_body", sa.Text()),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id", "id"])


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("job_transitions")
    op.drop_table("tracked_jobs")
    op.drop_table("provider_states")
