"""The service API for the ``test_api*`` modules: one real ``jobtracker api`` subprocess per
backend and environment, shared by the modules that ask for the same one (starting one costs
seconds), over real HTTP.

Tests share the server and its database, so each one makes its own clients (unique names)
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
from worker.clients.networks import allow_network
from worker.clients.registry import add_client
from worker.db import dispose_engines, session_scope
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

    def new_client(
        self, *scopes: str, name: str | None = None, networks: tuple[str, ...] = ()
    ) -> NewClient:
        """A client; ``networks``: where an operator let its callbacks go besides public
        addresses (the receivers of these tests listen on loopback)."""
        name = name or f"svc-{uuid.uuid4().hex[:8]}"
        with session_scope(self.settings()) as session:
            issued = add_client(
                session, name, scopes or ("enqueue", "read"), master_key=MASTER_KEY.encode(),
                now=utcnow(),
            )  # fmt: skip
            for network in networks:
                allow_network(session, name, network, now=utcnow())
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


#: Loopback, where the tests' receivers listen: allowed for the clients whose callbacks they take.
LOOPBACK = ("127.0.0.0/8",)


def unique(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def api_env() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class ApiServers:
    """The running servers, one per backend and environment: modules that ask for the same
    environment share a server and its database (starting one costs seconds)."""

    def __init__(self, folder: Path, sqlite_template: Path) -> None:
        self.folder = folder
        self.sqlite_template = sqlite_template
        self.running: dict[tuple[str, tuple[tuple[str, str], ...]], ApiServer] = {}
        self.databases: dict[ApiServer, tuple[str, str | None]] = {}

    def get(
        self, backend: str, env: dict[str, str], request: pytest.FixtureRequest
    ) -> tuple[ApiServer, str]:
        key = (backend, tuple(sorted(env.items())))
        if key not in self.running:
            folder = self.folder / f"api-{len(self.running)}"
            folder.mkdir()
            pg_name = None
            if backend == "sqlite":
                path = folder / "jobtracker.db"
                services.copy_sqlite(self.sqlite_template, path)
                url = f"sqlite:///{path}"
            else:
                clones: services.TemplateClones = request.getfixturevalue("pg_clones")
                pg_name = clones.take()
                url = services.pg_url(pg_name)
            server = ApiServer({**env, "JOBTRACKER_DATABASE_URL": url}, folder).start()
            self.running[key] = server
            self.databases[server] = (url, pg_name)
        server = self.running[key]
        return server, self.databases[server][0]

    def close(self) -> None:
        for server in self.running.values():
            server.stop()
        dispose_engines()
        for _, pg_name in self.databases.values():
            if pg_name is not None:  # the clones' thread may be gone: drop it here
                services.drop_database(pg_name)


@pytest.fixture(scope="session")
def api_servers(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServers]:
    servers = ApiServers(tmp_path_factory.mktemp("api-servers"), sqlite_template)
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def api(
    api_backend: str,
    api_env: dict[str, str],
    api_servers: ApiServers,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    env = {**BASE_ENV, **api_env}
    server, database_url = api_servers.get(api_backend, env, request)
    handle = Api(
        server=server, database_url=database_url, env=env, tmp=tmp_path_factory.mktemp("api")
    )
    yield handle
    handle.close()
