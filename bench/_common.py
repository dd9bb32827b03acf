"""What the benchmark scripts share: throwaway services, the fake provider and the real
``jobtracker run`` in subprocesses, bulk SQL enqueue, and one way to print a figure.

Every script creates and drops its own PostgreSQL database and claims a free Redis DB number
(the helpers of ``tests/services.py``), talks to loopback only, and prints each figure as one line::

    figure: NAME = VALUE UNIT  (target OP BOUND: met | MISSED)

so that a human reads it and the smoke test (``tests/integration/test_bench_smoke.py``) can check
it was printed. Scripts exit 0 when they measured everything (a missed target is a figure, not a
crash) and 2 when a service is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import operator
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The host's configuration must not leak into a benchmark (the same rule as tests/conftest.py).
for _name in list(os.environ):
    if _name.startswith(("JOBTRACKER_", "TENCENTCLOUD_")) and not _name.startswith(
        "JOBTRACKER_TEST_"
    ):
        del os.environ[_name]

from tests import services  # noqa: E402
from tests.acceptance.proc import Tracker  # noqa: E402

__all__ = ["Tracker"]

KIND = "video_face_fusion"
REGION = "ap-guangzhou"
TERMINAL = ("succeeded", "failed", "canceled", "expired")
ACTIVE = ("pending", "queued", "running")
#: A valid webhook secret (base64 of 24 bytes) shared by jobtracker and the Receiver.
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def parse_args(
    description: str, argv: list[str] | None = None, *, qps: float | None = None
) -> argparse.Namespace:
    """``--quick`` and ``--smoke`` for every script; ``--qps`` (default ``qps``) where a script
    takes one."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_size(parser)
    if qps is not None:
        parser.add_argument(
            "--qps", type=float, default=qps, help=f"jobtracker's QPS limit (default {qps:g})"
        )
    return smoke_is_quick(parser.parse_args(argv))


def add_run_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run (a few seconds), figures only"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run that still measures every figure (the test suite's smoke test); "
        "a script without a smaller size runs --quick",
    )


def smoke_is_quick(args: argparse.Namespace) -> argparse.Namespace:
    args.quick = args.quick or args.smoke
    return args


def header(title: str, **facts: Any) -> None:
    print(f"== {title}", flush=True)
    for key, value in facts.items():
        print(f"   {key}: {value}", flush=True)


def note(text: str) -> None:
    print(f"   {text}", flush=True)


def figure(
    name: str, value: float | None, unit: str = "", target: tuple[str, float] | None = None
) -> bool | None:
    """Print one figure; return whether it met its target (None: no target or no value)."""
    shown = "n/a" if value is None else f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    line = f"figure: {name} = {shown} {unit}".rstrip()
    met: bool | None = None
    if target is not None:
        op, bound = target
        if value is not None:
            met = _OPS[op](value, bound)
        verdict = "n/a" if met is None else "met" if met else "MISSED"
        line += f"  (target {op} {bound:g}: {verdict})"
    print(line, flush=True)
    return met


def size_figures(name: str, small_s: float, large_s: float, *, bound: float = 2.0) -> None:
    """A cost at the small and the large table, in ms, and their ratio against ``bound``."""
    figure(f"{name}_ms_small", small_s * 1000, "ms")
    figure(f"{name}_ms_large", large_s * 1000, "ms")
    figure(f"{name}_ratio_large_to_small", large_s / small_s, "x", ("<=", bound))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[max(0, int(q * 10) - 1)]


def require_services(*, redis: bool = True) -> None:
    """Exit 2 with a clear message when PostgreSQL (or Redis) is not reachable."""
    problems = [f"PostgreSQL: {e}" for e in [services.pg_error()] if e is not None]
    if redis:
        problems += [f"Redis: {e}" for e in [services.redis_error()] if e is not None]
    if problems:
        print("cannot run the benchmark: " + "; ".join(problems), file=sys.stderr)
        sys.exit(2)


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextlib.contextmanager
def pg_database(prefix: str = "jt_bench") -> Iterator[str]:
    """A new, migrated PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    from worker.db import dispose_engines
    from worker.runtime.migrate import upgrade
    from worker.settings import Settings

    name = services.unique_name(prefix)
    url = services.create_database(name)
    try:
        upgrade("head", Settings.from_env({"JOBTRACKER_DATABASE_URL": url}))
        yield url
    finally:
        dispose_engines()
        services.drop_database(name)


redis_db = services.redis_db


def connect(url: str, **kwargs: Any) -> Any:
    """A plain psycopg connection to ``url``."""
    import psycopg

    return psycopg.connect(libpq(url), **kwargs)


def insert_jobs(
    url: str,
    prefix: str,
    count: int,
    *,
    kind: str = KIND,
    callback_url: str | None = None,
    due_in_s: float = 0.0,
) -> None:
    """Enqueue ``count`` jobs ``prefix1..prefixN`` with plain SQL (the public SQL enqueue path)."""
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO tracked_jobs (kind, region, job_id, callback_url, next_poll_at) "
            "SELECT %s, %s, %s || g, %s, now() + make_interval(secs => %s) "
            "FROM generate_series(1, %s) AS g",
            (kind, REGION, prefix, callback_url, due_in_s, count),
        )


class SimulatorProcess:
    """The fake Tencent API (``python -m worker.devtools.simulator``) in its own process.

    Its own process, so that neither jobtracker nor the bare baseline shares a GIL with it.
    """

    def __init__(
        self, qps: float | None = None, *, limiter: str = "bucket", other_qps: float = 0.0
    ) -> None:
        self.qps = qps
        self.limiter = limiter
        self.other_qps = other_qps
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SimulatorProcess:
        args = [sys.executable, "-m", "worker.devtools.simulator", "--port", "0"]
        if self.qps is not None:
            args += ["--qps", str(self.qps), "--limiter", self.limiter]
            args += ["--other-qps", str(self.other_qps)]
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.proc.kill()
            raise RuntimeError(f"the simulator did not start (said {self.url!r})")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self) -> dict[str, str]:
        from worker.catalogue.table import PROVIDERS
        from worker.devtools.simulator import DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY

        env = {f"JOBTRACKER_{kind.upper()}_ENDPOINT": self.url for kind in PROVIDERS}
        env.update(
            {
                "TENCENTCLOUD_SECRET_ID": DEFAULT_SECRET_ID,
                "TENCENTCLOUD_SECRET_KEY": DEFAULT_SECRET_KEY,
            }
        )
        return env

    def counters(self) -> dict[str, Any]:
        from worker.devtools.simulator import COUNTERS_PATH

        with urllib.request.urlopen(self.url + COUNTERS_PATH, timeout=10) as response:
            return dict(json.load(response))


def qps_env(qps: float) -> dict[str, str]:
    from worker.catalogue.table import PROVIDERS

    return {f"JOBTRACKER_{kind.upper()}_QPS": f"{qps:g}" for kind in PROVIDERS}


@contextlib.contextmanager
def tracker(env: dict[str, str], name: str = "tracker", *args: str) -> Iterator[Tracker]:
    """The real ``jobtracker run [args]`` in a subprocess (stopped with SIGTERM, killed if
    stuck)."""
    with tempfile.TemporaryDirectory(prefix="jt-bench-") as folder:
        proc = Tracker(env, Path(folder), name).start(*args)
        try:
            yield proc
        finally:
            try:
                if proc.proc is not None and proc.proc.poll() is None:
                    proc.stop()
            except AssertionError:
                proc.kill()
            if proc.proc is not None and proc.proc.returncode not in (0, None, -15):
                print(f"   (jobtracker exited {proc.proc.returncode}; log tail follows)")
                print(proc.output()[-3000:])


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    proc: Tracker | None = None,
    every_s: float = 0.1,
) -> bool:
    """Poll ``condition`` until true (True) or for ``timeout_s`` (False); fail if ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"jobtracker run exited early:\n{proc.output()[-3000:]}")
        time.sleep(every_s)
    return False


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, in KiB (0 for a process that is gone)."""
    total = 0
    for one in [pid, *_descendants(pid)]:
        try:
            text = Path(f"/proc/{one}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found += [int(child), *_descendants(int(child))]
    return found
