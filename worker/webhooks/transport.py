"""The HTTP session callbacks go through: pinned addresses and a total deadline.

requests resolves the host again when it connects, so checking a URL's addresses first and then
calling ``requests.post(url)`` leaves a window for DNS rebinding (a name that answers a public
address to the check and 169.254.169.254 to the connect). Here the connection classes take the
addresses from the current :class:`Route` instead of resolving; the Host header, TLS SNI and the
certificate check still use the host name. A connection whose peer is not one of the route's
addresses is refused, so if a urllib3 upgrade ever bypassed the pin, sends would fail loudly
rather than go unpinned.

requests' read timeout applies to each socket read, so a receiver that trickles bytes can hold a
worker forever. A :class:`~worker.http.Watchdog` shuts the attempt's sockets down at the deadline,
which ends any blocked read.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

from worker.http import PoolAdapter, Watchdog
from worker.webhooks.urls import ResolvedURL


@dataclass(frozen=True)
class Route:
    """Where the current attempt may connect."""

    host: str
    addresses: tuple[str, ...]
    watchdog: Watchdog


_ROUTE: ContextVar[Route | None] = ContextVar("jobtracker_webhook_route", default=None)


@contextmanager
def pinned(resolved: ResolvedURL, *, deadline_s: float) -> Iterator[Watchdog]:
    """Within the block, sessions from :func:`make_session` connect only to ``resolved``'s
    addresses, and their sockets are shut down ``deadline_s`` from now."""
    watchdog = Watchdog(deadline_s)
    token = _ROUTE.set(Route(resolved.host, resolved.addresses, watchdog))
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.cancel()
        _ROUTE.reset(token)


def make_session() -> requests.Session:
    """A session for callbacks: pinned connections, no proxies or .netrc from the environment."""
    session = requests.Session()
    # trust_env would add proxies and .netrc credentials from the host environment.
    session.trust_env = False
    adapter = PinnedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _current_route(conn: HTTPConnection) -> Route:
    route = _ROUTE.get()
    if route is None:
        raise RuntimeError("a webhook session connects only inside transport.pinned()")
    if conn.host.strip("[]").rstrip(".").lower() != route.host:
        raise RuntimeError(f"connection to {conn.host} is not the pinned host {route.host}")
    return route


def _pinned_socket(conn: HTTPConnection, new_conn: Callable[[], socket.socket]) -> socket.socket:
    route = _current_route(conn)
    # urllib3 dials ``_dns_host``; ``host`` (Host header, SNI, certificate check) is read from
    # it too, so it is swapped only while the TCP connection is made.
    original = conn._dns_host
    error: NewConnectionError | None = None
    try:
        for address in route.addresses:
            conn._dns_host = address
            try:
                sock = new_conn()
            except NewConnectionError as exc:  # refused or unreachable: try the next address
                error = exc
                continue
            if not _same_address(sock.getpeername()[0], address):
                sock.close()
                raise NewConnectionError(conn, "connected to an address that was not checked")
            return sock
    finally:
        conn._dns_host = original
    assert error is not None  # addresses is never empty
    raise error


def _check_reused(conn: HTTPConnection) -> None:
    """A kept-alive connection is reused only if it goes to one of this route's addresses."""
    route = _current_route(conn)
    if conn.sock is None:
        return
    try:
        peer = conn.sock.getpeername()[0]
    except OSError:
        peer = None
    if peer is None or not any(_same_address(peer, a) for a in route.addresses):
        conn.close()
        conn.connect()
    else:
        route.watchdog.watch(conn.sock)


class _Pinned:
    """Connects only to the route's checked addresses and arms its deadline watchdog.

    Mixed into urllib3's HTTP and HTTPS connection classes (listed first, so these methods
    wrap theirs).
    """

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        return _pinned_socket(self, super()._new_conn)  # type: ignore[arg-type,misc]

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.sock is not None:
            _current_route(self).watchdog.watch(self.sock)  # type: ignore[arg-type]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _check_reused(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _PinnedHTTPConnection(_Pinned, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_Pinned, HTTPSConnection):
    pass


class _PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class PinnedAdapter(PoolAdapter):
    """An adapter whose connections honour the current :class:`Route`."""

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A proxy resolves the host itself, which would defeat the address check.
        raise requests.exceptions.InvalidProxyURL("callbacks are never sent through a proxy")

    http_pool = _PinnedHTTPConnectionPool
    https_pool = _PinnedHTTPSConnectionPool


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return False
