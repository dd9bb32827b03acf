"""Scripted job lifecycles: what the simulator answers on the n-th poll of a JobId.

A script is a list of steps; poll n plays step n, and the last step repeats forever. Scripts come
from :meth:`Lifecycles.script` or, for JobIds nobody registered, from the JobId itself, so another
process (a demo, an acceptance test) needs no registration.

JobId grammar (``N`` is a positive integer; ``tail`` is anything, to make the JobId unique)::

    [charset.]succeed[-N][-tail]   in progress (queued, then running), succeeded on poll N (3)
    [charset.]fail[-N][-tail]      in progress, failed status on poll N (3)
    [charset.]cancel[-N][-tail]    in progress, JobHasBeenCanceled error from poll N (2)
    [charset.]poison[-N][-tail]    in progress, then on poll N (3) a failed status whose error
                                   code and message carry lone UTF-16 surrogates (legal JSON that
                                   no UTF-8 encoder can write) and a NUL
    [charset.]at-SUBMIT-DURATION[-tail]  running until SUBMIT + DURATION (both milliseconds:
                                   an epoch time and a length), then done, however often it is
                                   polled: a job that takes a real time
    [charset.]nan[-N][-tail]       in progress, then on poll N (3) a succeeded status whose
                                   optional result fields are NaN, Infinity and -Infinity
    [charset.]FAULT[-N][-tail]     FAULT on every poll; with N, on polls 1..N then succeeded
    [charset.]error-CODE[-N][-tail]  Response.Error CODE on every poll (or polls 1..N)
    anything else                  as succeed-3

FAULT is one of ``notfound`` (the API's JobNotExist/JobNotFound), ``throttle``
(RequestLimitExceeded), ``internal`` (InternalError), ``html502`` (an HTML 502 page), ``junk``
(HTTP 200 with a body that is not JSON), ``noresponse`` (JSON without ``Response``), ``badstatus``
(a status value not in the table), ``drop`` (the connection closes without an answer), ``slow``
(the answer, ``running``, comes after the simulator's ``slow_s``), ``dribble`` (the answer,
``running``, is sent one byte every ``dribble_s``: each read is quick, the whole answer late),
``huge`` (a well-formed ``running`` answer of 64 MiB with no Content-Length) and ``gzipbomb`` (a
gzip answer of about 256 KiB that decompresses to 256 MiB). ``charset.`` answers with
``Content-Type: application/json; charset=utf-8`` (the SDK only checks the exact spelling).

Examples: ``succeed-3-a1``, ``fail-2-x``, ``notfound-x``, ``notfound-2-x`` (visible from poll 3),
``cancel-2-x``, ``throttle-1-x``, ``slow-x``, ``charset.fail-1-x``,
``error-FailedOperation.NoFaceDetected-x``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

#: Steps that describe the job (rendered with the provider's status field).
STATUS_STEPS = frozenset({"queued", "running", "done", "failed", "poison", "nan"})
#: Steps that describe a fault of the API or the network.
FAULT_STEPS = frozenset(
    {
        "canceled",
        "notfound",
        "throttle",
        "internal",
        "html502",
        "junk",
        "noresponse",
        "badstatus",
        "drop",
        "slow",
        "dribble",
        "huge",
        "gzipbomb",
    }
)
CHARSET_CONTENT_TYPE = "application/json; charset=utf-8"
_MAX_N = 10_000


@dataclass(frozen=True)
class Step:
    """One answer. ``code`` is the error code of ``error`` (and optionally of ``failed``)."""

    name: str
    code: str | None = None

    @classmethod
    def parse(cls, text: str | Step) -> Step:
        """A step from its text: ``"running"``, ``"failed:Code"``, ``"error:InternalError"``..."""
        if isinstance(text, Step):
            return text
        name, _, code = text.partition(":")
        step = cls(name.strip().lower(), code.strip() or None)
        if step.name == "error" and not step.code:
            raise ValueError("an error step needs a code: 'error:InternalError'")
        if step.name not in STATUS_STEPS | FAULT_STEPS | {"error"}:
            raise ValueError(f"unknown simulator step {text!r}")
        return step


@dataclass(frozen=True)
class Script:
    steps: tuple[Step, ...]
    #: ``None``: the simulator's default Content-Type.
    content_type: str | None = None
    #: (submitted at, duration), epoch seconds: the job runs until then, then is done,
    #: whatever the number of polls (a job with a real duration).
    timed: tuple[float, float] | None = None

    def step(self, poll: int, now: float | None = None) -> Step:
        if self.timed is not None:
            submitted, duration = self.timed
            return Step("done") if (now or time.time()) >= submitted + duration else Step("running")
        return self.steps[min(poll, len(self.steps)) - 1]


def in_progress(polls: int) -> list[Step]:
    """``polls`` in-progress answers: queued first, then running."""
    return [Step("queued" if i == 0 else "running") for i in range(max(0, polls))]


def parse_job_id(job_id: str) -> Script:
    """The script the JobId grammar (module docstring) gives ``job_id``."""
    head, *rest = job_id.split("-")
    *modifiers, verb = head.lower().split(".") if head else [""]
    content_type = CHARSET_CONTENT_TYPE if "charset" in modifiers else None
    code = None
    if verb == "error" and rest and rest[0]:
        code, rest = rest[0], rest[1:]
    if verb == "at" and len(rest) >= 2 and rest[0].isdigit() and rest[1].isdigit():
        timed = (int(rest[0]) / 1000, int(rest[1]) / 1000)
        return Script((Step("running"), Step("done")), content_type, timed=timed)
    n = min(int(rest[0]), _MAX_N) if rest and rest[0].isdigit() and int(rest[0]) > 0 else None

    steps: list[Step]
    if verb == "succeed":
        steps = [*in_progress((n or 3) - 1), Step("done")]
    elif verb == "fail":
        steps = [*in_progress((n or 3) - 1), Step("failed")]
    elif verb in ("poison", "nan"):
        steps = [*in_progress((n or 3) - 1), Step(verb)]
    elif verb == "cancel":
        steps = [*in_progress((n or 2) - 1), Step("canceled")]
    elif verb in FAULT_STEPS or (verb == "error" and code):
        fault = Step(verb, code)
        steps = [fault] if n is None else [*([fault] * n), Step("done")]
    else:
        steps, content_type = [*in_progress(2), Step("done")], None
    return Script(tuple(steps), content_type)


class Lifecycles:
    """Registered scripts and poll counts, per (kind, JobId). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, Script] = {}
        self._polls: Counter[tuple[str, str]] = Counter()

    def script(
        self, job_id: str, steps: Iterable[str | Step], *, content_type: str | None = None
    ) -> None:
        parsed = tuple(Step.parse(step) for step in steps)
        if not parsed:
            raise ValueError("a script needs at least one step")
        with self._lock:
            self._scripts[job_id] = Script(parsed, content_type)
            for key in [key for key in self._polls if key[1] == job_id]:
                del self._polls[key]

    def next_poll(self, kind: str, job_id: str) -> tuple[Script, Step, int]:
        """Count one poll of the job and return its script, this poll's step and the poll number."""
        with self._lock:
            self._polls[(kind, job_id)] += 1
            poll = self._polls[(kind, job_id)]
            script = self._scripts.get(job_id)
        if script is None:
            script = parse_job_id(job_id)
        return script, script.step(poll), poll

    def polls(self) -> dict[str, int]:
        """Polls per JobId (all kinds together)."""
        totals: Counter[str] = Counter()
        with self._lock:
            for (_, job_id), count in self._polls.items():
                totals[job_id] += count
        return dict(totals)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._polls.clear()
