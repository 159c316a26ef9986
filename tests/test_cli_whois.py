"""``flask tailnet whois ADDRESS[:PORT]``: what tailscaled says of a peer, and what this app does
with it; exit 1 when it is no peer or tailscaled does not answer, 2 when ADDRESS does not parse."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from flask_tailnet import tailscaled as tailscaled_module
from flask_tailnet import tailscaled_watch
from flask_tailnet.cli import tailnet

from .cli_helpers import flask_cli
from .conftest import make_app
from .tailscaled_stand_in import StandInTailscaled

PEER = "100.64.6.7"
TAGGED = "100.64.6.8"
PEER_V6 = "fd7a:115c:a1e0::6:7"
SELF_V4, SELF_V6 = "100.64.10.1", "fd7a:115c:a1e0::a01"  # the stand-in's own addresses
CAPABILITY = "example.com/cap/app"


@pytest.fixture(autouse=True)
def no_host_tailscaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the tailscaled a test names is seen (nothing planted in /tmp or /run counts)."""
    monkeypatch.setattr(tailscaled_module, "SOCKET_PATHS", (str(tmp_path / "none.sock"),))
    monkeypatch.setattr(tailscaled_watch, "CONTAINER_SOCKET", str(tmp_path / "container.sock"))


@pytest.fixture
def peers(tailscaled: StandInTailscaled) -> StandInTailscaled:
    tailscaled.add_peer(
        PEER,
        login="Alice@Example.com",
        display_name="Alice Example",
        node="alice-laptop.tail1a2b3.ts.net",
        node_id="nAlice1CNTRL",
        cap_map={CAPABILITY: [{"role": "admin"}, {"role": "viewer", "paths": ["/a", "/b"]}]},
        addresses=(PEER, PEER_V6),
    )
    tailscaled.add_peer(
        TAGGED,
        tags=("tag:ci", "tag:prod"),
        node="ci-runner.tail1a2b3.ts.net",
        node_id="nCI1CNTRL",
    )
    tailscaled.add_peer(
        SELF_V4,
        login="owner@example.com",
        display_name="Owner",
        node="server.tail1a2b3.ts.net",
        node_id="nSelf1CNTRL",
        addresses=(SELF_V4, SELF_V6),
    )
    return tailscaled


def whois(state_dir: Path, address: str, **settings: Any) -> tuple[int, str, str]:
    app = make_app(state_dir, auth="token", **settings)
    result = app.test_cli_runner().invoke(tailnet, ["whois", address])
    return result.exit_code, result.stdout, result.stderr


def test_whois_of_a_user_node(state_dir: Path, peers: StandInTailscaled) -> None:
    code, out, err = whois(state_dir, PEER, tailscaled_socket=peers.path)
    assert code == 0, out + err
    assert out.splitlines() == [
        "login:         Alice@Example.com",
        "display name:  Alice Example",
        "node:          alice-laptop.tail1a2b3.ts.net (nAlice1CNTRL)",
        f"addresses:     {PEER}, {PEER_V6}",
        "tags:          none",
        'capabilities:  {"example.com/cap/app": [{"role": "admin"}, '
        '{"paths": ["/a", "/b"], "role": "viewer"}]}',
        "this app:      admitted by the gates; must present a credential (Tailscale login is off)",
    ]
    assert err == ""


def test_whois_of_a_tagged_node(state_dir: Path, peers: StandInTailscaled) -> None:
    code, out, _ = whois(state_dir, TAGGED, tailscaled_socket=peers.path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "login:         (tagged node)"
    assert lines[2] == "node:          ci-runner.tail1a2b3.ts.net (nCI1CNTRL)"
    assert lines[4] == "tags:          tag:ci, tag:prod"
    assert lines[5] == "capabilities:  none"


@pytest.mark.parametrize("address", [SELF_V4, f"[{SELF_V6}]:443"], ids=["v4", "v6-port"])
@pytest.mark.parametrize(
    ("bypass", "verdict"),
    [
        (True, "local (a process on this node, served as loopback is)"),
        (False, "a process on this node; the loopback bypass is off: must present a credential"),
    ],
    ids=["bypass-on", "bypass-off"],
)
def test_whois_of_this_node_itself(
    state_dir: Path, peers: StandInTailscaled, address: str, bypass: bool, verdict: str
) -> None:
    code, out, _ = whois(state_dir, address, tailscaled_socket=peers.path, local_bypass=bypass)
    assert code == 0
    lines = out.splitlines()
    assert lines[2] == "node:          server.tail1a2b3.ts.net (nSelf1CNTRL) = this node"
    assert lines[-1] == f"this app:      {verdict}"


def test_whois_of_no_peer_exits_1(state_dir: Path, peers: StandInTailscaled) -> None:
    code, out, _ = whois(state_dir, "100.64.6.99", tailscaled_socket=peers.path)
    assert code == 1
    assert out == "100.64.6.99: not a peer (tailscaled: no match)\n"


def test_whois_of_a_connection_tailscaled_relays(state_dir: Path, peers: StandInTailscaled) -> None:
    """Userspace mode: ``127.0.0.1:PORT`` of a connection netstack dialled names the peer, and the
    verdict is the peer's (its address, its gates), never loopback's."""
    peers.register_tcp("127.0.0.1:40123", f"{PEER}:51000")
    code, out, _ = whois(
        state_dir,
        "127.0.0.1:40123",
        tailscaled_socket=peers.path,
        allowlist=["100.64.7.0/24"],
    )
    assert code == 0
    assert out.splitlines()[0] == "login:         Alice@Example.com"
    assert out.splitlines()[-1] == (
        "this app:      REFUSED by the network policy (403; TAILNET_NETWORK=tailnet)"
    )
    code, out, _ = whois(state_dir, "127.0.0.1:40124", tailscaled_socket=peers.path)
    assert (code, out) == (1, "127.0.0.1:40124: not a peer (tailscaled: no match)\n")


def test_whois_asks_tailscaled_as_the_guard_does(state_dir: Path, peers: StandInTailscaled) -> None:
    """[IPv6]:PORT goes out bracketed, with proto=tcp; IPv4-mapped addresses are unmapped."""
    assert whois(state_dir, f"[{PEER_V6}]:8443", tailscaled_socket=peers.path)[0] == 0
    assert whois(state_dir, f"::ffff:{PEER}", tailscaled_socket=peers.path)[0] == 0
    asked = [
        parse_qs(urlsplit(target).query)
        for target, _ in peers.requests
        if target.startswith("/localapi/v0/whois")
    ]
    assert asked == [
        {"addr": [f"[{PEER_V6}]:8443"], "proto": ["tcp"]},
        {"addr": [PEER], "proto": ["tcp"]},
    ]


@pytest.mark.parametrize(
    ("settings", "verdict"),
    [
        pytest.param(
            {"allowed_users": ["bob@example.com"]}, "REFUSED by the gates (403)", id="other-user"
        ),
        pytest.param(
            {"allowed_users": ["*@example.com"], "tailscale_login": True},
            "admitted by Tailscale login as Alice@Example.com",
            id="domain-and-login",
        ),
        pytest.param(
            {"required_capability": CAPABILITY},
            "admitted by the gates; must present a credential (Tailscale login is off)",
            id="holds-the-capability",
        ),
        pytest.param(
            {"required_capability": "example.com/cap/other"},
            "REFUSED by the gates (403)",
            id="lacks-the-capability",
        ),
        pytest.param(
            {"allowed_tags": ["tag:ci"]}, "REFUSED by the gates (403)", id="user-vs-tag-gate"
        ),
        pytest.param(
            {"allowlist": ["100.64.7.0/24"]},
            "REFUSED by the network policy (403; TAILNET_NETWORK=tailnet)",
            id="outside-the-allowlist",
        ),
        pytest.param(
            {"identity": "off"},
            "must present a credential (TAILNET_IDENTITY is off: the guard does not ask)",
            id="identity-off",
        ),
    ],
)
def test_whois_says_what_this_app_does_with_the_peer(
    state_dir: Path, peers: StandInTailscaled, settings: dict[str, Any], verdict: str
) -> None:
    code, out, _ = whois(state_dir, PEER, tailscaled_socket=peers.path, **settings)
    assert code == 0
    assert out.splitlines()[-1] == f"this app:      {verdict}"


def test_whois_of_a_tagged_node_through_tailscale_login(
    state_dir: Path, peers: StandInTailscaled
) -> None:
    code, out, _ = whois(
        state_dir,
        TAGGED,
        tailscaled_socket=peers.path,
        allowed_tags=["tag:ci"],
        tailscale_login=True,
    )
    assert code == 0
    assert out.splitlines()[-1] == (
        "this app:      admitted by Tailscale login as ci-runner.tail1a2b3.ts.net"
    )


def test_whois_without_tailscaled_exits_1_and_says_why(state_dir: Path) -> None:
    code, out, err = whois(state_dir, PEER)
    assert code == 1
    assert out == ""
    assert "tailscaled does not answer: no tailscaled socket found here" in err


@pytest.mark.parametrize(
    ("fail", "why"),
    [
        pytest.param("all", "tailscaled does not answer: tailscaled at ", id="status-500"),
        pytest.param("whois", "whois failed: ", id="whois-500"),
    ],
)
def test_whois_when_tailscaled_fails_exits_1_and_says_why(
    state_dir: Path, peers: StandInTailscaled, fail: str, why: str
) -> None:
    if fail == "all":
        peers.fail_with = (500, "internal error")
    else:
        peers.fail_paths["/localapi/v0/whois"] = (500, "internal error")
    code, out, err = whois(state_dir, PEER, tailscaled_socket=peers.path)
    assert code == 1
    assert out == ""
    assert why in err
    assert "500" in err


def test_whois_of_a_stopped_tailscaled_exits_1(state_dir: Path, tmp_path: Path) -> None:
    import socket  # noqa: PLC0415 - only here

    path = tmp_path / "stopped.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
    code, _, err = whois(state_dir, PEER, tailscaled_socket=str(path))
    assert code == 1
    assert f"tailscaled does not answer: tailscaled at {path}" in err


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("", id="empty"),
        pytest.param("alice-laptop", id="a-name"),
        pytest.param("100.64.6.7:", id="empty-port"),
        pytest.param("100.64.6.7:0", id="port-0"),
        pytest.param("100.64.6.7:65536", id="port-too-big"),
        pytest.param("100.64.6.7:-1", id="negative-port"),
        pytest.param("100.64.6.7:\u0668\u0660", id="arabic-indic-digits"),
        pytest.param("100.64.6.7:80:80", id="two-ports"),
        pytest.param("[100.64.6.7]:80", id="bracketed-ipv4"),
        pytest.param("[fd7a:115c:a1e0::6:7]x80", id="junk-after-bracket"),
        pytest.param("[fd7a:115c:a1e0::6:7", id="unclosed-bracket"),
        pytest.param("[]:80", id="empty-brackets"),
        pytest.param(" 100.64.6.7", id="leading-space"),
        pytest.param("100.64.6.7\n", id="newline"),
        pytest.param("100.064.6.7", id="octal-looking"),
        pytest.param("0x64.64.6.7", id="hex-octet"),
        pytest.param("100.64.6.7/32", id="prefix"),
        pytest.param("100.64.6.7?proto=udp", id="query-injection"),
        pytest.param("100.64.6.7&addr=1.2.3.4", id="parameter-injection"),
        pytest.param("x" * 5000, id="huge"),
    ],
)
def test_whois_refuses_what_is_not_an_address(
    state_dir: Path, peers: StandInTailscaled, address: str
) -> None:
    before = len(peers.whois_calls)
    code, out, err = whois(state_dir, address, tailscaled_socket=peers.path)
    assert code == 2, out + err
    assert "Invalid value for ADDRESS" in err
    assert "is not IP, IP:PORT or [IPv6]:PORT" in err
    assert len(peers.whois_calls) == before  # nothing was asked


def test_whois_as_a_real_flask_process(tmp_path: Path, peers: StandInTailscaled) -> None:
    env = {"FLASK_TAILNET_TAILSCALED_SOCKET": peers.path, "FLASK_TAILNET_AUTH": "token"}
    done = flask_cli("tailnet", "whois", PEER, state_dir=tmp_path / "state", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "login:         Alice@Example.com"
    missing = flask_cli("tailnet", "whois", "100.64.6.99", state_dir=tmp_path / "state", env=env)
    assert missing.returncode == 1
    bad = flask_cli("tailnet", "whois", "100.64.6.7:99999", state_dir=tmp_path / "state", env=env)
    assert bad.returncode == 2
    assert "Invalid value for ADDRESS" in bad.stderr


@pytest.mark.parametrize(
    ("display_name", "shown"),
    [
        pytest.param("Zoë Ünicode", "Zoë Ünicode", id="printable-unicode"),
        pytest.param("evil\u202egnp.exe", "'evil\\u202egnp.exe'", id="right-to-left-override"),
        pytest.param("a\u200bb", "'a\\u200bb'", id="zero-width-space"),
    ],
)
def test_whois_escapes_a_display_name_that_would_not_print(
    state_dir: Path, tailscaled: StandInTailscaled, display_name: str, shown: str
) -> None:
    tailscaled.add_peer(PEER, login="mallory@other.example", display_name=display_name)
    code, out, _ = whois(state_dir, PEER, tailscaled_socket=tailscaled.path)
    assert code == 0
    assert out.splitlines()[1] == f"display name:  {shown}"
