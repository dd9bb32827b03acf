"""Which callback URLs jobtracker will POST to.

Two checks, both raising :class:`~worker.errors.UnsafeCallbackURL`:

- :func:`validate_callback_url` — at enqueue, pure (no DNS): http(s) only, a host, no userinfo, a
  valid port, and no literal address in an always-refused range.
- :func:`resolve_callback_url` / :func:`check_url` — at delivery: resolve the host and refuse if
  *any* address is link-local (169.254.0.0/16 and fe80::/10, where cloud metadata services live),
  a known metadata address (100.100.100.200, fd00:ec2::254), unspecified, multicast or reserved.
  With ``block_private`` also private, loopback, ULA, CGNAT and every other non-global address.

Private addresses are allowed by default because callbacks often go to internal services.
The transport (:mod:`worker.webhooks.transport`) connects only to the addresses checked here, so
a DNS answer that changes between check and connect (rebinding) cannot redirect the POST.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from worker.errors import JobTrackerError, UnsafeCallbackURL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
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


@dataclass(frozen=True)
class ResolvedURL:
    """A checked callback URL and the only addresses the transport may connect to."""

    url: str
    scheme: str
    #: Lower-case host name or address, without IPv6 brackets.
    host: str
    port: int
    addresses: tuple[str, ...]


def validate_callback_url(url: str) -> str:
    """Check a callback URL's syntax (no DNS) and return it stripped of surrounding blanks."""
    parts = _split(url)
    literal = _literal_address(parts.hostname or "")
    if literal is not None:
        reason = _refusal(literal, block_private=False)
        if reason:
            raise UnsafeCallbackURL(f"callback URL refused: {literal} is {reason}")
    return url.strip()


def check_url(url: str, *, block_private: bool, timeout_s: float = 5.0) -> None:
    """Refuse ``url`` unless every address its host resolves to is allowed."""
    resolve_callback_url(url, block_private=block_private, timeout_s=timeout_s)


def resolve_callback_url(url: str, *, block_private: bool, timeout_s: float = 5.0) -> ResolvedURL:
    """Validate, resolve and check ``url``; the result pins the addresses to connect to.

    Raises :class:`UnsafeCallbackURL` (permanent for this message) or
    :class:`CallbackResolutionError` (DNS failed or took longer than ``timeout_s``; transient).
    """
    clean = validate_callback_url(url)
    parts = _split(clean)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    addresses = _resolve(host, port, timeout_s)
    for text in addresses:
        address = _parse_address(text)
        reason = _refusal(address, block_private=block_private)
        if reason:
            shown = host if host == text else f"{host} resolves to {text}, which"
            raise UnsafeCallbackURL(f"callback URL refused: {shown} is {reason}")
    return ResolvedURL(clean, parts.scheme.lower(), host, port, addresses)


def loggable_url(url: str) -> str:
    """A callback URL for logs: tokens live in the query and fragment, so both are dropped."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(malformed URL)"
    return parts._replace(query="", fragment="").geturl()


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
    try:
        return _parse_address(host)
    except ValueError:
        return None


def _parse_address(text: str) -> IPAddress:
    # getaddrinfo gives link-local IPv6 addresses with a zone ("fe80::1%eth0").
    return ipaddress.ip_address(text.split("%", 1)[0])


def _refusal(address: IPAddress, *, block_private: bool) -> str | None:
    """Why ``address`` is refused, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4(address):
            reason = _refusal(embedded, block_private=block_private)
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
    if block_private:
        if address.is_loopback:
            return "a loopback address (JOBTRACKER_WEBHOOK_BLOCK_PRIVATE is on)"
        if address in _CGNAT:
            return "a carrier-grade NAT address (JOBTRACKER_WEBHOOK_BLOCK_PRIVATE is on)"
        if address.is_private or not address.is_global:
            return "a private address (JOBTRACKER_WEBHOOK_BLOCK_PRIVATE is on)"
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
