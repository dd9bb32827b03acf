"""HTTP exchanges bounded as a whole: a deadline for the exchange, a cap on the answer's size.

requests' read timeout applies to each socket read, so a peer that dribbles its answer (every
byte within the read timeout, the whole answer minutes late) holds the caller as long as it likes,
and ``response.content`` reads a whole answer (a gzip answer decompressed) before anyone can
check its size. Here:

- :func:`deadline` arms a :class:`Watchdog` that shuts down, at the deadline, every socket the
  exchange uses (connections of a :class:`DeadlineAdapter` session register themselves), which
  ends any blocked read at once;
- :func:`read_capped` streams the answer and stops as soon as it passes the cap (urllib3 limits
  how much one streamed read decompresses, so a gzip bomb is cut short too).

The provider client and the webhook transport both use them.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any

import requests
from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

#: How much one streamed read asks for.
CHUNK_BYTES = 64 * 1024


class Watchdog:
    """Shuts down every watched socket once ``timeout_s`` has passed since :meth:`start`."""

    def __init__(self, timeout_s: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timeout_s = max(0.0, timeout_s)
        self._cancelled = False
        self.fired = False

    def start(self) -> None:
        _REAPER.add(time.monotonic() + self._timeout_s, self)

    def cancel(self) -> None:
        self._cancelled = True  # the reaper forgets it when its time comes

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.fired:
                shutdown(sock)
            else:
                self._sockets.append(sock)

    def fire(self) -> None:
        """Shut the watched sockets down now (the reaper's call at the deadline, or an early
        one)."""
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                shutdown(sock)

    def _due(self) -> None:
        if not self._cancelled:
            self.fire()


class _Reaper:
    """One daemon thread for every deadline of the process: a heap of (instant, watchdog).

    A thread per exchange (``threading.Timer``) cost a thread start per provider call, which
    under a busy GIL took milliseconds: the most expensive part of a call to a fast provider.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._wake = threading.Condition()
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, at: float, watchdog: Watchdog) -> None:
        with self._wake:
            heapq.heappush(self._heap, (at, next(self._count), watchdog))
            if self._thread is None or not self._thread.is_alive():  # first use, or after fork
                self._thread = threading.Thread(
                    target=self._run, name="jobtracker-http-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is watchdog:
                self._wake.notify()  # earlier than what the thread sleeps until

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, watchdog = heapq.heappop(self._heap)
            watchdog._due()


_REAPER = _Reaper()


_WATCHDOG: ContextVar[Watchdog | None] = ContextVar("jobtracker_http_watchdog", default=None)
_active: set[Watchdog] = set()
_active_lock = threading.Lock()


@contextmanager
def deadline(seconds: float) -> Iterator[Watchdog]:
    """Within the block, every socket a :class:`DeadlineAdapter` session uses is shut down
    ``seconds`` from now. Check ``watchdog.fired`` after the exchange: a read cut short by the
    shutdown may return a truncated answer instead of raising."""
    watchdog = Watchdog(seconds)
    token = _WATCHDOG.set(watchdog)
    with _active_lock:
        _active.add(watchdog)
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.cancel()
        with _active_lock:
            _active.discard(watchdog)
        _WATCHDOG.reset(token)


def cut_all() -> None:
    """End every exchange under way in this process now, as if its deadline had come (a
    shutdown must not wait for a slow provider)."""
    with _active_lock:
        running = list(_active)
    for watchdog in running:
        watchdog.fire()


def watch(sock: socket.socket | None) -> None:
    """Put ``sock`` under the current deadline, if there is one."""
    watchdog = _WATCHDOG.get()
    if watchdog is not None and sock is not None:
        watchdog.watch(sock)


class _Watched:
    """Registers the connection's socket with the current deadline, new or kept alive.

    Mixed into urllib3's HTTP and HTTPS connection classes (listed first, so these methods
    wrap theirs).
    """

    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch(self.sock)  # a kept-alive connection: connect() is not called again
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class PoolAdapter(HTTPAdapter):
    """An adapter whose pools make connections of the classes named here (subclasses pick the
    connection behaviour; the pools are urllib3's own)."""

    http_pool: type[HTTPConnectionPool] = HTTPConnectionPool
    https_pool: type[HTTPSConnectionPool] = HTTPSConnectionPool

    def init_poolmanager(
        self,
        connections: int,
        maxsize: int,
        block: bool = DEFAULT_POOLBLOCK,
        **pool_kwargs: Any,
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": self.http_pool,
            "https": self.https_pool,
        }


class DeadlineAdapter(PoolAdapter):
    """An adapter whose connections honour :func:`deadline`."""

    http_pool = _WatchedHTTPConnectionPool
    https_pool = _WatchedHTTPSConnectionPool


class AnswerTooLarge(Exception):
    """The answer is larger than the cap."""


def read_capped(response: requests.Response, cap: int) -> bytes:
    """The whole (decoded) answer of a ``stream=True`` response, refusing one over ``cap`` bytes
    as soon as it shows (a Content-Length over the cap, or the bytes read so far)."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > cap:
        raise AnswerTooLarge(f"Content-Length {length} is over {cap} bytes")
    chunks: list[bytes] = []
    total = 0
    while chunk := response.raw.read(CHUNK_BYTES, decode_content=True):
        total += len(chunk)
        if total > cap:
            raise AnswerTooLarge(f"over {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the latter also drops the SSL object under
    # the thread that is reading from it.
    with suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
