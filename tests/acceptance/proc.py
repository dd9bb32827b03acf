"""The real ``jobtracker run`` in a subprocess, for acceptance tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from worker.db import dispose_engines, make_engine
from worker.flow.enqueue import track
from worker.runtime.migrate import ensure_schema
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class Tracker:
    """``jobtracker run`` with a given environment; its output goes to ``log_path``."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str = "tracker") -> None:
        self.env = {**os.environ, **env}
        # The code of this tree, even when another checkout is the one installed in the venv
        # (a benchmark run from a copy, a second worktree).
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), self.env.get("PYTHONPATH", "")) if p
        )
        self.cwd = cwd
        self.log_path = cwd / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> Tracker:
        """Start ``jobtracker run`` with ``args`` (``--no-beat``...)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", *args],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def children(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> float:
        """Send ``sig``; return how long the process took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"jobtracker run did not exit within {timeout} s of {sig.name}"
            ) from None
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_until(condition: Callable[[], bool], timeout: float, what: str, tracker: Tracker) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if tracker.proc is not None and tracker.proc.poll() is not None:
            raise AssertionError(f"jobtracker run exited early:\n{tracker.output()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{tracker.output()[-4000:]}")


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def enqueue_cli(env: dict[str, str], cwd: Path, kind: str, job_id: str, *extra: str) -> None:
    """``jobtracker enqueue`` in its own process, as a user types it next to a running tracker."""
    result = subprocess.run(
        [sys.executable, "-m", "worker", "enqueue", kind, job_id, *extra],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def enqueue(
    env: dict[str, str],
    cwd: Path,
    jobs: list[str],
    *,
    callback_url: str | None = None,
    kind: str | None = None,
    cli: int = 0,
) -> None:
    """Enqueue ``jobs`` (of ``kind``, else kinds alternating), the first ``cli`` through
    ``jobtracker enqueue`` in a subprocess and the rest through ``track()`` in this process: the
    tracker is the subject here, and each subprocess costs an interpreter's start (the CLI has
    its own tests)."""
    settings = Settings.from_env(env, cwd=cwd)
    ensure_schema(settings)  # the embedded SQLite file, as `jobtracker run` would
    extra = ("--callback-url", callback_url) if callback_url else ()
    for n, job_id in enumerate(jobs):
        this_kind = kind or ("video_face_fusion" if n % 2 else "image_animate")
        if n < cli:
            enqueue_cli(env, cwd, this_kind, job_id, *extra)
        else:
            track(this_kind, job_id, callback_url=callback_url, settings=settings)
    dispose_engines()
