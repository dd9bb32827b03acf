"""Adaptive polling: provider calls per job against mean detection latency.

Part 1, the policies alone (pure, no I/O, no clock): jobs of one kind arrive one after another
with durations drawn from

- lognormal, median 20 s, sigma 0.3 and sigma 1.0;
- bimodal: half about 10 s, half about 120 s;
- heavy-tailed: Pareto, alpha 1.5, from 5 s;
- drift: lognormal (20 s, 0.3), every duration x3 from the middle of the run on.

For each: today's backoff (first poll at enqueue, then 5 s x1.5 up to 300 s), fixed intervals
(first poll at enqueue, then every D; a sweep of D) and the adaptive schedule (the product's
code: worker.adaptive, learning online from its own polls exactly as a worker does: the newest
400 finished jobs, half-life 80, a new plan every 25 finishes; backoff for the first 30 jobs;
gaps jittered by 10 %). Each policy is counted the same way: every call, the first included;
detection latency is the poll that saw the finish minus the finish. The adaptive figures leave
out the warm-up (first 200 jobs; for drift, the second half only, where the change came). Its
ratio is against fixed intervals *at the same mean latency* (the fixed curve interpolated).

Part 2, end to end: the real ``jobtracker run`` (PostgreSQL, Redis, default settings) against the
fake provider in its own process, with jobs whose durations are lognormal (20 s, 0.3) and real
(the simulator's ``at-SUBMIT-DURATION`` lifecycle): a warm-up cohort, then a measured one.
Calls per job come from the simulator's poll counts; latency is the terminal poll (``finished_at``:
when the end was seen) minus the true finish, as in part 1; how long the answer's write took
after that poll (``updated_at``) is printed beside it. The fixed-interval baseline is computed
on the same durations.

Targets: lognormal sigma 0.3 <= 0.5 x fixed at equal latency (end to end); every other
distribution <= 1.0 x, and no missed terminal state.

    .venv/bin/python bench/adaptive.py [--quick | --smoke] [--png PATH]

The PNG (trade-off curves) needs matplotlib: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import _common as c

from worker.adaptive.distribution import Observation, estimate
from worker.adaptive.planner import Plan, plan
from worker.policy import AdaptivePolicy, PollPolicy, jitter

FIXED_SWEEP_S = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 60, 80, 120, 160, 240)
SECONDS_PER_CALL = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
DEFAULT_SPC = AdaptivePolicy().seconds_per_call
WARM_UP_JOBS = 200
REPLAN_EVERY = 25


@dataclass(frozen=True)
class Point:
    calls: float
    latency_s: float


Durations = Callable[[random.Random, int, int], float]


def lognormal(median: float, sigma: float) -> Durations:
    return lambda rng, i, n: math.exp(math.log(median) + sigma * rng.gauss(0, 1))


def bimodal(rng: random.Random, i: int, n: int) -> float:
    return (10.0 if rng.random() < 0.5 else 120.0) * math.exp(0.1 * rng.gauss(0, 1))


def pareto(rng: random.Random, i: int, n: int) -> float:
    return 5.0 * (1.0 - rng.random()) ** (-1 / 1.5)


def drift(rng: random.Random, i: int, n: int) -> float:
    return lognormal(20, 0.3)(rng, i, n) * (3.0 if i >= n // 2 else 1.0)


DISTRIBUTIONS: dict[str, Durations] = {
    "lognormal_sigma03": lognormal(20, 0.3),
    "lognormal_sigma10": lognormal(20, 1.0),
    "bimodal": bimodal,
    "pareto": pareto,
    "drift": drift,
}


def fixed(durations: Sequence[float], every_s: float) -> Point:
    calls = sum(math.ceil(t / every_s) + 1 for t in durations)
    late = sum(math.ceil(t / every_s) * every_s - t for t in durations)
    return Point(calls / len(durations), late / len(durations))


def backoff(durations: Sequence[float], rng: random.Random) -> Point:
    policy = PollPolicy(min_s=5.0, max_s=300.0)
    calls = late = 0.0
    for t in durations:
        at, n = 0.0, 1  # the first poll at enqueue
        while at < t:
            at += policy.next_delay(n, rand=rng.random)
            n += 1
        calls, late = calls + n, late + at - t
    return Point(calls / len(durations), late / len(durations))


def adaptive(
    durations: Sequence[float], rng: random.Random, spc: float, measured: range
) -> tuple[Point, int]:
    """The product's schedule, learning online; returns the measured jobs' point and how many
    of all jobs were never seen finished (must be 0)."""
    policy = AdaptivePolicy(seconds_per_call=spc)
    backoff_policy = PollPolicy(min_s=policy.min_s, max_s=policy.max_s, start_s=5.0)
    learned: list[Observation] = []
    current: Plan | None = None
    calls = late = 0.0
    missed = 0
    for i, t in enumerate(durations):
        seen, at, n = 0.0, 0.0, 0
        if current is not None:
            at = current.first_age()
        while True:
            n += 1
            if at >= t:
                break
            seen = at
            age = current.next_age(seen) if current is not None else None
            gap = (
                max(policy.min_s, min(policy.max_s, jitter(age - seen, policy.jitter, rng.random)))
                if age is not None
                else backoff_policy.next_delay(n, rand=rng.random)
            )
            at = seen + gap
            if at > 86400:  # the default deadline: a missed terminal state
                missed += 1
                break
        if i in measured:
            calls, late = calls + n, late + at - t
        learned.append(Observation(seen, at))
        if len(learned) >= policy.min_samples and (i + 1) % REPLAN_EVERY == 0:
            newest = learned[-policy.window :][::-1]
            weighted = [
                Observation(o.after_s, o.by_s, 0.5 ** (k / policy.half_life))
                for k, o in enumerate(newest)
            ]
            current = plan(
                estimate(weighted),
                latency_cost_s=spc,
                min_gap_s=policy.min_s,
                max_gap_s=policy.max_s,
            )
    return Point(calls / len(measured), late / len(measured)), missed


def fixed_calls_at(curve: Sequence[Point], latency_s: float) -> float | None:
    """The fixed-interval calls at this mean latency (linear between the sweep's points)."""
    points = sorted(curve, key=lambda p: p.latency_s)
    for a, b in itertools.pairwise(points):
        if a.latency_s <= latency_s <= b.latency_s:
            f = (latency_s - a.latency_s) / (b.latency_s - a.latency_s)
            return a.calls + (b.calls - a.calls) * f
    return None


def part_one(
    jobs: int, seed: int, seconds_per_call: Sequence[float] = SECONDS_PER_CALL
) -> dict[str, tuple[list[Point], list[Point], Point]]:
    c.header(
        "adaptive, part 1: the policies alone",
        jobs=f"{jobs} per distribution; adaptive measured after a warm-up of {WARM_UP_JOBS}",
        fixed=f"first poll at enqueue, then every D for D in {FIXED_SWEEP_S[0]:g}..."
        f"{FIXED_SWEEP_S[-1]:g} s",
        adaptive=f"seconds per call in {', '.join(f'{s:g}' for s in seconds_per_call)} "
        f"(default {DEFAULT_SPC:g})",
    )
    curves: dict[str, tuple[list[Point], list[Point], Point]] = {}
    for name, draw in DISTRIBUTIONS.items():
        rng = random.Random(seed)
        durations = [draw(rng, i, jobs) for i in range(jobs)]
        measured = range(jobs // 2 if name == "drift" else WARM_UP_JOBS, jobs)
        tail = [durations[i] for i in measured]
        sweep = [fixed(tail, d) for d in FIXED_SWEEP_S]
        old = backoff(tail, random.Random(seed))
        c.note(f"{name}: backoff {old.calls:.2f} calls at {old.latency_s:.1f} s latency")
        points = []
        for spc in seconds_per_call:
            point, missed = adaptive(durations, random.Random(seed), spc, measured)
            points.append(point)
            base = fixed_calls_at(sweep, point.latency_s)
            ratio = None if base is None else point.calls / base
            c.note(
                f"{name}: adaptive ({spc:g} s per call) {point.calls:.2f} calls at "
                f"{point.latency_s:.1f} s; fixed at that latency "
                f"{'n/a' if base is None else f'{base:.2f}'} calls; missed {missed}"
            )
            if spc == DEFAULT_SPC:
                target = 0.5 if name == "lognormal_sigma03" else 1.0
                c.figure(f"{name}_ratio_to_fixed", ratio, "x", ("<=", target))
                c.figure(f"{name}_calls_per_job", point.calls, "calls")
                c.figure(f"{name}_latency_s", point.latency_s, "s")
                c.figure(f"{name}_backoff_calls_per_job", old.calls, "calls")
                c.figure(f"{name}_missed", missed, "jobs", ("<=", 0))
        curves[name] = (sweep, points, old)
    return curves


def draw_png(curves: dict[str, tuple[list[Point], list[Point], Point]], path: Path) -> None:
    try:
        import matplotlib  # optional: the `bench` extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        c.note("no matplotlib (pip install -e '.[bench]'): no PNG")
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6), sharey=False)
    for ax, (name, (sweep, points, old)) in zip(axes, curves.items(), strict=True):
        ax.plot([p.latency_s for p in sweep], [p.calls for p in sweep], "o-", ms=3,
                label="fixed interval")  # fmt: skip
        ax.plot([p.latency_s for p in points], [p.calls for p in points], "s-", ms=4,
                label="adaptive")  # fmt: skip
        ax.plot([old.latency_s], [old.calls], "k^", label="old backoff")
        ax.set_title(name)
        ax.set_xlabel("mean detection latency (s)")
        ax.set_xlim(0, max(40, old.latency_s * 1.2))
        ax.set_ylim(0, 8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("provider calls per job")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    c.note(f"curves written to {path}")


def part_two(warm_up: int, measured: int) -> None:
    c.header(
        "adaptive, part 2: end to end",
        jobs=f"lognormal (median 20 s, sigma 0.3): {warm_up} to warm up, then {measured} measured",
        tracker="jobtracker run, PostgreSQL + Redis, default poll settings",
        provider="fake Tencent API in its own process, at-SUBMIT-DURATION jobs",
    )
    from worker.flow.enqueue import track  # the bench's own process enqueues
    from worker.settings import Settings

    rng = random.Random(7)
    with (
        c.pg_database("jt_bench_adaptive") as db_url,
        c.redis_db() as redis_url,
        c.SimulatorProcess() as sim,
    ):
        env = {**sim.env(), "JOBTRACKER_DATABASE_URL": db_url, "JOBTRACKER_BROKER_URL": redis_url}
        settings = Settings.from_env(env)
        truth: dict[str, float] = {}

        def cohort(name: str, count: int, spread_s: float) -> list[str]:
            ids = []
            for n in range(count):
                duration = lognormal(20, 0.3)(rng, n, count)
                submitted = time.time()
                job_id = f"at-{int(submitted * 1000)}-{int(duration * 1000)}-{name}{n}"
                track("video_face_fusion", job_id, settings=settings)
                truth[job_id] = submitted + duration
                ids.append(job_id)
                time.sleep(spread_s / count)
            return ids

        def all_finished(ids: list[str]) -> Callable[[], bool]:
            def check() -> bool:
                with c.connect(db_url) as conn:
                    (left,) = conn.execute(
                        "SELECT count(*) FROM tracked_jobs WHERE job_id = ANY(%s) "
                        "AND finished_at IS NULL",
                        (ids,),
                    ).fetchone()
                return bool(left == 0)

            return check

        with c.tracker(env, "adaptive") as proc:
            first = cohort("warm", warm_up, warm_up / 4)
            c.wait_for(all_finished(first), 300, proc)
            time.sleep(2)  # the workers' learned plans refresh within a minute of finishes
            ids = cohort("measured", measured, measured / 4)
            c.wait_for(all_finished(ids), 300, proc)
            polls = sim.counters()["polls"]
        with c.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT job_id, extract(epoch FROM finished_at), "
                "extract(epoch FROM updated_at), status FROM tracked_jobs WHERE job_id = ANY(%s)",
                (ids,),
            ).fetchall()
    # Detection latency: the poll that saw the finish (finished_at) minus the finish, as in
    # part 1; the write of that answer (updated_at, the commit the callback follows) is later.
    late = [float(seen) - truth[job_id] for job_id, seen, _, _ in rows]
    written = [float(done) - float(seen) for _, seen, done, _ in rows]
    calls = [polls.get(job_id, 0) for job_id in ids]
    point = Point(sum(calls) / len(calls), sum(late) / len(late))
    durations = [truth[j] - float(j.split("-")[1]) / 1000 for j in ids]
    base = fixed_calls_at([fixed(durations, d) for d in FIXED_SWEEP_S], point.latency_s)
    c.note(
        f"measured: {len(rows)} jobs, {sum(s == 'succeeded' for *_, s in rows)} succeeded; "
        f"fixed intervals at {point.latency_s:.1f} s latency: "
        f"{'n/a' if base is None else f'{base:.2f}'} calls per job"
    )
    c.figure("e2e_calls_per_job", point.calls, "calls")
    c.figure("e2e_latency_s", point.latency_s, "s")
    c.figure("e2e_write_after_poll_s", sum(written) / len(written), "s")
    c.figure("e2e_ratio_to_fixed", None if base is None else point.calls / base, "x", ("<=", 0.5))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    c.add_run_size(parser)
    parser.add_argument("--png", type=Path, default=None, help="write the curves here")
    parser.add_argument("--seed", type=int, default=1)
    args = c.smoke_is_quick(parser.parse_args())
    # --smoke: the figures are those of the default seconds per call, so the curve's other
    # points (most of part 1's time) are left out.
    curves = part_one(
        400 if args.quick else 3000,
        args.seed,
        (DEFAULT_SPC,) if args.smoke else SECONDS_PER_CALL,
    )
    if args.png is not None:
        draw_png(curves, args.png)
    c.require_services()
    part_two(*((30, 20) if args.quick else (150, 200)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
