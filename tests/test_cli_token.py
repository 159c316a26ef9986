"""``flask tailnet token``: prints the bearer token alone, creates or rotates it."""

from __future__ import annotations

import os
from pathlib import Path

from flask.testing import FlaskCliRunner

from flask_tailnet.cli import tailnet


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
