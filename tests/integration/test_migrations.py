"""The migrations build exactly the models' schema, and undo it, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from jobtracker import models
from tests import services
from worker.db import dispose_engines, normalize_url
from worker.runtime.migrate import current_revision, downgrade, head_revision, upgrade
from worker.settings import Settings

TABLES = {
    "tracked_jobs",
    "job_transitions",
    "webhook_deliveries",
    "webhook_attempts",
    "provider_states",
    "rate_limits",
    "api_clients",
    "api_tokens",
    "api_client_networks",
    "delivery_breakers",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        dispose_engines()
        return
    services.require("PostgreSQL", services.pg_error())
    name = services.unique_name("jt_migr")
    url = services.create_database(name)
    yield url
    dispose_engines()
    services.drop_database(name)


def _diff(url: str) -> list[object]:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, models.metadata))
    finally:
        engine.dispose()


def test_upgrade_matches_the_models_and_downgrade_removes_everything(empty_db: str) -> None:
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": empty_db})
    upgrade("head", settings)
    assert current_revision(settings) == head_revision()
    assert _diff(empty_db) == []

    engine = create_engine(normalize_url(empty_db))
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) >= TABLES
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("tracked_jobs")}
        assert "ix_tracked_jobs_due" in indexes
    engine.dispose()

    downgrade("base", settings)
    dispose_engines()
    engine = create_engine(normalize_url(empty_db))
    with engine.connect() as conn:
        assert not TABLES & set(inspect(conn).get_table_names())
    engine.dispose()
    upgrade("head", settings)  # and back up again: downgrade left nothing behind
    assert current_revision(settings) == head_revision()


def test_the_due_index_is_partial_and_used(db_url: str) -> None:
    """The tick's claim reads the partial index, not the whole table."""
    engine = create_engine(normalize_url(db_url))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            plan = "\n".join(
                row[0]
                for row in conn.execute(
                    text(
                        "EXPLAIN SELECT id FROM tracked_jobs WHERE status IN "
                        "('pending', 'queued', 'running') AND next_poll_at <= now() AND kind = 'k' "
                        "ORDER BY next_poll_at LIMIT 10"
                    )
                )
            )
        else:
            plan = "\n".join(
                str(row[-1])
                for row in conn.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT id FROM tracked_jobs WHERE status IN "
                        "('pending', 'queued', 'running') AND next_poll_at <= '2030-01-01' "
                        "AND kind = 'k' ORDER BY next_poll_at LIMIT 10"
                    )
                )
            )
    engine.dispose()
    assert "ix_tracked_jobs_due" in plan


def test_the_database_refuses_bad_rows(db_url: str) -> None:
    engine = create_engine(normalize_url(db_url))
    bad = [
        "INSERT INTO tracked_jobs (kind, job_id, status) VALUES ('image_animate', 'a', 'done')",
        "INSERT INTO tracked_jobs (kind, job_id) VALUES ('image_animate', '')",
        "INSERT INTO tracked_jobs (kind, job_id, status) VALUES ('image_animate', 'b', 'failed')",
        "INSERT INTO tracked_jobs (kind, job_id, polls) VALUES ('image_animate', 'c', -1)",
    ]
    for statement in bad:
        with pytest.raises(Exception, match=r"(?i)constraint|check"), engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()


def test_the_api_clients_revision_goes_down_and_up_keeping_jobs_and_their_history(
    empty_db: str,
) -> None:
    """0002 on a database with rows: the downgrade drops only what it added (on SQLite too,
    where rebuilding tracked_jobs with foreign keys on would cascade into its history)."""
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": empty_db})
    upgrade("head", settings)
    engine = create_engine(normalize_url(empty_db))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO api_clients (name, scopes) VALUES ('svc', 'read')"))
        conn.execute(
            text(
                "INSERT INTO tracked_jobs (kind, job_id, client_id) VALUES "
                "('image_animate', 'a', (SELECT id FROM api_clients)), ('image_animate', 'b', NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO job_transitions (tracked_job_id, from_status, to_status) "
                "SELECT id, 'pending', 'running' FROM tracked_jobs"
            )
        )
    engine.dispose()
    downgrade("0001", settings)
    dispose_engines()
    engine = create_engine(normalize_url(empty_db))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_transitions")).scalar_one() == 2
        assert conn.execute(text("SELECT count(*) FROM tracked_jobs")).scalar_one() == 2
        columns = {c["name"] for c in inspect(conn).get_columns("tracked_jobs")}
        assert "client_id" not in columns
        assert not {"api_clients", "api_tokens"} & set(inspect(conn).get_table_names())
        checks = {c["name"] for c in inspect(conn).get_check_constraints("tracked_jobs")}
        assert "ck_tracked_jobs_finished_iff_terminal" in checks
    engine.dispose()
    upgrade("head", settings)
    assert _diff(empty_db) == []


def test_the_lifecycle_revision_counts_existing_rows_and_goes_down_cleanly(empty_db: str) -> None:
    """0006 on a database with rows: the tallies start from a count of what is there, then
    follow every write; the downgrade leaves no trigger behind (writes still work)."""
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": empty_db})
    upgrade("0005", settings)
    engine = create_engine(normalize_url(empty_db))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tracked_jobs (kind, job_id) VALUES "
                "('image_animate', 'a'), ('image_animate', 'b'), ('video_face_fusion', 'c')"
            )
        )
        conn.execute(
            text(
                "UPDATE tracked_jobs SET status = 'succeeded', finished_at = CURRENT_TIMESTAMP, "
                "polls = 4 WHERE job_id = 'a'"
            )
        )
    engine.dispose()
    upgrade("head", settings)
    dispose_engines()

    def tallies() -> dict[tuple[str, str], tuple[int, int]]:
        with create_engine(normalize_url(empty_db)).connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT kind, status, sum(rows), sum(polls) FROM row_tallies "
                    "WHERE subject = 'job' GROUP BY kind, status HAVING sum(rows) <> 0"
                )
            ).all()
        return {(k, s): (int(n), int(p)) for k, s, n, p in rows}

    assert tallies() == {
        ("image_animate", "succeeded"): (1, 4),
        ("image_animate", "pending"): (1, 0),
        ("video_face_fusion", "pending"): (1, 0),
    }
    engine = create_engine(normalize_url(empty_db))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tracked_jobs WHERE job_id = 'b'"))
    engine.dispose()
    assert ("image_animate", "pending") not in tallies()
    downgrade("0005", settings)
    dispose_engines()
    engine = create_engine(normalize_url(empty_db))
    with engine.begin() as conn:
        assert not {"row_tallies", "pruned_jobs"} & set(inspect(conn).get_table_names())
        conn.execute(text("INSERT INTO tracked_jobs (kind, job_id) VALUES ('image_animate', 'd')"))
        conn.execute(text("UPDATE tracked_jobs SET polls = polls + 1"))
        conn.execute(text("DELETE FROM tracked_jobs WHERE job_id = 'd'"))
    engine.dispose()
    upgrade("head", settings)
    assert _diff(empty_db) == []
