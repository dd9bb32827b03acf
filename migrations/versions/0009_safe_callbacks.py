"""Safe callbacks: one callback URL rule on both backends, networks allowed per API client, and
the delivery circuit breakers.

- ``ck_tracked_jobs_callback_url_http`` says the same on PostgreSQL and SQLite. Before, SQLite
  checked only the scheme and blanks, so a plain INSERT stored ``http://user:pw@internal/``,
  ``http:///no-host`` or ``http://[::1`` there (and PostgreSQL took ``http://[::1`` too). Now an
  http(s) URL needs, before its first ``/``, ``?`` or ``#``: a host name or IPv4 address (no
  brackets, colons, ``@`` or blanks) or an IPv6 address in brackets, then an optional ``:`` and
  port of up to 5 digits; no blanks anywhere; at most 2048 characters. The same shape as
  ``worker.webhooks.urls.URL_SHAPE``. Active rows that break it are ended as failed
  (``Tracker.InvalidRow``), finished ones kept, as with every rule (``migrations/rules.py``).
- ``api_client_networks``: the networks an operator allowed a client's callbacks to reach
  (``jobtracker clients allow-network``); none by default.
- ``delivery_breakers``: one row per callback destination (``host:port``) while it is timing out;
  open from 5 timeouts in a row, probed every 30 s, deleted when it answers again.

Revision ID: 0009
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from jobtracker.migrations.rules import Rule, add, drop

revision: str = "0009"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BLANKS = "'*[' || char(32, 9, 10, 11, 12, 13) || ']*'"

#: The rule as migration 0002 wrote it (for the downgrade).
OLD_RULE = Rule(
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
)

# SQLite has no regular expressions: the authority (``a``: what follows the scheme, up to the
# first '/', '?' or '#') is cut out in a subquery and checked with GLOB. The blanks are spelled
# out on PostgreSQL too ([:space:] follows the locale, which may count other characters).
_REST = (
    "CASE WHEN lower(substr(u, 1, 7)) = 'http://' THEN substr(u, 8)"
    " WHEN lower(substr(u, 1, 8)) = 'https://' THEN substr(u, 9) END"
)
_END = "min({})".format(
    ", ".join(f"coalesce(nullif(instr(r, '{c}'), 0), length(r) + 1)" for c in "/?#")
)
_AUTHORITY_OK = (
    "a <> '' AND a NOT GLOB '*@*' AND CASE WHEN substr(a, 1, 1) = '['"
    # [IPv6], then nothing or ':' and up to 5 digits
    " THEN instr(a, ']') > 2"
    " AND substr(a, 2, instr(a, ']') - 2) NOT GLOB '*[^0-9A-Fa-f:.]*'"
    " AND (instr(a, ']') = length(a) OR substr(a, instr(a, ']') + 1, 1) = ':'"
    " AND substr(a, instr(a, ']') + 2) NOT GLOB '*[^0-9]*' AND length(a) - instr(a, ']') <= 6)"
    # a name or IPv4 address without brackets, then nothing or ':' and up to 5 digits
    " ELSE a NOT GLOB '*[][]*' AND (instr(a, ':') = 0 OR instr(a, ':') > 1"
    " AND substr(a, instr(a, ':') + 1) NOT GLOB '*[^0-9]*' AND length(a) - instr(a, ':') <= 5)"
    " END"
)

RULE = Rule(
    "callback_url_http",
    "callback_url must be an http(s) URL with a host (a name, an IPv4 address or [IPv6]), an "
    "optional port, no user info and no blanks",
    ("callback_url",),
    postgresql=(
        "callback_url IS NULL OR (length(callback_url) <= 2048 AND callback_url ~* "
        r"'^https?://(\[[0-9a-f:.]+\]|[^][/?#@: \t\n\v\f\r]+)(:[0-9]{0,5})?"
        r"([/?#][^ \t\n\v\f\r]*)?$')"
    ),
    sqlite=(
        "{row}.callback_url IS NULL OR (length({row}.callback_url) <= 2048"
        f" AND {{row}}.callback_url NOT GLOB {_BLANKS}"
        f" AND coalesce((SELECT {_AUTHORITY_OK} FROM (SELECT substr(r, 1, {_END} - 1) AS a"
        f" FROM (SELECT {_REST} AS r FROM (SELECT {{row}}.callback_url AS u)) WHERE r IS NOT NULL"
        ")), 0))"
    ),
)


def _ts(name: str, **kwargs: object) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), **kwargs)  # type: ignore[arg-type]


def upgrade() -> None:
    drop(OLD_RULE)
    add(RULE)
    op.create_table(
        "api_client_networks",
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("network", sa.String(64), nullable=False),
        _ts("created_at", server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.id"],
            name=op.f("fk_api_client_networks_client_id_api_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", "network", name=op.f("pk_api_client_networks")),
    )
    op.create_table(
        "delivery_breakers",
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("timeouts", sa.Integer(), server_default="0", nullable=False),
        _ts("opened_at"),
        _ts("probe_at"),
        _ts("updated_at", server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("destination", name=op.f("pk_delivery_breakers")),
    )


def downgrade() -> None:
    op.drop_table("delivery_breakers")
    op.drop_table("api_client_networks")
    drop(RULE)
    add(OLD_RULE)
