"""Which callback URLs jobtracker will POST to.

Two checks, both raising :class:`~worker.errors.UnsafeCallbackURL`:

- :func:`validate_callback_url` — at enqueue, pure (no DNS): http(s) only, a host, no userinfo, a
  valid port, the shape the database also enforces (:data:`URL_SHAPE`), and no literal address
  the :class:`Reach` refuses (IPv4 in any form ``getaddrinfo`` reads: ``127.1``, ``2130706433``).
- :func:`resolve_callback_url` / :func:`check_url` — at delivery: resolve the host and refuse if
  *any* address is link-local (169.254.0.0/16 and fe80::/10, where cloud metadata services live),
  a known metadata address (100.100.100.200, fd00:ec2::254), unspecified, multicast or reserved.
  With ``Reach.block_private`` also private, loopback, ULA, CGNAT and every other non-global
  address, except in the networks ``Reach.allowed`` names.

Which :class:`Reach` applies is the caller's decision: callbacks of jobs that API clients
enqueue reach only public addresses plus the networks an operator allowed for that client;
the other ways in follow ``JOBTRACKER_WEBHOOK_BLOCK_PRIVATE``, off by default because their
callbacks often go to internal services. Host names are checked only at delivery: an answer at
enqueue says nothing about the answer when the POST goes out, and a lookup there would let a
slow resolver hold API threads. The transport (:mod:`worker.webhooks.transport`) connects only
to the addresses checked here, so a DNS answer that changes between check and connect
(rebinding) cannot redirect the POST.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from worker.errors import JobTrackerError, UnsafeCallbackURL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
#: What the database accepts as a callback URL (``ck_tracked_jobs_callback_url_http``, migration
#: 0009, on PostgreSQL and SQLite alike): http(s), then a host name or IPv4 address (no
#: brackets, colons, ``@`` or blanks) or an IPv6 address in brackets, an optional ``:`` and port
#: of up to 5 digits, then nothing or a path, query or fragment; no blanks anywhere; at most
#: :data:`MAX_URL_LENGTH` characters. The checks below are finer; this keeps them from
#: accepting a URL the table would refuse.
URL_SHAPE = re.compile(
    r"https?://(?:\[[0-9a-f:.]+\]|[^][/?#@: \t\n\v\f\r]+)(?::[0-9]{0,5})?"
    r"(?:[/?#][^ \t\n\v\f\r]*)?",
    re.IGNORECASE | re.ASCII,
)
#: What ``getaddrinfo`` may read as an IPv4 address in a legacy form (``127.1``, ``0x7f.1``).
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+", re.IGNORECASE | re.ASCII)
#: Cloud metadata endpoints outside the link-local ranges: Alibaba Cloud, AWS's IPv6 IMDS.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: ``::a.b.c.d`` (not ``::`` or ``::1``, which are checked as themselves).
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class CallbackResolutionError(JobTrackerError):
    """The callback host could not be resolved; the attempt will be retried."""


#: Why private addresses are refused, when the setting is the reason.
BLOCK_PRIVATE_REASON = "JOBTRACKER_WEBHOOK_BLOCK_PRIVATE is on"


@dataclass(frozen=True)
class Reach:
    """Which addresses a callback may go to, beyond the ranges every callback is refused.

    ``block_private`` refuses loopback, private, ULA, CGNAT and every other non-global address,
    except those inside one of ``allowed``; ``reason`` ends the refusal's message.
    """

    block_private: bool = False
    allowed: tuple[IPNetwork, ...] = ()
    reason: str = BLOCK_PRIVATE_REASON

    def permits(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.allowed)


@dataclass(frozen=True)
class ResolvedURL:
    """A checked callback URL and the only addresses the transport may connect to."""

    url: str
    scheme: str
    #: Lower-case host name or address, without IPv6 brackets.
    host: str
    port: int
    addresses: tuple[str, ...]


def validate_callback_url(url: str, reach: Reach | None = None) -> str:
    """Check a callback URL's syntax (no DNS) and return it stripped of surrounding blanks.

    A literal address is checked against ``reach`` (by default only the always-refused ranges).
    """
    parts = _split(url)
    literal = _literal_address((parts.hostname or "").rstrip("."))
    if literal is not None:
        reason = _refusal(literal, reach or Reach())
        if reason:
            raise UnsafeCallbackURL(f"callback URL refused: {literal} is {reason}")
    if not URL_SHAPE.fullmatch(url.strip()):
        raise UnsafeCallbackURL(
            "callback URL is malformed: its host must be a name, an IPv4 address or an IPv6 "
            "address in brackets, optionally followed by :port"
        )
    return url.strip()


def check_url(
    url: str, *, block_private: bool = False, reach: Reach | None = None, timeout_s: float = 5.0
) -> None:
    """Refuse ``url`` unless every address its host resolves to is allowed."""
    resolve_callback_url(url, block_private=block_private, reach=reach, timeout_s=timeout_s)


def resolve_callback_url(
    url: str, *, block_private: bool = False, reach: Reach | None = None, timeout_s: float = 5.0
) -> ResolvedURL:
    """Validate, resolve and check ``url``; the result pins the addresses to connect to.

    ``reach`` says which addresses are allowed (default: ``Reach(block_private)``). Raises
    :class:`UnsafeCallbackURL` (permanent for this message) or :class:`CallbackResolutionError`
    (DNS failed or took longer than ``timeout_s``; transient).
    """
    reach = reach or Reach(block_private=block_private)
    clean = validate_callback_url(url, reach)
    parts = _split(clean)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    addresses = _resolve(host, port, timeout_s)
    for text in addresses:
        address = _parse_address(text)
        reason = _refusal(address, reach)
        if reason:
            shown = host if host == text else f"{host} resolves to {text}, which"
            raise UnsafeCallbackURL(f"callback URL refused: {shown} is {reason}")
    return ResolvedURL(clean, parts.scheme.lower(), host, port, addresses)


def destination(url: str) -> tuple[str, int] | None:
    """The (host, port) a callback URL goes to, as the delivery threads count receivers; None
    for a URL that cannot be parsed (its attempt is refused anyway)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except (ValueError, AttributeError):
        return None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return None
    return host, port or (443 if parts.scheme.lower() == "https" else 80)


def loggable_url(url: str) -> str:
    """A callback URL for logs: tokens live in the user info, the query and the fragment, so
    all three are dropped."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(malformed URL)"
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks as stored (``10.0.0.0/8``); a stored value that no longer parses is skipped."""
    networks: list[IPNetwork] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError:
            continue
    return tuple(networks)


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise UnsafeCallbackURL("callback URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeCallbackURL(f"callback URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeCallbackURL("callback URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeCallbackURL(f"callback URL is malformed: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsafeCallbackURL(
            f"callback URL scheme must be http or https, not {parts.scheme or 'missing'!r}"
        )
    if "@" in parts.netloc:
        # Credentials in the URL would be stored, shown by the CLI and logged; use a token
        # in the path or query instead.
        raise UnsafeCallbackURL("callback URL must not contain a user name or password")
    if not parts.hostname:
        raise UnsafeCallbackURL("callback URL has no host")
    if port == 0:
        raise UnsafeCallbackURL("callback URL port must be between 1 and 65535")
    return parts


def _literal_address(host: str) -> IPAddress | None:
    """``host`` as an address, if it is one; legacy IPv4 forms included, because the resolver
    reads them as addresses (``127.1`` is 127.0.0.1) rather than as names."""
    try:
        return _parse_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _parse_address(text: str) -> IPAddress:
    # getaddrinfo gives link-local IPv6 addresses with a zone ("fe80::1%eth0").
    return ipaddress.ip_address(text.split("%", 1)[0])


def _refusal(address: IPAddress, reach: Reach) -> str | None:
    """Why ``address`` is refused, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4(address):
            reason = _refusal(embedded, reach)
            if reason:
                return reason
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address.is_reserved:
        return "a reserved address"
    if reach.block_private and not reach.permits(address):
        if address.is_loopback:
            return f"a loopback address ({reach.reason})"
        if address in _CGNAT:
            return f"a carrier-grade NAT address ({reach.reason})"
        if address.is_private or not address.is_global:
            return f"a private address ({reach.reason})"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries, each of which may route to it: IPv4-mapped
    (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``), IPv4-compatible (``::a.b.c.d``,
    deprecated but still routed by some stacks), 6to4 (``2002:AABB:CCDD::``) and Teredo (its
    server and its obfuscated client address)."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _resolve(host: str, port: int, timeout_s: float) -> tuple[str, ...]:
    """The host's addresses in the resolver's preferred order, within ``timeout_s``.

    ``getaddrinfo`` has no timeout of its own, so it runs in a daemon thread we stop waiting for.
    """
    result: list[str] = []
    failure: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result.extend(dict.fromkeys(str(info[4][0]) for info in infos))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=lookup, name="webhook-dns", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise CallbackResolutionError(f"resolving {host} took longer than {timeout_s:g} s")
    if failure:
        exc = failure[0]
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CallbackResolutionError(f"cannot resolve {host}: {reason}")
    if not result:
        raise CallbackResolutionError(f"{host} has no address")
    return tuple(result)
