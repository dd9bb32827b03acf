"""A receiver gone dark: it accepts every connection and never answers.

The worst receiver a sender meets: connecting succeeds at once, so only the attempt's deadline
ends each POST. For the tests and the delivery-isolation bench::

    with Blackhole() as dark:
        enqueue(..., callback_url=dark.url)   # every attempt times out
        dark.accepted                          # connections taken so far

:meth:`Blackhole.stop` closes every connection it holds (senders see the connection end) and the
port then refuses new ones.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class Blackhole:
    """Listens on ``host`` (an ephemeral port unless given); holds what it accepts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, path: str = "/webhook") -> None:
        self._host = host
        self._port = port
        self._path = path
        self._listener: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.accepted = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}{self._path}"

    def start(self) -> Blackhole:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self._host, self._port))
        listener.listen(4096)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(
            target=self._accept, name=f"blackhole:{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed by stop()
                return
            with self._lock:
                self._held.append(conn)
                self.accepted += 1

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            held, self._held = self._held, []
        for conn in held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
