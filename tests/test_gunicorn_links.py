"""What the gunicorn master prints once the sockets are bound (``when_ready``): the login links,
once, only to a terminal; elsewhere how to get them; with no tailnet address, what to do instead
of a loopback link no other device could open. In process, then against a real gunicorn on a pty.
"""

from __future__ import annotations

import io
import os
import pty
import sys
from pathlib import Path

import pytest
from flask import Flask

from flask_tailnet import gunicorn as tg
from flask_tailnet import gunicorn_links
from flask_tailnet.binds import parse_bind
from flask_tailnet.gunicorn_binds import MachineAddresses
from flask_tailnet.gunicorn_hooks import Prepared
from flask_tailnet.gunicorn_links import login_urls
from flask_tailnet.gunicorn_links import stderr_is_a_terminal as REAL_STDERR_IS_A_TERMINAL

from .conftest import addresses_on_lo, make_app
from .gunicorn_helpers import (
    CONFIG,
    EXAMPLE_APP,
    free_port,
    gunicorn_env,
    kill_group,
    request,
    start_gunicorn,
    wait_until_serving,
)
from .gunicorn_stand_ins import (
    TAILNET_V4,
    arbiter,
    clean_environment,  # noqa: F401 - a fixture
    fake_tailnet_tools,
    on_a_terminal,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.usefixtures("clean_environment", "on_a_terminal")

#: This test file's tailnet address, added to lo for the real server with the default binds.
OWN_TAILNET_V4 = "100.64.109.5"


# ---- when_ready ----------------------------------------------------------------------------------


def test_when_ready_prints_the_login_urls_once_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = ["127.0.0.1:9031", "[fd7a:115c:a1e0::42]:9031"]
    server = arbiter(make_app(tmp_path / "state"), specs, [TAILNET_V4])
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
    monkeypatch.setattr(gunicorn_links, "stderr_is_a_terminal", lambda: False)
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
    # pytest may be PID 1 (a container's main process)
    monkeypatch.setattr(gunicorn_links, "_first_process_terminal", lambda fd: False)
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
        assert gunicorn_links._first_process_terminal(terminal) is False or os.getpid() == 1
        monkeypatch.setattr(
            gunicorn_links, "_FIRST_PROCESS_OUTPUTS", (f"/proc/self/fd/{other_terminal}",)
        )
        assert gunicorn_links._first_process_terminal(terminal) is (os.getpid() == 1)
        monkeypatch.setattr(
            gunicorn_links, "_FIRST_PROCESS_OUTPUTS", (f"/proc/self/fd/{terminal}",)
        )
        assert gunicorn_links._first_process_terminal(terminal) is True
        monkeypatch.setattr(gunicorn_links, "_FIRST_PROCESS_OUTPUTS", ("/nonexistent",))
        monkeypatch.setattr(os, "getpid", lambda: 1)
        assert gunicorn_links._first_process_terminal(terminal) is True
    finally:
        for fd in (main, terminal, other_main, other_terminal):
            os.close(fd)


@pytest.mark.parametrize(
    "prepared",
    [
        pytest.param(None, id="on_starting-did-not-run"),
        pytest.param(Prepared((parse_bind("unix:/run/a.sock"),), b"t"), id="no-tcp-bind"),
    ],
)
def test_when_ready_prints_nothing_without_a_url(
    prepared: Prepared | None, capsys: pytest.CaptureFixture[str]
) -> None:
    server = arbiter(Flask("any"))
    if prepared is not None:
        server.flask_tailnet = prepared
    tg.when_ready(server)
    assert capsys.readouterr() == ("", "")


def test_login_urls_are_not_repeated() -> None:
    binds = [parse_bind(spec) for spec in ("127.0.0.1:8000", "0.0.0.0:8000", "[::]:8000")]
    assert login_urls(binds, b"t", [TAILNET_V4]) == [
        "http://127.0.0.1:8000/?token=t",
        f"http://{TAILNET_V4}:8000/?token=t",
    ]


# ---- no tailnet address: what to do instead of a loopback link -------------------------------

NO_TAILNET = "no tailnet address was found on this machine"


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "not-a-terminal"])
def test_with_no_tailnet_address_the_banner_says_what_to_do_instead_of_a_loopback_link(
    terminal: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(gunicorn_links, "stderr_is_a_terminal", lambda: terminal)
    server = arbiter(make_app(tmp_path / "state"), None, [])  # the default binds, no address
    server.app.app_uri = "myapp:create_app()"
    tg.on_starting(server)
    tg.when_ready(server)
    out, err = capsys.readouterr()
    token = (tmp_path / "state" / "token").read_text().strip()
    assert out == ""
    assert token not in err
    assert "http://" not in err  # no link at all: none that another device could open
    assert "from another tailnet device" not in err
    assert err.count(NO_TAILNET) == 1
    assert "Start Tailscale (tailscale up) and restart the server" in err
    assert "-b <tailnet IP>:8000" in err
    assert err.rstrip().endswith("flask --app 'myapp:create_app()' tailnet url --port 8000")


@pytest.mark.parametrize(
    ("binds", "addresses"),
    [
        pytest.param(["127.0.0.1:9036"], [], id="loopback-given-with-b"),
        pytest.param(None, [TAILNET_V4], id="default-with-a-tailnet-address"),
    ],
)
def test_the_links_are_printed_unless_the_default_found_no_tailnet_address(
    binds: list[str] | None,
    addresses: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = arbiter(make_app(tmp_path / "state"), binds, addresses)
    tg.on_starting(server)
    tg.when_ready(server)
    err = capsys.readouterr().err
    token = (tmp_path / "state" / "token").read_text().strip()
    assert NO_TAILNET not in err
    assert "to log in from another tailnet device" in err
    expected = ["127.0.0.1:9036"] if binds else ["127.0.0.1:8000", f"{TAILNET_V4}:8000"]
    assert err.splitlines()[1:] == [f"    http://{bind}/?token={token}" for bind in expected]


def test_userspace_tailscaled_is_not_told_there_is_no_tailnet_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tailscaled in userspace networking mode: ``tailscale ip`` names an address on no interface,
    so the default binds are loopback only, where tailscaled delivers tailnet connections."""
    server = arbiter(make_app(tmp_path / "state"))
    server.flask_tailnet_machine = MachineAddresses(
        find=lambda: [TAILNET_V4], can_listen=lambda address: False
    )
    tg.on_starting(server)
    tg.when_ready(server)
    err = capsys.readouterr().err
    assert list(server.cfg.bind) == ["127.0.0.1:8000"]
    assert NO_TAILNET not in err
    assert "to log in from another tailnet device" in err


def _serve_with_default_binds(tmp_path: Path, addresses: list[str]) -> tuple[str, str, int]:
    """gunicorn without ``-b``, on a terminal, on ``$PORT``: its stderr once it serves, the
    token, and the port."""
    port = free_port()
    env = gunicorn_env(
        tmp_path / "state", PORT=str(port), PATH=fake_tailnet_tools(tmp_path, addresses)
    )
    server = start_gunicorn(
        [*CONFIG, "-w", "1", "--no-control-socket", EXAMPLE_APP],
        env=env,
        stderr_path=tmp_path / "gunicorn.log",
        binds=[("127.0.0.1", port), *((address, port) for address in addresses)],
        stderr="pty",
    )
    try:
        wait_until_serving(server, 1)
        assert request("127.0.0.1", port, "/healthz").status == 200
        return server.stderr(), (tmp_path / "state" / "token").read_text().strip(), port
    finally:
        kill_group(server.proc)


def test_a_real_server_with_no_tailnet_address_prints_what_to_do(tmp_path: Path) -> None:
    stderr, token, port = _serve_with_default_binds(tmp_path, [])
    assert token not in stderr
    assert stderr.count(NO_TAILNET) == 1
    assert f"-b <tailnet IP>:{port}" in stderr
    assert f"tailnet url --port {port}" in stderr
    assert "to log in from another tailnet device" not in stderr


@pytest.mark.root
def test_a_real_server_binds_the_tailnet_address_found_at_start(tmp_path: Path) -> None:
    with addresses_on_lo([f"{OWN_TAILNET_V4}/32"]):
        stderr, token, port = _serve_with_default_binds(tmp_path, [OWN_TAILNET_V4])
    assert NO_TAILNET not in stderr
    assert stderr.count("to log in from another tailnet device") == 1
    assert [line for line in stderr.splitlines() if token in line] == [
        f"    http://127.0.0.1:{port}/?token={token}",
        f"    http://{OWN_TAILNET_V4}:{port}/?token={token}",
    ]
