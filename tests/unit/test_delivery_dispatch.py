"""The delivery threads' rules, with a stand-in for the attempt (no database, no network): what
may run at once per destination, per client and while timing out; bounded queues; turns
between first sends and the sweep's messages; an open breaker hands everything back."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.flow.dispatch import NOTHING, Dispatcher, Refusal, Ticket, Verdict
from worker.policy import DeliveryPolicy
from worker.settings import Settings

POLICY = DeliveryPolicy(
    threads=8, per_destination=4, share=0.5, backlog=16, queue_per_destination=10,
    queue_per_unproven=3,
)  # fmt: skip
LEASE = datetime(2026, 1, 1, tzinfo=UTC)


class Stage:
    """Stands in for the attempt: holds each ticket until released, counts what runs at once."""

    def __init__(self, verdict: Callable[[Ticket], Verdict] = lambda t: NOTHING) -> None:
        self.verdict = verdict
        self.cond = threading.Condition()
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.order: list[str] = []
        self.released: set[str] = set()
        self.refused: list[Refusal] = []

    def run(self, ticket: Ticket) -> Verdict:
        with self.cond:
            self.running[ticket.destination] += 1
            self.peak[ticket.destination] = max(
                self.peak[ticket.destination], self.running[ticket.destination]
            )
            self.order.append(ticket.delivery_id)
            self.cond.notify_all()
            self.cond.wait_for(lambda: ticket.delivery_id in self.released or "*" in self.released)
            self.running[ticket.destination] -= 1
        return self.verdict(ticket)

    def release(self, *ids: str) -> None:
        with self.cond:
            self.released.update(ids or ("*",))
            self.cond.notify_all()

    def wait_running(self, n: int, timeout: float = 5.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: sum(self.running.values()) >= n, timeout)
        time.sleep(0.05)  # and give any further (wrong) start a chance to happen


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"JOBTRACKER_DATABASE_URL": "sqlite:///unused.db"}, cwd=tmp_path)


@pytest.fixture
def stage() -> Iterator[Stage]:
    stage = Stage()
    yield stage
    stage.release()


def dispatcher(stage: Stage, policy: DeliveryPolicy = POLICY) -> Dispatcher:
    return Dispatcher(policy, run=stage.run, refused=stage.refused.extend)


def tickets(
    settings: Settings, destination: str, n: int, *, owner: int | None = None, swept: bool = False
) -> list[Ticket]:
    lease = LEASE if swept else None
    kind = "s" if swept else "f"
    return [
        Ticket(f"{destination}-{owner}-{kind}{i}", settings, destination, owner, lease)
        for i in range(n)
    ]


def test_a_destination_that_has_not_answered_gets_one_attempt_at_a_time(
    settings: Settings, stage: Stage
) -> None:
    d = dispatcher(stage)
    assert d.offer(tickets(settings, "dark:80", 3) + tickets(settings, "ok:80", 1)) == []
    stage.wait_running(2)
    assert stage.running == Counter({"dark:80": 1, "ok:80": 1})
    stage.release()
    assert d.wait_idle(5)
    assert stage.peak["dark:80"] == 1


def test_once_it_answers_a_destination_gets_several_at_once(settings: Settings) -> None:
    stage = Stage(verdict=lambda t: Verdict(answered=True))
    d = dispatcher(stage)
    d.offer(tickets(settings, "ok:80", 1))
    stage.wait_running(1)
    stage.release()
    assert d.wait_idle(5)
    stage.released.clear()
    d.offer(tickets(settings, "ok:80", 8)[1:])
    stage.wait_running(4)
    assert stage.running["ok:80"] == POLICY.per_destination
    stage.release()
    assert d.wait_idle(5)


def test_timing_out_destinations_hold_at_most_half_the_threads_together(
    settings: Settings,
) -> None:
    stage = Stage(verdict=lambda t: Verdict(timed_out=True))
    d = dispatcher(stage)
    dark = [f"dark{i}:80" for i in range(8)]
    for where in dark:  # each times out once: now they are all timing out
        d.offer(tickets(settings, where, 1))
    stage.wait_running(8)
    stage.release()
    assert d.wait_idle(5)
    stage.released.clear()
    for where in dark:
        d.offer([Ticket(f"{where}-again", settings, where)])
    d.offer(tickets(settings, "ok:80", 1))
    stage.wait_running(POLICY.held_at_most + 1)
    assert sum(n for where, n in stage.running.items() if where in dark) == POLICY.held_at_most
    assert stage.running["ok:80"] == 1  # a healthy destination still gets a thread
    stage.release()
    assert d.wait_idle(5)


def test_one_client_holds_at_most_half_the_threads(settings: Settings) -> None:
    stage = Stage()
    d = dispatcher(stage)
    for i in range(8):  # eight destinations of one client
        d.offer(tickets(settings, f"c{i}:80", 1, owner=7))
    d.offer(tickets(settings, "other:80", 1, owner=8))
    stage.wait_running(POLICY.held_at_most + 1)
    assert sum(n for where, n in stage.running.items() if where.startswith("c")) == 4
    assert stage.running["other:80"] == 1
    stage.release()
    assert d.wait_idle(5)
    assert len(stage.order) == 9  # the rest ran once threads were free


def test_queues_are_bounded_and_what_has_no_place_is_handed_back(settings: Settings) -> None:
    stage = Stage()
    d = dispatcher(stage)
    # Client 1 holds its share of the threads, so its other tickets wait: the queue is exact.
    d.offer([t for i in range(4) for t in tickets(settings, f"held{i}:80", 1, owner=1)])
    stage.wait_running(4)
    burst = tickets(settings, "dark:80", 10, owner=1)
    refused = d.offer(burst)
    # Up to half the queue anyone may fill; past that a destination that has not answered keeps
    # at most queue_per_unproven waiting: the rest comes back, not closed.
    assert [(t.delivery_id, closed) for t, closed in refused] == [
        (t.delivery_id, None) for t in burst[POLICY.backlog // 2 :]
    ]
    assert d.offer(tickets(settings, "ok:80", 1, owner=2)) == []  # another receiver has room
    stage.wait_running(5)
    flood = [t for i in range(12) for t in tickets(settings, f"f{i}:80", 1, owner=1)]
    refused = d.offer(flood)
    assert len(refused) == 12 - POLICY.backlog // 2  # the whole queue is full
    # The sweep's room is its own: first sends waiting take none of it.
    assert d.room() == POLICY.backlog // 2
    stage.release()
    assert d.wait_idle(5)
    assert d.room() == POLICY.backlog // 2


def test_first_sends_and_the_sweeps_messages_take_turns(settings: Settings) -> None:
    stage = Stage(verdict=lambda t: Verdict(answered=True))
    policy = DeliveryPolicy(threads=2, per_destination=1, share=0.5, backlog=16,
                            queue_per_destination=10, queue_per_unproven=10)  # fmt: skip
    d = dispatcher(stage, policy)
    d.offer(tickets(settings, "ok:80", 1))
    stage.wait_running(1)  # holds the one slot of ok:80 while both kinds queue up
    d.offer(tickets(settings, "ok:80", 4)[1:] + tickets(settings, "ok:80", 3, swept=True))
    stage.release()
    assert d.wait_idle(5)
    kinds = ["s" if "-s" in i else "f" for i in stage.order[1:]]
    assert kinds[:4] in (["s", "f", "s", "f"], ["f", "s", "f", "s"])


def test_an_open_breaker_hands_back_what_waits_for_it_and_refuses_what_comes(
    settings: Settings,
) -> None:
    stage = Stage(verdict=lambda t: Verdict(open_for_s=30.0))
    d = dispatcher(stage)
    d.offer(tickets(settings, "dark:80", 3))
    stage.wait_running(1)
    stage.release()
    assert d.wait_idle(5)
    assert sorted(t.delivery_id for t, _ in stage.refused) == [
        "dark:80-None-f0", "dark:80-None-f1", "dark:80-None-f2",
    ]  # fmt: skip
    assert all(closed == 30.0 for _, closed in stage.refused)
    assert len(stage.order) == 1  # only the one that asked the breaker ran
    [(late, closed)] = d.offer([Ticket("late", settings, "dark:80")])
    assert late.delivery_id == "late" and closed is not None and 29 < closed <= 30
    assert d.offer([Ticket("elsewhere", settings, "ok:80")]) == []
    assert d.wait_idle(5)
