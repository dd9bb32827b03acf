"""The delivery threads of one worker process, shared fairly between receivers and API clients.

An attempt can hold a thread for its whole deadline when the receiver accepts the connection and
never answers. With one queue in front of a few threads, eight such callbacks delayed every
other receiver's callbacks by 30 s. :class:`Dispatcher` instead keeps one queue per destination
(a receiver's ``host:port``) and takes the next message, in turn, from a destination that may
have one more attempt under way (the rules are :class:`~worker.policy.DeliveryPolicy`'s):

- a destination gets several attempts at once only once it answered, and one while it has not
  answered yet or its last attempt timed out, so a dark receiver holds one thread, not all;
- the destinations that are timing out hold at most a share of the threads together, and so
  does each API client, so neither dark receivers nor one tenant can take them all;
- queues are bounded in count (first sends, sweep hand-outs, and per destination once they are
  half full): a message refused a place is handed back, and stays in the outbox for the sweep;
  nothing is lost;
- first sends and the sweep's messages (retries) have separate room and are taken in turn;
- a destination whose breaker is open (:mod:`worker.flow.breakers`) takes no message until its
  next probe time: what was queued for it, and what arrives, is handed back at once.

This module knows nothing of the database: :mod:`worker.flow.deliver` gives it the function
that makes an attempt (``run``) and decides what a handed-back message becomes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from worker.policy import DeliveryPolicy
from worker.settings import Settings

log = logging.getLogger(__name__)

#: (database URL, ``host:port``): where a message goes, per database (tests share a process).
Place = tuple[str, str]
#: Destinations remembered when idle (what they taught: answered, timing out, breaker open).
MAX_IDLE_PLACES = 4096
FRESH, SWEPT = 0, 1


@dataclass(frozen=True)
class Ticket:
    """One message handed to the delivery threads."""

    delivery_id: str
    settings: Settings
    #: ``host:port`` of its URL; "" when the URL cannot be parsed (its attempt is refused).
    destination: str
    #: The API client whose job it is; None for the other ways in.
    owner: int | None = None
    #: The sweep's reservation of it; None for a first send handed over at commit.
    lease: datetime | None = None

    @property
    def place(self) -> Place:
        return (self.settings.database_url, self.destination)

    @property
    def kind(self) -> int:
        return FRESH if self.lease is None else SWEPT


@dataclass(frozen=True)
class Verdict:
    """What running a ticket taught about its destination."""

    #: It answered (any status) or refused the connection at once.
    answered: bool = False
    #: The attempt timed out.
    timed_out: bool = False
    #: Its breaker is open for this many more seconds: nothing was sent.
    open_for_s: float | None = None


NOTHING = Verdict()
#: A ticket handed back, and for how long its destination is closed (None: no room for it).
Refusal = tuple[Ticket, float | None]


class _Destination:
    __slots__ = ("answered", "closed_until", "in_flight", "queues", "timing_out")

    def __init__(self) -> None:
        self.queues: tuple[deque[Ticket], deque[Ticket]] = (deque(), deque())
        self.in_flight = 0
        self.answered = False
        self.timing_out = False
        #: ``time.monotonic()`` until which its breaker is open.
        self.closed_until = 0.0

    @property
    def queued(self) -> int:
        return len(self.queues[FRESH]) + len(self.queues[SWEPT])

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.queued == 0


class Dispatcher:
    """Delivery threads with per-destination queues, fair turns and caps."""

    def __init__(
        self,
        policy: DeliveryPolicy,
        run: Callable[[Ticket], Verdict],
        refused: Callable[[list[Refusal]], None],
    ) -> None:
        self.policy = policy
        self._run = run
        self._refused = refused
        self._lock = threading.Lock()
        #: Woken when nothing is queued or under way.
        self._settled = threading.Condition(self._lock)
        #: Idle threads, the one idle for the shortest time last: it is woken first, so light
        #: traffic keeps to a few threads and their kept-alive connections.
        self._idle_threads: list[threading.Condition] = []
        self._places: OrderedDict[Place, _Destination] = OrderedDict()
        #: Places with queued tickets, in the order they get their turn.
        self._ready: OrderedDict[Place, None] = OrderedDict()
        self._queued = [0, 0]
        self._owners: Counter[int] = Counter()
        self._timing_out = 0
        self._in_flight = 0
        #: Threads writing handed-back messages back to the outbox.
        self._handing_back = 0
        self._turn = FRESH
        self._threads: list[threading.Thread] = []

    # -- handing over ------------------------------------------------------------------------

    def room(self) -> int:
        """How many more messages the sweep may hand over now."""
        with self._lock:
            return max(0, self._bound(SWEPT) - self._queued[SWEPT])

    def offer(self, tickets: Iterable[Ticket]) -> list[Refusal]:
        """Queue the tickets that have a place; return the others (nothing is sent for them)."""
        refusals: list[Refusal] = []
        accepted = 0
        with self._lock:
            now = time.monotonic()
            for ticket in tickets:
                place = self._place(ticket.place)
                if place.closed_until > now:
                    refusals.append((ticket, place.closed_until - now))
                elif self._no_room(ticket, place):
                    refusals.append((ticket, None))
                else:
                    place.queues[ticket.kind].append(ticket)
                    self._queued[ticket.kind] += 1
                    self._ready[ticket.place] = None
                    accepted += 1
            if accepted:
                self._start_threads()
                self._wake(accepted)
        return refusals

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued, under way or being handed back; False on timeout."""
        with self._lock:
            return self._settled.wait_for(self._idle, timeout_s)

    def _idle(self) -> bool:
        return self._in_flight + self._handing_back + sum(self._queued) == 0

    # -- the rules -----------------------------------------------------------------------------

    def _bound(self, kind: int) -> int:
        return self.policy.backlog if kind == FRESH else max(1, self.policy.backlog // 2)

    def _no_room(self, ticket: Ticket, place: _Destination) -> bool:
        """The kind's queue is full; or it is half full and so is this destination's share (a
        burst to one receiver waits here, but a flood to a few cannot fill the queue)."""
        queued, bound = self._queued[ticket.kind], self._bound(ticket.kind)
        crowded = queued >= bound // 2 and place.queued >= self._queue_limit(place)
        return queued >= bound or crowded

    def _queue_limit(self, place: _Destination) -> int:
        healthy = place.answered and not place.timing_out
        return self.policy.queue_per_destination if healthy else self.policy.queue_per_unproven

    def _may_start(self, place: _Destination, ticket: Ticket) -> bool:
        healthy = place.answered and not place.timing_out
        if place.in_flight >= (self.policy.per_destination if healthy else 1):
            return False
        held = self.policy.held_at_most
        if place.timing_out and self._timing_out >= held:
            return False
        return ticket.owner is None or self._owners[ticket.owner] < held

    def _place(self, key: Place) -> _Destination:
        place = self._places.get(key)
        if place is None:
            place = self._places[key] = _Destination()
            self._forget_idle(keep=key)
        else:
            self._places.move_to_end(key)
        return place

    def _forget_idle(self, *, keep: Place) -> None:
        """Forget the longest unused idle destinations beyond :data:`MAX_IDLE_PLACES`."""
        excess = len(self._places) - MAX_IDLE_PLACES
        if excess <= 0:
            return
        for key in [k for k, p in self._places.items() if p.idle and k != keep][:excess]:
            del self._places[key]

    # -- the threads -----------------------------------------------------------------------------

    def _start_threads(self) -> None:
        while len(self._threads) < self.policy.threads:
            thread = threading.Thread(
                target=self._work,
                name=f"jobtracker-deliver-{len(self._threads) + 1}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        idle = threading.Condition(self._lock)
        while True:
            with self._lock:
                taken = self._take()
                while taken is None:
                    self._idle_threads.append(idle)
                    # The timeout is a safety net: every change that frees a turn wakes one.
                    idle.wait(timeout=1.0)
                    if idle in self._idle_threads:
                        self._idle_threads.remove(idle)
                    taken = self._take()
            ticket, counted_timing_out = taken
            try:
                verdict = self._run(ticket)
            except Exception:  # the message stays in the outbox; say why it was not sent
                log.exception(
                    "delivery failed unexpectedly", extra={"delivery_id": ticket.delivery_id}
                )
                verdict = NOTHING
            with self._lock:
                handed_back = self._finish(ticket, counted_timing_out, verdict)
                self._handing_back += bool(handed_back)
                # This thread looks for more itself; a destination that answered may take
                # more at once now, and handed-back tickets freed places.
                self._wake(
                    len(handed_back) + (self.policy.per_destination if verdict.answered else 0)
                )
                if self._idle():
                    self._settled.notify_all()
            if handed_back:
                self._hand_back(handed_back)
                with self._lock:
                    self._handing_back -= 1
                    if self._idle():
                        self._settled.notify_all()

    def _wake(self, n: int) -> None:
        """Wake up to ``n`` idle threads, the most recently idle first (called under the lock)."""
        for _ in range(min(n, len(self._idle_threads))):
            self._idle_threads.pop().notify()

    def _take(self) -> tuple[Ticket, bool] | None:
        """The next ticket whose turn it is and which the rules let start, or None."""
        now = time.monotonic()
        for kind in (self._turn, 1 - self._turn):
            for key in list(self._ready):
                place = self._places[key]
                queue = place.queues[kind]
                if not queue or place.closed_until > now or not self._may_start(place, queue[0]):
                    continue
                ticket = queue.popleft()
                self._queued[kind] -= 1
                if place.queued:
                    self._ready.move_to_end(key)
                else:
                    del self._ready[key]
                place.in_flight += 1
                self._in_flight += 1
                if ticket.owner is not None:
                    self._owners[ticket.owner] += 1
                if place.timing_out:
                    self._timing_out += 1
                self._turn = 1 - kind
                return ticket, place.timing_out
        return None

    def _finish(self, ticket: Ticket, counted_timing_out: bool, verdict: Verdict) -> list[Refusal]:
        place = self._place(ticket.place)
        place.in_flight -= 1
        self._in_flight -= 1
        if ticket.owner is not None:
            self._owners[ticket.owner] -= 1
            if self._owners[ticket.owner] <= 0:
                del self._owners[ticket.owner]
        if counted_timing_out:
            self._timing_out -= 1
        if verdict.answered:
            place.answered, place.timing_out = True, False
        elif verdict.timed_out:
            place.timing_out = True
        if verdict.open_for_s is None:
            return []
        place.closed_until = time.monotonic() + verdict.open_for_s
        handed_back: list[Refusal] = [(ticket, verdict.open_for_s)]
        for kind in (FRESH, SWEPT):
            handed_back += [(t, verdict.open_for_s) for t in place.queues[kind]]
            self._queued[kind] -= len(place.queues[kind])
            place.queues[kind].clear()
        self._ready.pop(ticket.place, None)
        return handed_back

    def _hand_back(self, refusals: list[Refusal]) -> None:
        try:
            self._refused(refusals)
        except Exception:  # the messages stay due in the outbox; the sweep finds them
            log.exception("could not put callbacks back for later")
