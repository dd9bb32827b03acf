"""The retention's one loop: batches until one comes short, a pause between them, and no batch
started past the budget. No database, no clock: both are injected."""

from __future__ import annotations

from worker.lifecycle.batches import Budget, in_batches


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_batches_run_until_one_takes_fewer_than_the_size() -> None:
    taken = iter([3, 3, 1, 3])
    calls: list[int] = []
    slept: list[float] = []

    def batch() -> int:
        calls.append(n := next(taken))
        return n

    budget = Budget(None, clock=Clock())
    in_batches(batch, size=3, budget=budget, pause_s=0.5, sleep=slept.append)
    assert calls == [3, 3, 1]
    assert slept == [0.5, 0.5]
    assert not budget.spent


def test_no_batch_starts_past_the_budget_and_the_budget_says_so() -> None:
    clock = Clock()
    budget = Budget(10.0, clock=clock)
    calls = 0

    def batch() -> int:
        nonlocal calls
        calls += 1
        clock.now += 4
        return 5

    in_batches(batch, size=5, budget=budget, sleep=lambda _: None)
    assert calls == 3  # started at 0, 4 and 8 s; not at 12 s
    assert budget.spent and budget.elapsed() == 12
    # Later loops of the same run start nothing either.
    in_batches(batch, size=5, budget=budget)
    assert calls == 3


def test_a_batch_that_finds_nothing_ends_the_loop_without_a_pause() -> None:
    slept: list[float] = []
    in_batches(lambda: 0, size=5, budget=Budget(None), pause_s=1.0, sleep=slept.append)
    assert slept == []
