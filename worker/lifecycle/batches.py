"""Work in batches under a time budget: the one loop every part of the retention runs.

A batch is one short transaction, so polls and enqueues are never held up for long; a pause
between batches leaves the database to the pollers; a budget bounds a periodic run, whose
successor carries on where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Budget:
    """No batch starts after ``seconds`` (None: no limit) from the budget's creation."""

    seconds: float | None
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    #: True once a batch was refused: the run stopped with work perhaps left.
    spent: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def allows(self) -> bool:
        if self.seconds is not None and self.clock() - self.started > self.seconds:
            self.spent = True
        return not self.spent

    def elapsed(self) -> float:
        return self.clock() - self.started


def in_batches(
    batch: Callable[[], int],
    *,
    size: int,
    budget: Budget,
    pause_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run ``batch`` (one transaction, returning how many rows it took) while the budget allows,
    until one takes fewer than ``size`` (nothing is left), pausing ``pause_s`` in between."""
    while budget.allows():
        if batch() < size:
            return
        if pause_s:
            sleep(pause_s)
