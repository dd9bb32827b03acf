"""Operating the service API: the per-client rate limit (429 + Retry-After) and its fallback when
Redis is away, request metrics on the Prometheus endpoint, readiness against the schema, and
refusing to start unmigrated."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import services
from tests.api_server import ApiServer, free_port
from tests.integration.conftest import BASE_ENV, Api
from worker.db import dispose_engines
from worker.runtime.migrate import downgrade
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api_env(api_backend: str) -> dict[str, str]:
    """A server of its own (a low rate, a metrics port), per backend."""
    return {
        "JOBTRACKER_API_RATE": "2",
        "JOBTRACKER_API_BURST": "3",
        "JOBTRACKER_METRICS_PORT": str(free_port()),
    }


def test_each_client_is_held_to_its_rate_with_retry_after(api: Api) -> None:
    greedy, calm = api.new_client(), api.new_client()
    http = api.http(greedy.token)
    answers = [http.get("/v1/jobs") for _ in range(6)]
    statuses = [a.status_code for a in answers]
    # The burst of 3 goes through; then about 2 per second.
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    # Another client is not held back by the greedy one.
    assert api.http(calm.token).get("/v1/jobs").status_code == 200
    # After Retry-After, the greedy one may go on.
    time.sleep(int(limited.headers["Retry-After"]))
    assert http.get("/v1/jobs").status_code == 200


def scrape(api: Api) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    port = api.env["JOBTRACKER_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def test_requests_are_counted_by_route_and_status(api: Api) -> None:
    def requests(route: str, status: str) -> float:
        labels = (("method", "GET"), ("route", route), ("status", status))
        return samples.get(("jobtracker_api_requests_total", labels), 0.0)

    # The server serves the whole module: count what these requests add.
    _, samples = scrape(api)
    before = {key: requests(*key) for key in [("/v1/jobs/{id}", "404"), ("/v1/*", "401")]}
    refusals = samples.get(("jobtracker_api_auth_refusals_total", (("reason", "no_token"),)), 0.0)
    client = api.new_client()
    api.http(client.token).get("/v1/jobs/123456789")
    api.http().get("/v1/jobs")
    text, samples = scrape(api)
    assert {key: requests(*key) - n for key, n in before.items()} == {
        ("/v1/jobs/{id}", "404"): 1,
        # Refused for its token before routing (worker/api/guard.py), under one route label.
        ("/v1/*", "401"): 1,
    }
    assert (
        samples[("jobtracker_api_auth_refusals_total", (("reason", "no_token"),))] - refusals == 1
    )
    assert 'jobtracker_api_request_duration_seconds_bucket{le="0.005",method="GET"' in text
    assert "jobtracker_api_waiting_requests 0.0" in text
    # The same registry as the worker's: the database gauges are there too.
    assert "jobtracker_database_up 1.0" in text


def compose_healthcheck(port: int) -> int:
    """Run docker-compose.yml's healthcheck of the api service against ``port``."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["api"]["healthcheck"]["test"]
    assert command[:2] == ["CMD", "python"]
    script = command[-1].replace(":8080/", f":{port}/")
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=30
    ).returncode


def test_readyz_fails_when_the_schema_is_behind(sqlite_url: str, tmp_path: Path) -> None:
    server = ApiServer({**BASE_ENV, "JOBTRACKER_DATABASE_URL": sqlite_url}, tmp_path).start()
    try:
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert compose_healthcheck(server.port) == 0
        downgrade("0001", Settings.from_env({"JOBTRACKER_DATABASE_URL": sqlite_url}))
        dispose_engines()
        assert compose_healthcheck(server.port) != 0
        answer = httpx.get(server.url + "/readyz")
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "not_ready"
        assert "revision 0001" in answer.json()["error"]["message"]
        assert httpx.get(server.url + "/healthz").status_code == 200  # the process is up
    finally:
        server.stop()


def test_the_api_refuses_to_start_on_an_unmigrated_shared_database(tmp_path: Path) -> None:
    services.require("PostgreSQL", services.pg_error())
    name = services.unique_name("jt_api_empty")
    url = services.create_database(name)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "worker", "api", "--port", str(free_port())],
            env={"PATH": "/usr/bin:/bin", "JOBTRACKER_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    finally:
        services.drop_database(name)
    assert done.returncode == 2
    assert "run `jobtracker db upgrade`" in done.stderr


def metric(port: str, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not served"
    return float(found.group(1))


def test_with_redis_away_each_process_gates_on_its_own_until_redis_answers(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Redis (the API's only use of it: the shared rate gate) goes away: requests are still
    answered and still rate-limited, per process; /readyz stays ready; it is logged once and
    counted; when Redis answers again, the shared gate is back."""
    host_port, _, db_number = redis_url.removeprefix("redis://").rpartition("/")
    host, _, port = host_port.partition(":")
    proxy = services.TcpProxy(host, int(port))
    metrics_port = str(free_port())
    env = {
        **BASE_ENV,
        "JOBTRACKER_DATABASE_URL": sqlite_url,
        "JOBTRACKER_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/{db_number}",
        "JOBTRACKER_API_RATE": "1",
        "JOBTRACKER_API_BURST": "4",
        "JOBTRACKER_METRICS_PORT": metrics_port,
    }
    server = ApiServer(env, tmp_path).start()
    store = redis.Redis.from_url(redis_url)
    try:
        api = Api(server=server, database_url=sqlite_url, env=env, tmp=tmp_path)
        client = api.new_client()
        http = api.http(client.token)
        pace = f"jobtracker:pace:api-client:{client.id}"
        assert http.get("/v1/jobs").status_code == 200
        assert store.exists(pace)  # the shared gate holds the client
        store.delete(pace)

        proxy.cut()
        statuses = [http.get("/v1/jobs").status_code for _ in range(6)]
        # Still gated (its burst of 4 from this process), never a 500.
        assert statuses[:4] == [200] * 4 and set(statuses[4:]) == {429}, statuses
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert metric(metrics_port, "jobtracker_api_rate_gate_fallbacks_total") == 1
        assert metric(metrics_port, "jobtracker_api_rate_gate_local") == 1
        assert not store.exists(pace)

        proxy.restore()
        deadline = time.monotonic() + 15
        while not store.exists(pace):  # a request tries Redis again within PROBE_EVERY_S
            assert time.monotonic() < deadline, "the shared gate did not come back"
            assert http.get("/v1/jobs").status_code in (200, 429)
            time.sleep(0.2)
        assert metric(metrics_port, "jobtracker_api_rate_gate_local") == 0
        assert metric(metrics_port, "jobtracker_api_rate_gate_fallbacks_total") == 1
    finally:
        server.stop()
        proxy.cut()
        store.close()
    log = server.output()
    assert log.count("the shared API rate gate (Redis) does not answer") == 1, log
    assert log.count("(Redis) answers again") == 1
    assert " 500" not in log and "Traceback" not in log
