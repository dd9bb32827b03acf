"""Shared fixtures: a clean environment, throwaway databases on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import services


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--phase",
        choices=("parallel", "serial"),
        help="only the tests that may share the machine (parallel), or only those marked "
        "serial; scripts/test runs both, one after the other",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    phase = config.getoption("--phase")
    if phase is None:
        return
    serial = phase == "serial"
    keep = [item for item in items if (item.get_closest_marker("serial") is not None) == serial]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skip fails: a missing service already does (``services.require``), and
    any other skip would hide a behaviour that nobody tested."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if services.IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where a skip hides what was not tested: {reason}"


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


@pytest.fixture(scope="session")
def pg_clones(pg_template: str) -> Iterator[services.TemplateClones]:
    clones = services.TemplateClones(pg_template)
    yield clones
    clones.close()


@pytest.fixture
def pg_url(pg_clones: services.TemplateClones) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = pg_clones.take()
    yield services.pg_url(name)
    from worker.db import dispose_engines

    dispose_engines()
    pg_clones.give_back(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database file migrated once; tests get a copy (the same trick as pg_template)."""
    from worker.db import dispose_engines
    from worker.runtime.migrate import upgrade
    from worker.settings import Settings

    folder = tmp_path_factory.mktemp("sqlite-template")
    path = folder / "jobtracker.db"
    upgrade("head", Settings.from_env({"JOBTRACKER_DATABASE_URL": f"sqlite:///{path}"}))
    dispose_engines()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated SQLite database file for one test."""
    from worker.db import dispose_engines

    path = tmp_path / "jobtracker.db"
    services.copy_sqlite(sqlite_template, path)
    yield f"sqlite:///{path}"
    dispose_engines()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each database test runs on both backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_db_url(
    request: pytest.FixtureRequest, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated database per module and backend, for tests that leave it as they found it
    (each rolls back what it writes): a database per test would cost more than the test."""
    from worker.db import dispose_engines

    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("module-sqlite") / "jobtracker.db"
        services.copy_sqlite(sqlite_template, path)
        yield f"sqlite:///{path}"
        dispose_engines()
        return
    clones: services.TemplateClones = request.getfixturevalue("pg_clones")
    name = clones.take()
    yield services.pg_url(name)
    dispose_engines()
    clones.give_back(name)


@pytest.fixture
def redis_url() -> Iterator[str]:
    services.require("Redis", services.redis_error())
    with services.redis_db() as url:
        yield url


@pytest.fixture
def advance_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move the tracker's clock (``worker.clock.now``, the database's time every lease, due time
    and deadline is compared with) forward, as if that many seconds had passed: a test of what
    happens once a lease or a deadline runs out need not wait for it."""
    from datetime import timedelta

    from worker import clock

    real_now = clock.now
    ahead = [timedelta(0)]
    monkeypatch.setattr(clock, "now", lambda settings: real_now(settings) + ahead[0])

    def advance(seconds: float) -> None:
        ahead[0] += timedelta(seconds=seconds)

    return advance


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
