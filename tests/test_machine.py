"""This machine's tailnet addresses: the parsers as tables, the commands as stand-ins on PATH, and
the real ``ip`` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_tailnet import machine
from flask_tailnet.machine import interface_addresses, machine_addresses, tailnet_addresses

from .conftest import addresses_on_lo


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param(["100.64.0.1", "100.64.0.1"], ["100.64.0.1"], id="deduplicated"),
        pytest.param(
            ["100.64.0.0", "100.127.255.255"], ["100.64.0.0", "100.127.255.255"], id="edges"
        ),
        pytest.param(["100.63.255.255", "100.128.0.0"], [], id="just-outside-cgnat"),
        pytest.param(["100.115.92.5", "100.115.93.255"], [], id="chromeos-range"),
        pytest.param(
            ["100.115.91.255", "100.115.94.0"],
            ["100.115.91.255", "100.115.94.0"],
            id="around-chromeos",
        ),
        pytest.param(["100.100.100.100", "fd7a:115c:a1e0::53"], [], id="tailscale-service"),
        pytest.param(["10.0.0.1", "192.168.0.1", "::1", "127.0.0.1", "fe80::1"], [], id="others"),
        pytest.param(
            ["", "garbage", " 100.64.0.1", "100.64.0.1/32", "[fd7a:115c:a1e0::1]"],
            [],
            id="not-plain-addresses",
        ),
        pytest.param(["fd7a:115c:a1e0::1"], ["fd7a:115c:a1e0::1"], id="ipv6"),
        pytest.param(["FD7A:115C:A1E0:0::1"], ["fd7a:115c:a1e0::1"], id="ipv6-normalized"),
        pytest.param(["fd7a:115c:a1e1::1"], [], id="ipv6-outside-the-48"),
        pytest.param(["::ffff:100.64.0.9"], ["100.64.0.9"], id="ipv4-mapped"),
        pytest.param(["fd7a:115c:a1e0::9%tailscale0"], ["fd7a:115c:a1e0::9"], id="scope-id"),
    ],
)
def test_tailnet_addresses_table(candidates: list[str], expected: list[str]) -> None:
    assert tailnet_addresses(candidates) == expected


IP_JSON = json.dumps(
    [
        {
            "ifindex": 1,
            "ifname": "lo",
            "flags": ["LOOPBACK", "UP", "LOWER_UP"],
            "addr_info": [
                {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"},
                {"family": "inet", "local": "100.64.0.99", "prefixlen": 32, "scope": "global"},
                {"family": "inet6", "local": "::1", "prefixlen": 128, "scope": "host"},
            ],
        },
        {
            "ifindex": 3,
            "ifname": "tailscale0",
            "flags": ["POINTOPOINT", "MULTICAST", "NOARP", "UP", "LOWER_UP"],
            "addr_info": [
                {"family": "inet", "local": "100.101.102.103", "prefixlen": 32},
                {"family": "inet6", "local": "fd7a:115c:a1e0::7", "prefixlen": 128},
                {"family": "inet6", "local": "fe80::1234", "prefixlen": 64, "scope": "link"},
            ],
        },
        {"ifindex": 4, "ifname": "down0", "addr_info": []},
    ]
)
#: What ``ip -j addr show dev tailscale0`` prints: the one interface.
TAILSCALE0_JSON = json.dumps([json.loads(IP_JSON)[1]])


@pytest.mark.parametrize(
    ("output", "interface", "expected"),
    [
        pytest.param(
            IP_JSON,
            None,
            [
                *("127.0.0.1", "100.64.0.99", "::1"),
                *("100.101.102.103", "fd7a:115c:a1e0::7", "fe80::1234"),
            ],
            id="every-interface",
        ),
        pytest.param(
            IP_JSON,
            "tailscale0",
            ["100.101.102.103", "fd7a:115c:a1e0::7", "fe80::1234"],
            id="tailscale0-only",
        ),
        pytest.param(IP_JSON, "tun7", [], id="absent-interface"),
        pytest.param(
            '[{"addr_info": [{"local": "100.64.0.2"}]}]', "tailscale0", [], id="nameless-entry"
        ),
        pytest.param('[{"ifname": ["tailscale0"]}]', "tailscale0", [], id="ifname-not-text"),
        pytest.param("", None, [], id="empty"),
        pytest.param("not json", None, [], id="garbage"),
        pytest.param('{"addr_info": [{"local": "100.64.0.1"}]}', None, [], id="object-not-list"),
        pytest.param('[1, "x", null, {"addr_info": "100.64.0.1"}]', None, [], id="wrong-types"),
        pytest.param(
            '[{"addr_info": [1, {"local": 7}, {"local": "100.64.0.2"}]}]',
            None,
            ["100.64.0.2"],
            id="mixed-entries",
        ),
        pytest.param("[" * 100_000 + "]" * 100_000, None, [], id="deeply-nested"),
    ],
)
def test_interface_addresses_table(output: str, interface: str | None, expected: list[str]) -> None:
    assert interface_addresses(output, interface) == expected


def _fake_command(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("ip_script", "tailscale_script", "expected", "asked_tailscale"),
    [
        pytest.param(
            f"echo '{TAILSCALE0_JSON}'\n",
            "echo 100.64.9.9\n",
            ["100.101.102.103", "fd7a:115c:a1e0::7"],
            False,
            id="tailscale0-has-tailnet-addresses",
        ),
        pytest.param(
            f"echo '{IP_JSON}'\n",
            "exit 1\n",
            ["100.101.102.103", "fd7a:115c:a1e0::7"],
            False,
            id="other-interfaces-in-the-output-ignored",
        ),
        pytest.param(
            "echo 'Device \"tailscale0\" does not exist.' >&2; exit 1\n",
            "echo 100.64.9.9; echo fd7a:115c:a1e0::99\n",
            ["100.64.9.9", "fd7a:115c:a1e0::99"],
            True,
            id="userspace-tailscaled",
        ),
        pytest.param(
            'echo \'[{"ifname": "tailscale0", "addr_info": [{"local": "fe80::1"}]}]\'\n',
            "echo 100.64.9.9\n",
            ["100.64.9.9"],
            True,
            id="tailscale0-without-tailnet-address",
        ),
        pytest.param(
            'echo \'[{"ifname": "lo", "addr_info": [{"local": "100.64.0.40"}]}]\'\n',
            "exit 1\n",
            [],
            True,
            id="tailnet-range-on-another-interface-never-counts",
        ),
        pytest.param(
            f"echo '{TAILSCALE0_JSON}'\n".replace("tailscale0", "tailscale1"),
            "echo 'not an address'; echo 8.8.8.8; echo 100.100.100.100\n",
            [],
            True,
            id="tailscale-prints-nothing-usable",
        ),
        pytest.param(None, "echo 100.64.9.9\n", ["100.64.9.9"], True, id="no-ip-command"),
        pytest.param("exit 1\n", "echo 100.64.9.9\n", ["100.64.9.9"], True, id="ip-fails"),
        pytest.param("echo '['\n", "exit 1\n", [], True, id="both-fail"),
        pytest.param("printf '\\377\\376'\n", "exit 1\n", [], True, id="ip-prints-non-utf8"),
        pytest.param(None, None, [], False, id="neither-installed"),
    ],
)
def test_machine_addresses_runs_ip_then_tailscale(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ip_script: str | None,
    tailscale_script: str | None,
    expected: list[str],
    asked_tailscale: bool,
) -> None:
    """``tailscale`` is a stand-in (it is not installed here) printing what ``tailscale ip``
    prints: one address per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked"
    if ip_script is not None:
        _fake_command(bin_dir, "ip", f'echo "$@" >> {asked}.ip\n{ip_script}')
    if tailscale_script is not None:
        _fake_command(bin_dir, "tailscale", f'echo "$@" >> {asked}\n{tailscale_script}')
    monkeypatch.setenv("PATH", str(bin_dir))
    assert machine_addresses() == expected
    assert asked.read_text() == "ip\n" if asked_tailscale else not asked.exists()
    if ip_script is not None:
        assert Path(f"{asked}.ip").read_text() == "-j addr show dev tailscale0\n"


def test_a_hanging_command_counts_as_printing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_command(bin_dir, "ip", "exec sleep 30\n")
    _fake_command(bin_dir, "tailscale", "echo 100.64.9.9\n")
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setattr(machine, "COMMAND_TIMEOUT", 0.5)
    started = time.monotonic()
    assert machine_addresses() == ["100.64.9.9"]
    assert time.monotonic() - started < 10


def test_the_real_ip_command_output_parses() -> None:
    """The parser reads what this machine's ``ip`` prints (its JSON, not a copy of it)."""
    ip = shutil.which("ip")
    if ip is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the `ip` command (iproute2) is not installed")
        pytest.skip("the `ip` command (iproute2) is not installed")
    shown = subprocess.run(
        [ip, "-j", "addr", "show", "dev", "lo"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert "127.0.0.1" in interface_addresses(shown, "lo")
    assert interface_addresses(shown, "tailscale0") == []


# ---- real addresses on the loopback interface (root) ------------------------------------------

LO_V4, LO_V6 = "100.64.0.21", "fd7a:115c:a1e0::21"


@pytest.fixture
def tailnet_addresses_on_lo() -> Iterator[None]:
    with addresses_on_lo([f"{LO_V4}/32", f"{LO_V6}/128"]):
        yield


@pytest.mark.root
def test_tailnet_range_addresses_on_lo_are_not_this_machines_tailnet_addresses(
    tailnet_addresses_on_lo: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real ``ip`` and no tailscale0, addresses in the ranges on another interface are
    not found (they would otherwise become default binds)."""
    if Path("/sys/class/net", machine.TAILSCALE_INTERFACE).exists():
        pytest.skip("this machine has a real tailscale0 interface")
    ip = shutil.which("ip")
    assert ip is not None
    shown = subprocess.run(
        [ip, "-j", "addr", "show", "dev", "lo"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert {LO_V4, LO_V6} <= set(tailnet_addresses(interface_addresses(shown)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(ip, bin_dir / "ip")  # the real ip, and no tailscale CLI
    monkeypatch.setenv("PATH", str(bin_dir))
    assert machine_addresses() == []


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("127.0.0.1", True, id="loopback"),
        pytest.param("100.64.0.99", False, id="tailnet-address-on-no-interface"),
        pytest.param("", False, id="empty-would-be-the-wildcard"),
        pytest.param("0.0.0.0", True, id="wildcard-is-an-address-the-bind-check-judges"),
        pytest.param("localhost", False, id="a-name"),
        pytest.param("not an address", False, id="garbage"),
    ],
)
def test_can_listen_on(address: str, expected: bool) -> None:
    assert machine.can_listen_on(address) is expected


def test_default_binds_leave_out_tailnet_addresses_this_machine_cannot_listen_on() -> None:
    """Userspace tailscaled: ``tailscale ip`` names an address that is on no interface."""
    from gunicorn.config import Config  # noqa: PLC0415 - needs the gunicorn extra

    from flask_tailnet.gunicorn_binds import MachineAddresses, fill_in  # noqa: PLC0415

    cfg = Config()
    cfg.set("bind", [])  # what the config module gives gunicorn
    found = MachineAddresses(find=lambda: ["100.64.0.99"])  # the real can_listen_on
    assert fill_in(cfg, [], {}, found) is True  # the default binds ...
    assert cfg.bind == ["127.0.0.1:8000"]
    assert found.bindable() == []  # ... loopback only, for want of a bindable tailnet address
