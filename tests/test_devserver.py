"""werkzeug's debugger under ``flask run``: it answers before the guard, so it may run on loopback
only; ``flask run --debug`` on any other address refuses to start (a real ``flask run``, with a
client on another tailnet address added to lo)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flask_tailnet.devserver import DebuggerRefused, debugger_problem

from .conftest import ROOT, addresses_on_lo, make_app
from .gunicorn_helpers import Reply, free_port, gunicorn_env, request

SERVER_V4, CLIENT_V4 = "100.64.103.1", "100.64.103.2"
#: The debugger's own requests: its console, and one of its static files (no PIN needed).
DEBUGGER_PATHS = ["/console", "/?__debugger__=yes&cmd=resource&f=style.css"]
REFUSAL = "refusing to start werkzeug's debugger on"


@pytest.mark.parametrize(
    ("host", "debugger", "refused"),
    [
        pytest.param(SERVER_V4, True, True, id="tailnet-address"),
        pytest.param("fd7a:115c:a1e0::1", True, True, id="tailnet-v6"),
        pytest.param("0.0.0.0", True, True, id="wildcard"),
        pytest.param("::", True, True, id="wildcard-v6"),
        pytest.param("192.168.1.10", True, True, id="lan"),
        pytest.param("myhost.example", True, True, id="host-name-resolves-to-anything"),
        pytest.param("", True, True, id="empty"),
        pytest.param(None, True, True, id="not-text"),
        pytest.param("127.0.0.1", True, False, id="loopback"),
        pytest.param("127.0.0.2", True, False, id="loopback-other"),
        pytest.param("::1", True, False, id="loopback-v6"),
        pytest.param("localhost", True, False, id="localhost"),
        pytest.param(SERVER_V4, False, False, id="no-debugger-on-tailnet"),
    ],
)
def test_debugger_problem(host: object, debugger: bool, refused: bool) -> None:
    problem = debugger_problem(host, debugger)
    assert (problem is not None) is refused
    if problem is not None:
        assert problem.startswith(REFUSAL)
        assert "--no-debugger" in problem


@pytest.mark.parametrize(
    ("host", "debug", "options", "app_debug", "env", "server_name", "refused"),
    [
        pytest.param(SERVER_V4, True, {}, False, None, None, True, id="debug-true"),
        pytest.param("0.0.0.0", True, {}, False, None, None, True, id="wildcard-debug"),
        pytest.param(SERVER_V4, None, {}, True, None, None, True, id="app-debug"),
        pytest.param(SERVER_V4, None, {}, False, "1", None, True, id="FLASK_DEBUG"),
        pytest.param(SERVER_V4, False, {"use_debugger": True}, False, None, None, True,
                     id="use_debugger-wins-over-debug-false"),
        pytest.param(None, True, {}, False, None, f"{SERVER_V4}:5000", True,
                     id="host-from-SERVER_NAME"),
        pytest.param(None, True, {}, False, None, None, False, id="default-host-is-loopback"),
        pytest.param("127.0.0.1", True, {}, False, None, None, False, id="loopback"),
        pytest.param(SERVER_V4, True, {"use_debugger": False}, False, None, None, False,
                     id="use_debugger-false"),
        pytest.param(SERVER_V4, None, {}, True, "0", None, False, id="FLASK_DEBUG-0-wins"),
        pytest.param(SERVER_V4, False, {}, True, None, None, False, id="debug-false"),
    ],
)  # fmt: skip
def test_app_run_is_judged_as_flask_run_resolves_it(
    host: str | None,
    debug: bool | None,
    options: dict[str, object],
    app_debug: bool,
    env: str | None,
    server_name: str | None,
    refused: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLASK_RUN_FROM_CLI", raising=False)
    if env is None:
        monkeypatch.delenv("FLASK_DEBUG", raising=False)
    else:
        monkeypatch.setenv("FLASK_DEBUG", env)
    monkeypatch.chdir(tmp_path)  # no .env around
    app = make_app(tmp_path / "state")
    app.config["SERVER_NAME"] = server_name
    app.debug = app_debug
    started: list[object] = []
    monkeypatch.setattr("werkzeug.serving.run_simple", lambda *a, **k: started.append(a))
    if refused:
        with pytest.raises(DebuggerRefused, match=REFUSAL):
            app.run(host, 5000, debug, False, **options)
        assert started == []
    else:
        app.run(host, 5000, debug, False, **options)
        assert len(started) == 1


def test_app_run_is_left_to_flask_under_the_flask_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``flask run`` Flask ignores ``app.run()``; the command's own check applies."""
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")
    app = make_app(tmp_path / "state")
    app.run(SERVER_V4, 5000, True, False)  # returns at once: Flask ignores it


def _flask_run(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "example_app", "run", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and its reloader child (one session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _debugger_answers(port: int) -> list[Reply]:
    return [request(SERVER_V4, port, path, source=CLIENT_V4) for path in DEBUGGER_PATHS]


@pytest.mark.root
@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--debug"], {}, id="debug-flag"),
        pytest.param([], {"FLASK_DEBUG": "1"}, id="FLASK_DEBUG-env"),
        pytest.param(["--debug", "--no-reload"], {}, id="debug-without-reloader"),
        pytest.param(["--debugger"], {}, id="debugger-flag-alone"),
    ],
)
def test_flask_run_debug_on_a_tailnet_address_refuses_to_start(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    with addresses_on_lo([f"{SERVER_V4}/32", f"{CLIENT_V4}/32"]):
        port = free_port(SERVER_V4)
        log = tmp_path / "flask.log"
        proc = _flask_run(
            [*args, "--host", SERVER_V4, "--port", str(port)],
            {**gunicorn_env(tmp_path / "state"), **env},
            log,
        )
        try:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if _accepts(SERVER_V4, port):
                    answers = _debugger_answers(port)
                    pytest.fail(
                        f"the debugger serves a tailnet peer: {[a.status for a in answers]}\n"
                        + log.read_text()
                    )
                time.sleep(0.1)
            assert proc.poll() == 1, log.read_text()
        finally:
            _stop(proc)
        output = log.read_text()
        assert f"Error: {REFUSAL} '{SERVER_V4}'" in output
        assert "Traceback" not in output
        assert not _accepts(SERVER_V4, port)


@pytest.mark.root
def test_flask_run_debug_without_the_debugger_is_guarded(tmp_path: Path) -> None:
    """``--debug --no-debugger`` (the reloader, no debugger) on a tailnet address serves, and the
    debugger's paths are ordinary requests the guard answers (401 without a credential)."""
    with addresses_on_lo([f"{SERVER_V4}/32", f"{CLIENT_V4}/32"]):
        port = free_port(SERVER_V4)
        log = tmp_path / "flask.log"
        proc = _flask_run(
            ["--debug", "--no-debugger", "--host", SERVER_V4, "--port", str(port)],
            gunicorn_env(tmp_path / "state"),
            log,
        )
        try:
            deadline = time.monotonic() + 30
            while not _accepts(SERVER_V4, port):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            for reply in _debugger_answers(port):
                assert reply.status in (401, 403), reply
                assert "Werkzeug" not in reply.body
                assert "console" not in reply.body.lower()
        finally:
            _stop(proc)
        assert REFUSAL not in log.read_text()


@pytest.mark.root
def test_app_run_debug_on_a_tailnet_address_refuses_to_start(tmp_path: Path) -> None:
    with addresses_on_lo([f"{SERVER_V4}/32", f"{CLIENT_V4}/32"]):
        port = free_port(SERVER_V4)
        script = (
            "from example_app import create_app\n"
            f"create_app().run(host={SERVER_V4!r}, port={port}, debug=True)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=gunicorn_env(tmp_path / "state"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if _accepts(SERVER_V4, port):
                    answers = _debugger_answers(port)
                    pytest.fail(
                        f"the debugger serves a tailnet peer: {[a.status for a in answers]}"
                    )
                time.sleep(0.1)
            assert proc.poll() == 1
        finally:
            _stop(proc)
        assert proc.stdout is not None
        with proc.stdout:
            output = proc.stdout.read().decode()
        assert f"DebuggerRefused: {REFUSAL} '{SERVER_V4}'" in output


def test_flask_run_debug_on_loopback_still_starts(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    log = tmp_path / "flask.log"
    proc = _flask_run(
        ["--debug", "--host", "127.0.0.1", "--port", str(port)],
        gunicorn_env(tmp_path / "state"),
        log,
    )
    try:
        deadline = time.monotonic() + 30
        while not _accepts("127.0.0.1", port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        console = request("127.0.0.1", port, "/console")
        assert console.status == 200  # the debugger works where only this machine reaches it
        assert "Console" in console.body
    finally:
        _stop(proc)
    assert REFUSAL not in log.read_text()
