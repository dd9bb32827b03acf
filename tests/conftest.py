"""Shared fixtures: a clean environment, throwaway databases on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import services


@pytest.fixture(autouse=True, scope="session")
def _clean_environment() -> Iterator[None]:
    """The host's JOBTRACKER_* / TENCENTCLOUD_* variables must not leak into the tests."""
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith(("JOBTRACKER_", "TENCENTCLOUD_")) and not k.startswith("JOBTRACKER_TEST_")
    }
    yield
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    from worker.settings import reset_settings

    reset_settings()
    yield
    reset_settings()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A PostgreSQL database migrated once; tests clone it (procrastinate's trick)."""
    services.require("PostgreSQL", services.pg_error())
    from worker.runtime.migrate import upgrade
    from worker.settings import Settings

    name = services.unique_name("jt_template")
    url = services.create_database(name)
    upgrade("head", Settings.from_env({"JOBTRACKER_DATABASE_URL": url}))
    from worker.db import dispose_engines

    dispose_engines()
    yield name
    services.drop_database(name)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = services.unique_name("jt_test")
    url = services.create_database(name, template=pg_template)
    yield url
    from worker.db import dispose_engines

    dispose_engines()
    services.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated SQLite database file for one test."""
    from worker.db import dispose_engines
    from worker.runtime.migrate import upgrade
    from worker.settings import Settings

    url = f"sqlite:///{tmp_path / 'jobtracker.db'}"
    upgrade("head", Settings.from_env({"JOBTRACKER_DATABASE_URL": url}, cwd=tmp_path))
    yield url
    dispose_engines()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each database test runs on both backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def redis_url() -> Iterator[str]:
    services.require("Redis", services.redis_error())
    with services.redis_db() as url:
        yield url


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., object]:
    """Build Settings from an env dict (never from os.environ)."""
    from worker.settings import Settings

    def make(**env: str) -> Settings:
        return Settings.from_env(env, cwd=tmp_path)

    return make


@pytest.fixture
def sim() -> Iterator[object]:
    """The fake Tencent Cloud API on a loopback port; provider clients are dropped after."""
    from worker.devtools.simulator import Simulator
    from worker.providers.client import clear_clients

    with Simulator() as simulator:
        yield simulator
    clear_clients()
