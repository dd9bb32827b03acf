"""Callback URL checks. Names are resolved through a stubbed getaddrinfo; literals need no DNS."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from worker.errors import UnsafeCallbackURL
from worker.webhooks.urls import (
    URL_SHAPE,
    CallbackResolutionError,
    Reach,
    check_url,
    destination,
    loggable_url,
    parse_networks,
    resolve_callback_url,
    validate_callback_url,
)

AddrInfo = list[tuple[Any, ...]]


def fake_dns(
    monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]
) -> Callable[..., AddrInfo]:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> AddrInfo:
        if host not in table:
            return real(host, port, *args, **kwargs)
        if not table[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in table[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return getaddrinfo


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/jobtracker?token=abc",
        "http://127.0.0.1:8080/cb",
        "http://10.1.2.3/cb",
        "HTTPS://EXAMPLE.COM",
        "http://[2001:db8::1]:8443/x",
        "  http://example.com/padded  ",
    ],
)
def test_valid_callback_urls(url: str) -> None:
    assert validate_callback_url(url) == url.strip()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("example.com/callback", "scheme"),
        ("http://", "no host"),
        ("http:///path", "no host"),
        ("https://user:pass@example.com/", "user name or password"),
        ("https://token@example.com/", "user name or password"),
        ("http://example.com:99999/", "malformed"),
        ("http://example.com:0/", "port"),
        ("http://example.com:http/", "malformed"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com/\r\nX-Injected: 1", "whitespace"),
        ("", "empty"),
        ("http://example.com/" + "a" * 2100, "longer"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fe80::1%25eth0]/", "link-local"),
        ("http://100.100.100.200/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        # The same metadata address in the other IPv6 forms that carry an IPv4 address.
        ("http://[::a9fe:a9fe]/", "link-local"),  # IPv4-compatible
        ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64
        ("http://[2002:a9fe:a9fe::1]/", "link-local"),  # 6to4
        ("http://[2001:0:4136:e378:8000:63bf:5601:5601]/", "link-local"),  # Teredo client
        ("http://[2002:6464:64c8::]/", "metadata"),  # 6to4 of 100.100.100.200
        ("http://0.0.0.0:8000/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://255.255.255.255/", "reserved"),
    ],
)
def test_refused_callback_urls_say_why(url: str, reason: str) -> None:
    with pytest.raises(UnsafeCallbackURL, match=reason):
        validate_callback_url(url)


def test_unsafe_url_is_a_value_error_for_enqueue_code() -> None:
    with pytest.raises(ValueError):
        validate_callback_url("ftp://x")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "192.168.1.1", "::1", "fc00::1"])
def test_private_addresses_are_allowed_by_default(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    check_url(f"http://{host}:9/", block_private=False)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "::ffff:10.0.0.1",
        "192.0.2.10",
    ],
)
def test_block_private_refuses_non_global_addresses(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(UnsafeCallbackURL, match="BLOCK_PRIVATE"):
        check_url(f"http://{host}/", block_private=True)


def test_public_address_passes_block_private() -> None:
    resolved = resolve_callback_url("https://93.184.216.34/cb", block_private=True)
    assert resolved.addresses == ("93.184.216.34",)
    assert (resolved.scheme, resolved.port) == ("https", 443)


def test_host_resolving_to_metadata_is_refused_even_when_private_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"evil.example": ["93.184.216.34", "169.254.169.254"]})
    with pytest.raises(UnsafeCallbackURL) as info:
        check_url("http://evil.example/cb", block_private=False)
    assert "evil.example resolves to 169.254.169.254" in str(info.value)


def test_resolution_keeps_every_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"svc.internal": ["10.0.0.7", "10.0.0.8", "10.0.0.7"]})
    resolved = resolve_callback_url("http://svc.internal:8080/cb", block_private=False)
    assert resolved.host == "svc.internal"
    assert resolved.port == 8080
    assert resolved.addresses == ("10.0.0.7", "10.0.0.8")
    with pytest.raises(UnsafeCallbackURL, match=r"svc\.internal resolves to 10\.0\.0\.7"):
        check_url("http://svc.internal:8080/cb", block_private=True)


def test_unknown_host_is_a_transient_resolution_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"nowhere.example": []})
    with pytest.raises(CallbackResolutionError, match=r"cannot resolve nowhere\.example"):
        check_url("http://nowhere.example/", block_private=False)


def test_slow_resolver_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hanging(*args: Any, **kwargs: Any) -> AddrInfo:
        release.wait(10)
        raise socket.gaierror("late")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        with pytest.raises(CallbackResolutionError, match=r"longer than 0\.2 s"):
            check_url("http://slow.example/", block_private=False, timeout_s=0.2)
    finally:
        release.set()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@internal/x?token=t#f", "http://internal/x"),
        ("https://token@hooks.example.com:8443/cb", "https://hooks.example.com:8443/cb"),
        ("http://a:b@[::1]:9/", "http://[::1]:9/"),
        ("http://plain.example/path", "http://plain.example/path"),
    ],
)
def test_loggable_url_drops_user_info_query_and_fragment(url: str, shown: str) -> None:
    assert loggable_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]x/",  # Python reads ::1 out of these; the database and urllib3 do not
        "http://a[::1]/",
        "http://[v1.x]/",
        "http://a]b/",
        "http://h:123456/",
    ],
)
def test_urls_the_database_would_refuse_are_refused_here_too(url: str) -> None:
    assert not URL_SHAPE.fullmatch(url)
    with pytest.raises(UnsafeCallbackURL):
        validate_callback_url(url)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
    ],
)
def test_legacy_ipv4_forms_are_checked_as_the_address_they_reach(host: str, address: str) -> None:
    """The resolver reads these as addresses, so they are literals, refused at enqueue."""
    with pytest.raises(UnsafeCallbackURL, match=f"{address} is a .*(loopback|private)"):
        validate_callback_url(f"http://{host}:8080/x", Reach(block_private=True))
    assert validate_callback_url(f"http://{host}:8080/x") == f"http://{host}:8080/x"


def test_a_reach_allows_its_networks_and_never_the_always_refused_ones() -> None:
    reach = Reach(
        block_private=True,
        allowed=parse_networks(["10.0.0.0/8", "127.0.0.1/32", "169.254.0.0/16", "bad"]),
        reason="not allowed for this client",
    )
    validate_callback_url("http://10.20.30.40/x", reach)
    validate_callback_url("http://127.0.0.1:8/x", reach)
    with pytest.raises(UnsafeCallbackURL, match="not allowed for this client"):
        validate_callback_url("http://127.0.0.2/x", reach)
    with pytest.raises(UnsafeCallbackURL, match="link-local"):
        validate_callback_url("http://169.254.169.254/x", reach)
    with pytest.raises(UnsafeCallbackURL, match="carrier-grade NAT"):
        validate_callback_url("http://100.64.1.1/x", reach)


def test_destination_is_host_and_port() -> None:
    assert destination("https://Hooks.Example.com/x") == ("hooks.example.com", 443)
    assert destination("http://h:8080") == ("h", 8080)
    assert destination("http://[::1]:9/") == ("::1", 9)
    assert destination("http://h./") == ("h", 80)
    assert destination("http://h:bad/") is None
