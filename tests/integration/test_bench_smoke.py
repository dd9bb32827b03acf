"""Every benchmark script runs with ``--smoke`` (its smallest run that still measures each
figure) and prints its figures, each within a wide band of what is plausible on any machine: no
target is asserted (the figures depend on the machine), but a figure that is missing, not a
number, or absurd (a negative rate, a ratio off by orders of magnitude, a percentage past 100)
means the script, or what it measures, is broken."""

from __future__ import annotations

import math
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

#: (lowest, highest) plausible value, both included.
Band = tuple[float, float]
RATIO: Band = (0.1, 10.0)  # one thing against another on the same machine, in the same run
#: Two costs of a few milliseconds each (medians of 15 at --smoke size): on a machine busy with
#: other work one can come out several times the other whatever the table sizes.
COST_RATIO: Band = (0.02, 50.0)
PERCENT: Band = (0.0, 100.0)
MS: Band = (0.01, 10_000.0)  # one operation on loopback, PostgreSQL on this machine
MIB: Band = (10.0, 4_000.0)  # a Python process or a small database
PER_S: Band = (5.0, 1_000_000.0)  # anything counted per second here is at least that fast

#: script -> the figures it must print, each with its plausible band
SCRIPTS: dict[str, dict[str, Band]] = {
    "throughput.py": {
        "bare_loop_polls_per_s": PER_S,
        "bare_loop_own_client_polls_per_s": PER_S,
        "jobtracker_polls_per_s": PER_S,
        "ratio_jobtracker_to_bare": RATIO,
        "ratio_jobtracker_to_bare_own_client": RATIO,
    },
    "rate.py": {
        # The provider refuses the 21st call of any 1-second window; jobtracker paces itself at
        # 20 (or 50) calls/s, so calls/s stay below the configured rate plus what is refused.
        "strict20_calls_per_s": (5.0, 25.0),
        "strict20_throttled_percent": (0.0, 25.0),
        "configured50_calls_per_s": (5.0, 55.0),
        "configured50_throttled_percent": PERCENT,
        "shared_quota_calls_per_s": (3.0, 25.0),
        "shared_quota_throttled_percent": PERCENT,
        "shared_quota_jobs_finished": (60.0, 60.0),  # every job of the --smoke run
    },
    "adaptive.py": {
        **{
            f"{name}_{figure}": band
            for name in ("lognormal_sigma03", "lognormal_sigma10", "bimodal", "pareto", "drift")
            for figure, band in (
                ("ratio_to_fixed", RATIO),
                ("calls_per_job", (1.0, 30.0)),  # at least the call that saw the end
                ("backoff_calls_per_job", (1.0, 30.0)),
                ("latency_s", (0.0, 300.0)),
                ("missed", (0.0, 0.0)),
            )
        },
        "e2e_calls_per_job": (1.0, 30.0),
        "e2e_latency_s": (0.0, 120.0),
        "e2e_write_after_poll_s": (0.0, 10.0),
        "e2e_ratio_to_fixed": RATIO,
    },
    "tick_cost.py": {
        **{
            f"{name}_ms_{size}": MS
            for name in ("claim_due", "claim_all")
            for size in ("small", "large")
        },
        "claim_due_ratio_large_to_small": COST_RATIO,
        "claim_all_ratio_large_to_small": COST_RATIO,
    },
    "worker_rss.py": {
        "rss_mib_small": MIB,
        "rss_mib_large": MIB,
        "rss_ratio_large_to_small": RATIO,
    },
    "scale.py": {
        **{
            f"{name}_{what}": band
            for name in ("claim", "scrape", "stats")
            for what, band in (
                ("ms_small", MS),
                ("ms_large", MS),
                ("ratio_large_to_small", COST_RATIO),
            )
        },
        "prune_rows_per_s": PER_S,
        "prune_jobs_per_s": PER_S,
        "polls_per_s_alone": PER_S,
        "polls_per_s_during_prune": PER_S,
        "poll_ratio_during_prune": RATIO,
        "db_mib_before_prune": MIB,
        "db_mib_after_prune": MIB,
        "db_mib_after_vacuum": MIB,
    },
    "api.py": {
        "track_in_process_per_s": PER_S,
        "track_in_process_p50_ms": MS,
        "track_in_process_p99_ms": MS,
        "http_enqueue_per_s": PER_S,
        "http_enqueue_p50_ms": MS,
        "http_enqueue_p99_ms": MS,
        "ratio_http_to_in_process": RATIO,
        "api_rss_idle_mib": MIB,
        "api_rss_100_waiting_mib": MIB,
        "rss_per_waiting_request_kib": (0.0, 5_000.0),
        "wait_commit_to_response_p50_ms": MS,
        "wait_commit_to_response_p99_ms": MS,
    },
    "scale_out.py": {
        "polls_per_s_one_process": PER_S,
        "polls_per_s_two_processes": PER_S,
        "ratio_two_to_one": RATIO,
        # Cores of the whole machine in use (2 here; a bigger CI machine has more).
        "machine_busy_cores_one_process": (0.05, 256.0),
        "machine_busy_cores_two_processes": (0.05, 256.0),
    },
    "auth_flood.py": {
        **dict.fromkeys(
            [
                "legit_p50_ms_alone",
                "legit_p99_ms_alone",
                "legit_p50_ms_flood",
                "legit_p99_ms_flood",
            ],
            MS,
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
    },
    "webhook_latency.py": {
        "latency_p50_ms": MS,
        "latency_p99_ms": MS,
        "latency_max_ms": MS,
        # The provider's 20 calls/s paces the jobs, so their callbacks too.
        "deliveries_per_s": (1.0, 100.0),
    },
    "delivery_isolation.py": {
        "healthy_latency_p50_ms": MS,
        "healthy_latency_p99_ms": MS,
        "healthy_latency_max_ms": MS,
        "healthy_latency_p99_ms_large_backlog": MS,
        # Of the 20 dark receivers (none at --smoke size: 5 timeouts take over a minute).
        "breakers_open": (0.0, 20.0),
        "rss_mib_small_backlog": MIB,
        "rss_mib_large_backlog": MIB,
        # One process's RSS against itself with a larger backlog: either way, a few MiB.
        "rss_growth_mib": (-100.0, 100.0),
    },
}


def implausible(figures: dict[str, float], bands: dict[str, Band]) -> list[str]:
    """What is wrong with the figures: out of band, or a percentile below a lower one."""
    wrong = [
        f"{name} = {figures[name]:g}, not in [{low:g}, {high:g}]"
        for name, (low, high) in bands.items()
        if not low <= figures[name] <= high
    ]
    for name, value in figures.items():
        lower = name.replace("_p99_", "_p50_")
        if "_p99_" in name and lower in figures and value < figures[lower]:
            wrong.append(f"{name} = {value:g} is below {lower} = {figures[lower]:g}")
    return wrong


def test_the_plausibility_check_refuses_what_is_off() -> None:
    bands = {"a_per_s": PER_S, "b_p50_ms": MS, "b_p99_ms": MS}
    assert implausible({"a_per_s": 20.0, "b_p50_ms": 3.0, "b_p99_ms": 9.0}, bands) == []
    assert len(implausible({"a_per_s": -1.0, "b_p50_ms": 3.0, "b_p99_ms": 2.0}, bands)) == 2
    assert implausible({"a_per_s": math.nan, "b_p50_ms": 3.0, "b_p99_ms": 3.0}, bands)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bench_script_prints_plausible_figures(script: str) -> None:
    services.require("PostgreSQL", services.pg_error())
    services.require("Redis", services.redis_error())
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JOBTRACKER_", "TENCENTCLOUD_")) or k.startswith("JOBTRACKER_TEST_")
    }
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    printed = dict(FIGURE.findall(done.stdout))
    assert set(SCRIPTS[script]) <= set(printed), f"{script} printed only {sorted(printed)}"
    missing = [name for name in SCRIPTS[script] if printed[name] == "n/a"]
    assert not missing, f"{script} measured nothing for {missing}:\n{done.stdout}"
    assert "(target" in done.stdout, f"{script} printed no target"
    figures = {name: float(value) for name, value in printed.items() if value != "n/a"}
    wrong = implausible(figures, SCRIPTS[script])
    assert not wrong, f"{script}: implausible figures {wrong}:\n{done.stdout}"
