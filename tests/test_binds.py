"""The bind check: one row per spelling or attack, judged on the parsed address."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from flask_tailnet import TailnetGuard
from flask_tailnet import binds as binds_module
from flask_tailnet import settings as settings_module
from flask_tailnet.binds import (
    Bind,
    BindRefused,
    bind_specs,
    binds_from_env,
    check_bind,
    check_binds,
    default_binds,
    fd_sockname,
    parse_bind,
)

ip = ipaddress.ip_address

# (spec, network, allow_wildcard, words the refusal must hold) -- None: allowed.
#: The refusal of a Unix socket names the fix.
UNIX = "has no address, so flask-tailnet can neither tell who sent a request"

REFUSED_OR_ALLOWED = [
    # Every spelling of the wildcard.
    pytest.param("0.0.0.0:8000", "tailnet", False, "wildcard", id="wildcard-v4"),
    pytest.param("0.0.0.0", "tailnet", False, "wildcard", id="wildcard-v4-default-port"),
    pytest.param("tcp://0.0.0.0:8000", "tailnet", False, "wildcard", id="wildcard-tcp-scheme"),
    pytest.param("[::]:8000", "tailnet", False, "wildcard", id="wildcard-v6-bracketed"),
    pytest.param("[::]", "tailnet", False, "wildcard", id="wildcard-v6-default-port"),
    pytest.param("::", "tailnet", False, "wildcard", id="wildcard-v6-bare"),
    pytest.param("::0", "tailnet", False, "wildcard", id="wildcard-v6-colon-zero"),
    pytest.param("[::0]:8000", "tailnet", False, "wildcard", id="wildcard-v6-colon-zero-port"),
    pytest.param("0:0:0:0:0:0:0:0", "tailnet", False, "wildcard", id="wildcard-v6-long-bare"),
    pytest.param("[0:0:0:0:0:0:0:0]:80", "tailnet", False, "wildcard", id="wildcard-v6-long"),
    pytest.param("[::ffff:0.0.0.0]:80", "tailnet", False, "wildcard", id="wildcard-v4-mapped"),
    pytest.param("[::ffff:0:0]:80", "tailnet", False, "wildcard", id="wildcard-v4-mapped-hex"),
    pytest.param("[::%eth0]:80", "tailnet", False, "wildcard", id="wildcard-v6-scoped"),
    pytest.param("[0::0]:80", "any", False, "wildcard", id="wildcard-under-any"),
    pytest.param("", "tailnet", False, "wildcard", id="empty-spec-is-wildcard"),
    pytest.param(":8000", "tailnet", False, "wildcard", id="empty-host-is-wildcard"),
    pytest.param("tcp://", "tailnet", False, "wildcard", id="empty-after-tcp-scheme"),
    pytest.param("0", "tailnet", False, "host name", id="zero-name-resolves-to-wildcard"),
    pytest.param("0.0:8000", "tailnet", False, "host name", id="short-form-wildcard"),
    # The wildcard, permitted.
    pytest.param("0.0.0.0:8000", "tailnet", True, None, id="allowed-wildcard-v4"),
    pytest.param("[::]:8000", "tailnet", True, None, id="allowed-wildcard-v6"),
    pytest.param(":8000", "tailnet", True, None, id="allowed-empty-host"),
    pytest.param("[::ffff:0.0.0.0]:80", "tailnet", True, None, id="allowed-wildcard-mapped"),
    pytest.param("::", "tailnet", True, "brackets", id="allowed-wildcard-still-needs-brackets"),
    pytest.param("8.8.8.8:80", "tailnet", True, "public", id="wildcard-flag-permits-no-public"),
    # Loopback.
    pytest.param("127.0.0.1:8000", "tailnet", False, None, id="loopback-v4"),
    pytest.param("127.0.0.1", "tailnet", False, None, id="loopback-default-port"),
    pytest.param("127.8.9.10:80", "tailnet", False, None, id="loopback-range"),
    pytest.param("[::1]:8000", "tailnet", False, None, id="loopback-v6"),
    pytest.param("[::1%lo]:8000", "tailnet", False, None, id="loopback-v6-scoped"),
    pytest.param("[::ffff:127.0.0.1]:80", "tailnet", False, None, id="loopback-mapped"),
    pytest.param("tcp://127.0.0.1:80", "tailnet", False, None, id="loopback-tcp-scheme"),
    pytest.param("localhost:8000", "tailnet", False, None, id="localhost-name"),
    pytest.param("LOCALHOST:8000", "tailnet", False, None, id="localhost-upper-case"),
    pytest.param("127.0.0.1:0", "tailnet", False, None, id="port-zero-any-free-port"),
    pytest.param("127.0.0.1:65535", "tailnet", False, None, id="port-max"),
    # Tailnet ranges.
    pytest.param("100.64.0.1:8000", "tailnet", False, None, id="tailnet-v4"),
    pytest.param("100.64.0.0:8000", "tailnet", False, None, id="tailnet-v4-low-edge"),
    pytest.param("100.127.255.255:80", "tailnet", False, None, id="tailnet-v4-high-edge"),
    pytest.param("100.63.255.255:80", "tailnet", False, "public", id="below-cgnat"),
    pytest.param("100.128.0.0:80", "tailnet", False, "public", id="above-cgnat"),
    pytest.param("100.128.0.0:80", "any", False, "public", id="above-cgnat-under-any"),
    pytest.param("[fd7a:115c:a1e0::1]:8000", "tailnet", False, None, id="tailnet-v6"),
    pytest.param("[FD7A:115C:A1E0::1]:8000", "tailnet", False, None, id="tailnet-v6-upper"),
    pytest.param("[::ffff:100.64.0.1]:80", "tailnet", False, None, id="tailnet-mapped"),
    pytest.param("[fd7a:115c:a1e1::1]:80", "tailnet", False, "LAN", id="beside-tailnet-v6"),
    pytest.param("100.115.92.1:80", "tailnet", False, "ChromeOS", id="chromeos-block"),
    pytest.param("100.115.93.255:80", "any", False, "ChromeOS", id="chromeos-block-any"),
    pytest.param("100.100.100.100:80", "tailnet", False, "service", id="service-address-v4"),
    pytest.param("[fd7a:115c:a1e0::53]:80", "tailnet", False, "service", id="service-v6"),
    # LAN under each policy.
    pytest.param("192.168.1.10:80", "tailnet", False, "LAN", id="lan-192-tailnet"),
    pytest.param("192.168.1.10:80", "local", False, None, id="lan-192-local"),
    pytest.param("192.168.1.10:80", "any", False, None, id="lan-192-any"),
    pytest.param("10.1.2.3:80", "tailnet", False, "LAN", id="lan-10-tailnet"),
    pytest.param("10.1.2.3:80", "local", False, None, id="lan-10-local"),
    pytest.param("172.16.0.1:80", "tailnet", False, "LAN", id="lan-172-tailnet"),
    pytest.param("172.32.0.1:80", "local", False, "public", id="just-outside-172-16-12"),
    pytest.param("169.254.1.1:80", "tailnet", False, "LAN", id="link-local-v4-tailnet"),
    pytest.param("169.254.1.1:80", "local", False, None, id="link-local-v4-local"),
    pytest.param("[fe80::1%eth0]:80", "tailnet", False, "LAN", id="link-local-v6-tailnet"),
    pytest.param("[fe80::1%eth0]:80", "local", False, None, id="link-local-v6-local"),
    pytest.param("[fd00::1]:80", "tailnet", False, "LAN", id="ula-tailnet"),
    pytest.param("[fd00::1]:80", "local", False, None, id="ula-local"),
    pytest.param("[::ffff:192.168.0.1]:80", "tailnet", False, "LAN", id="lan-mapped-tailnet"),
    # Public and other addresses: refused under every policy.
    pytest.param("8.8.8.8:80", "tailnet", False, "public", id="public-v4"),
    pytest.param("8.8.8.8:80", "local", False, "public", id="public-v4-local"),
    pytest.param("8.8.8.8:80", "any", False, "public", id="public-v4-any"),
    pytest.param("[2001:4860::8888]:80", "any", False, "public", id="public-v6-any"),
    pytest.param("[::ffff:8.8.8.8]:80", "any", False, "public", id="public-mapped"),
    pytest.param("[64:ff9b::7f00:1]:80", "any", False, "beyond the", id="nat64-of-loopback"),
    pytest.param("[2002:7f00:1::]:80", "any", False, "beyond the", id="6to4-of-loopback"),
    pytest.param("224.0.0.1:80", "any", False, "multicast", id="multicast"),
    pytest.param("255.255.255.255:80", "any", False, "neither", id="broadcast"),
    pytest.param("240.0.0.1:80", "any", False, "neither", id="reserved"),
    pytest.param("192.0.2.1:80", "any", False, "neither", id="documentation-range"),
    pytest.param("[::127.0.0.1]:80", "any", False, "beyond the", id="ipv4-compatible-v6"),
    # Names: a name can resolve to anything.
    pytest.param("example.com:80", "tailnet", False, "host name", id="dns-name"),
    pytest.param("myhost.tailnet.ts.net:80", "tailnet", False, "host name", id="magicdns-name"),
    pytest.param("localhost.:80", "tailnet", False, "host name", id="localhost-trailing-dot"),
    pytest.param("ip6-localhost:80", "tailnet", False, "host name", id="other-loopback-name"),
    pytest.param("127.1:80", "tailnet", False, "host name", id="short-form-loopback"),
    pytest.param("0x7f.0.0.1:80", "tailnet", False, "host name", id="hex-loopback"),
    pytest.param("2130706433:80", "tailnet", False, "host name", id="integer-address"),
    pytest.param("127.000.000.001:80", "tailnet", False, "host name", id="leading-zeros"),
    pytest.param("[localhost]:80", "tailnet", False, "IP address", id="name-in-brackets"),
    # Garbage and what gunicorn would misread.
    pytest.param("100.64.0.1:8000:9000", "tailnet", False, "brackets", id="second-port"),
    pytest.param("fd7a:115c:a1e0::1", "tailnet", False, "[fd7a:115c:a1e0::1]", id="v6-bare"),
    pytest.param("::1:8000", "tailnet", False, "brackets", id="v6-bare-with-port"),
    pytest.param("[::1]x", "tailnet", False, "[ADDRESS]:PORT", id="junk-after-bracket"),
    pytest.param("[::1]:", "tailnet", False, "port", id="empty-port-after-bracket"),
    pytest.param("[[::1]]:80", "tailnet", False, "[ADDRESS]:PORT", id="double-brackets"),
    pytest.param("[]:80", "tailnet", False, "IP address", id="empty-brackets"),
    pytest.param("[::1:80", "tailnet", False, "[ADDRESS]:PORT", id="unclosed-bracket"),
    pytest.param("127.0.0.1:", "tailnet", False, "port", id="empty-port"),
    pytest.param("127.0.0.1:http", "tailnet", False, "port", id="service-name-port"),
    pytest.param("127.0.0.1:65536", "tailnet", False, "port", id="port-too-high"),
    pytest.param("127.0.0.1:99999999", "tailnet", False, "port", id="port-far-too-high"),
    pytest.param("127.0.0.1:-1", "tailnet", False, "port", id="port-negative"),
    pytest.param("127.0.0.1:+80", "tailnet", False, "port", id="port-with-sign"),
    pytest.param("127.0.0.1: 80", "tailnet", False, "port", id="port-with-space"),
    pytest.param("127.0.0.1:8_000", "tailnet", False, "port", id="port-with-underscore"),
    pytest.param("127.0.0.1:\u0668\u0660", "tailnet", False, "port", id="port-arabic-digits"),
    pytest.param(" 127.0.0.1:80", "tailnet", False, "neither", id="leading-space"),
    pytest.param("127.0.0.1/8:80", "tailnet", False, "neither", id="cidr"),
    pytest.param(
        "tcp://tcp://127.0.0.1:80", "tailnet", False, "not a bind spec", id="tcp-scheme-twice"
    ),
    pytest.param("http://127.0.0.1:80", "tailnet", False, "not a bind spec", id="http-url"),
    pytest.param("127.0.0.1\x00:80", "tailnet", False, "not a bind", id="nul-byte"),
    pytest.param("a" * 5000, "tailnet", False, "not a bind", id="huge-spec"),
    pytest.param("ünïcode:80", "tailnet", False, "neither", id="non-ascii-name"),
    # Unix sockets are refused (a peer without an address: every request would get 403); fd://
    # needs its address.
    pytest.param("unix:/run/app.sock", "tailnet", False, UNIX, id="unix-absolute"),
    pytest.param("unix:///run/app.sock", "tailnet", False, UNIX, id="unix-triple-slash"),
    pytest.param("unix:app.sock", "tailnet", False, UNIX, id="unix-relative"),
    pytest.param("unix:/run/app.sock", "any", True, UNIX, id="unix-under-any-and-wildcard"),
    pytest.param("unix:", "tailnet", False, "give a path", id="unix-empty-path"),
    pytest.param("unix://", "tailnet", False, "give a path", id="unix-empty-after-slashes"),
    pytest.param("unix:/tmp/unix:x", "tailnet", False, "unix:", id="unix-twice-gunicorn-cuts"),
    pytest.param("UNIX:/run/app.sock", "tailnet", False, "port", id="unix-upper-is-not-unix"),
    pytest.param("fd://3", "tailnet", False, "cannot be checked", id="fd-without-sockname"),
    pytest.param("fd://", "tailnet", False, "file descriptor", id="fd-empty"),
    pytest.param("fd://-1", "tailnet", False, "file descriptor", id="fd-negative"),
    pytest.param("fd://three", "tailnet", False, "file descriptor", id="fd-not-a-number"),
]


@pytest.mark.parametrize(("spec", "network", "allow_wildcard", "refusal"), REFUSED_OR_ALLOWED)
def test_bind_table(spec: str, network: str, allow_wildcard: bool, refusal: str | None) -> None:
    if refusal is None:
        bind = check_bind(spec, network=network, allow_wildcard=allow_wildcard)
        assert bind.spec == spec
        return
    with pytest.raises(BindRefused) as refused:
        check_bind(spec, network=network, allow_wildcard=allow_wildcard)
    message = str(refused.value)
    assert refusal in message
    assert message.startswith("refusing to bind ")
    assert len(message) < 500


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("0.0.0.0:8000", id="wildcard"),
        pytest.param("192.168.1.10:80", id="lan"),
        pytest.param("8.8.8.8:80", id="public"),
        pytest.param("example.com:80", id="name"),
    ],
)
def test_every_refusal_says_what_to_do(spec: str) -> None:
    with pytest.raises(BindRefused, match=r"tailscale ip -4\) or 127\.0\.0\.1"):
        check_bind(spec, network="tailnet", allow_wildcard=False)


def test_the_wildcard_refusal_names_the_setting_for_containers() -> None:
    with pytest.raises(BindRefused) as refused:
        check_bind("0.0.0.0:8000", network="tailnet", allow_wildcard=False)
    assert str(refused.value) == (
        "refusing to bind '0.0.0.0:8000': the wildcard address serves every network this "
        "machine is on; bind a tailnet address (tailscale ip -4) or 127.0.0.1, or set "
        "TAILNET_ALLOW_WILDCARD_BIND=true if a container publishes the port on a tailnet "
        "address only"
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            "100.64.0.1:8080",
            Bind("100.64.0.1:8080", "tcp", ip("100.64.0.1"), 8080, host="100.64.0.1"),
            id="v4",
        ),
        pytest.param(
            "100.64.0.1",
            Bind("100.64.0.1", "tcp", ip("100.64.0.1"), 8000, host="100.64.0.1"),
            id="default-port",
        ),
        pytest.param(
            "[FD7A:115C:A1E0::1]:80",
            Bind(
                "[FD7A:115C:A1E0::1]:80",
                "tcp",
                ip("fd7a:115c:a1e0::1"),
                80,
                host="fd7a:115c:a1e0::1",
            ),
            id="v6-lowered-as-gunicorn-does",
        ),
        pytest.param(
            "[::ffff:127.0.0.1]:80",
            Bind("[::ffff:127.0.0.1]:80", "tcp", ip("127.0.0.1"), 80, host="::ffff:127.0.0.1"),
            id="mapped-judged-as-v4",
        ),
        pytest.param(
            "[fe80::1%eth0]:80",
            Bind("[fe80::1%eth0]:80", "tcp", ip("fe80::1"), 80, host="fe80::1%eth0"),
            id="scope-id-dropped-from-ip",
        ),
        pytest.param(
            ":9000", Bind(":9000", "tcp", ip("0.0.0.0"), 9000, host="0.0.0.0"), id="empty-host"
        ),
        pytest.param(
            "localhost:80", Bind("localhost:80", "tcp", None, 80, host="localhost"), id="name"
        ),
        pytest.param(
            "unix:/run/app.sock",
            Bind("unix:/run/app.sock", "unix", path="/run/app.sock"),
            id="unix",
        ),
        pytest.param(
            "unix://run/app.sock",
            Bind("unix://run/app.sock", "unix", path="run/app.sock"),
            id="unix-double-slash-as-gunicorn",
        ),
        pytest.param("fd://7", Bind("fd://7", "fd", fd=7), id="fd"),
    ],
)
def test_parse_bind(spec: str, expected: Bind) -> None:
    assert parse_bind(spec) == expected


def test_parse_bind_refuses_what_is_not_text() -> None:
    with pytest.raises(BindRefused, match="must be text"):
        parse_bind(8000)  # type: ignore[arg-type]


def test_unknown_network_policy_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown network policy"):
        check_bind("127.0.0.1:80", network="internet", allow_wildcard=False)


# ---- fd:// : judged by the socket's address -----------------------------------------------------


@pytest.mark.parametrize(
    ("address", "network", "refusal"),
    [
        pytest.param(("127.0.0.1", 8000), "tailnet", None, id="loopback"),
        pytest.param(("100.64.0.1", 8000), "tailnet", None, id="tailnet"),
        pytest.param(("fd7a:115c:a1e0::1", 80, 0, 0), "tailnet", None, id="tailnet-v6"),
        pytest.param(("fe80::1%eth0", 80, 0, 2), "local", None, id="link-local-scoped"),
        pytest.param("/run/app.sock", "tailnet", UNIX, id="unix"),
        pytest.param(b"\x00abstract", "any", UNIX, id="unix-abstract"),
        pytest.param("", "any", UNIX, id="unix-unnamed"),
        pytest.param(("0.0.0.0", 8000), "tailnet", "wildcard", id="wildcard-v4"),
        pytest.param(("::", 8000, 0, 0), "tailnet", "wildcard", id="wildcard-v6"),
        pytest.param(("::ffff:0.0.0.0", 80, 0, 0), "tailnet", "wildcard", id="wildcard-mapped"),
        pytest.param(("192.168.1.1", 80), "tailnet", "LAN", id="lan"),
        pytest.param(("8.8.8.8", 80), "any", "public", id="public"),
        pytest.param((1234, 0), "tailnet", "not a TCP or Unix", id="netlink-like"),
        pytest.param((), "tailnet", "not a TCP or Unix", id="empty-tuple"),
        pytest.param(None, "tailnet", "not a TCP or Unix", id="none"),
    ],
)
def test_fd_is_judged_by_its_address(address: object, network: str, refusal: str | None) -> None:
    def sockname(fd: int) -> object:
        assert fd == 5
        return address

    if refusal is None:
        assert (
            check_bind("fd://5", network=network, allow_wildcard=False, sockname=sockname).fd == 5
        )
        return
    with pytest.raises(BindRefused, match=refusal):
        check_bind("fd://5", network=network, allow_wildcard=False, sockname=sockname)


def test_fd_that_is_not_a_socket_is_refused() -> None:
    def sockname(fd: int) -> object:
        raise OSError(9, "Bad file descriptor")

    with pytest.raises(BindRefused, match="not an open socket"):
        check_bind("fd://5", network="tailnet", allow_wildcard=False, sockname=sockname)


@pytest.fixture
def listening() -> Iterator[dict[str, socket.socket]]:
    sockets: dict[str, socket.socket] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, family, address in (
                ("loopback", socket.AF_INET, ("127.0.0.1", 0)),
                ("wildcard", socket.AF_INET, ("0.0.0.0", 0)),  # never listens, never accepts
                ("unix", socket.AF_UNIX, os.path.join(tmp, "s")),
            ):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets[name] = sock
                sock.bind(address)
            yield sockets
        finally:
            for sock in sockets.values():
                sock.close()


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        pytest.param("loopback", None, id="loopback"),
        pytest.param("wildcard", "wildcard", id="wildcard"),
        pytest.param("unix", UNIX, id="unix"),
    ],
)
def test_fd_sockname_of_real_sockets(
    listening: dict[str, socket.socket], name: str, refusal: str | None
) -> None:
    fd = listening[name].fileno()
    spec = f"fd://{fd}"
    if refusal is None:
        check_bind(spec, network="tailnet", allow_wildcard=False, sockname=fd_sockname)
    else:
        with pytest.raises(BindRefused, match=refusal):
            check_bind(spec, network="tailnet", allow_wildcard=False, sockname=fd_sockname)
    assert listening[name].getsockname()  # still open: the check used a duplicate


def test_fd_sockname_of_a_file_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as file:
        spec = f"fd://{file.fileno()}"
        with pytest.raises(BindRefused, match="not an open socket"):
            check_bind(spec, network="tailnet", allow_wildcard=False, sockname=fd_sockname)
    with pytest.raises(BindRefused, match="not an open socket"):
        check_bind("fd://65000", network="tailnet", allow_wildcard=False, sockname=fd_sockname)


# ---- several binds, defaults, the environment ---------------------------------------------------


def test_check_binds_names_every_refused_spec() -> None:
    specs = ["127.0.0.1:80", "0.0.0.0:80", "100.64.0.1:80", "8.8.8.8:80", "[::]:80"]
    with pytest.raises(BindRefused) as refused:
        check_binds(specs, network="tailnet", allow_wildcard=False)
    lines = str(refused.value).splitlines()
    assert [line.split("'")[1] for line in lines] == ["0.0.0.0:80", "8.8.8.8:80", "[::]:80"]


def test_check_binds_returns_every_bind() -> None:
    specs = ["127.0.0.1:80", "[fd7a:115c:a1e0::1]:80", "fd://5"]
    binds = check_binds(
        specs, network="tailnet", allow_wildcard=False, sockname=lambda fd: ("127.0.0.1", 80)
    )
    assert [b.spec for b in binds] == specs
    assert check_binds([], network="tailnet", allow_wildcard=False) == []


@pytest.mark.parametrize(
    ("port", "addresses", "expected"),
    [
        pytest.param(8000, [], ["127.0.0.1:8000"], id="loopback-only"),
        pytest.param(
            8000,
            ["100.64.0.1", "fd7a:115c:a1e0::1"],
            ["127.0.0.1:8000", "100.64.0.1:8000", "[fd7a:115c:a1e0::1]:8000"],
            id="v4-and-v6",
        ),
        pytest.param(
            80,
            ["100.64.0.1", "100.64.0.1", "::ffff:100.64.0.1", "FD7A:115C:A1E0::1"],
            ["127.0.0.1:80", "100.64.0.1:80", "[fd7a:115c:a1e0::1]:80"],
            id="deduplicated-and-normalized",
        ),
        pytest.param(
            80,
            ["127.0.0.1", "0.0.0.0", "192.168.1.1", "8.8.8.8", "100.100.100.100", "x", ""],
            ["127.0.0.1:80"],
            id="non-tailnet-left-out",
        ),
    ],
)
def test_default_binds(port: int, addresses: list[str], expected: list[str]) -> None:
    binds = default_binds(port, addresses)
    assert binds == expected
    assert check_binds(binds, network="tailnet", allow_wildcard=False)


@pytest.mark.parametrize("port", [-1, 65536, True, "8000"])
def test_default_binds_refuses_a_bad_port(port: object) -> None:
    with pytest.raises(ValueError, match="not a port"):
        default_binds(port, [])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, (None, False), id="unset"),
        pytest.param({"TAILNET_BIND": ""}, (None, False), id="empty"),
        pytest.param({"TAILNET_BIND": "  "}, (None, False), id="blank"),
        pytest.param({"TAILNET_BIND": "[]"}, (None, False), id="empty-json-list"),
        pytest.param(
            {"TAILNET_BIND": "127.0.0.1:80, 100.64.0.1:80"},
            (["127.0.0.1:80", "100.64.0.1:80"], False),
            id="comma-separated",
        ),
        pytest.param(
            {"TAILNET_BIND": "127.0.0.1:80 [::1]:80"},
            (["127.0.0.1:80", "[::1]:80"], False),
            id="space-separated",
        ),
        pytest.param(
            {"FLASK_TAILNET_BIND": '["unix:/run/my app.sock"]'},
            (["unix:/run/my app.sock"], False),
            id="flask-prefixed-json",
        ),
        pytest.param(
            {"TAILNET_BIND": "127.0.0.1:80", "FLASK_TAILNET_BIND": "127.0.0.1:80"},
            (["127.0.0.1:80"], False),
            id="both-spellings-agree",
        ),
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": "true"}, (None, True), id="flag-true"),
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": "1"}, (None, True), id="flag-one"),
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": " Yes "}, (None, True), id="flag-yes"),
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": "false"}, (None, False), id="flag-false"),
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": "0"}, (None, False), id="flag-zero"),
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": ""}, (None, False), id="flag-empty"),
        pytest.param(
            {"FLASK_TAILNET_ALLOW_WILDCARD_BIND": "true"}, (None, True), id="flag-flask-prefixed"
        ),
    ],
)
def test_binds_from_env(environ: dict[str, str], expected: tuple[list[str] | None, bool]) -> None:
    assert binds_from_env(environ) == expected


@pytest.mark.parametrize(
    ("environ", "refusal"),
    [
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": "maybe"}, "true or false", id="flag-word"),
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": "2"}, "true or false", id="flag-number"),
        pytest.param({"TAILNET_BIND": "[1, 2]"}, "list of bind specs", id="json-not-strings"),
        pytest.param(
            {"TAILNET_BIND": "127.0.0.1:80", "FLASK_TAILNET_BIND": "0.0.0.0:80"},
            "set one",
            id="both-spellings-differ",
        ),
        pytest.param(
            {"TAILNET_ALLOW_WILDCARD_BIND": "false", "FLASK_TAILNET_ALLOW_WILDCARD_BIND": "true"},
            "set one",
            id="both-flags-differ",
        ),
    ],
)
def test_binds_from_env_refuses(environ: dict[str, str], refusal: str) -> None:
    with pytest.raises(BindRefused, match=refusal):
        binds_from_env(environ)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(["127.0.0.1:80", " [::1]:80 ", ""], ["127.0.0.1:80", "[::1]:80"], id="list"),
        pytest.param(("unix:/a b",), ["unix:/a b"], id="tuple-keeps-spaces"),
        pytest.param("127.0.0.1:80,[::1]:80", ["127.0.0.1:80", "[::1]:80"], id="text"),
        pytest.param("[::1]:8000", ["[::1]:8000"], id="bracketed-spec-is-not-json"),
        pytest.param("[::1]", ["[::1]"], id="bracketed-address-is-not-json"),
        pytest.param('["[::1]:80"]', ["[::1]:80"], id="json-list"),
        pytest.param("8000", ["8000"], id="json-number-is-a-spec"),
        pytest.param('"x"', ['"x"'], id="json-string-is-a-spec"),
        pytest.param("[" * 100_000, ["[" * 100_000], id="deep-json-is-text"),
        pytest.param("[not json", ["[not", "json"], id="broken-json-is-text"),
        pytest.param("[]", [], id="empty-json-list"),
    ],
)
def test_bind_specs(value: object, expected: list[str]) -> None:
    assert bind_specs(value) == expected


@pytest.mark.parametrize(
    "value", [None, 8000, [8000], {"127.0.0.1:80": 1}, b"127.0.0.1:80", "[1, 2]", '["a", 1]']
)
def test_bind_specs_refuses(value: object) -> None:
    with pytest.raises(BindRefused, match="list of bind specs"):
        bind_specs(value)


# ---- properties ---------------------------------------------------------------------------------

SPEC_PIECES = st.sampled_from(
    ["[", "]", ":", "::", "0", "1", "f", "%", ".", "unix:", "fd://", "tcp://", "/", " ", "ff"]
)
SPECS = st.one_of(
    st.text(max_size=60),
    st.lists(SPEC_PIECES, max_size=12).map("".join),
    st.ip_addresses().map(lambda a: f"[{a}]:80" if a.version == 6 else f"{a}:80"),
)


@given(spec=SPECS, network=st.sampled_from(["tailnet", "local", "any"]), wild=st.booleans())
def test_parse_and_check_raise_nothing_but_bind_refused(
    spec: str, network: str, wild: bool
) -> None:
    try:
        parsed = parse_bind(spec)
    except BindRefused:
        parsed = None
    try:
        bind = check_bind(spec, network=network, allow_wildcard=wild, sockname=lambda fd: ())
    except BindRefused:
        return
    assert bind == parsed


@given(address=st.ip_addresses(), network=st.sampled_from(["tailnet", "local", "any"]))
def test_an_allowed_address_is_one_the_policy_admits_or_loopback(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, network: str
) -> None:
    """Whatever the spelling, a bind is allowed only on loopback, a tailnet address, or (with a
    wider policy) a LAN address: never on a public or wildcard address."""
    spec = f"[{address}]:80" if address.version == 6 else f"{address}:80"
    try:
        bind = check_bind(spec, network=network, allow_wildcard=False)
    except BindRefused:
        return
    assert bind.ip is not None
    assert not bind.ip.is_unspecified
    assert not bind.ip.is_global or bind.ip in ipaddress.ip_network("100.64.0.0/10")


# ---- the settings -------------------------------------------------------------------------------


def test_setting_names_agree() -> None:
    # binds.py imports the names from settings.py: this fails if a second copy comes back
    assert (binds_module.BIND, binds_module.ALLOW_WILDCARD_BIND) == (  # type: ignore[attr-defined]
        settings_module.BIND,
        settings_module.ALLOW_WILDCARD_BIND,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param((), (), id="default-empty"),
        pytest.param(["127.0.0.1:8000", "[::1]:8000"], ("127.0.0.1:8000", "[::1]:8000"), id="list"),
        pytest.param("127.0.0.1:8000, fd://3", ("127.0.0.1:8000", "fd://3"), id="text"),
        pytest.param('["100.64.0.1:80"]', ("100.64.0.1:80",), id="json-from-prefixed-env"),
        # Only the spelling is checked here; the gunicorn master refuses these.
        pytest.param(["0.0.0.0:8000"], ("0.0.0.0:8000",), id="wildcard-spelled-right"),
        pytest.param(["example.com:80"], ("example.com:80",), id="name-spelled-right"),
    ],
)
def test_bind_setting(tmp_path: Path, value: object, expected: tuple[str, ...]) -> None:
    app = Flask("binds")
    app.config.update(TAILNET_BIND=value, TAILNET_STATE_DIR=str(tmp_path / "state"))
    TailnetGuard(app)
    settings = app.extensions["tailnet"].settings
    assert settings.bind == expected
    assert settings.allow_wildcard_bind is False


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(["unix:/run/app.sock"], id="unix-list"),
        pytest.param("127.0.0.1:8000 unix:/run/app.sock", id="unix-in-text"),
        pytest.param('["unix:///run/app.sock"]', id="unix-json"),
    ],
)
def test_bind_setting_refuses_a_unix_socket_at_init(tmp_path: Path, value: object) -> None:
    app = Flask("binds")
    app.config.update(TAILNET_BIND=value, TAILNET_STATE_DIR=str(tmp_path / "state"))
    with pytest.raises(settings_module.ConfigurationError, match=f"TAILNET_BIND: .*{UNIX}"):
        TailnetGuard(app)


def test_allow_wildcard_bind_setting(tmp_path: Path) -> None:
    app = Flask("wild")
    app.config.update(TAILNET_ALLOW_WILDCARD_BIND=True, TAILNET_STATE_DIR=str(tmp_path / "s"))
    TailnetGuard(app)
    assert app.extensions["tailnet"].settings.allow_wildcard_bind is True
