"""``flask tailnet status``: its tailscaled and identity lines, and when they make it exit 1.

The stand-in tailscaled answers on a unix socket of its own; the usual socket paths and the
official container's are pointed at a fresh directory, so whatever another process plants in
/tmp or /run while the tests run changes nothing here.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flask_tailnet import tailscaled as tailscaled_module
from flask_tailnet import tailscaled_watch
from flask_tailnet.cli import tailnet

from .cli_helpers import flask_cli, status_entries, status_value
from .conftest import make_app
from .tailscaled_stand_in import VERSION, StandInTailscaled

SERVE_CONFIG = "/localapi/v0/serve-config"


@pytest.fixture(autouse=True)
def no_host_tailscaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default socket paths and the container's, moved to where nothing is: the tests see
    only the tailscaled they name. Returns the container socket's stand-in path."""
    nowhere = tmp_path / "host"
    monkeypatch.setattr(
        tailscaled_module, "SOCKET_PATHS", (str(nowhere / "a.sock"), str(nowhere / "b.sock"))
    )
    container = tmp_path / "tailscaled.sock"
    monkeypatch.setattr(tailscaled_watch, "CONTAINER_SOCKET", str(container))
    return container


@pytest.fixture
def stopped_socket(tmp_path: Path) -> str:
    """A socket file nothing listens on (connecting to it is refused): a stopped tailscaled's."""
    path = tmp_path / "stopped.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()
    return str(path)


def status(state_dir: Path, **settings: Any) -> tuple[int, str, str]:
    app = make_app(state_dir, auth="token", **settings)
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    return result.exit_code, result.stdout, result.stderr


def test_status_without_tailscaled_says_so_and_exits_0(state_dir: Path) -> None:
    code, out, err = status(state_dir)
    assert code == 0, out + err
    assert status_value(out, "tailscaled") == "not found on this host (loopback requests are local)"
    assert status_value(out, "identity") == (
        "auto (TAILNET_IDENTITY); gates: none; Tailscale login: off"
    )
    assert "loopback" not in dict(status_entries(out))
    assert err == ""


def test_status_of_a_tun_mode_tailscaled(state_dir: Path, tailscaled: StandInTailscaled) -> None:
    code, out, err = status(state_dir, tailscaled_socket=tailscaled.path)
    assert code == 0, out + err
    assert status_value(out, "tailscaled") == f"{VERSION} at {tailscaled.path}, TUN"
    assert status_value(out, "loopback") == "local (tailscaled relays nothing to it)"
    assert err == ""


def test_status_of_a_userspace_tailscaled(state_dir: Path, tailscaled: StandInTailscaled) -> None:
    tailscaled.status["TUN"] = False
    code, out, err = status(state_dir, tailscaled_socket=tailscaled.path)
    assert code == 0, out + err
    assert status_value(out, "tailscaled") == (
        f"{VERSION} at {tailscaled.path}, userspace networking"
    )
    assert status_value(out, "loopback") == (
        "relayed connections are told apart by whois of 127.0.0.1:REMOTE_PORT; "
        "only the others are local"
    )
    assert err == ""


def _forward(port: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"TCP": {port: {"TCPForward": target, **extra}}}


@pytest.mark.parametrize(
    ("config", "ports", "funnel"),
    [
        pytest.param(_forward("443", "127.0.0.1:5000"), "5000", None, id="top-level-tcp"),
        pytest.param(
            {"Services": {"svc:mcp-api": _forward("443", "127.0.0.1:8443")}},
            "8443",
            None,
            id="tailscale-service",
        ),
        pytest.param(
            {"Foreground": {"a1b2": _forward("10000", "localhost:5001", TerminateTLS="x.ts.net")}},
            "5001",
            None,
            id="foreground-session",
        ),
        pytest.param(
            {
                **_forward("443", "127.0.0.1:5000", ProxyProtocol=2),
                "AllowFunnel": {"server.tail1a2b3.ts.net:443": True},
            },
            "5000",
            "5000",
            id="funnel",
        ),
        pytest.param(
            {
                "TCP": {
                    "443": {"TCPForward": "127.0.0.1:8443"},
                    "8080": {"TCPForward": "127.0.0.1:5000"},
                }
            },
            "5000, 8443",
            None,
            id="two-forwards",
        ),
    ],
)
def test_status_lists_the_ports_serve_forwards(
    state_dir: Path,
    tailscaled: StandInTailscaled,
    config: dict[str, Any],
    ports: str,
    funnel: str | None,
) -> None:
    tailscaled.serve_config = config
    code, out, err = status(state_dir, tailscaled_socket=tailscaled.path)
    assert code == 0, out + err  # the guard covers a forward: loopback there must authenticate
    entries = dict(status_entries(out))
    assert entries["tailscale serve"] == [f"forwards raw TCP to port {ports}: not local there"]
    if funnel is None:
        assert "tailscale funnel" not in entries
    else:
        assert entries["tailscale funnel"] == [
            f"ON for the TCP forward to port {funnel} (public): refused there (403) unless "
            "TAILNET_NETWORK is 'any'"
        ]
    assert "loopback" not in entries  # TUN mode, but not "local": a port is forwarded


def _status_500(tailscaled: StandInTailscaled, container: Path) -> dict[str, Any]:
    tailscaled.fail_with = (500, "internal error")
    return {"tailscaled_socket": tailscaled.path}


def _serve_config_500(tailscaled: StandInTailscaled, container: Path) -> dict[str, Any]:
    tailscaled.fail_paths[SERVE_CONFIG] = (500, "serve config: internal error")
    return {"tailscaled_socket": tailscaled.path}


def _serve_config_403(tailscaled: StandInTailscaled, container: Path) -> dict[str, Any]:
    tailscaled.fail_paths[SERVE_CONFIG] = (403, "serve config access denied")
    return {"tailscaled_socket": tailscaled.path}


def _serve_config_garbage(tailscaled: StandInTailscaled, container: Path) -> dict[str, Any]:
    tailscaled.serve_config = {"TCP": {"443": {"TCPForward": "127.0.0.1"}}}  # no port
    return {"tailscaled_socket": tailscaled.path}


def _container_socket_not_named(tailscaled: StandInTailscaled, container: Path) -> dict[str, Any]:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(container))  # left bound: a socket file that exists
    listener.close()
    return {}


def _userspace_forced_without_socket(
    tailscaled: StandInTailscaled, container: Path
) -> dict[str, Any]:
    return {"userspace": True}


def _named_socket_missing(tailscaled: StandInTailscaled, container: Path) -> dict[str, Any]:
    """A typo in the setting (or a tailscaled not started yet): the socket tailscaled really
    listens on, and relays through, is not the one named."""
    return {"tailscaled_socket": tailscaled.path + "k"}


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        pytest.param(_status_500, "answered status with 500", id="status-500"),
        pytest.param(_serve_config_500, "500", id="serve-config-500"),
        pytest.param(_serve_config_403, "403", id="serve-config-403"),
        pytest.param(_serve_config_garbage, "TCPForward", id="serve-config-unparsable"),
        pytest.param(
            _container_socket_not_named,
            "set TAILNET_TAILSCALED_SOCKET to it",
            id="container-socket-present-not-named",
        ),
        pytest.param(
            _userspace_forced_without_socket,
            "TAILNET_USERSPACE is on but no tailscaled socket was found",
            id="userspace-forced-no-socket",
        ),
        pytest.param(_named_socket_missing, "which does not exist", id="named-socket-missing-typo"),
    ],
)
def test_status_exits_1_when_loopback_cannot_be_told_local(
    state_dir: Path,
    tailscaled: StandInTailscaled,
    no_host_tailscaled: Path,
    spoil: Callable[[StandInTailscaled, Path], dict[str, Any]],
    problem: str,
) -> None:
    settings = spoil(tailscaled, no_host_tailscaled)
    code, out, err = status(state_dir, **settings)
    assert code == 1, out + err
    readable = status_value(out, "tailscaled")
    assert readable.startswith("NOT READABLE: ")
    assert problem in readable
    assert status_value(out, "loopback") == (
        "NOT LOCAL: every loopback request must authenticate until it answers"
    )
    assert "cannot tell loopback requests that tailscaled relayed from local ones" in err


def test_status_with_the_bypass_off_is_not_alarmed_by_an_unreadable_tailscaled(
    state_dir: Path, tailscaled: StandInTailscaled
) -> None:
    tailscaled.fail_with = (500, "internal error")
    code, out, err = status(state_dir, tailscaled_socket=tailscaled.path, local_bypass=False)
    assert code == 0, out + err  # no request is served as local anyway
    assert status_value(out, "tailscaled").startswith("NOT READABLE: ")


def test_status_of_a_stopped_tailscaled_is_local(state_dir: Path, stopped_socket: str) -> None:
    """A socket nothing listens on (ECONNREFUSED): tailscaled is stopped and relays nothing."""
    code, out, err = status(state_dir, tailscaled_socket=stopped_socket)
    assert code == 0, out + err
    assert status_value(out, "tailscaled").startswith("NOT READABLE: ")
    assert status_value(out, "loopback") == (
        "local (tailscaled is not running, so it relays nothing)"
    )


@pytest.mark.parametrize("where", ["none", "stopped"])
def test_status_exits_1_when_identity_is_required_without_tailscaled(
    state_dir: Path, stopped_socket: str, where: str
) -> None:
    settings: dict[str, Any] = {"identity": "required"}
    if where == "stopped":
        settings["tailscaled_socket"] = stopped_socket
    code, out, err = status(state_dir, **settings)
    assert code == 1, out + err
    [identity] = [values for label, values in status_entries(out) if label == "identity"]
    assert identity == [
        "required (TAILNET_IDENTITY); gates: none; Tailscale login: off",
        "UNUSABLE, every remote peer is refused: TAILNET_IDENTITY is 'required' but tailscaled "
        "does not answer",
    ]
    assert "no remote peer gets in: see the identity line marked UNUSABLE" in err


def test_status_with_identity_required_and_tailscaled_answering(
    state_dir: Path, tailscaled: StandInTailscaled
) -> None:
    code, out, err = status(
        state_dir,
        tailscaled_socket=tailscaled.path,
        identity="required",
        allowed_users=["alice@example.com", "*@example.org"],
        allowed_tags=["tag:ci"],
        required_capability="example.com/cap/app",
        tailscale_login=True,
    )
    assert code == 0, out + err
    assert status_value(out, "identity") == (
        "required (TAILNET_IDENTITY); gates: user alice@example.com, user *@example.org, "
        "tag tag:ci, capability example.com/cap/app; Tailscale login: on"
    )


def test_status_as_a_real_flask_process(tmp_path: Path, tailscaled: StandInTailscaled) -> None:
    """The installed command, with the socket named in the environment as a deployer does."""
    tailscaled.status["TUN"] = False
    tailscaled.serve_config = {
        "Services": {"svc:mcp-api": _forward("443", "127.0.0.1:8443", ProxyProtocol=1)}
    }
    done = flask_cli(
        "tailnet",
        "status",
        state_dir=tmp_path / "state",
        env={"FLASK_TAILNET_TAILSCALED_SOCKET": tailscaled.path, "FLASK_TAILNET_AUTH": "token"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entries = dict(status_entries(done.stdout))
    assert entries["tailscaled"] == [f"{VERSION} at {tailscaled.path}, userspace networking"]
    assert entries["tailscale serve"] == ["forwards raw TCP to port 8443: not local there"]
    tailscaled.fail_with = (503, "unavailable")
    done = flask_cli(
        "tailnet",
        "status",
        state_dir=tmp_path / "state",
        env={"FLASK_TAILNET_TAILSCALED_SOCKET": tailscaled.path, "FLASK_TAILNET_AUTH": "token"},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert status_value(done.stdout, "loopback").startswith("NOT LOCAL")
