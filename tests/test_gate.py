"""The pure decision core, with raw WSGI environs: no Flask involved."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from flask_tailnet.addresses import Policy, parse_networks
from flask_tailnet.gate import Gate, Outcome
from flask_tailnet.hosts import parse_host_rule

SERVE, AUTH, REFUSE = Outcome.SERVE, Outcome.AUTHENTICATE, Outcome.REFUSE


def environ(
    peer: str | None = "127.0.0.1", host: str | None = "localhost:5000", **headers: str
) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "wsgi.url_scheme": "http", "PATH_INFO": "/"}
    if peer is not None:
        env["REMOTE_ADDR"] = peer
    if host is not None:
        env["HTTP_HOST"] = host
    for name, value in headers.items():
        env["HTTP_" + name.upper()] = value
    return env


def gate(**kwargs: Any) -> Gate:
    return Gate(policy=Policy(kwargs.pop("network", "tailnet")), **kwargs)


BASIC = [
    pytest.param(environ(), SERVE, id="loopback-served"),
    pytest.param(environ("::1"), SERVE, id="loopback-v6-served"),
    pytest.param(environ("::ffff:127.0.0.1"), SERVE, id="mapped-loopback-served"),
    pytest.param(environ("100.64.0.7"), AUTH, id="tailnet-must-authenticate"),
    pytest.param(environ("fd7a:115c:a1e0::7"), AUTH, id="tailnet-v6-must-authenticate"),
    pytest.param(environ("8.8.8.8"), REFUSE, id="public-refused"),
    pytest.param(environ("192.168.1.4"), REFUSE, id="lan-refused-under-tailnet"),
    pytest.param(environ("100.115.92.9"), REFUSE, id="chromeos-refused"),
    pytest.param(environ(None), REFUSE, id="missing-remote-addr-is-not-loopback"),
    pytest.param(environ(""), REFUSE, id="empty-remote-addr-is-not-loopback"),
    pytest.param(environ("garbage"), REFUSE, id="garbage-remote-addr"),
    pytest.param(environ(host=None), REFUSE, id="missing-host"),
    pytest.param(environ(host=""), REFUSE, id="empty-host"),
    pytest.param(environ(host=":5000"), REFUSE, id="port-only-host"),
    pytest.param(environ(host="evil.example"), REFUSE, id="rebinding-on-loopback"),
    pytest.param(environ("100.64.0.7", host="evil.example"), REFUSE, id="rebinding-on-tailnet"),
]


@pytest.mark.parametrize(("env", "outcome"), BASIC)
def test_basic_table(env: dict[str, Any], outcome: Outcome) -> None:
    assert gate().admit(env).outcome is outcome


def test_peer_facts() -> None:
    local = gate().admit(environ("::ffff:127.0.0.1")).peer
    assert (local.address, local.method, local.local, local.via_proxy) == (
        "127.0.0.1",
        "loopback",
        True,
        False,
    )
    remote = gate().admit(environ("::ffff:100.64.0.7")).peer
    assert (remote.address, remote.method, remote.local) == ("100.64.0.7", "none", False)


def test_bypass_off_loopback_must_authenticate() -> None:
    assert gate(local_bypass=False).admit(environ()).outcome is AUTH


# Every proxy header, on a loopback peer and on a tailnet peer, with no trusted proxy configured:
# the request is never local, and the header never changes who the peer is.
PROXY_HEADERS = [
    {"X_FORWARDED_FOR": "127.0.0.1"},
    {"X_FORWARDED_FOR": "100.64.0.9"},
    {"X_FORWARDED_FOR": ""},
    {"X_FORWARDED_HOST": "localhost"},
    {"X_FORWARDED_PROTO": "https"},
    {"X_FORWARDED_PORT": "443"},
    {"X_FORWARDED_PREFIX": "/app"},
    {"X_REAL_IP": "127.0.0.1"},
    {"FORWARDED": "for=127.0.0.1"},
    {"VIA": "1.1 nginx"},
    {"TAILSCALE_USER_LOGIN": "alice@example.com"},
    {"TAILSCALE_USER_NAME": "Alice"},
    {"TAILSCALE_USER_PROFILE_PIC": "https://example.com/a.jpg"},
    {"TAILSCALE_HEADERS_INFO": "https://tailscale.com/s/serve-headers"},
    {"TAILSCALE_APP_CAPABILITIES": "{}"},
]


@pytest.mark.parametrize("headers", PROXY_HEADERS, ids=lambda h: next(iter(h)).lower())
@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "100.64.0.7"])
def test_untrusted_proxy_headers_are_ignored_and_never_local(
    peer: str, headers: dict[str, str]
) -> None:
    verdict = gate().admit(environ(peer, **headers))
    assert verdict.outcome is AUTH
    assert verdict.peer.address == peer.replace("::1", "::1")
    assert verdict.peer.local is False
    assert verdict.peer.via_proxy is True


@pytest.mark.parametrize(
    "headers", PROXY_HEADERS[:3], ids=["xff-loopback", "xff-tailnet", "xff-empty"]
)
def test_proxy_headers_do_not_admit_an_outsider(headers: dict[str, str]) -> None:
    assert gate().admit(environ("8.8.8.8", **headers)).outcome is REFUSE


def test_untrusted_proxy_warning_once_and_names_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = gate()
    with caplog.at_level(logging.WARNING, "flask_tailnet"):
        for _ in range(3):
            g.admit(environ(X_FORWARDED_FOR="100.64.0.9"))
    warnings = [r for r in caplog.records if "TAILNET_TRUSTED_PROXIES" in r.getMessage()]
    assert len(warnings) == 1


SERVE_PROXY = parse_networks(["127.0.0.1"])
TRUSTED = [
    pytest.param(
        environ(X_FORWARDED_FOR="100.64.0.9"), AUTH, "100.64.0.9", id="serve-tailnet-client"
    ),
    pytest.param(
        environ(X_FORWARDED_FOR="fd7a:115c:a1e0::9"),
        AUTH,
        "fd7a:115c:a1e0::9",
        id="serve-v6-client",
    ),
    pytest.param(environ(X_FORWARDED_FOR="8.8.8.8"), REFUSE, None, id="public-client-refused"),
    pytest.param(
        environ(X_FORWARDED_FOR="::1"),
        AUTH,
        "::1",
        id="proxied-loopback-still-authenticates",
    ),
    pytest.param(
        environ(X_FORWARDED_FOR="100.64.0.9, 127.0.0.1"), AUTH, "100.64.0.9", id="skip-trusted-hops"
    ),
    pytest.param(
        environ(X_FORWARDED_FOR="127.0.0.1, 100.64.0.9"),
        AUTH,
        "100.64.0.9",
        id="spoofed-left-entry-ignored",
    ),
    pytest.param(
        environ(X_FORWARDED_FOR="8.8.8.8, 100.64.0.9"),
        AUTH,
        "100.64.0.9",
        id="rightmost-untrusted-wins",
    ),
    pytest.param(
        environ(X_FORWARDED_FOR="100.64.0.9, garbage"), REFUSE, None, id="garbage-hop-refused"
    ),
    pytest.param(environ(X_FORWARDED_FOR=""), REFUSE, None, id="empty-xff-refused"),
    pytest.param(
        environ(TAILSCALE_USER_LOGIN="alice@example.com"), REFUSE, None, id="no-xff-no-client"
    ),
    pytest.param(
        environ(X_FORWARDED_FOR="127.0.0.1, 127.0.0.1"), REFUSE, None, id="only-trusted-hops"
    ),
    pytest.param(
        environ(X_FORWARDED_FOR=",".join(["100.64.0.9"] * 40)), REFUSE, None, id="absurd-chain"
    ),
    pytest.param(
        environ(X_FORWARDED_FOR="100.64.0.9", TAILSCALE_FUNNEL_REQUEST="?1"),
        REFUSE,
        None,
        id="funnel-is-public",
    ),
    pytest.param(environ(), SERVE, "127.0.0.1", id="proxy-host-itself-without-headers-is-local"),
]


@pytest.mark.parametrize(("env", "outcome", "address"), TRUSTED)
def test_trusted_proxy_table(env: dict[str, Any], outcome: Outcome, address: str | None) -> None:
    verdict = gate(trusted_proxies=SERVE_PROXY).admit(env)
    assert verdict.outcome is outcome
    if outcome is not REFUSE:
        assert verdict.peer.address == address
    if outcome is AUTH:
        assert verdict.peer.local is False
        assert verdict.peer.via_proxy is True


@pytest.mark.parametrize("trusted", [SERVE_PROXY, ()], ids=["trusted-proxy", "untrusted-peer"])
@pytest.mark.parametrize("peer", ["127.0.0.1", "100.64.0.7"])
def test_funnel_marked_request_is_refused_from_anyone(peer: str, trusted: tuple[Any, ...]) -> None:
    env = environ(peer, X_FORWARDED_FOR="100.64.0.9", TAILSCALE_FUNNEL_REQUEST="?1")
    assert gate(trusted_proxies=trusted).admit(env).outcome is REFUSE


def test_funnel_under_any_policy_must_authenticate() -> None:
    env = environ(X_FORWARDED_FOR="8.8.8.8", TAILSCALE_FUNNEL_REQUEST="?1")
    verdict = gate(network="any", trusted_proxies=SERVE_PROXY).admit(env)
    assert verdict.outcome is AUTH
    assert verdict.peer.address == "8.8.8.8"


def test_allowlist_applies_to_forwarded_client() -> None:
    g = Gate(policy=Policy("tailnet", parse_networks(["100.64.0.9"])), trusted_proxies=SERVE_PROXY)
    assert g.admit(environ(X_FORWARDED_FOR="100.64.0.9")).outcome is AUTH
    assert g.admit(environ(X_FORWARDED_FOR="100.64.0.10")).outcome is REFUSE


def test_proxyfix_outside_the_guard_cannot_fake_the_socket() -> None:
    """If werkzeug's ProxyFix already rewrote REMOTE_ADDR, the gate uses the saved socket values."""
    env = environ("127.0.0.1", host="localhost", X_FORWARDED_FOR="127.0.0.1")
    env["werkzeug.proxy_fix.orig"] = {"REMOTE_ADDR": "100.64.0.7", "HTTP_HOST": "localhost"}
    verdict = gate().admit(env)
    assert verdict.outcome is AUTH
    assert verdict.peer.address == "100.64.0.7"
    env["werkzeug.proxy_fix.orig"] = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "evil.example"}
    assert gate().admit(env).outcome is REFUSE


# Cross-site requests to the loopback bypass (any page can make a browser POST to 127.0.0.1).
CROSS_SITE = [
    pytest.param("GET", {"ORIGIN": "http://evil.example"}, SERVE, id="get-is-safe"),
    pytest.param("HEAD", {"SEC_FETCH_SITE": "cross-site"}, SERVE, id="head-is-safe"),
    pytest.param("OPTIONS", {"ORIGIN": "http://evil.example"}, SERVE, id="options-is-safe"),
    pytest.param("POST", {}, SERVE, id="post-without-origin-curl"),
    pytest.param("POST", {"ORIGIN": "http://localhost:5000"}, SERVE, id="post-same-origin"),
    pytest.param("POST", {"ORIGIN": "http://evil.example"}, REFUSE, id="post-cross-origin"),
    pytest.param("POST", {"ORIGIN": "null"}, REFUSE, id="post-null-origin"),
    pytest.param("POST", {"ORIGIN": "http://localhost:8080"}, REFUSE, id="post-other-port"),
    pytest.param("POST", {"ORIGIN": "https://localhost:5000"}, REFUSE, id="post-other-scheme"),
    pytest.param("POST", {"SEC_FETCH_SITE": "cross-site"}, REFUSE, id="post-sec-fetch-cross-site"),
    pytest.param(
        "POST", {"SEC_FETCH_SITE": "Cross-Site"}, REFUSE, id="post-sec-fetch-cross-site-case"
    ),
    pytest.param("POST", {"SEC_FETCH_SITE": "same-origin"}, SERVE, id="post-sec-fetch-same-origin"),
    pytest.param(
        "POST",
        {"ORIGIN": "null", "SEC_FETCH_SITE": "same-origin"},
        SERVE,
        id="post-null-origin-from-no-referrer-page",
    ),
    pytest.param(
        "POST",
        {"ORIGIN": "http://localhost:8080", "SEC_FETCH_SITE": "same-site"},
        REFUSE,
        id="post-same-site-other-port",
    ),
    pytest.param(
        "POST", {"ORIGIN": "null", "SEC_FETCH_SITE": "none"}, REFUSE, id="post-null-origin-none"
    ),
    pytest.param(
        "POST",
        {"ORIGIN": "http://localhost:5000", "SEC_FETCH_SITE": "cross-site"},
        REFUSE,
        id="post-both-signals",
    ),
    pytest.param("PUT", {"ORIGIN": "http://evil.example"}, REFUSE, id="put-cross-origin"),
    pytest.param("DELETE", {"ORIGIN": "http://evil.example"}, REFUSE, id="delete-cross-origin"),
    pytest.param("PATCH", {"SEC_FETCH_SITE": "cross-site"}, REFUSE, id="patch-cross-site"),
    pytest.param(
        "PROPFIND", {"ORIGIN": "http://evil.example"}, REFUSE, id="unknown-method-is-unsafe"
    ),
    pytest.param(
        "GET",
        {"UPGRADE": "websocket", "ORIGIN": "http://evil.example"},
        REFUSE,
        id="websocket-cross-origin",
    ),
    pytest.param(
        "GET",
        {"UPGRADE": "websocket", "ORIGIN": "http://localhost:5000"},
        SERVE,
        id="websocket-same-origin",
    ),
    pytest.param(
        "GET",
        {"UPGRADE": "websocket", "SEC_FETCH_SITE": "cross-site"},
        REFUSE,
        id="websocket-sec-fetch",
    ),
]


@pytest.mark.parametrize(("method", "headers", "outcome"), CROSS_SITE)
def test_cross_site_on_loopback(method: str, headers: dict[str, str], outcome: Outcome) -> None:
    env = environ(**headers)
    env["REQUEST_METHOD"] = method
    assert gate().admit(env).outcome is outcome


def test_cross_site_does_not_change_remote_outcome() -> None:
    env = environ("100.64.0.7", ORIGIN="http://evil.example")
    env["REQUEST_METHOD"] = "POST"
    assert gate().admit(env).outcome is AUTH


def test_allowed_hosts_and_trusted_names() -> None:
    g = gate(allowed_hosts=(parse_host_rule(".tail1a2b3.ts.net"),))
    assert g.admit(environ("100.64.0.7", host="laptop.tail1a2b3.ts.net")).outcome is AUTH
    assert g.admit(environ("100.64.0.7", host="laptop.tail9.ts.net")).outcome is REFUSE


def test_peer_cache_is_bounded() -> None:
    g = gate(network="any")
    for n in range(10_000):
        g.admit(environ(f"8.8.{n // 256 % 256}.{n % 256}"))
    assert len(g._routes) <= 4096
