"""A webhook receiver that verifies jobtracker's callbacks: for the demo, the tests, and users.

It listens on 127.0.0.1 (an ephemeral port unless given) in a background thread, checks every
request with ``standardwebhooks.Webhook(secret).verify`` for each configured secret, records what
arrived, and answers as scripted::

    with Receiver(secrets=["whsec_..."]) as rx:
        rx.script([503, 503, 200])          # then the default, 200
        enqueue(..., callback_url=rx.url)
        [message] = rx.wait_for(1, timeout=30)
        assert message.verified and message.type == "job.succeeded"

A request that fails verification is answered 401 (when secrets are configured) without consuming
the script. A *duplicate* is a verified message whose id was already answered 2xx: what an
idempotent receiver must ignore. :meth:`Receiver.stop` takes the receiver down (the port refuses
connections) and :meth:`Receiver.start` brings it back on the same port.
"""

from __future__ import annotations

import contextlib
import http
import json
import logging
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from standardwebhooks.webhooks import Webhook

log = logging.getLogger(__name__)

#: Requests with larger bodies are answered 413.
MAX_REQUEST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Wait this long before answering (a slow receiver).
    delay_s: float = 0.0
    #: Send ``body`` this many times: a huge answer without holding it in memory.
    repeat: int = 1
    #: Pause this long between bytes of the whole answer, status line included (a trickler).
    trickle_s: float = 0.0

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status, headers={"Location": location})

    @classmethod
    def gone(cls) -> Reply:
        return cls(410, b"gone")

    @classmethod
    def retry_after(cls, value: str | float, status: int = 503) -> Reply:
        """``value``: seconds, or an HTTP-date string."""
        text = value if isinstance(value, str) else str(int(value))
        return cls(status, headers={"Retry-After": text})


@dataclass(frozen=True)
class ReceivedMessage:
    """One request as the receiver saw it."""

    #: The ``webhook-id`` header.
    msg_id: str | None
    #: The payload's ``type`` (``job.succeeded``...), when the body is a JSON object.
    type: str | None
    payload: Any
    #: One of the configured secrets verified the signature (and the timestamp is fresh).
    verified: bool
    #: The id had already been answered 2xx.
    duplicate: bool
    #: The status this request was answered with.
    status: int
    received_monotonic: float
    received_at: datetime
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes
    path: str
    #: The sender's (address, port): one port for several messages means a reused connection.
    client: tuple[str, int]


class Receiver:
    """A scripted, verifying webhook receiver running in a background thread."""

    def __init__(
        self,
        secrets: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/webhook",
        default: Reply | int = 200,
        reject_unverified: bool | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS; ``reject_unverified``
        defaults to True when secrets are given."""
        self._hooks = [Webhook(s) for s in secrets]
        self._host = host
        self._port = port
        self._path = path if path.startswith("/") else "/" + path
        self._default = _as_reply(default)
        self._reject = bool(secrets) if reject_unverified is None else reject_unverified
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self._cond = threading.Condition()
        self._script: deque[Reply] = deque()
        self._received: list[ReceivedMessage] = []
        self._delivered: dict[str, None] = {}  # insertion-ordered set
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Receiver:
        """Listen (again) on the same port; returns self."""
        if self._server is not None:
            raise RuntimeError("the receiver is already running")
        server = _Server((self._host, self._port), _Handler, self)
        if self._tls is not None:
            # The handshake runs in the handler thread (setup), not in the accept loop.
            server.socket = self._tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"webhook-receiver:{self._port}"
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections; the port then refuses connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> Receiver:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("start the receiver first")
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        host = "localhost" if self._tls is not None and self._host == "127.0.0.1" else self._host
        return f"{scheme}://{host}:{self.port}{self._path}"

    # -- scripting ---------------------------------------------------------------------------

    def script(self, replies: Iterable[Reply | int]) -> None:
        """Answer the next verified requests with these, in order; then the default."""
        with self._cond:
            self._script.extend(_as_reply(r) for r in replies)

    def clear(self) -> None:
        """Forget received messages and the remaining script."""
        with self._cond:
            self._script.clear()
            self._received.clear()
            self._delivered.clear()

    # -- what arrived --------------------------------------------------------------------------

    @property
    def received(self) -> list[ReceivedMessage]:
        """Every request, in arrival order."""
        with self._cond:
            return list(self._received)

    def unique_ids(self) -> list[str]:
        """Ids of verified messages answered 2xx, first delivery order."""
        with self._cond:
            return list(self._delivered)

    def attempts(self, msg_id: str) -> int:
        """How many requests carried this id."""
        with self._cond:
            return sum(1 for m in self._received if m.msg_id == msg_id)

    @property
    def duplicates(self) -> Counter[str]:
        """id -> how many times it arrived again after a 2xx."""
        with self._cond:
            return Counter(m.msg_id for m in self._received if m.duplicate and m.msg_id)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until ``n`` distinct messages were delivered (verified, answered 2xx).

        Returns the first delivery of each; raises TimeoutError naming what did arrive.
        """

        def delivered() -> list[ReceivedMessage]:
            return [
                m
                for m in self._received
                if m.verified and not m.duplicate and 200 <= m.status < 300
            ]

        with self._cond:
            if not self._cond.wait_for(lambda: len(delivered()) >= n, timeout):
                got = [(m.msg_id, m.status, m.verified) for m in self._received]
                raise TimeoutError(f"{len(delivered())} of {n} messages after {timeout:g} s: {got}")
            return delivered()

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until ``n`` requests arrived, whatever their outcome."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._received) >= n, timeout):
                raise TimeoutError(f"{len(self._received)} of {n} requests after {timeout:g} s")
            return list(self._received)

    # -- called by the handler -------------------------------------------------------------

    def _verify(self, body: bytes, headers: Mapping[str, str]) -> bool:
        for hook in self._hooks:
            try:
                hook.verify(body, dict(headers), json_parse=False)
            except Exception:
                continue
            return True
        return False

    def _record(
        self, path: str, headers: Mapping[str, str], body: bytes, client: tuple[str, int]
    ) -> Reply:
        """Verify, decide the answer, and record the request; returns the answer."""
        verified = self._verify(body, headers)
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = None
        event = payload.get("type") if isinstance(payload, dict) else None
        msg_id = headers.get("webhook-id")
        with self._cond:
            if not verified and self._reject:
                reply = Reply(401, b"signature verification failed")
            else:
                reply = self._script.popleft() if self._script else self._default
            duplicate = verified and msg_id is not None and msg_id in self._delivered
            if verified and msg_id is not None and 200 <= reply.status < 300:
                self._delivered.setdefault(msg_id, None)
            self._received.append(
                ReceivedMessage(
                    msg_id=msg_id,
                    type=event if isinstance(event, str) else None,
                    payload=payload,
                    verified=verified,
                    duplicate=duplicate,
                    status=reply.status,
                    received_monotonic=time.monotonic(),
                    received_at=datetime.now(UTC),
                    headers=dict(headers),
                    body=body,
                    path=path,
                    client=client,
                )
            )
            self._cond.notify_all()
        return reply


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], receiver: Receiver
    ) -> None:
        self.receiver = receiver
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, sock: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    def drop_connections(self) -> None:
        with self._connections_lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
            self._connections.clear()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and hang up are part of the script; no tracebacks on stderr.
        log.debug("receiver connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.request, True)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)

    def finish(self) -> None:
        self.server.track(self.request, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("receiver: " + format, *args)

    def do_POST(self) -> None:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self._write(Reply(411, b"Content-Length required"))
            return
        length = int(length_text)
        if length > MAX_REQUEST_BYTES:
            self._write(Reply(413, b"too large"))
            self.close_connection = True
            return
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        client = (str(self.client_address[0]), int(self.client_address[1]))
        reply = self.server.receiver._record(self.path, headers, body, client)
        self._write(reply)

    def do_GET(self) -> None:
        self._write(Reply(405, b"POST only", headers={"Allow": "POST"}))

    def _write(self, reply: Reply) -> None:
        stopping = self.server.stopping
        if reply.delay_s and stopping.wait(reply.delay_s):
            self.close_connection = True
            return
        try:
            phrase = http.HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = "Unknown"
        headers = {
            "Server": "jobtracker-receiver",
            "Date": formatdate(usegmt=True),
            "Content-Type": "text/plain; charset=utf-8",
            **reply.headers,
            "Content-Length": str(len(reply.body) * reply.repeat),
        }
        head = f"HTTP/1.1 {reply.status} {phrase}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        try:
            if reply.trickle_s:
                for byte in head.encode("latin-1") + reply.body * reply.repeat:
                    if stopping.wait(reply.trickle_s):
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            else:
                self.wfile.write(head.encode("latin-1"))
                for _ in range(reply.repeat):
                    self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            # The client gave up (a timeout or a body cap): that is what the script tests.
            self.close_connection = True


def _as_reply(reply: Reply | int) -> Reply:
    return reply if isinstance(reply, Reply) else Reply(int(reply))
