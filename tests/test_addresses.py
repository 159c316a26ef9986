"""Addresses and network policies: who may be served at all."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_tailnet.addresses import Policy, is_loopback, is_tailnet, parse_ip, parse_networks

TAILNET = Policy("tailnet")
LOCAL = Policy("local")
ANY = Policy("any")

# address, loopback, tailnet policy, local policy, any policy
ADDRESSES = [
    pytest.param("127.0.0.1", True, True, True, True, id="ipv4-loopback"),
    pytest.param("127.255.255.254", True, True, True, True, id="ipv4-loopback-edge-of-8"),
    pytest.param("::1", True, True, True, True, id="ipv6-loopback"),
    pytest.param("::ffff:127.0.0.1", True, True, True, True, id="ipv4-mapped-loopback"),
    pytest.param("100.64.0.1", False, True, True, True, id="tailnet-first"),
    pytest.param("100.127.255.255", False, True, True, True, id="tailnet-last"),
    pytest.param("100.63.255.255", False, False, False, True, id="edge-below-cgnat"),
    pytest.param("100.128.0.0", False, False, False, True, id="edge-above-cgnat"),
    pytest.param("100.115.92.1", False, False, False, True, id="chromeos-vm-range"),
    pytest.param("100.115.93.255", False, False, False, True, id="chromeos-vm-range-end"),
    pytest.param("100.115.94.0", False, True, True, True, id="just-after-chromeos"),
    pytest.param("::ffff:100.64.0.9", False, True, True, True, id="ipv4-mapped-tailnet"),
    pytest.param("fd7a:115c:a1e0::1", False, True, True, True, id="tailnet-ipv6"),
    pytest.param("FD7A:115C:A1E0:AB12::1", False, True, True, True, id="tailnet-ipv6-upper"),
    pytest.param("fd7a:115c:a1e1::1", False, False, True, True, id="ula-outside-tailnet48"),
    pytest.param("10.1.2.3", False, False, True, True, id="rfc1918-10"),
    pytest.param("172.16.0.1", False, False, True, True, id="rfc1918-172"),
    pytest.param("172.32.0.1", False, False, False, True, id="not-rfc1918-172-32"),
    pytest.param("192.168.1.10", False, False, True, True, id="rfc1918-192"),
    pytest.param("169.254.3.4", False, False, True, True, id="link-local-v4"),
    pytest.param("fe80::1", False, False, True, True, id="link-local-v6"),
    pytest.param("fe80::1%eth0", False, False, True, True, id="link-local-v6-with-zone"),
    pytest.param("8.8.8.8", False, False, False, True, id="public-v4"),
    pytest.param("2001:4860::8888", False, False, False, True, id="public-v6"),
    pytest.param("::ffff:8.8.8.8", False, False, False, True, id="ipv4-mapped-public"),
    pytest.param("0.0.0.0", False, False, False, True, id="unspecified-v4"),
    pytest.param("::", False, False, False, True, id="unspecified-v6"),
    pytest.param("::127.0.0.1", False, False, False, True, id="ipv4-compatible-is-not-loopback"),
    pytest.param("", False, False, False, False, id="empty"),
    pytest.param(None, False, False, False, False, id="missing"),
    pytest.param(" 127.0.0.1", False, False, False, False, id="leading-space"),
    pytest.param("127.0.0.1 ", False, False, False, False, id="trailing-space"),
    pytest.param("127.1", False, False, False, False, id="short-form-loopback"),
    pytest.param("0x7f.0.0.1", False, False, False, False, id="hex-loopback"),
    pytest.param("2130706433", False, False, False, False, id="integer-loopback"),
    pytest.param("127.0.0.1:5000", False, False, False, False, id="with-port"),
    pytest.param("[::1]", False, False, False, False, id="bracketed"),
    pytest.param("localhost", False, False, False, False, id="a-name"),
    pytest.param("unix:/tmp/sock", False, False, False, False, id="unix-socket"),
    pytest.param("127.0.0.1\x00", False, False, False, False, id="nul-byte"),
    pytest.param(b"127.0.0.1", False, False, False, False, id="bytes"),
    pytest.param("1" * 10_000, False, False, False, False, id="huge"),
]


@pytest.mark.parametrize(("address", "loopback", "tailnet", "local", "any_"), ADDRESSES)
def test_address_table(
    address: object, loopback: bool, tailnet: bool, local: bool, any_: bool
) -> None:
    ip = parse_ip(address)
    assert is_loopback(ip) is loopback
    assert TAILNET.admits(ip) is tailnet
    assert LOCAL.admits(ip) is local
    assert ANY.admits(ip) is any_


def test_ipv4_mapped_is_judged_as_ipv4() -> None:
    assert parse_ip("::ffff:100.64.0.9") == ipaddress.IPv4Address("100.64.0.9")


@pytest.mark.parametrize("address", ["100.100.100.100", "fd7a:115c:a1e0::53"])
def test_magicdns_service_address_is_not_a_peer(address: str) -> None:
    assert not is_tailnet(parse_ip(address))
    assert not Policy("tailnet").admits(parse_ip(address))
    assert Policy("any").admits(parse_ip(address))


@pytest.mark.parametrize(
    ("allowlist", "address", "admitted"),
    [
        pytest.param(("100.64.0.7",), "100.64.0.7", True, id="listed"),
        pytest.param(("100.64.0.7",), "100.64.0.8", False, id="tailnet-but-not-listed"),
        pytest.param(("100.64.0.0/24",), "100.64.0.200", True, id="cidr"),
        pytest.param(("8.8.8.0/24",), "8.8.8.8", False, id="allowlist-never-widens"),
        pytest.param(("100.64.0.7",), "127.0.0.1", True, id="loopback-not-narrowed"),
        pytest.param(("100.64.0.7",), None, False, id="missing-still-refused"),
        pytest.param(("fd7a:115c:a1e0::/64",), "fd7a:115c:a1e0::5", True, id="v6-listed"),
        pytest.param(("fd7a:115c:a1e0::/64",), "100.64.0.7", False, id="v4-not-in-v6-list"),
    ],
)
def test_allowlist_narrows(allowlist: tuple[str, ...], address: str | None, admitted: bool) -> None:
    policy = Policy("tailnet", parse_networks(allowlist))
    assert policy.admits(parse_ip(address)) is admitted


def test_parse_networks_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"'100\.64\.0\.0/33'"):
        parse_networks(["100.64.0.0/10", "100.64.0.0/33"])


@given(st.one_of(st.text(), st.binary(), st.none(), st.integers()))
def test_parse_ip_never_raises(value: object) -> None:
    parse_ip(value)


@given(st.text())
def test_garbage_is_never_loopback(text: str) -> None:
    """Only a canonical literal that really is loopback may come out as loopback."""
    ip = parse_ip(text)
    if is_loopback(ip):
        assert text == text.strip()
        parsed = ipaddress.ip_address(text.split("%", maxsplit=1)[0])
        assert parsed.is_loopback or getattr(parsed, "ipv4_mapped", None) is not None


@given(st.ip_addresses())
def test_every_real_address_parses(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    parsed = parse_ip(str(ip))
    assert parsed is not None
    assert parsed.is_loopback == (
        ip.is_loopback
        or (
            isinstance(ip, ipaddress.IPv6Address)
            and ip.ipv4_mapped is not None
            and ip.ipv4_mapped.is_loopback
        )
    )
