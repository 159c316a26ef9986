"""The installed ``flask tailnet`` command: the entry point, stdout kept for the secret, an app
without the extension."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from flask_tailnet.cli import tailnet

from .cli_helpers import (
    flask_cli,
    status_value,
)


@pytest.mark.parametrize(
    "args",
    [
        ["token"],
        ["password"],
        ["password", "--generate"],
        ["password", "--remove"],
        ["status"],
        ["url"],
    ],
    ids=" ".join,
)
def test_app_without_the_extension_says_so(args: list[str]) -> None:
    result = Flask("plain").test_cli_runner().invoke(tailnet, args, input="pw\npw\n")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "does not use flask-tailnet" in result.stderr


def test_installed_command_through_the_entry_point(state_dir: Path) -> None:
    first = flask_cli("tailnet", "token", state_dir=state_dir)
    assert first.returncode == 0, first.stderr
    assert first.stdout == (state_dir / "token").read_text()
    rotated = flask_cli("tailnet", "token", "--rotate", state_dir=state_dir)
    assert rotated.returncode == 0
    assert rotated.stdout != first.stdout


def test_installed_commands_keep_stdout_for_the_secret(state_dir: Path) -> None:
    generated = flask_cli("tailnet", "password", "--generate", state_dir=state_dir)
    assert generated.returncode == 0, generated.stderr
    password = generated.stdout.strip()
    assert generated.stdout == password + "\n"
    assert f"wrote a scrypt hash to {state_dir / 'password'}" in generated.stderr
    status = flask_cli("tailnet", "status", state_dir=state_dir)
    assert status.returncode == 0, status.stderr
    assert password not in status.stdout + status.stderr
    assert status_value(status.stdout, "password").startswith("mode 0600")
    url = flask_cli("tailnet", "url", "--port", "8000", state_dir=state_dir)
    assert url.returncode == 0, url.stderr
    token = (state_dir / "token").read_text().strip()
    assert url.stdout.splitlines()[0] == f"http://localhost:8000/?token={token}"
    assert token not in url.stderr
    assert "logged in" in url.stderr


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


@pytest.mark.parametrize(
    "args",
    [[], ["token"], ["password"], ["status"], ["url"], ["serve"]],
    ids=lambda args: " ".join(["tailnet", *args, "--help"]),
)
def test_help_is_plain_text(args: list[str]) -> None:
    """click shows a docstring as it is: no reStructuredText markup in what --help prints."""
    result = Flask("plain").test_cli_runner().invoke(tailnet, [*args, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    for markup in ("``", ":func:", ":data:", ":class:", ":mod:", ":meth:"):
        assert markup not in result.stdout
