"""The service API: enqueue over HTTP against ``track()`` in-process, and 1,000 held ``?wait=``.

**Enqueue.** The same PostgreSQL database and the same number of client threads (8) enqueue
fresh jobs two ways in the same run: ``worker.track()`` called in this process (the baseline:
validate, one INSERT ... ON CONFLICT, one SELECT, commit), and ``POST /v1/jobs`` to the real
``jobtracker api`` (uvicorn, in its own process) over keep-alive connections, one per thread,
which adds HTTP, the token lookup, the per-client rate check (Redis, as in production) and the
JSON bodies. Figures: requests/s, p50/p99 latency of each, and the ratio HTTP / in-process.

**Wait.** 1,000 jobs of one client; 1,000 concurrent ``GET /v1/jobs/{id}?wait=60`` held open on
1,000 connections (an asyncio client in this process). The API process's RSS is read idle and
with all 1,000 held. Then the jobs end through the one status writer (``transition_many``, which
NOTIFYs at commit), 50 per transaction, a transaction every 0.1 s (500 jobs/s, like busy poll
batches); latency = when a response arrives - when its job's commit returned, same clock.
Target: p99 <= 1 s.

    .venv/bin/python bench/api.py [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common as c
import httpx
import requests

from jobtracker.models import JobStatus, TrackedJob, utcnow
from tests.api_server import MASTER_KEY, ApiServer, free_port
from worker import track
from worker.clients.registry import add_client
from worker.db import session_scope
from worker.flow.transition import Move, transition_many
from worker.settings import Settings

THREADS = 8
BATCH = 50
BATCH_EVERY_S = 0.1


def _enqueue_in_process(settings: Any, count: int) -> tuple[float, list[float]]:
    def one(i: int) -> float:
        started = time.perf_counter()
        track(c.KIND, f"inproc-{i}-{uuid.uuid4().hex[:6]}", settings=settings)
        return time.perf_counter() - started

    return _run(one, count)


def _enqueue_over_http(url: str, token: str, count: int) -> tuple[float, list[float]]:
    local = threading.local()

    def one(i: int) -> float:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
        body = {"kind": c.KIND, "job_id": f"http-{i}-{uuid.uuid4().hex[:6]}"}
        started = time.perf_counter()
        answer = session.post(url + "/v1/jobs", json=body, timeout=30)
        elapsed = time.perf_counter() - started
        if answer.status_code != 201:
            raise RuntimeError(f"POST /v1/jobs answered {answer.status_code}: {answer.text}")
        return elapsed

    return _run(one, count)


def _run(one: Any, count: int) -> tuple[float, list[float]]:
    """``count`` calls of ``one`` on THREADS threads; (wall seconds, latencies)."""
    for i in range(THREADS):  # warm up: connections, pools, code paths
        one(-1 - i)
    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        latencies = list(pool.map(one, range(count)))
    return time.perf_counter() - started, latencies


def enqueue_figures(settings: Any, url: str, token: str, count: int) -> None:
    wall_py, lat_py = _enqueue_in_process(settings, count)
    wall_http, lat_http = _enqueue_over_http(url, token, count)
    rps_py, rps_http = count / wall_py, count / wall_http
    c.note(f"{count} enqueues each way, {THREADS} threads")
    c.figure("track_in_process_per_s", rps_py, "enqueues/s")
    c.figure("track_in_process_p50_ms", c.percentile(lat_py, 50) * 1000, "ms")
    c.figure("track_in_process_p99_ms", c.percentile(lat_py, 99) * 1000, "ms")
    c.figure("http_enqueue_per_s", rps_http, "requests/s")
    c.figure("http_enqueue_p50_ms", c.percentile(lat_http, 50) * 1000, "ms")
    c.figure("http_enqueue_p99_ms", c.percentile(lat_http, 99) * 1000, "ms")
    c.figure("ratio_http_to_in_process", rps_http / rps_py, "x")


def _waiting(metrics_url: str) -> float:
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith("jobtracker_api_waiting_requests "):
            return float(line.split()[1])
    return 0.0


async def _hold_and_finish(
    url: str, token: str, job_pks: list[int], settings: Any, pid: int, metrics_url: str
) -> tuple[dict[int, float], dict[int, float], int, int]:
    """Hold one wait per job, then end the jobs; (arrival per job, commit per job, RSS idle,
    RSS while held)."""
    arrived: dict[int, float] = {}
    statuses: dict[int, str] = {}
    limits = httpx.Limits(max_connections=len(job_pks) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=90
    ) as client:

        async def wait(pk: int) -> None:
            answer = await client.get(f"/v1/jobs/{pk}", params={"wait": 60})
            arrived[pk] = time.monotonic()
            statuses[pk] = answer.json()["job"]["status"] if answer.status_code == 200 else "?"

        rss_idle = c.rss_kib(pid)
        tasks = [asyncio.create_task(wait(pk)) for pk in job_pks]
        deadline = time.monotonic() + 120
        while await asyncio.to_thread(_waiting, metrics_url) < len(job_pks):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {_waiting(metrics_url)} requests held after 120 s")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        rss_held = c.rss_kib(pid)
        committed = await asyncio.to_thread(_finish_all, settings, job_pks)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    bad = [pk for pk, status in statuses.items() if status != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} waits answered without the terminal status")
    return arrived, committed, rss_idle, rss_held


def _finish_all(settings: Any, job_pks: list[int]) -> dict[int, float]:
    """End the jobs BATCH per transaction every BATCH_EVERY_S; when each commit returned."""
    committed: dict[int, float] = {}
    for start in range(0, len(job_pks), BATCH):
        began = time.monotonic()
        batch = job_pks[start : start + BATCH]
        with session_scope(settings) as session:
            jobs = [session.get(TrackedJob, pk) for pk in batch]
            moves = [Move(job, JobStatus.SUCCEEDED) for job in jobs if job is not None]
            transition_many(session, moves, now=utcnow())
        done = time.monotonic()
        committed.update(dict.fromkeys(batch, done))
        time.sleep(max(0.0, BATCH_EVERY_S - (done - began)))
    return committed


def wait_figures(
    settings: Any, url: str, token: str, client_id: int, count: int, pid: int, metrics: str
) -> None:
    with c.connect(settings.database_url) as conn:
        rows = conn.execute(
            "INSERT INTO tracked_jobs (kind, region, job_id, client_id, next_poll_at) "
            "SELECT %s, %s, 'wait-' || g, %s, now() + interval '1 day' "
            "FROM generate_series(1, %s) AS g RETURNING id",
            (c.KIND, c.REGION, client_id, count),
        ).fetchall()
    job_pks = [int(row[0]) for row in rows]
    arrived, committed, rss_idle, rss_held = asyncio.run(
        _hold_and_finish(url, token, job_pks, settings, pid, metrics)
    )
    latencies = [(arrived[pk] - committed[pk]) * 1000 for pk in job_pks]
    c.note(
        f"{count} waits held, then ended {BATCH} per commit every {BATCH_EVERY_S:g} s; "
        f"slowest {max(latencies):.0f} ms"
    )
    c.figure("api_rss_idle_mib", rss_idle / 1024, "MiB")
    c.figure(f"api_rss_{count}_waiting_mib", rss_held / 1024, "MiB")
    c.figure("rss_per_waiting_request_kib", (rss_held - rss_idle) / count, "KiB")
    c.figure("wait_commit_to_response_p50_ms", c.percentile(latencies, 50), "ms")
    c.figure("wait_commit_to_response_p99_ms", c.percentile(latencies, 99), "ms", ("<=", 1000))


def main() -> int:
    args = c.parse_args(__doc__ or "")
    enqueues = 300 if args.quick else 4000
    waits = 100 if args.quick else 1000
    c.require_services()
    c.header(
        "api: enqueue over HTTP vs track() in-process; held ?wait= requests",
        enqueue=f"{enqueues} fresh jobs each way, {THREADS} threads, keep-alive, PostgreSQL",
        wait=f"{waits} concurrent GET ?wait=60, jobs ended {BATCH} per commit",
        server="jobtracker api (uvicorn + uvloop + httptools), its own process, Redis broker",
    )
    metrics_port = free_port()
    with (
        c.pg_database("jt_bench_api") as db_url,
        c.redis_db() as redis_url,
        tempfile.TemporaryDirectory(prefix="jt-bench-api-") as folder,
    ):
        env = {
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_BROKER_URL": redis_url,
            "JOBTRACKER_CLIENT_SECRET_KEY": MASTER_KEY,
            # The rate limit is checked on every request (a Redis round trip), but never hit.
            "JOBTRACKER_API_RATE": "1000000",
            "JOBTRACKER_API_BURST": "1000000",
            "JOBTRACKER_METRICS_PORT": str(metrics_port),
        }
        settings = Settings.from_env(env)
        with session_scope(settings) as session:
            issued = add_client(
                session, "bench", ["enqueue", "read"], master_key=MASTER_KEY.encode(), now=utcnow()
            )
            client_id, token = issued.client.id, issued.token
        assert token is not None
        server = ApiServer(env, Path(folder), "api-bench").start()
        try:
            assert server.proc is not None
            enqueue_figures(settings, server.url, token, enqueues)
            wait_figures(
                settings,
                server.url,
                token,
                client_id,
                waits,
                server.proc.pid,
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
