"""``jobtracker demo``: the whole flow on one machine, with no credentials and no server.

It starts the fake Tencent API (:class:`~worker.devtools.simulator.Simulator`, real HTTP on
loopback, TC3 signatures checked), a webhook :class:`~worker.devtools.receiver.Receiver` that
verifies every callback's Standard Webhooks signature with a secret made up for this run, and the
real ``jobtracker run`` in a subprocess (SQLite file + embedded broker). It enqueues jobs whose
JobIds script their lifecycles (see :mod:`worker.devtools.simulator.lifecycle`), shows their
statuses and callbacks as they change, and ends with a summary once every job is terminal and
every callback arrived. The database is kept, so the run can be inspected afterwards with
``jobtracker jobs``, ``show``, ``deliveries``, ``stats`` or plain SQL.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.engine import make_url

from jobtracker.models import TrackedJob
from worker.catalogue.table import PROVIDERS
from worker.cli.tables import table
from worker.db import session_scope
from worker.devtools.receiver import ReceivedMessage, Receiver
from worker.devtools.simulator import Simulator
from worker.errors import ConfigError
from worker.flow.enqueue import track
from worker.runtime.migrate import ensure_schema
from worker.settings import Settings, redact_url

#: The demo database, in the working directory unless ``--database-url`` is given.
DEFAULT_DB_FILE = "jobtracker-demo.db"
LOG_FILE = "jobtracker-demo.log"
#: A job still active this long after enqueue becomes ``expired``: the ``expired`` lifecycle.
DEADLINE_S = 20
#: How long the simulator's ``slow`` answers take.
SLOW_S = 1.5


@dataclass(frozen=True)
class Lifecycle:
    label: str
    #: JobId prefix in the simulator's grammar; a unique tail is appended.
    prefix: str
    expected: str
    story: str


LIFECYCLES = (
    Lifecycle("success", "succeed-3", "succeeded", "queued, running, then done"),
    Lifecycle("failure", "fail-3", "failed", "queued, running, then a failed status"),
    Lifecycle("not found", "notfound", "failed", "JobNotExist, terminal after the grace period"),
    Lifecycle("throttled", "throttle-2", "succeeded", "RequestLimitExceeded twice, then done"),
    Lifecycle("slow", "slow-2", "succeeded", f"two answers taking {SLOW_S:g} s, then done"),
    Lifecycle("canceled", "cancel-2", "canceled", "queued, then JobHasBeenCanceled"),
    Lifecycle("expired", "internal", "expired", f"InternalError until the {DEADLINE_S} s deadline"),
)


@dataclass
class DemoJob:
    lifecycle: Lifecycle
    kind: str
    job_id: str
    id: int = 0
    status: str = "pending"
    polls: int = 0
    error_code: str | None = None
    #: Requests the receiver got for this job's callback: (answer status, verified).
    requests: list[tuple[int, bool]] = field(default_factory=list)
    webhook_id: str | None = None
    event: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed", "canceled", "expired")

    @property
    def delivered(self) -> bool:
        return any(200 <= status < 300 and verified for status, verified in self.requests)

    @property
    def ok(self) -> bool:
        return self.status == self.lifecycle.expected and self.delivered

    def callback_text(self) -> str:
        if not self.requests:
            return "-"
        answers = ", ".join(str(status) for status, _ in self.requests)
        verified = all(v for _, v in self.requests)
        return f"{self.event} [{answers}]" + (" signature ok" if verified else " UNVERIFIED")


def new_webhook_secret() -> str:
    """A fresh ``whsec_`` secret (24 random bytes), known to the tracker and the receiver only."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Demo:
    def __init__(
        self,
        *,
        database_url: str | None,
        timeout_s: float,
        cwd: Path,
        out: TextIO,
        live: bool | None = None,
    ) -> None:
        self.cwd = cwd
        self.out = out
        self.timeout_s = timeout_s
        self.live = out.isatty() if live is None else live
        self.own_db = database_url is None
        self.db_path = cwd / DEFAULT_DB_FILE
        self.database_url = database_url or f"sqlite:///{self.db_path}"
        self.log_path = cwd / LOG_FILE
        self.tag = "demo" + secrets.token_hex(3)
        self.jobs: list[DemoJob] = [
            DemoJob(lc, kind, f"{lc.prefix}-{self.tag}") for kind in PROVIDERS for lc in LIFECYCLES
        ]
        self.started = time.monotonic()
        self._drawn_lines = 0
        #: The live view's most recent events.
        self._events: list[str] = []
        #: Why the run ended before every job was done, if it did.
        self.stopped_early: str | None = None

    # -- output ----------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def event(self, text: str) -> None:
        """A change, as one line (plain mode) or into the live view's recent events."""
        line = f"{time.monotonic() - self.started:6.1f}s  {text}"
        if self.live:
            self._events.append(line)
            del self._events[:-8]
        else:
            self.say(line)

    def draw(self) -> None:
        """Redraw the live view in place (TTY only)."""
        if not self.live:
            return
        done = sum(j.terminal for j in self.jobs)
        text = "\n".join(
            [
                self.status_table(),
                "",
                f"{done}/{len(self.jobs)} terminal, "
                f"{sum(j.delivered for j in self.jobs)} callbacks delivered, "
                f"{time.monotonic() - self.started:.0f} s",
                "",
                *self._events,
            ]
        )
        # Lines cut to the terminal's width: a wrapped line would break the cursor arithmetic.
        width = shutil.get_terminal_size().columns
        lines = [line[:width] for line in text.splitlines()]
        if self._drawn_lines:
            self.out.write(f"\x1b[{self._drawn_lines}F\x1b[J")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn_lines = len(lines)

    def status_table(self) -> str:
        return table(
            ["ID", "LIFECYCLE", "KIND", "JOB_ID", "STATUS", "POLLS", "CALLBACK"],
            [
                [j.id, j.lifecycle.label, j.kind, j.job_id, j.status, j.polls, j.callback_text()]
                for j in self.jobs
            ],
        )

    # -- the run ---------------------------------------------------------------------------

    def env(self, sim_env: dict[str, str], secret: str, broker_dir: Path) -> dict[str, str]:
        """The tracker's environment: fast settings; nothing inherited from the host's config."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JOBTRACKER_", "TENCENTCLOUD_"))
        }
        return {
            **base,
            **sim_env,
            "JOBTRACKER_DATABASE_URL": self.database_url,
            "JOBTRACKER_BROKER_URL": "filesystem://",
            "JOBTRACKER_BROKER_DIR": str(broker_dir),
            "JOBTRACKER_WEBHOOK_SECRET": secret,
            "JOBTRACKER_WEBHOOK_RETRY_SCHEDULE": "1,2,5",
            "JOBTRACKER_TICK_SECONDS": "0.5",
            "JOBTRACKER_POLL_INTERVAL_MIN": "0.3",
            "JOBTRACKER_POLL_INTERVAL_MAX": "1",
            "JOBTRACKER_NOT_FOUND_GRACE": "2",
            "JOBTRACKER_JOB_DEADLINE": str(DEADLINE_S),
            "JOBTRACKER_LEASE_SECONDS": "10",
            "JOBTRACKER_CONNECT_TIMEOUT": "1",
            "JOBTRACKER_READ_TIMEOUT": "4",
            "JOBTRACKER_LOG_FORMAT": "text",
            "JOBTRACKER_LOG_LEVEL": "INFO",
        }

    def run(self) -> int:
        secret = new_webhook_secret()
        if self.own_db:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix="jobtracker-demo-") as broker_dir,
            Simulator(
                secret_id="AKIDdemo" + secrets.token_hex(8),
                secret_key=secrets.token_urlsafe(24),
                slow_s=SLOW_S,
            ) as sim,
            Receiver(secrets=[secret]) as receiver,
        ):
            env = self.env(sim.env(), secret, Path(broker_dir))
            settings = Settings.from_env(env, cwd=self.cwd)
            try:
                ensure_schema(settings)
            except ConfigError as exc:
                self.say(f"jobtracker demo: {exc}")
                return 2
            # The first callback is answered 503 once: watch it retried with the same webhook-id.
            receiver.script([503])
            self.say("jobtracker demo")
            self.say(f"  fake Tencent API   {sim.url} (TC3-HMAC-SHA256 signatures checked)")
            self.say(f"  webhook receiver   {receiver.url} (Standard Webhooks signatures checked)")
            self.say(f"  database           {redact_url(self.database_url)}")
            self.say(f"  tracker log        {self.log_path}")
            self.say()
            self.enqueue(settings, receiver.url)
            tracker = self.start_tracker(env, Path(broker_dir))
            try:
                finished = self.watch(settings, receiver, tracker)
            finally:
                self.stop_tracker(tracker)
        return self.summary(finished)

    def enqueue(self, settings: Settings, callback_url: str) -> None:
        for job in self.jobs:
            row = track(
                job.kind,
                job.job_id,
                callback_url=callback_url,
                metadata={"demo": job.lifecycle.label},
                settings=settings,
            )
            job.id = int(row["id"])
        self.say(
            f"enqueued {len(self.jobs)} jobs, "
            f"{len(LIFECYCLES)} lifecycles x {len(PROVIDERS)} kinds:"
        )
        for lc in LIFECYCLES:
            self.say(f"  {lc.label:<10} {lc.prefix}-{self.tag}: {lc.story} -> {lc.expected}")
        self.say()

    def start_tracker(self, env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
        # Run in the scratch directory: Celery beat leaves its schedule files in the cwd.
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop_tracker(self, tracker: subprocess.Popen[bytes]) -> None:
        if tracker.poll() is not None:
            return
        tracker.send_signal(signal.SIGTERM)
        try:
            tracker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            tracker.kill()
            tracker.wait()

    def watch(
        self, settings: Settings, receiver: Receiver, tracker: subprocess.Popen[bytes]
    ) -> bool:
        """Follow the jobs until all are terminal with their callbacks; False on timeout."""
        by_id = {job.id: job for job in self.jobs}
        seen = 0
        deadline = self.started + self.timeout_s
        while time.monotonic() < deadline:
            if tracker.poll() is not None:
                self.stopped_early = f"the tracker exited early, with status {tracker.returncode}"
                self.say(f"{self.stopped_early}; the end of its log:")
                self.say(self.log_path.read_text(errors="replace")[-3000:])
                return False
            with session_scope(settings) as session:
                rows = session.execute(
                    select(
                        TrackedJob.id, TrackedJob.status, TrackedJob.polls, TrackedJob.error_code
                    ).where(TrackedJob.id.in_(list(by_id)))
                ).all()
            for row in rows:
                job = by_id[row.id]
                job.polls = row.polls
                if row.status != job.status:
                    why = f" ({row.error_code})" if row.error_code else ""
                    self.event(
                        f"{job.kind} {job.job_id} [{job.lifecycle.label}]: "
                        f"{job.status} -> {row.status}{why}"
                    )
                    job.status = row.status
                    job.error_code = row.error_code
            messages = receiver.received
            for message in messages[seen:]:
                self.record_callback(by_id, message)
            seen = len(messages)
            self.draw()
            if all(j.terminal and j.delivered for j in self.jobs):
                return True
            time.sleep(0.25)
        return False

    def record_callback(self, by_id: dict[int, DemoJob], message: ReceivedMessage) -> None:
        payload = message.payload if isinstance(message.payload, dict) else {}
        data = payload.get("data")
        ref = data.get("id") if isinstance(data, dict) else None
        job = by_id.get(ref) if isinstance(ref, int) else None
        if job is None:
            return
        again = " (retry, same webhook-id)" if job.requests else ""
        job.requests.append((message.status, message.verified))
        job.webhook_id = message.msg_id
        job.event = message.type
        verified = "signature verified" if message.verified else "SIGNATURE NOT VERIFIED"
        self.event(
            f"callback {message.type} for {job.kind} {job.job_id}: webhook-id {message.msg_id}, "
            f"{verified}, answered {message.status}{again}"
        )

    # -- the end ---------------------------------------------------------------------------

    def summary(self, finished: bool) -> int:
        elapsed = time.monotonic() - self.started
        if self.live:
            self.draw()
        self.say()
        self.say(f"Summary after {elapsed:.1f} s")
        self.say(
            table(
                ["ID", "LIFECYCLE", "KIND", "JOB_ID", "EXPECTED", "STATUS", "CALLBACK", "OK"],
                [
                    [
                        j.id,
                        j.lifecycle.label,
                        j.kind,
                        j.job_id,
                        j.lifecycle.expected,
                        j.status,
                        j.callback_text(),
                        "yes" if j.ok else "NO",
                    ]
                    for j in self.jobs
                ],
            )
        )
        good = sum(j.ok for j in self.jobs)
        self.say()
        if good == len(self.jobs):
            self.say(
                f"all {good} jobs reached their expected status and their callbacks were "
                "delivered with verified signatures."
            )
        elif self.stopped_early:
            self.say(f"{self.stopped_early}: {good}/{len(self.jobs)} jobs done")
        elif not finished:
            self.say(f"timed out after {self.timeout_s:g} s: {good}/{len(self.jobs)} jobs done")
        else:
            self.say(f"{len(self.jobs) - good} jobs did not end as expected")
        self.say_inspection()
        return 0 if good == len(self.jobs) else 1

    def say_inspection(self) -> None:
        url = self.database_url
        shown = redact_url(url)
        example = next((j.id for j in self.jobs if j.lifecycle.label == "throttled"), 1)
        self.say()
        self.say("Inspect this run (the database is kept):")
        self.say(f"  export JOBTRACKER_DATABASE_URL={shlex.quote(shown)}")
        for command in (
            "jobtracker jobs",
            f"jobtracker show {example}",
            "jobtracker deliveries",
            "jobtracker stats",
        ):
            self.say(f"  {command}")
        sql = "SELECT id, kind, job_id, status, polls, error_code FROM tracked_jobs ORDER BY id"
        if make_url(url).get_backend_name() == "sqlite":
            database = make_url(url).database or ""
            self.say(f"  sqlite3 {shlex.quote(database)} {shlex.quote(sql)}")
        else:
            self.say(f'  psql "$JOBTRACKER_DATABASE_URL" -c {shlex.quote(sql)}')
        if shown != url:
            self.say("  (the password is hidden above: use your own URL)")
        self.say(f"  tracker log: {self.log_path}")


def run_demo(
    *,
    database_url: str | None,
    timeout_s: float,
    cwd: Path | None = None,
    out: TextIO | None = None,
    live: bool | None = None,
) -> int:
    """Run the demo; return the exit status (0: every job ended as expected)."""
    demo = Demo(
        database_url=database_url,
        timeout_s=timeout_s,
        cwd=(cwd or Path.cwd()).resolve(),
        out=out or sys.stdout,
        live=live,
    )
    return demo.run()
