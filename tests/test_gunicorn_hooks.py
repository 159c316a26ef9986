"""The master-side code of ``flask_tailnet.gunicorn``, in process: the hooks ``on_starting``,
``when_ready`` and ``on_reload`` on a real gunicorn ``Config`` (with a stand-in Arbiter, or
gunicorn's own Arbiter without ``run()``), the import-time default binds, inherited sockets,
and ``FlaskApplication``'s settings precedence. Then SIGHUP against a real gunicorn master.

No test here connects to anything but loopback; the wildcard sockets made in process are bound,
never listening.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import logging
import os
import pty
import signal
import socket
import stat
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import gunicorn.sock
import pytest
from flask import Flask
from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.errors import ConfigError, HaltServer
from gunicorn.pidfile import Pidfile
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import flask_tailnet.machine
from flask_tailnet import gunicorn as tg
from flask_tailnet.binds import parse_bind

from .conftest import addresses_on_lo, make_app
from .gunicorn_helpers import (
    GUNICORN,
    Gunicorn,
    accepts,
    free_port,
    gunicorn_env,
    kill_group,
    listening_ports,
    request,
    start_gunicorn,
    wait_until_serving,
)

PREFIX = "flask-tailnet: refusing to serve: "
#: The module's own check, which the ``clean`` fixture replaces by a stand-in.
REAL_STDERR_IS_A_TERMINAL = tg.stderr_is_a_terminal
TAILNET_V4 = "100.64.0.42"
#: TEST-NET-2, added to lo for the refused inherited socket: neither loopback, tailnet nor LAN.
OTHER_V4 = "198.51.100.46"

# ---- stand-ins ---------------------------------------------------------------------------------


class QuietLog(tg.RedactingLogger):
    """A RedactingLogger (so on_starting does not warn) that records instead of logging."""

    def __init__(self) -> None:  # no super().__init__: it would install handlers
        self.records: list[tuple[str, str]] = []

    def _record(self, level: str, msg: str, *args: Any) -> None:
        self.records.append((level, msg % args if args else msg))

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("info", msg, *args)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("warning", msg, *args)

    def text(self) -> str:
        return "\n".join(message for _, message in self.records)


class PlainLog:
    """A logger that is not a RedactingLogger, as a user's own ``logger_class`` may be."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def info(self, msg: str, *args: Any) -> None:
        self.records.append(("info", msg % args))

    def warning(self, msg: str, *args: Any) -> None:
        self.records.append(("warning", msg % args))


class FakeApp:
    """gunicorn's application object as the hooks use it: ``load()`` and ``wsgi()``."""

    def __init__(self, wsgi: object) -> None:
        self.callable = wsgi
        self.calls: list[str] = []

    def load(self) -> object:
        self.calls.append("load")
        return self.callable

    def wsgi(self) -> object:
        self.calls.append("wsgi")
        return self.callable


class FakeArbiter:
    """The parts of gunicorn's Arbiter the hooks touch."""

    #: Set by on_starting when it accepts the binds.
    flask_tailnet: tg.Prepared

    def __init__(self, cfg: Any, app: Any) -> None:
        self.cfg = cfg
        self.app = app
        self.log: Any = QuietLog()
        self.pidfile: Any = None
        self.calls: list[tuple[str, bool | None]] = []


def config(binds: list[str] | None = None, **settings: Any) -> Config:
    """A real gunicorn Config with this module's settings; ``binds`` as given by ``-b``."""
    cfg = Config()
    for name, value in tg._settings().items():
        cfg.set(name, value)
    if binds is not None:
        cfg.set("bind", binds)
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def arbiter(wsgi: object, binds: list[str] | None = None, **settings: Any) -> FakeArbiter:
    return FakeArbiter(cfg=config(binds, **settings), app=FakeApp(wsgi))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- fixtures ----------------------------------------------------------------------------------

_ENV = (
    "TAILNET_BIND",
    "TAILNET_ALLOW_WILDCARD_BIND",
    "LISTEN_FDS",
    "LISTEN_PID",
    "GUNICORN_FD",
    "GUNICORN_PID",
    "GUNICORN_CMD_ARGS",
    "PORT",
)


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module as imported in a clean environment on a machine without a tailnet address,
    whatever the environment was when it was imported."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tg, "bind", ["127.0.0.1:8000"])
    monkeypatch.setattr(tg, "_LOOPBACK_ONLY", False)
    monkeypatch.setattr(tg, "_ENV_PROBLEM", None)
    monkeypatch.setattr(tg, "_FROM_ENV", False)
    monkeypatch.setattr(tg, "machine_addresses", lambda: [])
    # pytest's captured stderr is no terminal: the unit tests of the links' text run as on one
    # (the real terminal test starts gunicorn on a pty, see test_gunicorn.py).
    monkeypatch.setattr(tg, "stderr_is_a_terminal", lambda: True)


@pytest.fixture
def gunicorn_loggers() -> Iterator[None]:
    """gunicorn's loggers as they were: a real Arbiter installs handlers on pytest's stderr."""
    saved = [
        (log, list(log.handlers), list(log.filters), log.level, log.propagate)
        for log in map(logging.getLogger, ("gunicorn.error", "gunicorn.access"))
    ]
    yield
    for log, handlers, filters, level, propagate in saved:
        for handler in log.handlers:
            if handler not in handlers:
                handler.close()
        log.handlers[:] = handlers
        log.filters[:] = filters
        log.setLevel(level)
        log.propagate = propagate


Fresh = Callable[..., types.ModuleType]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Fresh:
    """``fresh(addresses, **env)``: a new copy of flask_tailnet.gunicorn, imported with ``env``
    set and ``addresses`` as this machine's tailnet addresses, so its import-time settings
    (``bind`` and what the environment said) are computed here."""

    def load(addresses: list[str] | None = None, **env: str) -> types.ModuleType:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        found = list(addresses or [])
        monkeypatch.setattr(flask_tailnet.machine, "machine_addresses", lambda: found)
        monkeypatch.setattr(flask_tailnet.machine, "can_listen_on", lambda address: True)
        name = "flask_tailnet._gunicorn_fresh"
        spec = importlib.util.spec_from_file_location(name, tg.__file__)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load


# ---- on_starting: accepted ---------------------------------------------------------------------


def test_accepted_bind_prepares_the_state_before_any_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    app = make_app(state_dir)
    server = arbiter(app, ["127.0.0.1:9001", "[::1]:9001"])
    tg.on_starting(server)
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "token") == 0o600
    assert mode(state_dir / "session_key") == 0o600
    token = (state_dir / "token").read_bytes().strip()
    prepared = server.flask_tailnet
    assert isinstance(prepared, tg.Prepared)
    assert prepared.token == token
    assert [b.spec for b in prepared.binds] == ["127.0.0.1:9001", "[::1]:9001"]
    assert server.app.calls == ["load"]  # once, in the master
    assert server.log.records == []  # nothing logged, least of all the token
    assert capsys.readouterr() == ("", "")  # the URLs come with when_ready, not before


def test_preload_app_uses_gunicorn_s_loaded_app(tmp_path: Path) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"], preload_app=True)
    tg.on_starting(server)
    assert server.app.calls == ["wsgi"]


def test_existing_state_is_kept(tmp_path: Path) -> None:
    app = make_app(tmp_path / "state")
    token: bytes = app.extensions["tailnet"].token_file.ensure()
    server = arbiter(app, ["127.0.0.1:9001"])
    tg.on_starting(server)
    assert server.flask_tailnet.token == token


def test_a_logger_that_does_not_redact_is_warned_about(tmp_path: Path) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"])
    server.log = PlainLog()
    tg.on_starting(server)
    assert server.log.records == [
        (
            "warning",
            "flask-tailnet: logger_class PlainLog does not redact ?token= links, Authorization "
            "and cookies; use flask_tailnet.gunicorn.RedactingLogger or a subclass of it",
        )
    ]


def test_several_guarded_apps_are_all_prepared(tmp_path: Path) -> None:
    first, second = make_app(tmp_path / "a"), make_app(tmp_path / "b")
    server = arbiter(DispatcherMiddleware(first, {"/b": second}), ["127.0.0.1:9001"])
    tg.on_starting(server)
    assert (tmp_path / "a" / "token").exists()
    assert (tmp_path / "b" / "token").exists()
    assert server.flask_tailnet.token == (tmp_path / "a" / "token").read_bytes().strip()


@pytest.mark.parametrize("name", ["token", "session_key"])
def test_the_master_refuses_a_short_secret_file(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / name).write_bytes(b"a" * 42 + b"\n")
    (state_dir / name).chmod(0o600)
    server = arbiter(make_app(state_dir), ["127.0.0.1:9001"])
    with pytest.raises(SystemExit) as exited:
        tg.on_starting(server)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(PREFIX)
    assert f"{state_dir / name} is shorter than 43 bytes" in err
    assert "a" * 42 not in err
    assert (state_dir / name).read_bytes() == b"a" * 42 + b"\n", "never replaced silently"


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
    ],
)
def test_a_malformed_or_refused_environment_refuses_the_start(
    env: dict[str, str],
    expected: str,
    fresh: Fresh,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = fresh(**env)
    app = make_app(tmp_path / "state")
    cfg = Config()
    for name, value in module._settings().items():
        cfg.set(name, value)
    server = FakeArbiter(cfg=cfg, app=FakeApp(app))
    with pytest.raises(SystemExit) as exited:
        module.on_starting(server)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(PREFIX)
    assert expected in err
    assert not (tmp_path / "state" / "token").exists()


def test_a_malformed_environment_falls_back_to_loopback_for_gunicorn(fresh: Fresh) -> None:
    module = fresh(TAILNET_BIND="x", FLASK_TAILNET_BIND="y")
    assert module.bind == ["127.0.0.1:8000"]
    assert module._FROM_ENV is False
    assert "are both set, differently" in module._ENV_PROBLEM


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
def test_import_time_default_bind(
    addresses: list[str],
    env: dict[str, str],
    binds: list[str],
    loopback_only: bool,
    from_env: bool,
    fresh: Fresh,
) -> None:
    module = fresh(addresses, **env)
    assert module.bind == binds
    assert module._LOOPBACK_ONLY is loopback_only
    assert module._ENV_PROBLEM is None
    assert module._FROM_ENV is from_env


def _start_with(module: types.ModuleType, app: Flask, binds: list[str] | None) -> FakeArbiter:
    cfg = Config()
    for name, value in module._settings().items():
        cfg.set(name, value)
    if binds is not None:
        cfg.set("bind", binds)
    server = FakeArbiter(cfg=cfg, app=FakeApp(app))
    module.on_starting(server)
    return server


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
    addresses: list[str], binds: list[str] | None, logged: bool, fresh: Fresh, tmp_path: Path
) -> None:
    module = fresh(addresses)
    server = _start_with(module, make_app(tmp_path / "state"), binds)
    assert (LOOPBACK_ONLY_NOTE in server.log.text()) is logged
    if binds is None:
        assert list(server.cfg.bind) == module.bind


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
    fresh: Fresh,
    tmp_path: Path,
) -> None:
    module = fresh(**env)
    app = make_app(tmp_path / "state", bind=["127.0.0.1:9011", "[::1]:9011"])
    server = _start_with(module, app, given)
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
    monkeypatch.setattr(tg, "machine_addresses", lambda: [TAILNET_V4])
    server = arbiter(make_app(tmp_path / "state", **settings), ["0.0.0.0:9021", "[::]:9022"])
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
    assert tg._inherited_fds() == expected


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
    assert tg._inherited_fds() == expected


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
    monkeypatch.setattr(tg, "_inherited_fds", lambda: fds)
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
        monkeypatch.setattr(tg, "_inherited_fds", lambda: [read])
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


# ---- when_ready ----------------------------------------------------------------------------------


def test_when_ready_prints_the_login_urls_once_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tg, "machine_addresses", lambda: [TAILNET_V4])
    specs = ["127.0.0.1:9031", "[fd7a:115c:a1e0::42]:9031"]
    server = arbiter(make_app(tmp_path / "state"), specs)
    tg.on_starting(server)
    tg.when_ready(server)
    out, err = capsys.readouterr()
    token = (tmp_path / "state" / "token").read_text().strip()
    assert out == ""
    assert err.count(token) == 2  # one URL per TCP bind
    assert err.splitlines()[1:] == [
        f"    http://127.0.0.1:9031/?token={token}",
        f"    http://[fd7a:115c:a1e0::42]:9031/?token={token}",
    ]
    assert token not in server.log.text()


@pytest.mark.parametrize(
    ("app_uri", "shown"),
    [
        pytest.param("myapp:create_app()", "flask --app 'myapp:create_app()'", id="quoted"),
        pytest.param("x; rm -rf ~", "flask --app 'x; rm -rf ~'", id="shell-quoted"),
        pytest.param(None, "flask --app <your app>", id="unknown-app"),
    ],
)
def test_when_ready_off_a_terminal_prints_how_to_get_the_links_not_the_token(
    app_uri: str | None,
    shown: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(tg, "stderr_is_a_terminal", lambda: False)
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9033", "[::1]:9034"])
    server.app.app_uri = app_uri
    tg.on_starting(server)
    tg.when_ready(server)
    out, err = capsys.readouterr()
    token = (tmp_path / "state" / "token").read_text().strip()
    assert out == ""
    assert token not in err
    assert "standard error is not a terminal" in err
    assert err.rstrip().endswith(f"{shown} tailnet url --port 9033")


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(None, False, id="no-stderr"),
        pytest.param("captured", False, id="a-stream-without-a-descriptor"),
        pytest.param("pipe", False, id="a-pipe"),
        pytest.param("file", False, id="a-file"),
    ],
)
def test_stderr_is_a_terminal_only_for_a_terminal(
    stream: str | None, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if stream is None:
        monkeypatch.setattr(sys, "stderr", None)
    elif stream == "captured":
        monkeypatch.setattr(sys, "stderr", io.StringIO())
    elif stream == "pipe":
        read, write = os.pipe()
        monkeypatch.setattr(sys, "stderr", os.fdopen(write, "w"))
        os.close(read)
    else:
        monkeypatch.setattr(sys, "stderr", (tmp_path / "f").open("w"))
    try:
        assert REAL_STDERR_IS_A_TERMINAL() is expected
    finally:
        if stream in ("pipe", "file"):
            sys.stderr.close()


def test_a_pty_on_sys_stderr_alone_is_not_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sys.stderr`` on a terminal while file descriptor 2 (where ``--capture-output`` points
    gunicorn's error log) is not: no links."""
    main, terminal = pty.openpty()
    monkeypatch.setattr(tg, "_first_process_terminal", lambda fd: False)  # pytest may be PID 1
    try:
        with os.fdopen(terminal, "w", closefd=False) as stream:
            monkeypatch.setattr(sys, "stderr", stream)
            monkeypatch.setattr(os, "isatty", lambda fd: fd == terminal)
            assert REAL_STDERR_IS_A_TERMINAL() is False
            monkeypatch.setattr(os, "isatty", lambda fd: fd in (2, terminal))
            assert REAL_STDERR_IS_A_TERMINAL() is True
    finally:
        os.close(main)
        os.close(terminal)


def test_the_terminal_of_the_first_process_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """PID 1's terminal (a container's main process under ``docker run -t``) is recorded by the
    container runtime: it does not count as a terminal of our own."""
    main, terminal = pty.openpty()
    other_main, other_terminal = pty.openpty()
    try:
        assert tg._first_process_terminal(terminal) is False or os.getpid() == 1
        monkeypatch.setattr(tg, "_FIRST_PROCESS_OUTPUTS", (f"/proc/self/fd/{other_terminal}",))
        assert tg._first_process_terminal(terminal) is (os.getpid() == 1)
        monkeypatch.setattr(tg, "_FIRST_PROCESS_OUTPUTS", (f"/proc/self/fd/{terminal}",))
        assert tg._first_process_terminal(terminal) is True
        monkeypatch.setattr(tg, "_FIRST_PROCESS_OUTPUTS", ("/nonexistent",))
        monkeypatch.setattr(os, "getpid", lambda: 1)
        assert tg._first_process_terminal(terminal) is True
    finally:
        for fd in (main, terminal, other_main, other_terminal):
            os.close(fd)


@pytest.mark.parametrize(
    "prepared",
    [
        pytest.param(None, id="on_starting-did-not-run"),
        pytest.param(tg.Prepared((parse_bind("unix:/run/a.sock"),), b"t"), id="no-tcp-bind"),
    ],
)
def test_when_ready_prints_nothing_without_a_url(
    prepared: tg.Prepared | None, capsys: pytest.CaptureFixture[str]
) -> None:
    server = arbiter(Flask("any"))
    if prepared is not None:
        server.flask_tailnet = prepared
    tg.when_ready(server)
    assert capsys.readouterr() == ("", "")


# ---- on_reload -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binds", "wsgi", "expected"),
    [
        pytest.param(["0.0.0.0:9041"], "guarded", "the wildcard address", id="wildcard"),
        pytest.param(["8.8.8.8:9041"], "guarded", "a public address", id="public"),
        pytest.param(["127.0.0.1:9041"], "bare", "does not use flask-tailnet", id="no-guard"),
    ],
)
def test_on_reload_halts_the_server_for_a_refused_bind(
    binds: list[str], wsgi: str, expected: str, tmp_path: Path
) -> None:
    app = make_app(tmp_path / "state") if wsgi == "guarded" else Flask("bare")
    with pytest.raises(HaltServer) as halted:
        tg.on_reload(arbiter(app, binds))
    assert halted.value.exit_status == 1
    assert halted.value.reason.startswith(PREFIX)
    assert expected in halted.value.reason
    assert halted.value.__cause__ is None
    assert halted.value.__suppress_context__


def test_on_reload_accepts_an_accepted_bind(tmp_path: Path) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9042"])
    tg.on_reload(server)
    assert server.app.calls == ["load"]


# ---- gunicorn's own Arbiter and WSGIApplication (never run) --------------------------------------


def _real_arbiter(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Any:
    monkeypatch.setenv("SERVER_SOFTWARE", "")  # the Arbiter sets it; restored afterwards
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", list(sys.path))  # WSGIApplication adds its chdir
    return Arbiter(WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]"))


def _argv(*binds: str) -> list[str]:
    args = [arg for spec in binds for arg in ("-b", spec)]
    return ["gunicorn", "-c", "python:flask_tailnet.gunicorn", *args, "example_app:create_app()"]


@pytest.mark.usefixtures("gunicorn_loggers")
def test_real_arbiter_on_starting_prepares_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    monkeypatch.setenv("FLASK_TAILNET_STATE_DIR", str(state_dir))
    server = _real_arbiter(monkeypatch, _argv("127.0.0.1:9051"))
    assert isinstance(server.log, tg.RedactingLogger)
    server.cfg.on_starting(server)
    assert mode(state_dir / "token") == 0o600
    server.cfg.when_ready(server)
    token = (state_dir / "token").read_text().strip()
    err = capsys.readouterr().err
    assert err.count(token) == 1
    assert f"http://127.0.0.1:9051/?token={token}" in err
    assert "logger_class" not in err  # gunicorn's logger was ours: no warning


@pytest.mark.usefixtures("gunicorn_loggers")
def test_real_arbiter_refuses_the_wildcard_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLASK_TAILNET_STATE_DIR", str(tmp_path / "state"))
    server = _real_arbiter(monkeypatch, _argv("0.0.0.0:9052"))
    with pytest.raises(SystemExit) as exited:
        server.cfg.on_starting(server)
    assert exited.value.code == 1
    assert "refusing to bind '0.0.0.0:9052'" in capsys.readouterr().err


@pytest.mark.usefixtures("gunicorn_loggers")
def test_a_refused_bind_on_reload_is_refused_before_gunicorn_binds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_TAILNET_STATE_DIR", str(tmp_path / "state"))
    server = _real_arbiter(monkeypatch, _argv("127.0.0.1:9053"))
    server.cfg.on_starting(server)
    bound: list[object] = []

    def create_sockets(conf: Any, log: Any, fds: Any = None) -> list[object]:
        bound.extend(conf.address)  # what gunicorn would bind now; nothing is bound here
        return []

    monkeypatch.setattr(gunicorn.sock, "create_sockets", create_sockets)
    monkeypatch.setattr(sys, "argv", _argv("0.0.0.0:9054"))
    with pytest.raises(HaltServer):
        server.reload()
    assert bound == []


# ---- FlaskApplication: flask tailnet serve's settings ------------------------------------------


@dataclass(frozen=True)
class Precedence:
    argv: list[str]
    cmd_args: str | None
    expected: dict[str, Any]


PRECEDENCE = [
    pytest.param(
        Precedence([], None, {"bind": ["127.0.0.1:8000"], "workers": 1}), id="module-settings"
    ),
    pytest.param(
        Precedence(["-c", "{one}"], None, {"bind": ["127.0.0.1:9061"], "workers": 2}),
        id="file-over-module",
    ),
    pytest.param(
        Precedence(
            ["-c", "{one}"], "-w 3 -b 127.0.0.1:9062", {"bind": ["127.0.0.1:9062"], "workers": 3}
        ),
        id="env-over-file",
    ),
    pytest.param(
        Precedence(["-c", "{one}", "-w", "4"], "-w 3", {"bind": ["127.0.0.1:9061"], "workers": 4}),
        id="argv-over-env",
    ),
    pytest.param(
        Precedence([], "-c {one}", {"bind": ["127.0.0.1:9061"], "workers": 2}),
        id="env-names-the-file",
    ),
    pytest.param(
        # Only the argv's file is read, as gunicorn does: none of the env's file's settings.
        Precedence(["-c", "{two}"], "-c {one}", {"bind": ["127.0.0.1:9063"], "workers": 1}),
        id="argv-file-instead-of-env-file",
    ),
    pytest.param(
        Precedence(
            ["-b", "[::1]:9064", "-k", "gthread"],
            None,
            {"bind": ["[::1]:9064"], "worker_class_str": "gthread"},
        ),
        id="argv-over-module",
    ),
]


@pytest.fixture
def config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # gunicorn registers each config file as sys.modules["__config__"]: put it back afterwards.
    monkeypatch.setitem(sys.modules, "__config__", types.ModuleType("__config__"))
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text("bind = ['127.0.0.1:9061']\nworkers = 2\n")
    two.write_text("bind = ['127.0.0.1:9063']\n")
    return {"one": str(one), "two": str(two)}


@pytest.mark.parametrize("case", PRECEDENCE)
def test_flask_application_settings_precedence(
    case: Precedence,
    config_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case.cmd_args is not None:
        monkeypatch.setenv("GUNICORN_CMD_ARGS", case.cmd_args.format(**config_files))
    app = make_app(tmp_path / "state")
    application = tg.FlaskApplication(app, [arg.format(**config_files) for arg in case.argv])
    cfg = application.cfg
    for name, value in case.expected.items():
        assert getattr(cfg, name) == value, name
    assert cfg.logger_class is tg.RedactingLogger
    assert cfg.on_starting is tg.on_starting  # no file set a hook: ours, not wrapped
    assert application.load() is app


def test_flask_application_refuses_an_app_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    application = object.__new__(tg.FlaskApplication)  # load_config alone, without the exit
    application.argv = ["-w", "2", "other:app"]
    application.usage, application.prog = None, "flask tailnet serve"
    application.load_default_config()
    with pytest.raises(ConfigError, match="unexpected 'other:app': the app is the one"):
        application.load_config()
    # Through gunicorn's own loading, the error is printed and the process exits 1.
    with pytest.raises(SystemExit) as exited:
        tg.FlaskApplication(make_app(tmp_path / "state"), ["other:app"])
    assert exited.value.code == 1
    assert "the app is the one `flask --app` names" in capsys.readouterr().err


HOOKS_FILE = """\
def on_starting(server):
    server.calls.append(("on_starting", hasattr(server, "flask_tailnet")))

def when_ready(server):
    server.calls.append(("when_ready", None))

def on_reload(server):
    server.calls.append(("on_reload", None))
"""


def test_a_config_file_s_own_hooks_run_after_ours(
    config_files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text(HOOKS_FILE)
    application = tg.FlaskApplication(
        make_app(tmp_path / "state"), ["-c", str(hooks), "-b", "127.0.0.1:9071"]
    )
    cfg = application.cfg
    assert cfg.on_starting is not tg.on_starting
    server = FakeArbiter(cfg=cfg, app=application)
    cfg.on_starting(server)
    cfg.when_ready(server)
    cfg.on_reload(server)
    # Ours first: the state is prepared (and the bind checked) before the file's hook runs.
    assert server.calls == [("on_starting", True), ("when_ready", None), ("on_reload", None)]
    assert (tmp_path / "state" / "token").read_text().strip() in capsys.readouterr().err


def test_a_config_file_s_hook_does_not_run_when_ours_refuses(
    config_files: dict[str, str], tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text(HOOKS_FILE)
    application = tg.FlaskApplication(
        make_app(tmp_path / "state"), ["-c", str(hooks), "-b", "0.0.0.0:9072"]
    )
    server = FakeArbiter(cfg=application.cfg, app=application)
    with pytest.raises(SystemExit):
        application.cfg.on_starting(server)
    with pytest.raises(HaltServer):
        application.cfg.on_reload(server)
    assert server.calls == []


def test_a_config_file_that_star_imports_the_module_runs_each_hook_once(
    config_files: dict[str, str], tmp_path: Path
) -> None:
    star = tmp_path / "star.py"
    star.write_text("from flask_tailnet.gunicorn import *\nworkers = 3\n")
    application = tg.FlaskApplication(make_app(tmp_path / "state"), ["-c", str(star)])
    assert application.cfg.workers == 3
    for name in ("on_starting", "when_ready", "on_reload"):
        assert application.cfg.settings[name].get() is getattr(tg, name)


def test_serve_runs_the_flask_application(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tg.FlaskApplication] = []

    def run(self: tg.FlaskApplication) -> None:
        ran.append(self)

    monkeypatch.setattr(tg.FlaskApplication, "run", run)
    app = make_app(tmp_path / "state")
    tg.serve(app, ["-w", "2"])
    (application,) = ran
    assert application.load() is app
    assert application.cfg.workers == 2


# ---- the rest, in process: the access log, odd wrappers, duplicate URLs -------------------------

SECRET = "s3cr3t-T0ken_value"
R = tg.REDACTED


@pytest.mark.usefixtures("gunicorn_loggers")
def test_redacting_logger_writes_no_secret_to_the_access_log(tmp_path: Path) -> None:
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    cfg = config(accesslog=str(access), errorlog=str(errors))
    cfg.set(
        "access_log_format",
        "%(r)s %(q)s %({authorization}i)s %({cookie}i)s %({set-cookie}o)s %(f)s",
    )
    log = tg.RedactingLogger(cfg)
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/?token={SECRET}&x=1",
        "QUERY_STRING": f"token={SECRET}&x=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": f"http://127.0.0.1/?Token={SECRET}",
    }
    request_headers = [("AUTHORIZATION", f"Bearer {SECRET}"), ("COOKIE", f"s={SECRET}")]
    response = types.SimpleNamespace(
        status="200 OK", headers=[("Set-Cookie", f"s={SECRET}")], sent=2
    )
    log.access(response, request_headers, environ, timedelta(microseconds=1500))
    log.error("Error handling request /?token=%s", SECRET)
    for handler in [*log.access_log.handlers, *log.error_log.handlers]:
        handler.flush()
    logged = access.read_text()
    assert logged == (
        f"GET /?token={R}&x=1 HTTP/1.1 token={R}&x=1 {R} {R} {R} http://127.0.0.1/?Token={R}\n"
    )
    assert SECRET not in errors.read_text()
    assert f"/?token={R}" in errors.read_text()


@pytest.mark.usefixtures("gunicorn_loggers")
def test_redacting_logger_setup_again_adds_no_second_filter() -> None:
    cfg = config()  # error log to stderr, no access log: no file handler to leak on reload
    log = tg.RedactingLogger(cfg)
    log.setup(cfg)  # what a reload does
    for logger in (log.error_log, log.access_log):
        assert sum(isinstance(f, tg.RedactingFilter) for f in logger.filters) == 1


def test_filter_redacts_a_stack(tmp_path: Path) -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "m", None, None, sinfo=f"Stack:\n  get('/?token={SECRET}')"
    )
    assert tg.RedactingFilter().filter(record)
    assert record.stack_info == f"Stack:\n  get('/?token={R}')"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"?%252574oken={SECRET}", f"?%252574oken={R}", id="encoded-three-times"),
        pytest.param(f"?%25252574oken={SECRET}", f"?%25252574oken={SECRET}", id="four-times"),
    ],
)
def test_redaction_decodes_a_name_at_most_three_times(text: str, expected: str) -> None:
    # Four times encoded is not what any app reads as "token" (it decodes once).
    assert tg.redact_text(text) == expected


class Unanswering:
    """A proxy that raises for every attribute, as some lazy wrappers do."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


def test_find_guard_states_skips_what_cannot_answer(tmp_path: Path) -> None:
    app = make_app(tmp_path / "state")
    state = app.extensions["tailnet"]
    assert tg.find_guard_states(Unanswering()) == []
    assert tg.find_guard_states(DispatcherMiddleware(app, {"/a": Unanswering(), "/b": app})) == [
        state
    ]
    assert tg.find_guard_states(DispatcherMiddleware(app.wsgi_app, {"/b": app})) == [state]


def test_login_urls_are_not_repeated() -> None:
    binds = [parse_bind(spec) for spec in ("127.0.0.1:8000", "0.0.0.0:8000", "[::]:8000")]
    assert tg.login_urls(binds, b"t", [TAILNET_V4]) == [
        "http://127.0.0.1:8000/?token=t",
        f"http://{TAILNET_V4}:8000/?token=t",
    ]


# ---- SIGHUP against a real gunicorn master -------------------------------------------------------

RELOADING_CONFIG = """\
from pathlib import Path

from flask_tailnet.gunicorn import *

# Read again on every SIGHUP: gunicorn re-executes the config file when it reloads.
bind = Path(__file__).with_name("bind.txt").read_text().split()
"""


@dataclass
class Watch:
    """Polls /proc/net/tcp{,6} (no traffic) until stopped; records whether ``port`` listened."""

    port: int
    seen: bool = False
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            if self.port in listening_ports():
                self.seen = True
            time.sleep(0.001)


@contextlib.contextmanager
def watching(port: int) -> Iterator[Watch]:
    watch = Watch(port)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def reloadable_gunicorn(tmp_path: Path, first: tuple[str, int]) -> Iterator[tuple[Gunicorn, Path]]:
    """gunicorn with a config file whose ``bind`` comes from ``bind.txt``, serving on ``first``;
    killed (process group) afterwards."""
    config_file = tmp_path / "reloading.py"
    config_file.write_text(RELOADING_CONFIG)
    bind_file = tmp_path / "bind.txt"
    bind_file.write_text(f"{first[0]}:{first[1]}\n")
    args = ["-c", str(config_file), "-w", "2", "-k", "sync", "--graceful-timeout", "5"]
    server = start_gunicorn(
        [*args, "--no-control-socket", "example_app:create_app()"],
        env=gunicorn_env(tmp_path / "state"),
        stderr_path=tmp_path / "gunicorn.log",
        binds=[first],
        command=GUNICORN,
    )
    try:
        wait_until_serving(server, 2)
        assert request(*first, "/healthz").status == 200
        yield server, bind_file
    finally:
        kill_group(server.proc)


@dataclass(frozen=True)
class RefusedReload:
    status: int | None
    stderr: str
    token: str
    port: int
    seen_listening: bool
    first_accepts_after: bool


@pytest.fixture(scope="module")
def refused_reload(tmp_path_factory: pytest.TempPathFactory) -> RefusedReload:
    """SIGHUP with ``bind.txt`` now naming ``0.0.0.0:PORT2``, while /proc is watched."""
    tmp_path = tmp_path_factory.mktemp("refused-reload")
    first = ("127.0.0.1", free_port())
    second = free_port()
    with reloadable_gunicorn(tmp_path, first) as (server, bind_file), watching(second) as watch:
        bind_file.write_text(f"0.0.0.0:{second}\n")
        os.kill(server.pid, signal.SIGHUP)
        try:
            status: int | None = server.proc.wait(timeout=30)
        except Exception:
            status = None
        time.sleep(0.05)  # one more look at /proc after the exit
    return RefusedReload(
        status=status,
        stderr=server.stderr(),
        token=(tmp_path / "state" / "token").read_text().strip(),
        port=second,
        seen_listening=watch.seen,
        first_accepts_after=accepts(*first, 0.5),
    )


def test_sighup_with_a_refused_bind_halts_the_master(refused_reload: RefusedReload) -> None:
    result = refused_reload
    assert result.status == 1, result.stderr
    reason = next(line for line in result.stderr.splitlines() if "Reason:" in line)
    assert f"{PREFIX}refusing to bind '0.0.0.0:{result.port}': the wildcard address" in reason
    assert result.token not in reason
    assert result.token not in result.stderr  # stderr is a file: no login URL, ever
    assert not result.first_accepts_after
    assert result.port not in listening_ports()


def test_sighup_with_a_refused_bind_never_listens_there(refused_reload: RefusedReload) -> None:
    result = refused_reload
    assert f"Listening at: http://0.0.0.0:{result.port}" not in result.stderr
    assert not result.seen_listening


def test_sighup_with_an_accepted_bind_serves_there(tmp_path: Path) -> None:
    first = ("127.0.0.1", free_port())
    third = ("127.0.0.1", free_port())
    with reloadable_gunicorn(tmp_path, first) as (server, bind_file):
        bind_file.write_text(f"{third[0]}:{third[1]}\n")
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not (accepts(*third, 0.5) and not accepts(*first, 0.5)):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"not serving on {third} after SIGHUP:\n{server.stderr()}")
            time.sleep(0.1)
        token = (tmp_path / "state" / "token").read_text().strip()
        assert request(*third, "/api/whoami").status == 200
        assert request(*third, f"/?token={token}").status == 200
        assert server.proc.poll() is None
        assert "refusing" not in server.stderr()
        assert server.stop(signal.SIGTERM) == 0, server.stderr()


@pytest.mark.usefixtures("gunicorn_loggers")
def test_a_token_sent_as_the_basic_user_name_never_reaches_the_access_log(tmp_path: Path) -> None:
    """gunicorn's ``u`` atom is the user-name part of a Basic header: ``curl -u "$TOKEN:"``."""
    access = tmp_path / "access.log"
    cfg = config(accesslog=str(access))  # gunicorn's default format, which has %(u)s
    log = tg.RedactingLogger(cfg)
    basic = base64.b64encode(f"{SECRET}:".encode()).decode()
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_AUTHORIZATION": f"Basic {basic}",
    }
    response = types.SimpleNamespace(status="401 UNAUTHORIZED", headers=[], sent=0)
    log.access(response, [("AUTHORIZATION", f"Basic {basic}")], environ, timedelta(0))
    for handler in log.access_log.handlers:
        handler.flush()
    logged = access.read_text()
    assert SECRET not in logged
    assert basic not in logged
    assert '"GET / HTTP/1.1" 401' in logged
