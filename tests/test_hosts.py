"""The Host check (DNS rebinding) and the same-origin test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_tailnet.addresses import Policy
from flask_tailnet.hosts import HostCheck, parse_host_rule, same_origin, split_host

RULES = (parse_host_rule("myhost.example.org"), parse_host_rule(".tail1a2b3.ts.net"))
CHECK = HostCheck(RULES, Policy("tailnet").admits)

HOSTS = [
    # accepted
    pytest.param("localhost", True, id="localhost"),
    pytest.param("localhost:5000", True, id="localhost-port"),
    pytest.param("LOCALHOST:5000", True, id="localhost-upper"),
    pytest.param("localhost.", True, id="localhost-trailing-dot"),
    pytest.param("127.0.0.1", True, id="loopback-v4"),
    pytest.param("127.0.0.1:8080", True, id="loopback-v4-port"),
    pytest.param("127.3.4.5:1", True, id="loopback-v4-other"),
    pytest.param("[::1]", True, id="bracketed-v6-loopback"),
    pytest.param("[::1]:5000", True, id="bracketed-v6-loopback-port"),
    pytest.param("[::ffff:127.0.0.1]:5000", True, id="bracketed-mapped-loopback"),
    pytest.param("100.64.0.1:5000", True, id="tailnet-ip-literal"),
    pytest.param("[fd7a:115c:a1e0::1]:5000", True, id="tailnet-v6-literal"),
    pytest.param("myhost.example.org", True, id="listed-name"),
    pytest.param("MyHost.Example.ORG:443", True, id="listed-name-upper-port"),
    pytest.param("myhost.example.org.", True, id="listed-name-trailing-dot"),
    pytest.param("laptop.tail1a2b3.ts.net", True, id="listed-subdomain"),
    pytest.param("a.b.tail1a2b3.ts.net:8443", True, id="listed-deep-subdomain"),
    pytest.param("tail1a2b3.ts.net", True, id="dot-entry-matches-itself"),
    # DNS rebinding and other names
    pytest.param("evil.example", False, id="rebinding-name"),
    pytest.param("localhost.evil.example", False, id="localhost-prefix"),
    pytest.param("evil-localhost", False, id="localhost-suffix"),
    pytest.param("myhost.example.org.evil.example", False, id="listed-name-as-prefix"),
    pytest.param("evilmyhost.example.org", False, id="listed-name-as-suffix"),
    pytest.param("eviltail1a2b3.ts.net", False, id="dot-entry-needs-a-dot"),
    pytest.param("other.ts.net", False, id="other-tailnet"),
    pytest.param("127.0.0.1.nip.io", False, id="rebinding-service"),
    pytest.param("foo.localhost", False, id="subdomain-of-localhost"),
    pytest.param("8.8.8.8", False, id="public-ip-literal"),
    pytest.param("192.168.1.1", False, id="lan-ip-literal-under-tailnet"),
    pytest.param("100.115.92.5", False, id="chromeos-literal"),
    pytest.param("2130706433", False, id="integer-ip-spelling"),
    pytest.param("0x7f000001", False, id="hex-ip-spelling"),
    pytest.param("127.1", False, id="short-ip-spelling"),
    # malformed
    pytest.param("", False, id="empty"),
    pytest.param(None, False, id="missing"),
    pytest.param(":5000", False, id="port-only"),
    pytest.param(":", False, id="colon-only"),
    pytest.param("localhost:", False, id="empty-port"),
    pytest.param("localhost:abc", False, id="non-numeric-port"),
    pytest.param("localhost:65536", False, id="port-out-of-range"),
    pytest.param("localhost:123456", False, id="port-too-long"),
    pytest.param("localhost:5000:5000", False, id="two-ports"),
    pytest.param("[::1", False, id="unclosed-bracket"),
    pytest.param("[::1]x", False, id="junk-after-bracket"),
    pytest.param("[127.0.0.1]", False, id="bracketed-v4"),
    pytest.param("[localhost]", False, id="bracketed-name"),
    pytest.param("::1", False, id="bare-v6"),
    pytest.param("local host", False, id="inner-space"),
    pytest.param(" localhost", False, id="leading-space"),
    pytest.param("localhost ", False, id="trailing-space"),
    pytest.param("user@localhost", False, id="userinfo"),
    pytest.param("localhost/evil", False, id="path"),
    pytest.param("localhost\r\nX: y", False, id="header-injection"),
    pytest.param("localhost\x00", False, id="nul-byte"),
    pytest.param("..", False, id="dots-only"),
    pytest.param("a..b", False, id="empty-label"),
    pytest.param("-localhost", False, id="leading-hyphen"),
    pytest.param("l" * 64 + ".example.org", False, id="label-too-long"),
    pytest.param("*", False, id="wildcard"),
    pytest.param(b"localhost", False, id="bytes"),
]


@pytest.mark.parametrize(("host", "accepted"), HOSTS)
def test_host_table(host: object, accepted: bool) -> None:
    assert CHECK(host) is accepted
    assert CHECK(host) is accepted  # and again, from the cache


def test_lan_literal_accepted_under_local_policy() -> None:
    assert HostCheck((), Policy("local").admits)("192.168.1.1:5000")


def test_cache_is_bounded() -> None:
    check = HostCheck((), Policy("tailnet").admits)
    for n in range(5000):
        assert not check(f"h{n}.example")
    assert len(check._cache) <= 1024


@pytest.mark.parametrize(
    "entry", ["*", ".", "", "exa mple.org", "evil.example/", "[::1]", "*.ts.net", "a..b"]
)
def test_bad_allowed_host_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        parse_host_rule(entry)


ORIGINS = [
    pytest.param("http://localhost:5000", "localhost:5000", "http", True, id="same"),
    pytest.param("http://LOCALHOST:5000", "localhost:5000", "http", True, id="case"),
    pytest.param("http://localhost", "localhost:80", "http", True, id="default-port"),
    pytest.param("https://localhost:443", "localhost", "https", True, id="default-port-https"),
    pytest.param("http://[::1]:5000", "[::1]:5000", "http", True, id="v6"),
    pytest.param("http://evil.example", "localhost:5000", "http", False, id="other-site"),
    pytest.param("http://localhost:8080", "localhost:5000", "http", False, id="other-port"),
    pytest.param("https://localhost:5000", "localhost:5000", "http", False, id="other-scheme"),
    pytest.param("null", "localhost:5000", "http", False, id="null-origin"),
    pytest.param("", "localhost:5000", "http", False, id="empty-origin"),
    pytest.param(None, "localhost:5000", "http", False, id="missing-origin"),
    pytest.param("http://localhost:5000/", "localhost:5000", "http", False, id="trailing-slash"),
    pytest.param("localhost:5000", "localhost:5000", "http", False, id="no-scheme"),
    pytest.param("http://localhost:5000", "", "http", False, id="empty-host"),
    pytest.param("http://", ":", "http", False, id="both-malformed"),
    pytest.param("http://127.0.0.1:5000", "localhost:5000", "http", False, id="ip-vs-name"),
]


@pytest.mark.parametrize(("origin", "host", "scheme", "same"), ORIGINS)
def test_same_origin_table(origin: object, host: object, scheme: str, same: bool) -> None:
    assert same_origin(origin, host, scheme) is same


@given(st.one_of(st.text(), st.none(), st.binary()))
def test_host_parsers_never_raise(value: object) -> None:
    split_host(value)
    CHECK(value)
    same_origin(value, value, "http")
    same_origin("http://localhost", value, "http")


@given(st.text())
def test_garbage_host_is_never_loopback(text: str) -> None:
    parts = split_host(text)
    if parts is not None and parts[1] is not None and parts[1].is_loopback:
        assert text.strip() == text
        assert " " not in text
        assert text.startswith(("127.", "[")), text
