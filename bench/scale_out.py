"""Scaling out: polls per second with one ``jobtracker run`` process, then with two.

The README's advice for more throughput is more worker processes (``jobtracker run --no-beat``
beside one ``jobtracker run``): claims are leases in the database, so they never overlap, and the
rate limit is one shared pace in Redis. This measures what a second process buys on the machine
at hand. Both phases use the same PostgreSQL database, the same Redis (broker and shared pace)
and the same fake provider (its own process, no QPS limit), over a backlog of due jobs that
succeed on their 3rd poll (``succeed-3-...``), as ``bench/throughput.py`` does:

1. one process: ``jobtracker run`` (8 threads, tick 0.2 s, poll interval 0.1 s);
2. two processes: the same, plus ``jobtracker run --no-beat`` (8 more threads) on the same
   broker, over a fresh backlog of the same size.

Both processes share one provider quota, ``JOBTRACKER_*_QPS=1000000``: set far above what two
processes can call (a few hundred calls per second here), so it never binds; every call still
takes its slot from the shared pace in Redis (at such a ceiling one reservation covers a whole
batch, see ``RatePolicy``). Each phase is timed from its first provider call (the simulator's
request counter, sampled every 10 ms) to its last ``finished_at``; its polls are ``sum(polls)``
of its rows. Besides polls/s, each phase notes the CPU the jobtracker processes and the fake
provider used, and how busy the machine's cores were (``/proc/stat``).

What bounds the ratio: a process is CPU-bound (the GIL: signing, HTTP, SQLAlchemy, one thread
at a time), so a second process can at most double the rate, and only with cores to spare. On
the 2-core development machine the jobtracker processes share both cores with the fake provider
and PostgreSQL (and whatever else runs), so the machine, not jobtracker, is saturated first: the
ratio shows how much of the second core a second process can still get. On a machine with a
core per process and the provider and database elsewhere, it would approach 2.

    .venv/bin/python bench/scale_out.py [--quick]
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import _common as c

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    polls: int
    seconds: float
    #: CPU seconds per second of the phase (1.0: one core's worth).
    tracker_cpu: float
    provider_cpu: float
    machine_busy: float

    @property
    def rate(self) -> float:
        return self.polls / self.seconds


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / TICKS_PER_S, sum(values) / TICKS_PER_S


@contextlib.contextmanager
def trackers(env: dict[str, str], count: int) -> Iterator[list[c.Tracker]]:
    """``count`` processes of ``jobtracker run`` on the same broker, beat in the first only."""
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(c.tracker(env, f"scale-out-{n}", *(["--no-beat"] if n else [])))
            for n in range(count)
        ]
        yield procs


def phase(
    db_url: str, env: dict[str, str], sim: c.SimulatorProcess, prefix: str, count: int,
    processes: int, timeout_s: float,
) -> Phase:  # fmt: skip
    """Poll a fresh backlog of ``count`` jobs with ``processes`` trackers until all are
    terminal."""
    calls_before = int(sim.counters()["total"])
    sql = (
        "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL), max(finished_at), "
        "coalesce(sum(polls), 0) FROM tracked_jobs WHERE job_id LIKE %s"
    )
    assert sim.proc is not None
    with trackers(env, processes) as procs, c.connect(db_url, autocommit=True) as conn:
        # The backlog comes once every process consumes tasks, so the phase is theirs throughout.
        for proc in procs:
            if not c.wait_for(lambda p=proc: " ready." in p.output(), 60, proc):
                raise RuntimeError(f"jobtracker run did not start:\n{proc.output()[-3000:]}")
        c.insert_jobs(db_url, prefix, count)
        c.wait_for(lambda: sim.counters()["total"] > calls_before, 60, procs[0], every_s=0.01)
        first_call = time.time()
        pids = [p.proc.pid for p in procs if p.proc is not None]
        cpu_before = [cpu_s(pid) for pid in pids], cpu_s(sim.proc.pid), machine()

        def all_finished() -> bool:
            for proc in procs[1:]:  # wait_for watches the first; any other dying fails too
                if proc.proc is not None and proc.proc.poll() is not None:
                    raise RuntimeError(f"jobtracker run exited early:\n{proc.output()[-3000:]}")
            return bool(conn.execute(sql, (prefix + "%",)).fetchone()[0] >= count)

        if not c.wait_for(all_finished, timeout_s, procs[0], every_s=0.2):
            raise RuntimeError(f"{processes} process(es) did not finish {count} jobs in time")
        cpu_after = [cpu_s(pid) for pid in pids], cpu_s(sim.proc.pid), machine()
        wall = time.time() - first_call
        _, last_finished, polls = conn.execute(sql, (prefix + "%",)).fetchone()
    assert isinstance(last_finished, datetime)
    (busy0, total0), (busy1, total1) = cpu_before[2], cpu_after[2]
    cores = (total1 - total0) / wall  # elapsed CPU time over wall time: the number of cores
    return Phase(
        polls=int(polls),
        seconds=last_finished.timestamp() - first_call,
        tracker_cpu=(sum(cpu_after[0]) - sum(cpu_before[0])) / wall,
        provider_cpu=(cpu_after[1] - cpu_before[1]) / wall,
        machine_busy=(busy1 - busy0) / (total1 - total0) * cores,
    )


def main() -> int:
    args = c.parse_args(__doc__ or "")
    count = 200 if args.quick else 3000
    timeout_s = 60.0 if args.quick else 300.0
    c.require_services()
    c.header(
        "scale-out: polls/s, one jobtracker run process vs two",
        jobs=f"{count} x succeed-3 (3 polls each) per phase, one kind, one region",
        provider="fake Tencent API in its own process, no QPS limit",
        jobtracker="JOBTRACKER_*_QPS=1e6 (shared in Redis, never binds), tick 0.2 s, "
        "poll interval 0.1 s, 8 threads per process, batch 50; the second process --no-beat",
        cores=os.cpu_count(),
    )
    with (
        c.pg_database("jt_bench_scale_out") as db_url,
        c.redis_db() as redis_url,
        c.SimulatorProcess() as sim,
    ):
        env = {
            **sim.env(),
            **c.qps_env(1_000_000),
            "JOBTRACKER_DATABASE_URL": db_url,
            "JOBTRACKER_BROKER_URL": redis_url,
            "JOBTRACKER_TICK_SECONDS": "0.2",
            "JOBTRACKER_POLL_INTERVAL_MIN": "0.1",
            "JOBTRACKER_POLL_INTERVAL_MAX": "0.1",
        }
        one = phase(db_url, env, sim, "succeed-3-one-", count, 1, timeout_s)
        two = phase(db_url, env, sim, "succeed-3-two-", count, 2, timeout_s)
    for label, run in (("one process", one), ("two processes", two)):
        c.note(
            f"{label}: {run.polls} polls in {run.seconds:.2f} s; CPU (cores' worth): "
            f"jobtracker {run.tracker_cpu:.2f}, fake provider {run.provider_cpu:.2f}, "
            f"whole machine {run.machine_busy:.2f} of {os.cpu_count()}"
        )
    c.figure("polls_per_s_one_process", one.rate, "polls/s")
    c.figure("polls_per_s_two_processes", two.rate, "polls/s")
    c.figure("ratio_two_to_one", two.rate / one.rate, "x", (">", 1.0))
    c.figure("machine_busy_cores_one_process", one.machine_busy, "cores")
    c.figure("machine_busy_cores_two_processes", two.machine_busy, "cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
