"""A ``SIGHUP`` under ``flask_tailnet.gunicorn``: gunicorn re-reads its settings and binds new
addresses before it calls ``on_reload``, so the bind check runs right after the re-read (a refused
bind stops the master, exit 1, without binding it), and the default binds found at start are kept.
In process on gunicorn's own Arbiter, then against a real gunicorn master.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gunicorn.sock
import pytest
from flask import Flask
from gunicorn.errors import HaltServer

from flask_tailnet import gunicorn as tg
from flask_tailnet.gunicorn_binds import MachineAddresses

from .conftest import make_app
from .gunicorn_helpers import (
    CONFIG,
    EXAMPLE_APP,
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
from .gunicorn_stand_ins import (
    PREFIX,
    arbiter,
    clean_environment,  # noqa: F401 - a fixture
    fake_tailnet_tools,
    gunicorn_argv,
    gunicorn_loggers,  # noqa: F401 - a fixture
    on_a_terminal,  # noqa: F401 - a fixture
    real_arbiter,
)

pytestmark = pytest.mark.usefixtures("clean_environment", "on_a_terminal")


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


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param({"protocol": "uwsgi"}, "--protocol uwsgi cannot be guarded", id="uwsgi"),
        pytest.param(
            {"proxy_protocol": "v1", "proxy_allow_ips": "*"},
            "--proxy-protocol with --proxy-allow-from '*'",
            id="proxy-protocol-any-sender",
        ),
    ],
)
def test_on_reload_halts_the_server_for_settings_it_cannot_guard(
    settings: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    """A SIGHUP that brings ``--protocol uwsgi`` or a PROXY protocol sender other than loopback
    is refused like a refused bind."""
    with pytest.raises(HaltServer) as halted:
        tg.on_reload(arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9043"], **settings))
    assert halted.value.exit_status == 1
    assert halted.value.reason.startswith(PREFIX)
    assert expected in halted.value.reason


def test_on_reload_accepts_an_accepted_bind(tmp_path: Path) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9042"])
    tg.on_reload(server)
    assert server.app.calls == ["load"]


@pytest.mark.usefixtures("gunicorn_loggers")
def test_a_refused_bind_on_reload_is_refused_before_gunicorn_binds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_TAILNET_STATE_DIR", str(tmp_path / "state"))
    server = real_arbiter(monkeypatch, gunicorn_argv("127.0.0.1:9053"))
    server.cfg.on_starting(server)
    bound: list[object] = []

    def create_sockets(conf: Any, log: Any, fds: Any = None) -> list[object]:
        bound.extend(conf.address)  # what gunicorn would bind now; nothing is bound here
        return []

    monkeypatch.setattr(gunicorn.sock, "create_sockets", create_sockets)
    monkeypatch.setattr(sys, "argv", gunicorn_argv("0.0.0.0:9054"))
    with pytest.raises(HaltServer):
        server.reload()
    assert bound == []


@pytest.mark.usefixtures("gunicorn_loggers")
def test_a_reload_keeps_the_default_binds_found_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP re-reads the config module, whose ``bind`` is empty: the check fills in the binds
    found at start again (no second lookup), so gunicorn keeps its sockets."""
    monkeypatch.setenv("FLASK_TAILNET_STATE_DIR", str(tmp_path / "state"))
    server = real_arbiter(monkeypatch, gunicorn_argv())
    lookups: list[str] = []

    def find() -> list[str]:
        lookups.append("find")
        return []

    server.flask_tailnet_machine = MachineAddresses(find=find, can_listen=lambda address: True)
    server.cfg.on_starting(server)
    assert server.cfg.bind == ["127.0.0.1:8000"]
    bound: list[object] = []

    def create_sockets(conf: Any, log: Any, fds: Any = None) -> list[object]:
        bound.extend(conf.address)
        return []

    monkeypatch.setattr(gunicorn.sock, "create_sockets", create_sockets)
    monkeypatch.setattr(server, "spawn_worker", lambda: None)
    monkeypatch.setattr(server, "manage_workers", lambda: None)
    server.reload()
    assert server.cfg.bind == ["127.0.0.1:8000"]
    assert bound == []  # the same address as before: gunicorn binds nothing new
    assert lookups == ["find"]


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


def test_sighup_with_the_default_binds_keeps_serving_there(tmp_path: Path) -> None:
    port = free_port()
    env = gunicorn_env(tmp_path / "state", PORT=str(port), PATH=fake_tailnet_tools(tmp_path, []))
    server = start_gunicorn(
        [*CONFIG, "-w", "1", "--no-control-socket", EXAMPLE_APP],
        env=env,
        stderr_path=tmp_path / "gunicorn.log",
        binds=[("127.0.0.1", port)],
    )
    try:
        wait_until_serving(server, 1)
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while server.stderr().count("Booting worker") < 2:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no new worker after SIGHUP:\n{server.stderr()}")
            time.sleep(0.1)
        assert request("127.0.0.1", port, "/healthz").status == 200
        assert server.proc.poll() is None
        stderr = server.stderr()
        assert stderr.count("Listening at:") == 1, stderr  # the sockets were kept
        assert "refusing" not in stderr
    finally:
        kill_group(server.proc)
