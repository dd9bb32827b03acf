"""The simulator as a server: gateway checks, QPS limit, counters, and the standalone CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from worker.devtools.simulator import COUNTERS_PATH, Simulator
from worker.devtools.simulator.signing import HttpRequest, authorization
from worker.errors import ProviderConfigError, ThrottledError
from worker.providers.client import clear_clients, get_client
from worker.settings import Settings

SECRET_ID = "AKIDservertest000000000000000001"
SECRET_KEY = "server-test-secret-key-1"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(secret_id=SECRET_ID, secret_key=SECRET_KEY) as simulator:
        yield simulator
    clear_clients()


def post(
    sim: Simulator,
    *,
    action: str = "DescribeImageAnimateJob",
    version: str = "2024-05-23",
    service: str = "vclm",
    body: bytes = b'{"JobId": "succeed-1-x"}',
    signed_body: bytes | None = None,
    language: str | None = "en-US",
) -> dict[str, Any]:
    """A request signed with the simulator's own signer (independent of the SDK)."""
    host = sim.url.removeprefix("http://")
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "host": host,
        "x-tc-action": action,
        "x-tc-version": version,
        "x-tc-region": "ap-guangzhou",
        "x-tc-timestamp": str(timestamp),
    }
    if language:
        headers["x-tc-language"] = language
    to_sign = HttpRequest("POST", "/", "", headers, body if signed_body is None else signed_body)
    headers["authorization"] = authorization(
        to_sign, secret_id=SECRET_ID, secret_key=SECRET_KEY, service=service, timestamp=timestamp
    )
    response = requests.post(sim.url + "/", data=body, headers=headers, timeout=5)
    assert response.status_code == 200
    payload: dict[str, Any] = response.json()["Response"]
    assert payload["RequestId"]
    return payload


def test_a_well_signed_request_is_answered(sim: Simulator) -> None:
    assert post(sim)["Status"] == "DONE"


def test_gateway_errors(sim: Simulator) -> None:
    assert post(sim, action="DescribeNothing")["Error"]["Code"] == "InvalidAction"
    assert post(sim, version="2020-01-01")["Error"]["Code"] == "NoSuchVersion"
    assert post(sim, service="facefusion")["Error"]["Code"] == "AuthFailure.SignatureFailure"
    tampered = post(sim, body=b'{"JobId": "fail-1-x"}', signed_body=b'{"JobId": "succeed-1-x"}')
    assert tampered["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert post(sim, body=b"{}")["Error"]["Code"] == "MissingParameter"
    assert sim.counters().auth_failures == 2


def test_messages_are_zh_cn_unless_en_us_is_asked(sim: Simulator) -> None:
    assert post(sim, action="X", language=None)["Error"]["Message"].startswith("[zh-CN]")
    assert not post(sim, action="X")["Error"]["Message"].startswith("[zh-CN]")


def test_qps_limit_and_counters(sim: Simulator, tmp_path: Path) -> None:
    sim.qps = 2
    settings = Settings.from_env(sim.env(), cwd=tmp_path)
    client = get_client("video_face_fusion", "ap-guangzhou", settings)
    throttled = 0
    for i in range(6):
        try:
            client.query(f"succeed-1-{i}")
        except ThrottledError:
            throttled += 1
    assert throttled >= 1  # a bucket of 2, refilled at 2/s: a burst of 6 cannot all pass
    counters = sim.counters()
    assert counters.total == 6
    assert counters.throttled == throttled
    assert sum(counters.polls.values()) == 6 - throttled

    served = requests.get(sim.url + COUNTERS_PATH, timeout=5).json()
    assert served["throttled"] == throttled and served["total"] == 6

    sim.reset()
    assert sim.counters().total == 0 and sim.counters().polls == {}


def test_limit_is_per_action(sim: Simulator, tmp_path: Path) -> None:
    sim.qps = 1
    settings = Settings.from_env(sim.env(), cwd=tmp_path)
    get_client("video_face_fusion", "ap-guangzhou", settings).query("succeed-1-a")
    get_client("image_animate", "ap-guangzhou", settings).query("succeed-1-a")
    assert sim.counters().throttled == 0


def test_standalone_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "worker.devtools.simulator", "--port", "0", "--qps", "50"]
    command += ["--secret-id", SECRET_ID, "--secret-key", SECRET_KEY]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        env = {
            "JOBTRACKER_IMAGE_ANIMATE_ENDPOINT": url,
            "TENCENTCLOUD_SECRET_ID": SECRET_ID,
            "TENCENTCLOUD_SECRET_KEY": SECRET_KEY,
        }
        settings = Settings.from_env(env, cwd=tmp_path)
        assert get_client("image_animate", "ap-guangzhou", settings).query("succeed-1-x").result
        wrong = Settings.from_env({**env, "TENCENTCLOUD_SECRET_KEY": "nope"}, cwd=tmp_path)
        with pytest.raises(ProviderConfigError):
            get_client("image_animate", "ap-guangzhou", wrong).query("succeed-1-x")
        counters = json.loads(requests.get(url + COUNTERS_PATH, timeout=5).text)
        assert counters["polls"] == {"succeed-1-x": 1} and counters["auth_failures"] == 1
    finally:
        clear_clients()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
