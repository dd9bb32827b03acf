"""The service API for the ``test_api*`` modules: one real ``jobtracker api`` subprocess per
module and backend (starting one per test would cost seconds each), over real HTTP.

Tests share the module's server and database, so each one makes its own clients (unique names)
and its own JobIds; nothing depends on what another test left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobtracker.models import utcnow
from tests import services
from tests.api_server import MASTER_KEY, ApiServer
from worker.clients.registry import add_client
from worker.db import dispose_engines, session_scope
from worker.runtime.migrate import upgrade
from worker.settings import Settings

#: What every test server gets; a module may add to it with an ``api_env`` fixture.
BASE_ENV = {
    "JOBTRACKER_CLIENT_SECRET_KEY": MASTER_KEY,
    "JOBTRACKER_API_RATE": "1000",
    "JOBTRACKER_API_BURST": "1000",
    "JOBTRACKER_LOG_LEVEL": "INFO",
}


@dataclass(frozen=True)
class NewClient:
    id: int
    name: str
    token: str
    secret: str


@dataclass
class Api:
    """A running server, its database, and helpers to call it."""

    server: ApiServer
    database_url: str
    env: dict[str, str]
    tmp: Path
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def settings(self, **env: str) -> Settings:
        """Settings of the test process on the same database (plus ``env``)."""
        return Settings.from_env(
            {**self.env, "JOBTRACKER_DATABASE_URL": self.database_url, **env}, cwd=self.tmp
        )

    def new_client(self, *scopes: str, name: str | None = None) -> NewClient:
        name = name or f"svc-{uuid.uuid4().hex[:8]}"
        with session_scope(self.settings()) as session:
            issued = add_client(
                session, name, scopes or ("enqueue", "read"), master_key=MASTER_KEY.encode(),
                now=utcnow(),
            )  # fmt: skip
            assert issued.token and issued.webhook_secret
            return NewClient(issued.client.id, name, issued.token, issued.webhook_secret)

    def http(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=90, **kwargs)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()


def unique(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def api_env() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("api-sqlite")
        url = f"sqlite:///{folder / 'jobtracker.db'}"
        upgrade("head", Settings.from_env({"JOBTRACKER_DATABASE_URL": url}, cwd=folder))
        yield url
        dispose_engines()
        return
    clones: services.TemplateClones = request.getfixturevalue("pg_clones")
    name = clones.take()
    yield services.pg_url(name)
    dispose_engines()
    clones.give_back(name)


@pytest.fixture(scope="module")
def api(
    api_database: str, api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("api")
    env = {**BASE_ENV, **api_env}
    server = ApiServer({**env, "JOBTRACKER_DATABASE_URL": api_database}, folder).start()
    handle = Api(server=server, database_url=api_database, env=env, tmp=folder)
    try:
        yield handle
    finally:
        handle.close()
        server.stop()
