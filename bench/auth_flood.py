"""The service API under a flood of bad tokens: what it costs a legitimate client.

One legitimate client on 127.0.0.1 reads its job (``GET /v1/jobs/{id}``: the token lookup, the
rate gate in Redis, the job's detail from PostgreSQL) 50 times a second, one request at a time,
first alone, then while another process floods the same server from 127.0.0.2 with 1,000
requests a second, each with a fresh, well-formed, unknown token (the worst kind: every one of
them would be worth a lookup). Both speak HTTP/1.1 over keep-alive connections with a minimal
client, so that the client's own cost stays out of the figures.

Figures: the legitimate client's p50 and p99 latency alone and under the flood, their ratio
(target: p99 under the flood <= 2x alone), the flood's achieved rate, how it was answered, and
how many token lookups it cost the server (from its metrics).

    .venv/bin/python bench/auth_flood.py [--quick]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common as c
import httpx

from jobtracker.models import utcnow
from tests.api_server import MASTER_KEY, ApiServer, free_port
from worker.clients.registry import add_client
from worker.db import session_scope
from worker.settings import Settings

LEGIT_SOURCE = "127.0.0.1"
FLOOD_SOURCE = "127.0.0.2"
LEGIT_PER_S = 50.0
FLOOD_PER_S = 1000.0
#: Connections the flood keeps open (each paced to its share of the rate).
FLOOD_CONNECTIONS = 20


class Http:
    """One keep-alive HTTP/1.1 connection from ``source``; just enough of the protocol."""

    def __init__(self, port: int, source: str) -> None:
        self.port = port
        self.source = source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, token: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port, local_addr=(self.source, 0)
            )
        assert self.reader is not None
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        await self.reader.readexactly(int(length.group(1)) if length else 0)
        if re.search(rb"(?i)\r\nconnection: *close", head):
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _paced(
    port: int, source: str, path: str, tokens: Any, per_s: float, seconds: float
) -> tuple[list[float], Counter[int]]:
    """Requests one at a time on one connection at ``per_s``; (latencies in s, statuses)."""
    http = Http(port, source)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    start = time.perf_counter()
    sent = 0
    try:
        while (now := time.perf_counter()) - start < seconds:
            due = start + sent / per_s
            if due > now:
                await asyncio.sleep(due - now)
            sent += 1
            began = time.perf_counter()
            try:
                statuses[await http.get(path, next(tokens))] += 1
            except (OSError, asyncio.IncompleteReadError):
                statuses[0] += 1  # refused or reset: counted, and a new connection next time
                http.close()
            latencies.append(time.perf_counter() - began)
    finally:
        http.close()
    return latencies, statuses


def _fresh_tokens() -> Any:
    while True:
        yield "jt_" + secrets.token_urlsafe(32)


def _flood(port: int, seconds: float, results: Any) -> None:
    """The flood, in its own process: FLOOD_PER_S requests/s on FLOOD_CONNECTIONS connections."""

    async def run() -> Counter[int]:
        share = FLOOD_PER_S / FLOOD_CONNECTIONS
        done = await asyncio.gather(
            *(
                _paced(port, FLOOD_SOURCE, "/v1/jobs/1", _fresh_tokens(), share, seconds)
                for _ in range(FLOOD_CONNECTIONS)
            )
        )
        total: Counter[int] = Counter()
        for _, statuses in done:
            total += statuses
        return total

    results.put(dict(asyncio.run(run())))


def _legit(port: int, path: str, token: str, seconds: float) -> list[float]:
    def tokens() -> Any:
        while True:
            yield token

    latencies, statuses = asyncio.run(
        _paced(port, LEGIT_SOURCE, path, tokens(), LEGIT_PER_S, seconds)
    )
    if set(statuses) != {200}:
        raise RuntimeError(f"the legitimate client was answered {dict(statuses)}")
    return latencies


def _lookups(metrics_url: str) -> float | None:
    """Token lookups that found nothing so far (None: a server that does not count them)."""
    text = httpx.get(metrics_url, timeout=10).text
    if "jobtracker_api_auth_refusals_total" not in text:
        return None
    found = re.search(
        r'^jobtracker_api_auth_refusals_total\{reason="unknown"\} (\S+)$', text, re.MULTILINE
    )
    return float(found.group(1)) if found else 0.0


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, pid: int, path: str, token: str, seconds: float, metrics_url: str) -> None:
    _legit(port, path, token, 2.0)  # warm up: connections, pools, code paths
    cpu_start, wall_start = _cpu_s(pid), time.perf_counter()
    alone = _legit(port, path, token, seconds)
    cpu_alone = (_cpu_s(pid) - cpu_start) / (time.perf_counter() - wall_start)
    lookups_before = _lookups(metrics_url)
    results: Any = multiprocessing.Queue()
    flood = multiprocessing.Process(target=_flood, args=(port, seconds + 2.0, results))
    started = time.perf_counter()
    flood.start()
    time.sleep(1.0)  # the flood is on, and past its first lookups
    cpu_start, wall_start = _cpu_s(pid), time.perf_counter()
    under = _legit(port, path, token, seconds)
    cpu_under = (_cpu_s(pid) - cpu_start) / (time.perf_counter() - wall_start)
    statuses: dict[int, int] = results.get(timeout=seconds + 60)
    flood_s = time.perf_counter() - started
    flood.join(timeout=30)
    lookups_after = _lookups(metrics_url)
    answered = sum(n for status, n in statuses.items() if status)
    c.note(
        f"{len(alone)} and {len(under)} legitimate requests; the flood was answered "
        + ", ".join(f"{status or 'reset'}: {n}" for status, n in sorted(statuses.items()))
    )
    p99_alone = c.percentile(alone, 99) * 1000
    p99_under = c.percentile(under, 99) * 1000
    c.figure("legit_p50_ms_alone", c.percentile(alone, 50) * 1000, "ms")
    c.figure("legit_p99_ms_alone", p99_alone, "ms")
    c.figure("legit_p50_ms_flood", c.percentile(under, 50) * 1000, "ms")
    c.figure("legit_p99_ms_flood", p99_under, "ms")
    c.figure("legit_p99_ratio_flood_to_alone", p99_under / p99_alone, "x", ("<=", 2.0))
    c.figure("flood_per_s", answered / flood_s, "requests/s")
    c.figure("api_cpu_percent_alone", 100 * cpu_alone, "% of a core")
    c.figure("api_cpu_percent_flood", 100 * cpu_under, "% of a core")
    refused = sum(statuses.get(s, 0) for s in (401, 429))
    c.figure("flood_refused_percent", 100.0 * refused / max(1, sum(statuses.values())), "%")
    lookups = (
        None if lookups_before is None or lookups_after is None else lookups_after - lookups_before
    )
    c.figure("flood_token_lookups", lookups, "lookups")


def main() -> int:
    args = c.parse_args(__doc__ or "")
    seconds = 4.0 if args.quick else 20.0
    c.require_services()
    c.header(
        "auth_flood: a legitimate client's latency under a flood of bad tokens",
        legit=f"{LEGIT_PER_S:g} GET /v1/jobs/{{id}} per s from {LEGIT_SOURCE}, {seconds:g} s",
        flood=f"{FLOOD_PER_S:g} requests/s from {FLOOD_SOURCE}, fresh well-formed unknown tokens",
        server="jobtracker api (uvicorn + uvloop + httptools), its own process, PostgreSQL, "
        "Redis broker",
    )
    metrics_port = free_port()
    with (
        c.pg_database("jt_bench_flood") as db_url,
        c.redis_db() as redis_url,
        tempfile.TemporaryDirectory(prefix="jt-bench-flood-") as folder,
    ):
        env = {
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_BROKER_URL": redis_url,
            "JOBTRACKER_CLIENT_SECRET_KEY": MASTER_KEY,
            # The legitimate client's own rate is checked (a Redis round trip) but never hit.
            "JOBTRACKER_API_RATE": "1000",
            "JOBTRACKER_API_BURST": "1000",
            "JOBTRACKER_METRICS_PORT": str(metrics_port),
        }
        settings = Settings.from_env(env)
        with session_scope(settings) as session:
            issued = add_client(
                session, "bench", ["enqueue", "read"], master_key=MASTER_KEY.encode(), now=utcnow()
            )
            token = issued.token
        assert token is not None
        server = ApiServer(env, Path(folder), "api-flood").start()
        try:
            job = httpx.post(
                server.url + "/v1/jobs",
                json={"kind": c.KIND, "job_id": "flood-bench-1"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).json()
            assert server.proc is not None
            measure(
                server.port,
                server.proc.pid,
                f"/v1/jobs/{job['id']}",
                token,
                seconds,
                f"http://127.0.0.1:{metrics_port}/metrics",
            )
        finally:
            code = server.stop()
            if code not in (0, -15):
                print(f"   (jobtracker api exited {code}; log tail follows)")
                print(server.output()[-3000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
