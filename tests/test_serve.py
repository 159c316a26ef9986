"""``flask tailnet serve``: the app under real gunicorn, options passed through, the bind check,
and the message when gunicorn is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from example_app import create_app
from flask_tailnet.cli import tailnet

from .gunicorn_helpers import (
    ROOT,
    free_port,
    gunicorn_env,
    listening_ports,
    request,
    running,
    start_gunicorn,
)

SERVE = [sys.executable, "-m", "flask", "--app", "example_app", "tailnet", "serve"]


def test_serve_runs_the_app_under_gunicorn(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    access_log = tmp_path / "access.log"
    state_dir = tmp_path / "state"
    with running(
        [("127.0.0.1", port)],
        state_dir=state_dir,
        stderr_path=tmp_path / "serve.log",
        workers=2,
        worker_class="gthread",
        extra=["--threads", "2", "--access-logfile", str(access_log)],
        command=SERVE,
    ) as server:
        assert len(server.workers()) == 2
        reply = request("127.0.0.1", port)
        assert reply.status == 200
        assert json.loads(reply.body)["method"] == "loopback"
        token = (state_dir / "token").read_text().strip()
        assert request("127.0.0.1", port, f"/?token={token}").status == 200
        assert "Using worker: gthread" in server.stderr()
        # stderr is a file: no login URL, but how to get one
        assert token not in server.stderr()
        assert f"flask --app example_app tailnet url --port {port}" in server.stderr()
        assert server.stop(signal.SIGTERM) == 0
    logged = access_log.read_text()
    assert "GET /?token=[redacted]" in logged
    assert token not in logged


def test_serve_refuses_the_wildcard(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    server = start_gunicorn(
        ["-b", f"0.0.0.0:{port}", "--no-control-socket"],
        env=gunicorn_env(tmp_path / "state"),
        stderr_path=tmp_path / "serve.log",
        command=SERVE,
    )
    try:
        assert server.proc.wait(timeout=60) != 0
        assert "refusing to bind '0.0.0.0:" in server.stderr()
        assert port not in listening_ports()
    finally:
        server.kill()


def test_serve_refuses_an_app_argument(tmp_path: Path) -> None:
    done = subprocess.run(
        [*SERVE, "other:app"],
        cwd=ROOT,
        env=gunicorn_env(tmp_path / "state"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "the app is the one `flask --app` names" in done.stderr


def test_serve_without_gunicorn_says_how_to_install_it(tmp_path: Path) -> None:
    """gunicorn made unimportable in a real ``flask`` process."""
    script = (
        "import sys; sys.modules['gunicorn'] = None; "
        "from flask.cli import main; "
        "sys.argv = ['flask', '--app', 'example_app', 'tailnet', 'serve', '-w', '2']; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=gunicorn_env(tmp_path / "state"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "gunicorn is not installed: pip install 'flask-tailnet[gunicorn]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_without_gunicorn_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n.startswith(("gunicorn.", "flask_tailnet.gunicorn"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "gunicorn", None)
    app = create_app({"TAILNET_STATE_DIR": str(tmp_path / "state")})
    result = app.test_cli_runner().invoke(tailnet, ["serve", "-b", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "pip install 'flask-tailnet[gunicorn]'" in result.output
    assert not os.path.exists(tmp_path / "state" / "token")
