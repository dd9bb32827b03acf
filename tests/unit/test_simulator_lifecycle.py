"""The JobId grammar and scripted lifecycles of the simulator."""

from __future__ import annotations

import pytest

from worker.devtools.simulator.lifecycle import CHARSET_CONTENT_TYPE, Lifecycles, Step, parse_job_id


def names(job_id: str, polls: int) -> list[str]:
    script = parse_job_id(job_id)
    return [script.step(n).name for n in range(1, polls + 1)]


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("succeed-3-abc", ["queued", "running", "done", "done"]),
        ("succeed-1-abc", ["done", "done"]),
        ("succeed-x", ["queued", "running", "done"]),
        ("fail-2-x", ["queued", "failed", "failed"]),
        ("cancel-2-x", ["queued", "canceled", "canceled"]),
        ("notfound-x", ["notfound", "notfound", "notfound"]),
        ("notfound-2-x", ["notfound", "notfound", "done"]),
        ("throttle-1-x", ["throttle", "done"]),
        ("slow-x", ["slow", "slow"]),
        ("drop-2-x", ["drop", "drop", "done"]),
        ("1194931538865782784", ["queued", "running", "done", "done"]),
        ("", ["queued", "running", "done"]),
    ],
)
def test_grammar(job_id: str, expected: list[str]) -> None:
    assert names(job_id, len(expected)) == expected


def test_error_verb_carries_its_code() -> None:
    script = parse_job_id("error-FailedOperation.NoFaceDetected-1-x")
    assert script.steps == (Step("error", "FailedOperation.NoFaceDetected"), Step("done"))


def test_charset_modifier() -> None:
    assert parse_job_id("charset.fail-1-x").content_type == CHARSET_CONTENT_TYPE
    assert parse_job_id("fail-1-x").content_type is None


def test_scripts_win_over_the_grammar_and_count_polls() -> None:
    lifecycles = Lifecycles()
    lifecycles.script("succeed-1-x", ["running", "failed:E"])
    steps = [lifecycles.next_poll("k", "succeed-1-x")[1] for _ in range(3)]
    assert steps == [Step("running"), Step("failed", "E"), Step("failed", "E")]
    lifecycles.next_poll("other-kind", "succeed-1-x")
    assert lifecycles.polls() == {"succeed-1-x": 4}


@pytest.mark.parametrize("bad", ["explode", "error", "error:"])
def test_unknown_steps_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Step.parse(bad)
