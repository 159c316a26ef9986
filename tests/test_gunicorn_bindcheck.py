"""The bind check of ``flask_tailnet.gunicorn``, in the master before any socket is bound: which
binds are refused and how (exit 1, one message, no token), what the network policy allows, where
the binds come from when nothing chose them (the environment, the app, loopback and this
machine's tailnet addresses, looked up at start), and the sockets gunicorn inherits instead
(``LISTEN_FDS``, ``GUNICORN_FD``).

The hooks run on a real gunicorn ``Config`` with a stand-in Arbiter, or gunicorn's own Arbiter
without ``run()``. No test here connects to anything; the wildcard sockets made in process are
bound, never listening.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from gunicorn.pidfile import Pidfile

from flask_tailnet import gunicorn as tg
from flask_tailnet import gunicorn_binds
from flask_tailnet.binds import default_binds
from flask_tailnet.gunicorn_binds import MachineAddresses, fill_in

from .conftest import addresses_on_lo, make_app
from .gunicorn_stand_ins import (
    PREFIX,
    TAILNET_V4,
    arbiter,
    clean_environment,  # noqa: F401 - a fixture
    config,
    gunicorn_argv,
    gunicorn_loggers,  # noqa: F401 - a fixture
    machine,
    on_a_terminal,  # noqa: F401 - a fixture
    real_arbiter,
)

pytestmark = pytest.mark.usefixtures("clean_environment", "on_a_terminal")

#: TEST-NET-2, added to lo for the refused inherited socket: neither loopback, tailnet nor LAN.
OTHER_V4 = "198.51.100.46"


# ---- on_starting: refused ----------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    binds: list[str] | None
    expected: str
    settings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    wsgi: str = "guarded"  # or "bare": an app without the guard
    state: str = "ok"  # "open": the state dir is mode 0755; "under-a-file": its parent is a file


REFUSALS = [
    pytest.param(Refusal(["0.0.0.0:9001"], "'0.0.0.0:9001': the wildcard address"), id="0.0.0.0"),
    pytest.param(Refusal(["[::]:9001"], "'[::]:9001': the wildcard address"), id="[::]"),
    pytest.param(Refusal(["[::0]:9001"], "the wildcard address"), id="[::0]"),
    pytest.param(Refusal(["[::ffff:0.0.0.0]:9001"], "the wildcard address"), id="mapped-wildcard"),
    pytest.param(Refusal([":9001"], "the wildcard address"), id="empty-host"),
    pytest.param(Refusal(["::"], "without brackets"), id="bare-v6-wildcard"),
    pytest.param(Refusal(["0:0:0:0:0:0:0:0"], "that is the wildcard address"), id="long-v6-zero"),
    pytest.param(Refusal(["8.8.8.8:9001"], "8.8.8.8 is a public address"), id="public-v4"),
    pytest.param(Refusal(["[2001:4860:4860::8888]:9001"], "is a public address"), id="public-v6"),
    pytest.param(
        Refusal(["192.168.1.10:9001"], "192.168.1.10 is a LAN address"), id="lan-under-tailnet"
    ),
    pytest.param(Refusal(["[fd00::1]:9001"], "is a LAN address"), id="ula-under-tailnet"),
    pytest.param(
        Refusal(["8.8.8.8:9001"], "is a public address", settings={"network": "any"}),
        id="public-under-any",
    ),
    pytest.param(Refusal(["example.com:9001"], "is a host name"), id="host-name"),
    pytest.param(Refusal(["127.1:9001"], "is a host name"), id="short-loopback-is-a-name"),
    pytest.param(Refusal(["0:9001"], "is a host name"), id="zero-is-a-name"),
    pytest.param(
        Refusal(["127.0.0.1:9001", "0.0.0.0:9002", "8.8.8.8:9003"], "'0.0.0.0:9002'"),
        id="one-refused-among-accepted",
    ),
    pytest.param(
        Refusal(["127.0.0.1:9001"], "does not use flask-tailnet", wsgi="bare"), id="no-guard"
    ),
    pytest.param(
        Refusal(
            ["127.0.0.1:9001"],
            "is open to group or others (mode 0755); run: chmod 700",
            state="open",
        ),
        id="state-dir-open-to-others",
    ),
    pytest.param(
        Refusal(["127.0.0.1:9001"], "cannot create the state: ", state="under-a-file"),
        id="state-dir-under-a-file",
    ),
    pytest.param(
        Refusal(None, "the wildcard address", settings={"TAILNET_BIND": ["0.0.0.0:9001"]}),
        id="app-bind-wildcard",
    ),
    pytest.param(
        Refusal(
            ["0.0.0.0:9001"],
            "TAILNET_ALLOW_WILDCARD_BIND must be true or false",
            env={"TAILNET_ALLOW_WILDCARD_BIND": "maybe"},
        ),
        id="env-allow-flag-malformed-at-check",
    ),
]


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_start_exits_1_with_the_message_and_never_the_token(
    case: Refusal,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    state_dir = tmp_path / "parent" / "state"
    app = make_app(state_dir, **case.settings)
    token = b""
    if case.state == "under-a-file":
        (tmp_path / "parent").write_text("not a directory")
    else:
        # A token from an earlier start: the refusal must not print it.
        token = app.extensions["tailnet"].token_file.ensure()
        if case.state == "open":
            state_dir.chmod(0o755)
    pid_path = tmp_path / "gunicorn.pid"
    server = arbiter(app if case.wsgi == "guarded" else Flask("bare"), case.binds)
    server.pidfile = Pidfile(str(pid_path))
    server.pidfile.create(os.getpid())
    with pytest.raises(SystemExit) as exited:
        tg.on_starting(server)
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(PREFIX)
    assert case.expected in err
    assert err.count(PREFIX) == 1
    if token:
        assert token.decode() not in err
    assert not hasattr(server, "flask_tailnet")
    assert not pid_path.exists()  # gunicorn's pidfile is removed, as when gunicorn halts


def test_every_refused_bind_is_named_in_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["0.0.0.0:9001", "8.8.8.8:9002", "[::]:9003"])
    with pytest.raises(SystemExit):
        tg.on_starting(server)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("'")[1] for line in lines] == ["0.0.0.0:9001", "8.8.8.8:9002", "[::]:9003"]
    assert not (tmp_path / "state" / "token").exists()  # refused before the state is made


@pytest.mark.parametrize(
    ("specs", "network"),
    [
        pytest.param(["192.168.1.10:9001"], "local", id="rfc1918-under-local"),
        pytest.param(["[fd00::1]:9001", "10.1.2.3:9001"], "local", id="ula-and-10-under-local"),
        pytest.param(["[fe80::1]:9001"], "any", id="link-local-under-any"),
        pytest.param(["100.64.0.42:9001", "[fd7a:115c:a1e0::42]:9001"], "tailnet", id="tailnet"),
        pytest.param(["localhost:9001", "tcp://127.0.0.1:9002"], "tailnet", id="localhost"),
    ],
)
def test_addresses_the_network_policy_allows_are_accepted(
    specs: list[str], network: str, tmp_path: Path
) -> None:
    server = arbiter(make_app(tmp_path / "state", network=network), specs)
    tg.on_starting(server)
    assert [b.spec for b in server.flask_tailnet.binds] == specs


# ---- on_starting: what the environment and the app say ------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"TAILNET_BIND": "a b", "FLASK_TAILNET_BIND": "c"},
            "are both set, differently",
            id="both-spellings-differ",
        ),
        pytest.param(
            {"TAILNET_BIND": "[1, 2]"},
            "TAILNET_BIND must be a list of bind specs",
            id="json-not-strings",
        ),
        pytest.param(
            {"TAILNET_ALLOW_WILDCARD_BIND": "sometimes"},
            "TAILNET_ALLOW_WILDCARD_BIND must be true or false, not 'sometimes'",
            id="flag-not-a-boolean",
        ),
        pytest.param({"TAILNET_BIND": "0.0.0.0:9001"}, "the wildcard address", id="env-wildcard"),
        pytest.param({"TAILNET_BIND": "127.0.0.1:x"}, "'x' is not a port", id="env-bad-port"),
        pytest.param({"PORT": "70000"}, "PORT=70000 is not a port", id="PORT-out-of-range"),
    ],
)
def test_a_malformed_or_refused_environment_refuses_the_start(
    env: dict[str, str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = arbiter(make_app(tmp_path / "state"))
    with pytest.raises(SystemExit) as exited:
        tg.on_starting(server)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(PREFIX)
    assert expected in err
    assert not (tmp_path / "state" / "token").exists()


#: gunicorn settings under which the guard would judge an address a sender chose, not the peer's.
UNGUARDABLE_SETTINGS = [
    pytest.param({"protocol": "uwsgi"}, "--protocol uwsgi cannot be guarded", id="uwsgi"),
    pytest.param(
        {"proxy_protocol": "v1", "proxy_allow_ips": "*"},
        "--proxy-protocol with --proxy-allow-from '*'",
        id="proxy-protocol-any-sender",
    ),
    pytest.param(
        {"proxy_protocol": "v2", "proxy_allow_ips": "127.0.0.1,100.64.0.0/10"},
        "--proxy-allow-from '100.64.0.0/10'",
        id="proxy-protocol-a-tailnet-range",
    ),
    pytest.param(
        {"proxy_protocol": "auto", "proxy_allow_ips": "192.168.0.0/16"},
        "--proxy-allow-from '192.168.0.0/16'",
        id="proxy-protocol-a-lan-range",
    ),
    pytest.param(
        {"proxy_protocol": "v1", "proxy_allow_ips": "126.0.0.0/7"},
        "--proxy-allow-from '126.0.0.0/7'",
        id="proxy-protocol-a-range-beyond-loopback",
    ),
]


@pytest.mark.parametrize(("settings", "expected"), UNGUARDABLE_SETTINGS)
def test_uwsgi_and_a_proxy_protocol_from_others_than_loopback_refuse_the_start(
    settings: dict[str, Any],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9058"], **settings)
    with pytest.raises(SystemExit) as exited:
        tg.on_starting(server)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(PREFIX)
    assert expected in err
    assert not (tmp_path / "state" / "token").exists()


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"proxy_protocol": "v1"}, id="proxy-protocol-from-the-default-loopback"),
        pytest.param(
            {"proxy_protocol": "v2", "proxy_allow_ips": "127.0.0.0/8,::1"},
            id="proxy-protocol-from-loopback-ranges",
        ),
        pytest.param({"proxy_protocol": "off", "proxy_allow_ips": "*"}, id="proxy-protocol-off"),
    ],
)
def test_http_and_a_proxy_protocol_from_loopback_only_are_served(
    settings: dict[str, Any], tmp_path: Path
) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9059"], **settings)
    tg.on_starting(server)
    assert [str(bind.ip) for bind in server.flask_tailnet.binds] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("addresses", "env", "binds", "loopback_only", "from_env"),
    [
        pytest.param([], {}, ["127.0.0.1:8000"], True, False, id="no-tailnet-address"),
        pytest.param(
            [TAILNET_V4, "fd7a:115c:a1e0::42"],
            {},
            ["127.0.0.1:8000", f"{TAILNET_V4}:8000", "[fd7a:115c:a1e0::42]:8000"],
            False,
            False,
            id="tailnet-addresses",
        ),
        pytest.param([], {"PORT": "9005"}, ["127.0.0.1:9005"], True, False, id="PORT"),
        pytest.param([], {"PORT": "http"}, ["127.0.0.1:8000"], True, False, id="PORT-not-a-number"),
        pytest.param(
            [TAILNET_V4],
            {"TAILNET_BIND": "127.0.0.1:9006,unix:/run/app.sock"},
            ["127.0.0.1:9006", "unix:/run/app.sock"],
            False,
            True,
            id="TAILNET_BIND",
        ),
        pytest.param(
            [],
            {"FLASK_TAILNET_BIND": '["[::1]:9007"]'},
            ["[::1]:9007"],
            False,
            True,
            id="FLASK_TAILNET_BIND-json",
        ),
        pytest.param(
            [], {"TAILNET_BIND": "  "}, ["127.0.0.1:8000"], True, False, id="blank-TAILNET_BIND"
        ),
    ],
)
def test_default_binds_are_filled_in_at_start(
    addresses: list[str],
    env: dict[str, str],
    binds: list[str],
    loopback_only: bool,
    from_env: bool,
    tmp_path: Path,
) -> None:
    """What the config module's ``bind`` used to be at import is now filled in at start, when
    nothing else chose the binds (here: the environment, and no app binds)."""
    cfg = config()
    assert cfg.bind == []  # nothing was looked up at import
    found = machine(addresses)
    default = fill_in(cfg, [make_app(tmp_path / "state").extensions["tailnet"]], env, found)
    assert cfg.bind == binds
    assert (default and not found.bindable()) is loopback_only
    assert default is not from_env


def test_default_binds_leave_out_addresses_this_machine_cannot_listen_on() -> None:
    """tailscaled in userspace networking mode: ``tailscale ip`` names addresses on no interface."""
    cfg = config()
    found = MachineAddresses(find=lambda: [TAILNET_V4], can_listen=lambda address: False)
    assert fill_in(cfg, [], {}, found) is True
    assert cfg.bind == ["127.0.0.1:8000"]
    assert found.addresses() == [TAILNET_V4]  # still the addresses of the links


def test_the_machine_s_addresses_are_looked_up_once(tmp_path: Path) -> None:
    calls: list[str] = []

    def find() -> list[str]:
        calls.append("find")
        return [TAILNET_V4]

    server = arbiter(make_app(tmp_path / "state"))
    server.flask_tailnet_machine = MachineAddresses(find=find, can_listen=lambda address: True)
    tg.on_starting(server)
    tg.when_ready(server)
    assert calls == ["find"]


def test_gunicorn_s_env_setting_counts_as_the_environment(tmp_path: Path) -> None:
    """``gunicorn -e TAILNET_BIND=...``: gunicorn puts it in the environment before on_starting,
    and takes it out before a SIGHUP's check; the check reads it at both."""
    server = arbiter(make_app(tmp_path / "state"), raw_env=["TAILNET_BIND=127.0.0.1:9008"])
    tg.on_starting(server)
    assert list(server.cfg.bind) == ["127.0.0.1:9008"]


LOOPBACK_ONLY_NOTE = (
    "flask-tailnet: no tailnet address found on this machine (is Tailscale up?); binding "
    "loopback only"
)


@pytest.mark.parametrize(
    ("addresses", "binds", "logged"),
    [
        pytest.param([], None, True, id="default-without-tailnet-address"),
        pytest.param([], ["127.0.0.1:9001"], False, id="given-bind"),
        pytest.param([TAILNET_V4], None, False, id="default-with-tailnet-address"),
    ],
)
def test_loopback_only_is_logged_when_no_tailnet_address_is_found(
    addresses: list[str], binds: list[str] | None, logged: bool, tmp_path: Path
) -> None:
    server = arbiter(make_app(tmp_path / "state"), binds, addresses)
    tg.on_starting(server)
    assert (LOOPBACK_ONLY_NOTE in server.log.text()) is logged
    if binds is None:
        assert list(server.cfg.bind) == default_binds(8000, addresses)


def test_a_unix_socket_bind_refuses_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"unix:{tmp_path}/app.sock"
    server = arbiter(make_app(tmp_path / "state"), [spec, "127.0.0.1:9001"])
    with pytest.raises(SystemExit) as exited:
        tg.on_starting(server)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert f"{PREFIX}refusing to bind {spec!r}: a Unix socket peer has no address" in err
    assert "list 127.0.0.1 in TAILNET_TRUSTED_PROXIES" in err
    assert not (tmp_path / "app.sock").exists()


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        pytest.param(None, {}, ["127.0.0.1:9011", "[::1]:9011"], id="default-replaced"),
        pytest.param(["127.0.0.1:9012"], {}, ["127.0.0.1:9012"], id="-b-wins"),
        pytest.param(
            None, {"TAILNET_BIND": "127.0.0.1:9013"}, ["127.0.0.1:9013"], id="environment-wins"
        ),
    ],
)
def test_the_app_s_TAILNET_BIND_replaces_only_the_default(
    given: list[str] | None,
    env: dict[str, str],
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = make_app(tmp_path / "state", bind=["127.0.0.1:9011", "[::1]:9011"])
    server = arbiter(app, given)
    tg.on_starting(server)
    assert list(server.cfg.bind) == expected
    assert [b.spec for b in server.flask_tailnet.binds] == expected


@pytest.mark.parametrize(
    ("env", "settings"),
    [
        pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": "true"}, {}, id="environment"),
        pytest.param({"FLASK_TAILNET_ALLOW_WILDCARD_BIND": "1"}, {}, id="flask-prefixed-env"),
        pytest.param({}, {"allow_wildcard_bind": True}, id="app-setting"),
    ],
)
def test_allow_wildcard_bind_lets_the_wildcard_pass(
    env: dict[str, str],
    settings: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = arbiter(
        make_app(tmp_path / "state", **settings), ["0.0.0.0:9021", "[::]:9022"], [TAILNET_V4]
    )
    tg.on_starting(server)
    tg.when_ready(server)
    token = (tmp_path / "state" / "token").read_text().strip()
    assert capsys.readouterr().err.split("\n", 1)[1].split() == [
        f"http://127.0.0.1:9021/?token={token}",
        f"http://{TAILNET_V4}:9021/?token={token}",
        f"http://127.0.0.1:9022/?token={token}",
        f"http://{TAILNET_V4}:9022/?token={token}",
    ]


def test_allow_wildcard_bind_false_in_the_environment_still_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILNET_ALLOW_WILDCARD_BIND", "false")
    with pytest.raises(SystemExit):
        tg.on_starting(arbiter(make_app(tmp_path / "state"), ["0.0.0.0:9001"]))


# ---- inherited sockets (LISTEN_FDS) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid", "count", "expected"),
    [
        pytest.param("self", "2", [3, 4], id="two"),
        pytest.param("self", "0", [], id="zero"),
        pytest.param("self", "-1", [], id="negative"),
        pytest.param("self", "two", [], id="count-not-a-number"),
        pytest.param("1", "2", [], id="another-process-s"),
        pytest.param("", "2", [], id="no-LISTEN_PID"),
        pytest.param("self", "", [], id="no-LISTEN_FDS"),
    ],
)
def test_inherited_fds(
    pid: str, count: str, expected: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()) if pid == "self" else pid)
    monkeypatch.setenv("LISTEN_FDS", count)
    assert gunicorn_binds.inherited_fds() == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"GUNICORN_PID": "123", "GUNICORN_FD": "5"}, [5], id="usr2-one"),
        pytest.param({"GUNICORN_PID": "123", "GUNICORN_FD": "5,7,9"}, [5, 7, 9], id="usr2-three"),
        pytest.param({"GUNICORN_FD": "5"}, [], id="GUNICORN_FD-without-GUNICORN_PID-is-ignored"),
        pytest.param({"GUNICORN_PID": "0", "GUNICORN_FD": "5"}, [], id="GUNICORN_PID-zero"),
        pytest.param(
            {"LISTEN_PID": "self", "LISTEN_FDS": "1", "GUNICORN_PID": "1", "GUNICORN_FD": "9"},
            [3],
            id="systemd-first-as-gunicorn",
        ),
        pytest.param(
            {"LISTEN_PID": "self", "LISTEN_FDS": "0", "GUNICORN_PID": "1", "GUNICORN_FD": "9"},
            [9],
            id="systemd-zero-then-GUNICORN_FD",
        ),
        pytest.param(
            {"LISTEN_PID": "self", "LISTEN_FDS": "-1", "GUNICORN_PID": "1", "GUNICORN_FD": "9"},
            [],
            id="systemd-negative-is-systemd-s-as-gunicorn-then-bind-is-checked",
        ),
    ],
)
def test_inherited_fds_from_a_usr2_re_exec(
    env: dict[str, str], expected: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert gunicorn_binds.inherited_fds() == expected


@pytest.mark.parametrize(
    "listed",
    [
        pytest.param(None, id="GUNICORN_PID-without-GUNICORN_FD"),
        pytest.param("", id="empty"),
        pytest.param("5,", id="trailing-comma"),
        pytest.param(" 5", id="space"),
        pytest.param("+5", id="sign"),
        pytest.param("five", id="word"),
        pytest.param("5;6", id="other-separator"),
        pytest.param("1" * 12, id="absurd-number"),
    ],
)
def test_a_malformed_GUNICORN_FD_refuses_the_start(
    listed: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GUNICORN_PID", "123")
    if listed is not None:
        monkeypatch.setenv("GUNICORN_FD", listed)
    with pytest.raises(SystemExit):
        tg.on_starting(arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"]))
    assert "is not a list of file descriptor numbers" in capsys.readouterr().err


@contextlib.contextmanager
def inherited(monkeypatch: pytest.MonkeyPatch, *socks: socket.socket) -> Iterator[list[int]]:
    """``socks`` as the sockets systemd passes. Their numbers are not 3, 4, ... here (those are
    pytest's), so the module's reader of LISTEN_FDS is replaced by their numbers."""
    fds = [s.fileno() for s in socks]
    monkeypatch.setattr(gunicorn_binds, "inherited_fds", lambda: fds)
    try:
        yield fds
    finally:
        for s in socks:
            s.close()


def _tcp(host: str, *, listen: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    if listen:
        sock.listen()
    return sock


def test_inherited_loopback_sockets_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socks = (_tcp("127.0.0.1", listen=True), _tcp("127.0.0.2", listen=True))
    with inherited(monkeypatch, *socks) as fds:
        server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"])
        tg.on_starting(server)
        # gunicorn serves the passed sockets only (it binds no address then): the login URLs are
        # made from the addresses they listen on
        binds = server.flask_tailnet.binds
        assert [b.spec for b in binds] == [f"fd://{fd}" for fd in fds]
        assert [(b.kind, str(b.ip)) for b in binds] == [("tcp", "127.0.0.1"), ("tcp", "127.0.0.2")]


def test_an_inherited_unix_socket_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "s"))
    with inherited(monkeypatch, _tcp("127.0.0.1", listen=True), unix) as fds:
        with pytest.raises(SystemExit):
            tg.on_starting(arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"]))
        err = capsys.readouterr().err
        assert f"refusing to bind 'fd://{fds[1]}' (a Unix socket): a Unix socket peer" in err
        assert f"fd://{fds[0]}" not in err


def test_with_reuse_port_the_bind_setting_is_checked_not_the_inherited_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``--reuse-port`` each worker binds ``-b`` itself and ignores inherited sockets."""
    with inherited(monkeypatch, _tcp("127.0.0.1", listen=True)):
        server = arbiter(make_app(tmp_path / "state"), ["0.0.0.0:9001"], reuse_port=True)
        with pytest.raises(SystemExit):
            tg.on_starting(server)
        assert "refusing to bind '0.0.0.0:9001': the wildcard" in capsys.readouterr().err


def test_an_inherited_wildcard_socket_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bound, never listening: nothing can connect to it.
    with inherited(monkeypatch, _tcp("0.0.0.0", listen=False)) as (fd,):
        with pytest.raises(SystemExit):
            tg.on_starting(arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"]))
        err = capsys.readouterr().err
        assert f"refusing to bind 'fd://{fd}' (listening on 0.0.0.0): the wildcard" in err
        monkeypatch.setenv("TAILNET_ALLOW_WILDCARD_BIND", "yes")
        tg.on_starting(arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"]))


def test_an_inherited_descriptor_that_is_no_socket_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    read, write = os.pipe()
    try:
        monkeypatch.setattr(gunicorn_binds, "inherited_fds", lambda: [read])
        with pytest.raises(SystemExit):
            tg.on_starting(arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"]))
        assert f"file descriptor {read} is not an open socket" in capsys.readouterr().err
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.root
def test_an_inherited_socket_on_another_address_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with addresses_on_lo([f"{OTHER_V4}/32"]):
        with (
            inherited(monkeypatch, _tcp(OTHER_V4, listen=False)) as (fd,),
            pytest.raises(SystemExit),
        ):
            tg.on_starting(arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"]))
        err = capsys.readouterr().err
        assert f"'fd://{fd}' (listening on {OTHER_V4}): {OTHER_V4} is neither a loopback" in err


@pytest.mark.usefixtures("gunicorn_loggers")
def test_real_arbiter_refuses_the_wildcard_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLASK_TAILNET_STATE_DIR", str(tmp_path / "state"))
    server = real_arbiter(monkeypatch, gunicorn_argv("0.0.0.0:9052"))
    with pytest.raises(SystemExit) as exited:
        server.cfg.on_starting(server)
    assert exited.value.code == 1
    assert "refusing to bind '0.0.0.0:9052'" in capsys.readouterr().err
