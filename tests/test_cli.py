"""``flask tailnet ...``: in-process through the click runner, and as the installed command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_tailnet import cli as cli_module
from flask_tailnet.cli import tailnet

from .conftest import make_app

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


# ---- flask tailnet password ----------------------------------------------------------------


def test_password_prompts_twice_and_stores_a_hash(password_app: Flask) -> None:
    runner = password_app.test_cli_runner()
    result = runner.invoke(tailnet, ["password"], input="s3cret pw\ns3cret pw\n")
    assert result.exit_code == 0, result.output
    state = password_app.extensions["tailnet"]
    stored = state.credentials.passwords.file.path.read_text()
    assert stored.startswith("scrypt:")
    assert "s3cret pw" not in stored
    assert (state.credentials.passwords.file.path.stat().st_mode & 0o777) == 0o600
    assert result.stdout == ""  # nothing on stdout but a generated password


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param("one\ntwo\none\none\n", None, id="mismatch-then-match"),
        pytest.param(" \n \n", "empty", id="blank"),
    ],
)
def test_password_prompt_table(password_app: Flask, given: str, message: str | None) -> None:
    result = password_app.test_cli_runner().invoke(tailnet, ["password"], input=given)
    if message is None:
        assert result.exit_code == 0
    else:
        assert result.exit_code != 0
        assert message in result.output


def test_password_generate_prints_it_once(state_dir: Path) -> None:
    app = make_app(state_dir, auth="token")
    result = app.test_cli_runner().invoke(tailnet, ["password", "--generate"])
    assert result.exit_code == 0
    generated = result.stdout.strip()
    assert len(generated) >= 20
    assert result.stdout.count(generated) == 1
    assert app.extensions["tailnet"].credentials.passwords.verify(generated)


def test_password_remove(password_app: Flask) -> None:
    runner = password_app.test_cli_runner()
    runner.invoke(tailnet, ["password", "--generate"])
    first = runner.invoke(tailnet, ["password", "--remove"])
    second = runner.invoke(tailnet, ["password", "--remove"])
    assert first.exit_code == second.exit_code == 0
    assert "removed" in first.output
    assert "absent" in second.output
    assert not password_app.extensions["tailnet"].credentials.passwords.file.path.exists()


# ---- flask tailnet status --------------------------------------------------------------------


def test_status_reports_and_never_prints_a_secret(state_dir: Path) -> None:
    app = make_app(
        state_dir,
        auth="token",
        ratelimit_storage_uri="redis://user:hunter2secret@127.0.0.1:6399/0",
    )
    state = app.extensions["tailnet"]
    token = state.token_file.ensure().decode()
    cookie = state.sessions.issue(user=None, method="token", credential=token.encode())
    assert cookie is not None
    key = state.sessions.key_file.path.read_text().strip()
    runner = app.test_cli_runner()
    runner.invoke(tailnet, ["password"], input="pw-in-file\npw-in-file\n")
    result = runner.invoke(tailnet, ["status"])
    assert result.exit_code == 0, result.output
    assert "login method:     token" in result.output
    assert "mode 0600" in result.output
    for secret in (token, key, "pw-in-file", "hunter2secret"):
        assert secret not in result.output


def test_status_exits_non_zero_for_an_unsafe_file(runner: FlaskCliRunner, state_dir: Path) -> None:
    runner.invoke(tailnet, ["token"])
    os.chmod(state_dir / "token", 0o644)
    result = runner.invoke(tailnet, ["status"])
    assert result.exit_code == 1
    assert "UNSAFE" in result.output
    assert f"chmod 600 {state_dir / 'token'}" in result.output


# ---- flask tailnet url -------------------------------------------------------------------------


def test_url_lists_localhost_and_tailnet_addresses(
    runner: FlaskCliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        cli_module,
        "machine_addresses",
        lambda: ["127.0.0.1", "192.168.1.4", "100.101.102.103", "fd7a:115c:a1e0::7"],
    )
    result = runner.invoke(tailnet, ["url", "--port", "8080"])
    token = (state_dir / "token").read_text().strip()
    assert result.stdout.splitlines() == [
        f"http://localhost:8080/?token={token}",
        f"http://100.101.102.103:8080/?token={token}",
        f"http://[fd7a:115c:a1e0::7]:8080/?token={token}",
    ]


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param(["100.64.0.1", "100.64.0.1"], ["100.64.0.1"], id="deduplicated"),
        pytest.param(["100.115.92.5"], [], id="chromeos-range"),
        pytest.param(["100.100.100.100"], [], id="magicdns-service"),
        pytest.param(["10.0.0.1", "::1", "", "garbage"], [], id="others"),
        pytest.param(["fd7a:115c:a1e0::1"], ["fd7a:115c:a1e0::1"], id="ipv6"),
    ],
)
def test_tailnet_addresses_table(candidates: list[str], expected: list[str]) -> None:
    assert cli_module.tailnet_addresses(candidates) == expected


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("memory://", "memory://"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
        ("redis://user:p@ss@host", "redis://***@host"),
        ("rediss://user:pw@host/0?x=1", "rediss://***@host/0?x=1"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert cli_module.mask_uri(uri) == masked
