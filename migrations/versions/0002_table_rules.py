"""Table rules: the database refuses rows no tracker could handle; deadlines for every row.

A plain SQL INSERT with an unknown kind, a metadata that is not a JSON object, a callback URL that
is not http(s), a malformed region or a JobId with blanks is refused (CHECK constraints on
PostgreSQL, triggers on SQLite: see ``migrations/rules.py``). Adding a provider means one more
revision that re-adds ``kind_known`` with the new list (``rules.drop`` then ``rules.add``).

The partial index ``ix_tracked_jobs_no_deadline`` lets the tick give every row inserted without
a deadline its deadline (``created_at`` + ``JOBTRACKER_JOB_DEADLINE``) without scanning.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from jobtracker.migrations.rules import Rule, add, drop

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = "status IN ('pending', 'queued', 'running')"
_BLANKS = "'*[' || char(32, 9, 10, 11, 12, 13) || ']*'"

RULES = (
    Rule(
        "kind_known",
        "unknown kind",
        ("kind",),
        postgresql="kind IN ('image_animate', 'video_face_fusion')",
        sqlite="{row}.kind IN ('image_animate', 'video_face_fusion')",
    ),
    Rule(
        "region_name",
        "region is not a Tencent region name such as ap-guangzhou",
        ("region",),
        postgresql="region ~ '^[a-z]{2,}(-[a-z0-9]+){1,3}$'",
        # No regular expressions in SQLite: the same shape, spelled out.
        sqlite=(
            "length({row}.region) BETWEEN 4 AND 64"
            " AND {row}.region NOT GLOB '*[^a-z0-9-]*'"
            " AND {row}.region NOT GLOB '*-' AND {row}.region NOT GLOB '*--*'"
            " AND instr({row}.region, '-') > 2"
            " AND substr({row}.region, 1, instr({row}.region, '-') - 1) NOT GLOB '*[^a-z]*'"
            " AND length({row}.region) - length(replace({row}.region, '-', '')) BETWEEN 1 AND 3"
        ),
    ),
    Rule(
        "metadata_object",
        "metadata must be a JSON object",
        ("metadata",),
        postgresql="jsonb_typeof(metadata) = 'object'",
        sqlite=(
            "CASE WHEN json_valid({row}.metadata)"
            " THEN json_type({row}.metadata) = 'object' ELSE 0 END"
        ),
    ),
    Rule(
        "callback_url_http",
        "callback_url must be an http(s) URL with a host and no blanks",
        ("callback_url",),
        postgresql=(
            "callback_url IS NULL OR (length(callback_url) <= 2048"
            " AND callback_url ~* '^https?://[^/?#@[:space:]]+([/?#][^[:space:]]*)?$')"
        ),
        sqlite=(
            "{row}.callback_url IS NULL OR (length({row}.callback_url) <= 2048"
            " AND (lower(substr({row}.callback_url, 1, 7)) = 'http://'"
            " AND length({row}.callback_url) > 7"
            " OR lower(substr({row}.callback_url, 1, 8)) = 'https://'"
            " AND length({row}.callback_url) > 8)"
            f" AND {{row}}.callback_url NOT GLOB {_BLANKS})"
        ),
    ),
    Rule(
        "job_id_chars",
        "job_id contains whitespace or a control character",
        ("job_id",),
        postgresql="job_id !~ '[[:space:][:cntrl:]]'",
        sqlite=f"{{row}}.job_id NOT GLOB {_BLANKS}",
    ),
)


def upgrade() -> None:
    for rule in RULES:
        add(rule)
    op.create_index(
        "ix_tracked_jobs_no_deadline",
        "tracked_jobs",
        ["id"],
        postgresql_where=sa.text(f"deadline_at IS NULL AND {ACTIVE}"),
        sqlite_where=sa.text(f"deadline_at IS NULL AND {ACTIVE}"),
    )


def downgrade() -> None:
    op.drop_index("ix_tracked_jobs_no_deadline", table_name="tracked_jobs")
    for rule in reversed(RULES):
        drop(rule)
