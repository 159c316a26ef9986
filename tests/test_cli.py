"""``flask tailnet ...``: in-process through the click runner, and as the installed command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flask import Flask
from flask.testing import FlaskCliRunner

from flask_tailnet.cli import tailnet

ROOT = Path(__file__).resolve().parent.parent


def test_token_prints_only_the_token_and_creates_it(
    runner: FlaskCliRunner, state_dir: Path
) -> None:
    result = runner.invoke(tailnet, ["token"])
    assert result.exit_code == 0
    assert result.output == (state_dir / "token").read_text()
    assert result.output.count("\n") == 1
    again = runner.invoke(tailnet, ["token"])
    assert again.output == result.output


def test_rotate_prints_the_new_token(runner: FlaskCliRunner, state_dir: Path) -> None:
    old = runner.invoke(tailnet, ["token"]).output
    new = runner.invoke(tailnet, ["token", "--rotate"]).output
    assert new != old
    assert new == (state_dir / "token").read_text()


def test_unsafe_token_file_is_an_error_with_the_fix(
    runner: FlaskCliRunner, state_dir: Path
) -> None:
    runner.invoke(tailnet, ["token"])
    os.chmod(state_dir / "token", 0o644)
    result = runner.invoke(tailnet, ["token"])
    assert result.exit_code != 0
    assert f"chmod 600 {state_dir / 'token'}" in result.output
    assert (state_dir / "token").read_text().strip() not in result.output
    fixed = runner.invoke(tailnet, ["token", "--rotate"])
    assert fixed.exit_code == 0
    assert ((state_dir / "token").stat().st_mode & 0o777) == 0o600


def test_app_without_the_extension_says_so() -> None:
    result = Flask("plain").test_cli_runner().invoke(tailnet, ["token"])
    assert result.exit_code != 0
    assert "does not use flask-tailnet" in result.output


def flask_cli(
    *args: str, state_dir: Path, app: str = "example_app"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", app, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_installed_command_through_the_entry_point(state_dir: Path) -> None:
    first = flask_cli("tailnet", "token", state_dir=state_dir)
    assert first.returncode == 0, first.stderr
    assert first.stdout == (state_dir / "token").read_text()
    rotated = flask_cli("tailnet", "token", "--rotate", state_dir=state_dir)
    assert rotated.returncode == 0
    assert rotated.stdout != first.stdout


def test_installed_command_on_an_app_without_the_extension(tmp_path: Path) -> None:
    (tmp_path / "plain_app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "plain_app", "tailnet", "token"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "does not use flask-tailnet" in result.stderr
