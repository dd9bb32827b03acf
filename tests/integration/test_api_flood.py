"""Unauthenticated floods: a bad token costs no lookup when it is malformed or was refused
before, and an address past its budget of failed authentications gets 429 without one, while
other addresses (the client's, after the trusted-proxy rule) go on.

The server's database sits behind a proxy the test can cut: with it cut, whatever still gets
its answer was answered without a query. Requests come from several loopback addresses:
127.0.0.1 (the trusted proxy by default) and 127.0.0.2-5 (anyone else).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import services
from tests.api_server import ApiServer, free_port
from tests.integration.conftest import BASE_ENV, Api
from worker.api.guard import FAILURE_BURST
from worker.clients.credentials import new_token

OTHER = "127.0.0.2"


@pytest.fixture(scope="module")
def database(pg_template: str) -> Iterator[tuple[str, services.TcpProxy]]:
    """A PostgreSQL database, and a proxy to it that a test can cut."""
    name = services.unique_name("jt_api_flood")
    url = services.create_database(name, template=pg_template)
    proxy = services.TcpProxy("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0]))
    yield url, proxy
    proxy.cut()
    services.drop_database(name)


def start(url: str, proxy: services.TcpProxy, folder: Path, **env: str) -> Api:
    """A server on the database, through the proxy."""
    full = {
        **BASE_ENV,
        "JOBTRACKER_DATABASE_URL": proxy.url(url),
        "JOBTRACKER_METRICS_PORT": str(free_port()),
        # One more failure a minute after the burst: a budget cannot refill within the module.
        "JOBTRACKER_API_AUTH_FAILURES": "1",
        **env,
    }
    return Api(server=ApiServer(full, folder).start(), database_url=url, env=full, tmp=folder)


@pytest.fixture(scope="module")
def api(
    database: tuple[str, services.TcpProxy], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """The module's server, logging at DEBUG (the level of the refusals' access lines). Each
    test that spends a budget does it from its own address."""
    handle = start(*database, tmp_path_factory.mktemp("api-flood"), JOBTRACKER_LOG_LEVEL="DEBUG")
    try:
        yield handle
    finally:
        handle.close()
        handle.server.stop()


@pytest.fixture
def fresh_api(database: tuple[str, services.TcpProxy], tmp_path: Path) -> Iterator[Api]:
    """A server of its own, at INFO: its log and counters hold one test's requests only."""
    handle = start(*database, tmp_path)
    try:
        yield handle
    finally:
        handle.close()
        handle.server.stop()


def get(api: Api, token: str, *, source: str = "127.0.0.1", **headers: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=api.url, transport=transport, timeout=30) as client:
        return client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}", **headers})


def exhaust(api: Api, *, source: str = OTHER, **headers: str) -> None:
    """Spend a source's budget of failed authentications on distinct, well-formed tokens."""
    for _ in range(FAILURE_BURST):
        assert get(api, new_token(), source=source, **headers).status_code == 401
    limited = get(api, new_token(), source=source, **headers)
    assert limited.status_code == 429, limited.text
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "failed authentications" in limited.json()["error"]["message"]


def test_refusals_that_need_no_lookup_are_answered_with_the_database_gone(
    api: Api, database: tuple[str, services.TcpProxy]
) -> None:
    _, proxy = database
    flooding = "127.0.0.3"
    refused = new_token()
    assert get(api, refused).status_code == 401  # looked up once
    exhaust(api, source=flooding)
    proxy.cut()
    try:
        # No query can be made now; these are answered all the same.
        assert get(api, "jt_not-a-token").status_code == 401
        assert get(api, "x" * 5000).status_code == 401
        assert get(api, refused).status_code == 401
        assert get(api, refused, source=OTHER).status_code == 401
        assert get(api, new_token(), source=flooding).status_code == 429
    finally:
        proxy.restore()


def test_a_flooding_address_does_not_stop_another(fresh_api: Api) -> None:
    api = fresh_api
    client = api.new_client()
    exhaust(api)
    # The flooding address is refused whatever token it sends, valid ones included ...
    assert get(api, client.token, source=OTHER).status_code == 429
    # ... and a forwarded address from it is not believed: 127.0.0.2 is no trusted proxy.
    assert (
        get(api, new_token(), source=OTHER, **{"X-Forwarded-For": "203.0.113.7"}).status_code == 429
    )
    # Another address is served, and its own bad tokens are looked up.
    assert get(api, client.token).status_code == 200
    assert get(api, new_token()).status_code == 401
    # The flood is counted, and logged once, not once per request.
    log = api.server.output()
    assert log.count("refusing requests from 127.0.0.2 without a lookup") == 1, log
    # The access lines of refusals are DEBUG: none at this server's INFO.
    assert not [line for line in log.splitlines() if "-> 429" in line or "-> 401" in line]
    metrics = httpx.get(f"http://127.0.0.1:{api.env['JOBTRACKER_METRICS_PORT']}/metrics").text
    assert 'jobtracker_api_auth_refusals_total{reason="source_limited"} 3.0' in metrics
    assert (
        f'jobtracker_api_auth_refusals_total{{reason="unknown"}} {FAILURE_BURST + 1}.0' in metrics
    )


def test_behind_the_trusted_proxy_each_forwarded_client_has_its_own_budget(api: Api) -> None:
    client = api.new_client()
    # 127.0.0.1 is JOBTRACKER_API_TRUSTED_PROXIES' default: its X-Forwarded-For is the client.
    exhaust(api, source="127.0.0.1", **{"X-Forwarded-For": "198.51.100.1"})
    # And from 127.0.0.4, which is no trusted proxy, the same header is not believed.
    assert (
        get(api, new_token(), source="127.0.0.4", **{"X-Forwarded-For": "198.51.100.1"}).status_code
        == 401
    )
    forwarded = {"X-Forwarded-For": "198.51.100.2"}
    assert get(api, client.token, **forwarded).status_code == 200
    assert get(api, new_token(), **forwarded).status_code == 401
    assert get(api, client.token).status_code == 200  # the proxy itself is not held back
    assert get(api, client.token, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 429


def test_a_valid_token_is_never_refused_by_the_negative_cache(api: Api) -> None:
    """Only refused tokens are remembered, by hash; a client's token works from anywhere."""
    client = api.new_client()
    for source in ("127.0.0.1", OTHER):
        assert get(api, client.token, source=source).status_code == 200
    assert (
        get(api, client.token[:-1] + ("A" if client.token[-1] != "A" else "B")).status_code == 401
    )
    assert get(api, client.token).status_code == 200


def test_tokens_never_reach_the_log(api: Api) -> None:
    """Every refusal's access line is there (at DEBUG), and no token in any line."""
    client = api.new_client()
    refused = "jt_" + secrets.token_urlsafe(32)
    before = api.server.output()
    assert get(api, refused, source="127.0.0.5").status_code == 401  # looked up
    assert get(api, refused, source="127.0.0.5").status_code == 401  # refused before
    assert get(api, refused[:-1], source="127.0.0.5").status_code == 401  # malformed
    assert get(api, client.token, source="127.0.0.5").status_code == 200
    log = api.server.output()
    new_lines = log[len(before) :]
    assert new_lines.count("DEBUG worker.api.access: api GET /v1/jobs -> 401") == 1  # the route's
    assert new_lines.count("DEBUG worker.api.access: api GET /v1/* -> 401") == 2  # the Gate's
    for secret in (refused, refused[:-1], refused[3:], client.token, client.token[3:]):
        assert secret not in log
