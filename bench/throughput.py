"""Polls per second: the real ``jobtracker run`` against a bare sequential loop, same run.

2,000 jobs that succeed on their 3rd poll (``succeed-3-...``), PostgreSQL + Redis, the fake
provider without a QPS limit (its own process), jobtracker's own QPS limit set very high and its
poll interval small. The baseline is the simplest correct poller: one process, for each job the
SDK call (the official ``CommonClient.call_json``, keep-alive on, en-US), one UPDATE and a
commit, until every job is terminal. For reference, the same loop is also run with jobtracker's
own provider client (the SDK's signing over a pooled session that skips per-call proxy lookups),
a stricter baseline that shares jobtracker's client savings; it has no target.

jobtracker is measured from its first provider call (the simulator's request counter, sampled
every 10 ms) to the last ``finished_at`` in the database; its polls are ``sum(polls)`` of its rows.
Target: jobtracker >= bare SDK loop (ratio >= 1.0).

    .venv/bin/python bench/throughput.py [--quick]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import _common as c


def sdk_query(sim: c.SimulatorProcess) -> Callable[[str], Any]:
    """One query through the official SDK client, normalized like jobtracker does."""
    from urllib.parse import urlsplit

    from tencentcloud.common.common_client import CommonClient
    from tencentcloud.common.credential import Credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile

    from worker.catalogue.table import PROVIDERS
    from worker.providers.normalize import normalize

    env = sim.env()
    spec = PROVIDERS[c.KIND]
    endpoint = urlsplit(env[f"JOBTRACKER_{c.KIND.upper()}_ENDPOINT"])
    profile = ClientProfile(
        httpProfile=HttpProfile(protocol=endpoint.scheme, endpoint=endpoint.netloc, keepAlive=True),
        language="en-US",
    )
    credential = Credential(env["TENCENTCLOUD_SECRET_ID"], env["TENCENTCLOUD_SECRET_KEY"])
    client = CommonClient(spec.service, spec.version, credential, c.REGION, profile)

    def query(job_id: str) -> Any:
        body = client.call_json(spec.action, {"JobId": job_id})
        return normalize(spec, body, now=datetime.now(UTC))

    return query


def client_query(db_url: str, sim: c.SimulatorProcess) -> Callable[[str], Any]:
    """One query through jobtracker's own provider client."""
    from worker.providers.client import get_client
    from worker.settings import Settings

    settings = Settings.from_env({**sim.env(), "JOBTRACKER_DATABASE_URL": db_url})
    return get_client(c.KIND, c.REGION, settings).query


def bare_loop(db_url: str, prefix: str, query: Callable[[str], Any]) -> tuple[int, float]:
    """Poll every job of ``prefix`` sequentially until all are terminal; return (polls, seconds)."""
    from psycopg.types.json import Jsonb

    from worker.providers.client import clear_clients

    polls = 0
    with c.connect(db_url) as conn:
        active = conn.execute(
            "SELECT id, job_id FROM tracked_jobs WHERE job_id LIKE %s ORDER BY id",
            (prefix + "%",),
        ).fetchall()
        conn.commit()
        started = time.perf_counter()
        while active:
            still = []
            for row_id, job_id in active:
                answer = query(job_id)
                polls += 1
                done = answer.status.is_terminal
                conn.execute(
                    "UPDATE tracked_jobs SET status = %s, provider_status = %s, "
                    "polls = polls + 1, last_polled_at = now(), updated_at = now(), "
                    "result = %s, finished_at = CASE WHEN %s THEN now() END WHERE id = %s",
                    (
                        answer.status.value,
                        answer.provider_status,
                        Jsonb(answer.result) if answer.result is not None else None,
                        done,
                        row_id,
                    ),
                )
                conn.commit()
                if not done:
                    still.append((row_id, job_id))
            active = still
        elapsed = time.perf_counter() - started
    clear_clients()
    return polls, elapsed


def jobtracker_run(
    db_url: str, redis_url: str, sim: c.SimulatorProcess, prefix: str, count: int, timeout_s: float
) -> tuple[int, float, int]:
    """Run ``jobtracker run`` until ``prefix``'s jobs are terminal: (polls, seconds, calls)."""
    env = {
        **sim.env(),
        **c.qps_env(1_000_000),
        "JOBTRACKER_DATABASE_URL": db_url,
        "JOBTRACKER_BROKER_URL": redis_url,
        "JOBTRACKER_TICK_SECONDS": "0.2",
        "JOBTRACKER_POLL_INTERVAL_MIN": "0.1",
        "JOBTRACKER_POLL_INTERVAL_MAX": "0.1",
    }
    calls_before = int(sim.counters()["total"])
    c.insert_jobs(db_url, prefix, count)
    sql = (
        "SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'canceled', 'expired')), "
        "max(finished_at), coalesce(sum(polls), 0) FROM tracked_jobs WHERE job_id LIKE %s"
    )
    with c.tracker(env, "throughput") as proc, c.connect(db_url, autocommit=True) as conn:
        c.wait_for(lambda: sim.counters()["total"] > calls_before, 60, proc, every_s=0.01)
        first_call = time.time()

        def all_terminal() -> bool:
            return bool(conn.execute(sql, (prefix + "%",)).fetchone()[0] >= count)

        if not c.wait_for(all_terminal, timeout_s, proc, every_s=0.2):
            raise RuntimeError(f"jobtracker did not finish {count} jobs in {timeout_s:g} s")
        _, last_finished, polls = conn.execute(sql, (prefix + "%",)).fetchone()
    calls = int(sim.counters()["total"]) - calls_before
    assert isinstance(last_finished, datetime)
    return int(polls), last_finished.timestamp() - first_call, calls


def main() -> int:
    args = c.parse_args(__doc__ or "")
    count = 200 if args.quick else 2000
    timeout_s = 60.0 if args.quick else 300.0
    c.require_services()
    c.header(
        "throughput: polls/s, jobtracker run vs a bare sequential loop",
        jobs=f"{count} x succeed-3 (3 polls each), one kind, one region",
        provider="fake Tencent API in its own process, no QPS limit",
        jobtracker="JOBTRACKER_*_QPS=1e6, tick 0.2 s, poll interval 0.1 s, 8 threads, batch 50",
        baseline="one process: SDK call_json + UPDATE + commit per poll",
    )
    with (
        c.pg_database("jt_bench_tp") as db_url,
        c.redis_db() as redis_url,
        c.SimulatorProcess() as sim,
    ):
        c.insert_jobs(db_url, "succeed-3-sdk-", count)
        sdk_polls, sdk_s = bare_loop(db_url, "succeed-3-sdk-", sdk_query(sim))
        c.note(f"bare SDK loop: {sdk_polls} polls in {sdk_s:.2f} s")
        c.insert_jobs(db_url, "succeed-3-own-", count)
        own_polls, own_s = bare_loop(db_url, "succeed-3-own-", client_query(db_url, sim))
        c.note(f"bare loop with jobtracker's client: {own_polls} polls in {own_s:.2f} s")
        jt_polls, jt_s, calls = jobtracker_run(
            db_url, redis_url, sim, "succeed-3-jt-", count, timeout_s
        )
        c.note(
            f"jobtracker run: {jt_polls} polls ({calls} provider calls) in {jt_s:.2f} s "
            "(first call -> last finished_at)"
        )
    sdk_rate = sdk_polls / sdk_s
    own_rate = own_polls / own_s
    jt_rate = jt_polls / jt_s
    c.figure("bare_loop_polls_per_s", sdk_rate, "polls/s")
    c.figure("bare_loop_own_client_polls_per_s", own_rate, "polls/s")
    c.figure("jobtracker_polls_per_s", jt_rate, "polls/s")
    c.figure("ratio_jobtracker_to_bare", jt_rate / sdk_rate, "x", (">=", 1.0))
    c.figure("ratio_jobtracker_to_bare_own_client", jt_rate / own_rate, "x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
