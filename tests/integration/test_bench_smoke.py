"""Every benchmark script runs with ``--quick`` and prints its figures (no timing is asserted:
the figures depend on the machine; this only keeps the scripts from rotting), each within its
plausible band where it has one (:data:`BANDS`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import services

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench"
FIGURE = re.compile(r"^figure: (\w+) = (\S+)", re.MULTILINE)

#: script -> the figures it must print (a number, not n/a)
SCRIPTS = {
    "throughput.py": {
        "bare_loop_polls_per_s",
        "jobtracker_polls_per_s",
        "ratio_jobtracker_to_bare",
    },
    "rate.py": {
        "strict20_calls_per_s",
        "strict20_throttled_percent",
        "configured50_calls_per_s",
        "configured50_throttled_percent",
        "shared_quota_calls_per_s",
        "shared_quota_throttled_percent",
        "shared_quota_jobs_finished",
    },
    "adaptive.py": {
        *(
            f"{name}_{figure}"
            for name in ("lognormal_sigma03", "lognormal_sigma10", "bimodal", "pareto", "drift")
            for figure in ("ratio_to_fixed", "calls_per_job", "latency_s", "missed")
        ),
        "e2e_calls_per_job",
        "e2e_latency_s",
        "e2e_ratio_to_fixed",
    },
    "tick_cost.py": {
        "claim_due_ms_small",
        "claim_due_ms_large",
        "claim_due_ratio_large_to_small",
        "claim_all_ms_small",
        "claim_all_ms_large",
        "claim_all_ratio_large_to_small",
    },
    "worker_rss.py": {"rss_mib_small", "rss_mib_large", "rss_ratio_large_to_small"},
    "scale.py": {
        *(
            f"{name}_{what}"
            for name in ("claim", "scrape", "stats")
            for what in ("ms_small", "ms_large", "ratio_large_to_small")
        ),
        "prune_rows_per_s",
        "prune_jobs_per_s",
        "polls_per_s_alone",
        "polls_per_s_during_prune",
        "poll_ratio_during_prune",
        "db_mib_before_prune",
        "db_mib_after_prune",
        "db_mib_after_vacuum",
    },
    "api.py": {
        "track_in_process_per_s",
        "track_in_process_p50_ms",
        "track_in_process_p99_ms",
        "http_enqueue_per_s",
        "http_enqueue_p50_ms",
        "http_enqueue_p99_ms",
        "ratio_http_to_in_process",
        "api_rss_idle_mib",
        "api_rss_100_waiting_mib",
        "rss_per_waiting_request_kib",
        "wait_commit_to_response_p50_ms",
        "wait_commit_to_response_p99_ms",
    },
    "webhook_latency.py": {
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "deliveries_per_s",
    },
    "auth_flood.py": {
        "legit_p50_ms_alone",
        "legit_p99_ms_alone",
        "legit_p50_ms_flood",
        "legit_p99_ms_flood",
        "legit_p99_ratio_flood_to_alone",
        "flood_per_s",
        "flood_refused_percent",
        "flood_token_lookups",
        "api_cpu_percent_alone",
        "api_cpu_percent_flood",
    },
}

#: Where a figure has one: the (lowest, highest) plausible value on any machine. Not a target: a
#: figure out of its band means the script, or what it measures, is broken.
BANDS: dict[str, tuple[float, float]] = {
    **dict.fromkeys(
        ["legit_p50_ms_alone", "legit_p99_ms_alone", "legit_p50_ms_flood", "legit_p99_ms_flood"],
        (0.1, 10_000.0),
    ),
    "legit_p99_ratio_flood_to_alone": (0.1, 100.0),
    # The flood is paced at 1,000 requests/s; far below it, the flood client starved.
    "flood_per_s": (200.0, 1_100.0),
    # Every flood request is refused (a 401 or a 429), none answered otherwise.
    "flood_refused_percent": (100.0, 100.0),
    # The address's burst of failed authentications (20), then one a second: never one per
    # request (the flood sends thousands).
    "flood_token_lookups": (1.0, 200.0),
    **dict.fromkeys(["api_cpu_percent_alone", "api_cpu_percent_flood"], (0.1, 200.0)),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bench_script_prints_its_figures(script: str) -> None:
    services.require("PostgreSQL", services.pg_error())
    services.require("Redis", services.redis_error())
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JOBTRACKER_", "TENCENTCLOUD_")) or k.startswith("JOBTRACKER_TEST_")
    }
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    figures = dict(FIGURE.findall(done.stdout))
    assert SCRIPTS[script] <= set(figures), f"{script} printed only {sorted(figures)}"
    missing = [name for name in SCRIPTS[script] if figures[name] == "n/a"]
    assert not missing, f"{script} measured nothing for {missing}:\n{done.stdout}"
    implausible = [
        f"{name} = {figures[name]}, not in {BANDS[name]}"
        for name in SCRIPTS[script] & set(BANDS)
        if not BANDS[name][0] <= float(figures[name]) <= BANDS[name][1]
    ]
    assert not implausible, f"{script}: {implausible}\n{done.stdout}"
    assert "(target" in done.stdout, f"{script} printed no target"
