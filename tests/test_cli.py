"""``flask tailnet ...``: in-process through the click runner, and as the installed command."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_tailnet import cli as cli_module
from flask_tailnet.cli import MAX_PASSWORD_LENGTH, tailnet
from flask_tailnet.masking import mask_uri
from flask_tailnet.state import GuardState

from .conftest import TAILNET_PEER, addresses_on_lo, call, make_app, serving_example_app

ROOT = Path(__file__).resolve().parent.parent
OWNER = pwd.getpwuid(os.geteuid()).pw_name
UNKNOWN_UID = 54321  # no passwd entry: status shows the number


def state_of(app: Flask) -> GuardState:
    state: GuardState = app.extensions["tailnet"]
    return state


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


def flask_cli(
    *args: str, state_dir: Path, app: str = "example_app", path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(state_dir)}
    if path is not None:
        env["PATH"] = path
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


def test_installed_commands_keep_stdout_for_the_secret(state_dir: Path) -> None:
    generated = flask_cli("tailnet", "password", "--generate", state_dir=state_dir)
    assert generated.returncode == 0, generated.stderr
    password = generated.stdout.strip()
    assert generated.stdout == password + "\n"
    assert f"wrote a scrypt hash to {state_dir / 'password'}" in generated.stderr
    status = flask_cli("tailnet", "status", state_dir=state_dir)
    assert status.returncode == 0, status.stderr
    assert password not in status.stdout + status.stderr
    assert "  password:       mode 0600" in status.stdout
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


# ---- flask tailnet password ----------------------------------------------------------------


def test_password_prompts_twice_and_stores_a_hash(password_app: Flask) -> None:
    runner = password_app.test_cli_runner()
    result = runner.invoke(tailnet, ["password"], input="s3cret pw\ns3cret pw\n")
    assert result.exit_code == 0, result.output
    password_file = state_of(password_app).credentials.passwords.file.path
    stored = password_file.read_text()
    assert stored.startswith("scrypt:")
    assert "s3cret pw" not in stored
    assert (password_file.stat().st_mode & 0o777) == 0o600
    assert result.stdout == ""  # nothing on stdout but a generated password
    assert "s3cret pw" not in result.stderr  # hide_input: the prompt echoes nothing
    assert result.stderr.count("New password:") == 1
    assert "Repeat for confirmation:" in result.stderr


def test_password_set_under_a_variable_says_the_variable_wins(password_app: Flask) -> None:
    result = password_app.test_cli_runner().invoke(tailnet, ["password"], input="x1\nx1\n")
    assert result.exit_code == 0
    assert (
        "login method now: password (a password is set in the environment variable "
        "TAILNET_TEST_PASSWORD)"
    ) in result.stderr


LONGEST = "p" * MAX_PASSWORD_LENGTH


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param("one\ntwo\n", "do not match", id="confirmation-mismatch"),
        pytest.param("\n\n", "Aborted", id="empty-reprompts-until-eof"),
        pytest.param(" \n \n", "refusing an empty password", id="blank"),
        pytest.param("\t \t\n\t \t\n", "refusing an empty password", id="only-whitespace"),
        pytest.param("pw\x00x\npw\x00x\n", "NUL character", id="nul-byte"),
        pytest.param(
            f"{LONGEST}x\n{LONGEST}x\n",
            f"longer than {MAX_PASSWORD_LENGTH} characters",
            id="longer-than-the-login-accepts",
        ),
    ],
)
def test_password_refused_writes_nothing(
    password_app: Flask, state_dir: Path, given: str, message: str
) -> None:
    result = password_app.test_cli_runner().invoke(tailnet, ["password"], input=given)
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stdout == ""
    assert not (state_dir / "password").exists()


def test_password_mismatch_then_match_is_written(password_app: Flask, state_dir: Path) -> None:
    result = password_app.test_cli_runner().invoke(
        tailnet, ["password"], input="one\ntwo\nthree\nthree\n"
    )
    assert result.exit_code == 0
    assert "do not match" in result.stderr
    assert password_login(state_dir, "three")
    assert not password_login(state_dir, "one")


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("   ", "empty", id="spaces"),
        pytest.param("a\x00", "NUL", id="nul"),
        pytest.param("a" * (MAX_PASSWORD_LENGTH + 1), "longer", id="too-long"),
        pytest.param("caf\udce9", "not valid text", id="lone-surrogate-from-a-bad-locale"),
        pytest.param(" padded ", None, id="surrounding-spaces-kept"),
        pytest.param("ünïcødé ✓", None, id="unicode"),
        pytest.param(LONGEST, None, id="longest-accepted"),
    ],
)
def test_password_problem_table(password: str, problem: str | None) -> None:
    found = cli_module.password_problem(password)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def password_login(state_dir: Path, password: str) -> bool:
    """Whether ``password`` logs in to a fresh app in password mode on ``state_dir``."""
    app = make_app(state_dir, auth="password", password_env="TAILNET_UNSET_FOR_TESTS")
    return state_of(app).credentials.verify(None, password) == ("password", None)


@pytest.mark.parametrize(
    "password", [pytest.param(LONGEST, id="longest"), pytest.param(" ünï cødé ", id="unicode")]
)
def test_every_accepted_password_logs_in(
    runner: FlaskCliRunner, state_dir: Path, password: str
) -> None:
    result = runner.invoke(tailnet, ["password"], input=f"{password}\n{password}\n")
    assert result.exit_code == 0, result.output
    assert password_login(state_dir, password)
    assert not password_login(state_dir, password.strip() + "x")


def test_password_generate_prints_it_once_and_it_logs_in(state_dir: Path) -> None:
    app = make_app(state_dir, auth="token")
    result = app.test_cli_runner().invoke(tailnet, ["password", "--generate"])
    assert result.exit_code == 0
    generated = result.stdout.strip()
    assert result.stdout == generated + "\n"  # the password and nothing else
    assert len(generated) >= 20
    assert generated not in result.stderr
    stored = (state_dir / "password").read_text()
    assert stored.startswith("scrypt:")
    assert generated not in stored
    assert ((state_dir / "password").stat().st_mode & 0o777) == 0o600
    assert password_login(state_dir, generated)
    assert not password_login(state_dir, generated[:-1])
    # In token mode the password is kept for later but logs nobody in; the command says so.
    assert "login method now: token (TAILNET_AUTH is 'token')" in result.stderr
    assert state_of(app).credentials.verify(None, generated) is None


def test_password_generate_again_replaces_the_old_one(
    runner: FlaskCliRunner, state_dir: Path
) -> None:
    first = runner.invoke(tailnet, ["password", "--generate"]).stdout.strip()
    second = runner.invoke(tailnet, ["password", "--generate"]).stdout.strip()
    assert first != second
    assert password_login(state_dir, second)
    assert not password_login(state_dir, first)


def test_password_remove_twice(password_app: Flask, state_dir: Path) -> None:
    runner = password_app.test_cli_runner()
    runner.invoke(tailnet, ["password", "--generate"])
    first = runner.invoke(tailnet, ["password", "--remove"])
    second = runner.invoke(tailnet, ["password", "--remove"])
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout == ""
    assert f"removed {state_dir / 'password'}" in first.stderr
    assert f"{state_dir / 'password'} was absent" in second.stderr
    assert not (state_dir / "password").exists()


def test_password_remove_without_a_state_directory_creates_none(
    runner: FlaskCliRunner, state_dir: Path
) -> None:
    result = runner.invoke(tailnet, ["password", "--remove"])
    assert result.exit_code == 0
    assert "was absent" in result.stderr
    assert not state_dir.exists()


def test_password_generate_and_remove_exclude_each_other(runner: FlaskCliRunner) -> None:
    result = runner.invoke(tailnet, ["password", "--generate", "--remove"])
    assert result.exit_code == 2
    assert "exclude each other" in result.stderr


def _open_directory(state_dir: Path) -> str:
    os.chmod(state_dir, 0o755)
    return f"chmod 700 {state_dir}"


def _linked_directory(state_dir: Path) -> str:
    real = state_dir.with_name("real-state")
    state_dir.rename(real)
    state_dir.symlink_to(real)
    return f"state directory {state_dir} is a symbolic link"


def _directory_under_a_file(state_dir: Path) -> str:
    shutil.rmtree(state_dir)
    state_dir.parent.joinpath("file").write_text("")
    return "set TAILNET_STATE_DIR"


@pytest.mark.parametrize(
    "args",
    [["password"], ["password", "--generate"], ["password", "--remove"]],
    ids=" ".join,
)
@pytest.mark.parametrize(
    ("spoil", "directory"),
    [
        pytest.param(_open_directory, "state", id="directory-open-to-others"),
        pytest.param(_linked_directory, "state", id="directory-is-a-symlink"),
        pytest.param(_directory_under_a_file, "file/state", id="directory-under-a-file"),
    ],
)
def test_password_refuses_an_unsafe_state_directory_before_prompting(
    tmp_path: Path,
    args: list[str],
    spoil: Callable[[Path], str],
    directory: str,
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    fix = spoil(state_dir)
    app = make_app(tmp_path / directory, auth="token")
    result = app.test_cli_runner().invoke(tailnet, args, input="pw\npw\n")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "New password" not in result.stderr
    assert fix in result.stderr
    assert str(tmp_path / directory) in result.stderr
    assert not (tmp_path / directory / "password").exists()


def _link_password_elsewhere(password_file: Path) -> None:
    target = password_file.parent.parent / "elsewhere"
    target.write_text("not a secret\n")
    password_file.unlink()
    password_file.symlink_to(target)


def _give_password_away(password_file: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(password_file, 65534, 65534)


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda p: os.chmod(p, 0o644), id="world-readable"),
        pytest.param(lambda p: p.write_text("\n"), id="empty"),
        pytest.param(_link_password_elsewhere, id="symlink"),
        pytest.param(_give_password_away, id="other-owner"),
    ],
)
def test_password_replaces_an_unusable_password_file_with_a_safe_one(
    runner: FlaskCliRunner, state_dir: Path, spoil: Callable[[Path], object]
) -> None:
    runner.invoke(tailnet, ["password", "--generate"])
    spoil(state_dir / "password")
    result = runner.invoke(tailnet, ["password"], input="new one\nnew one\n")
    assert result.exit_code == 0, result.output
    assert f"replaced {state_dir / 'password'}, unusable as it was" in result.stderr
    st = (state_dir / "password").lstat()
    assert stat.S_ISREG(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid())
    assert password_login(state_dir, "new one")
    if (state_dir.parent / "elsewhere").exists():  # a link is replaced, its target left alone
        assert (state_dir.parent / "elsewhere").read_text() == "not a secret\n"


def test_password_file_that_is_a_directory_is_an_error(
    runner: FlaskCliRunner, state_dir: Path
) -> None:
    (state_dir / "password").mkdir(parents=True)
    os.chmod(state_dir, 0o700)
    result = runner.invoke(tailnet, ["password", "--generate"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"cannot write {state_dir / 'password'}: Is a directory; fix" in result.stderr


# ---- flask tailnet status --------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("redis://user:hunter2secret@127.0.0.1:6399/0", id="userinfo"),
        pytest.param("redis://:hunter2secret@127.0.0.1:6399", id="password-only"),
        pytest.param("redis://127.0.0.1:6399/0?password=hunter2secret", id="query-password"),
        pytest.param("redis://u:hunter2@secret@127.0.0.1:6399", id="unescaped-at-sign"),
    ],
)
def test_status_reports_and_never_prints_a_secret(state_dir: Path, uri: str) -> None:
    app = make_app(state_dir, auth="token", ratelimit_storage_uri=uri)
    state = state_of(app)
    token = state.token_file.ensure().decode()
    key = state.sessions.key_file.ensure().decode()
    runner = app.test_cli_runner()
    generated = runner.invoke(tailnet, ["password", "--generate"]).stdout.strip()
    result = runner.invoke(tailnet, ["status"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "login method:     token (TAILNET_AUTH is 'token'; TAILNET_AUTH=token)" in out
    for label in ("token", "session_key", "password"):
        assert f"  {label + ':':<15} mode 0600, owner {OWNER}, safe" in out
    assert f"state directory:  {state_dir}\n                  mode 0700, owner {OWNER}, safe" in out
    for secret in (token, key, generated, "hunter2", "secret"):
        assert secret not in result.output
    assert "limit storage:    redis://" in out
    assert result.stderr == ""


def test_status_of_a_fresh_app(runner: FlaskCliRunner, state_dir: Path) -> None:
    result = runner.invoke(tailnet, ["status"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[2:9] == [
        f"state directory:  {state_dir}",
        "                  missing (created on first need, mode 0700)",
        "  token:          missing",
        "  session_key:    missing",
        "  password:       missing",
        "network policy:   tailnet",
        "allowed hosts:    localhost, IP literals in the policy",
    ]
    assert "limit storage:    memory:// (counts per process)" in result.stdout
    assert not state_dir.exists()  # looking creates nothing


def test_status_shows_the_settings(state_dir: Path) -> None:
    app = make_app(
        state_dir,
        network="local",
        allowlist=["100.64.0.0/16", "fd7a:115c:a1e0::/64"],
        allowed_hosts=["box.tail1234.ts.net", ".example.internal"],
        trusted_proxies=["127.0.0.1"],
        local_bypass=False,
        login_limits="3 per minute",
        cookie_name="s",
        session_lifetime=3600,
        login_prefix="/auth",
        bind=["100.64.0.1:8000", "[fd7a:115c:a1e0::1]:8000"],
        allow_wildcard_bind=True,
    )
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[7:16] == [
        "network policy:   local, allowlist 100.64.0.0/16, fd7a:115c:a1e0::/64",
        "allowed hosts:    localhost, IP literals in the policy, box.tail1234.ts.net, "
        ".example.internal",
        "trusted proxies:  127.0.0.1/32",
        "loopback bypass:  off",
        "login limits:     3 per minute per client address",
        "limit storage:    memory:// (counts per process)",
        "sessions:         cookie s, 3600 s",
        "login page:       /auth/login",
        "gunicorn binds:   100.64.0.1:8000, [fd7a:115c:a1e0::1]:8000, wildcard allowed",
    ]


def test_status_names_the_password_variable_without_its_value(password_app: Flask) -> None:
    result = password_app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 0
    assert result.stdout.startswith(
        "login method:     password (a password is set in the environment variable "
        "TAILNET_TEST_PASSWORD; TAILNET_AUTH=password)\n"
    )
    assert "horse" not in result.output


def _chmod(name: str, mode: int) -> Callable[[Path], str]:
    def spoil(state_dir: Path) -> str:
        os.chmod(state_dir / name, mode)
        return f"chmod {'700' if name == '.' else '600'} {os.path.normpath(state_dir / name)}"

    return spoil


def _symlink(name: str) -> Callable[[Path], str]:
    def spoil(state_dir: Path) -> str:
        (state_dir / name).unlink()
        (state_dir / name).symlink_to(state_dir / "token")
        return f"is a symbolic link; remove it: rm {state_dir / name}"

    return spoil


def _chown(name: str, uid: int = 65534) -> Callable[[Path], str]:
    def spoil(state_dir: Path) -> str:
        if os.geteuid() != 0:
            pytest.skip("chown to another user needs root")
        os.chown(state_dir / name, uid, uid)
        owner = str(uid) if uid == UNKNOWN_UID else pwd.getpwuid(uid).pw_name
        path, euid = os.path.normpath(state_dir / name), os.geteuid()
        what = "state directory " if name == "." else ""
        fix = (
            f"if the server runs as uid {uid}, run this command as that user "
            f"(sudo -u '#{uid}' ...); if it runs as root: chown 0 {path}"
        )
        return f"owner {owner}, UNSAFE: {what}{path} is owned by uid {uid}, not {euid}; {fix}"

    return spoil


def _directory_instead_of(name: str) -> Callable[[Path], str]:
    def spoil(state_dir: Path) -> str:
        (state_dir / name).unlink()
        (state_dir / name).mkdir()
        return f"{state_dir / name} is not a regular file"

    return spoil


@pytest.mark.parametrize(
    ("spoil", "line"),
    [
        pytest.param(_chmod("token", 0o644), "  token:", id="token-world-readable"),
        pytest.param(_chmod("session_key", 0o640), "  session_key:", id="key-group-readable"),
        pytest.param(_chmod("password", 0o604), "  password:", id="password-other-readable"),
        pytest.param(_symlink("password"), "  password:", id="password-is-a-symlink"),
        pytest.param(_chown("token"), "  token:", id="token-owned-by-another-user"),
        pytest.param(_chown("token", UNKNOWN_UID), "  token:", id="token-owned-by-unknown-uid"),
        pytest.param(_directory_instead_of("session_key"), "  session_key:", id="key-is-a-dir"),
        pytest.param(_chmod(".", 0o755), "                  mode 0755", id="directory-open"),
        pytest.param(_chown("."), "                  mode 0700", id="directory-other-owner"),
    ],
)
def test_status_exits_non_zero_when_something_is_unsafe(
    runner: FlaskCliRunner,
    app: Flask,
    state_dir: Path,
    spoil: Callable[[Path], str],
    line: str,
) -> None:
    state = state_of(app)
    hidden = [
        state.token_file.ensure().decode(),
        state.sessions.key_file.ensure().decode(),
        runner.invoke(tailnet, ["password", "--generate"]).stdout.strip(),
    ]
    fix = spoil(state_dir)
    result = runner.invoke(tailnet, ["status"])
    assert result.exit_code == 1
    [reported] = [x for x in result.stdout.splitlines() if x.startswith(line)]
    assert "UNSAFE: " in reported
    assert fix in reported
    assert "something is UNSAFE" in result.stderr
    for secret in hidden:
        assert secret not in result.output


@pytest.mark.parametrize("name", ["token", "session_key"])
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"x\n", id="one-byte"),
        pytest.param(b"a" * 42 + b"\n", id="42-chars"),
        pytest.param(b"  " + b"b" * 42 + b"  \n", id="42-chars-padded"),
    ],
)
def test_status_calls_a_short_secret_unsafe(
    runner: FlaskCliRunner, app: Flask, state_dir: Path, name: str, content: bytes
) -> None:
    state = state_of(app)
    state.token_file.ensure()
    state.sessions.key_file.ensure()
    (state_dir / name).write_bytes(content)
    result = runner.invoke(tailnet, ["status"])
    assert result.exit_code == 1
    [reported] = [x for x in result.stdout.splitlines() if x.startswith(f"  {name}:")]
    assert f"UNSAFE: {state_dir / name} is shorter than 43 bytes" in reported
    assert f"rm {state_dir / name}" in reported
    assert "something is UNSAFE" in result.stderr
    if len(content.strip()) > 1:
        assert content.strip().decode() not in result.output
    other = "session_key" if name == "token" else "token"
    [fine] = [x for x in result.stdout.splitlines() if x.startswith(f"  {other}:")]
    assert fine.endswith(", safe")


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        pytest.param(_linked_directory, "is a symbolic link", id="directory-is-a-symlink"),
        pytest.param(_directory_under_a_file, "Not a directory", id="directory-under-a-file"),
    ],
)
def test_status_refuses_a_state_directory_it_cannot_trust(
    tmp_path: Path, spoil: Callable[[Path], str], expected: str
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    spoil(state_dir)
    directory = state_dir if state_dir.is_symlink() else tmp_path / "file" / "state"
    result = make_app(directory, auth="token").test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 1
    line = result.stdout.splitlines()[3]
    assert "UNSAFE: " in line
    assert expected in line


def test_status_of_a_dangling_symlink_directory_is_not_missing(tmp_path: Path) -> None:
    (tmp_path / "state").symlink_to(tmp_path / "nowhere")
    result = make_app(tmp_path / "state").test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 1
    assert "is a symbolic link" in result.stdout.splitlines()[3]


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("memory://", "memory://"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
        ("redis://user:pw@host", "redis://***@host"),
        ("redis://user:p@ss@host", "redis://***@host"),
        ("redis://user:p/ss@host/0", "redis://***@host/0"),
        ("redis://user:p?ss@host/0", "redis://***"),  # as ambiguous as redis://h?password=p@ss
        ("redis://user:p#ss@host/0", "redis://***"),
        ("rediss://user:pw@host/0?x=1", "rediss://***@host/0?x=***"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=***"),
        ("redis+unix:///run/redis.sock?password=pw", "redis+unix:///run/redis.sock?password=***"),
        ("redis://host/0?pw", "redis://host/0?***"),
        ("redis://host/0#pw", "redis://host/0#***"),
        ("redis+sentinel://:pw@h1:26379,h2:26379/m", "redis+sentinel://***@h1:26379,h2:26379/m"),
        ("user:pw@host", "***@host"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


# ---- flask tailnet url -------------------------------------------------------------------------


def fake_addresses(monkeypatch: pytest.MonkeyPatch, addresses: list[str]) -> None:
    monkeypatch.setattr(cli_module, "machine_addresses", lambda: addresses)


def test_url_lists_localhost_and_tailnet_addresses(
    runner: FlaskCliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(
        monkeypatch,
        [
            "127.0.0.1",
            "::1",
            "192.168.1.4",
            "100.101.102.103",
            "100.115.92.7",
            "fe80::1",
            "fd7a:115c:a1e0::7",
        ],
    )
    assert not state_dir.exists()
    result = runner.invoke(tailnet, ["url", "--port", "8080"])
    assert result.exit_code == 0
    token = (state_dir / "token").read_text().strip()  # created on first use
    assert result.stdout.splitlines() == [
        f"http://localhost:8080/?token={token}",
        f"http://100.101.102.103:8080/?token={token}",
        f"http://[fd7a:115c:a1e0::7]:8080/?token={token}",
    ]
    assert result.stderr == "Anyone with one of these links is logged in: share them with care.\n"


def test_url_defaults_and_https(
    runner: FlaskCliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(monkeypatch, ["100.64.0.1"])
    token = runner.invoke(tailnet, ["token"]).stdout.strip()
    plain = runner.invoke(tailnet, ["url"])
    assert plain.stdout.splitlines() == [
        f"http://localhost:5000/?token={token}",
        f"http://100.64.0.1:5000/?token={token}",
    ]
    https = runner.invoke(tailnet, ["url", "--scheme", "https", "--port", "443"])
    assert https.stdout.splitlines()[1] == f"https://100.64.0.1:443/?token={token}"


def test_url_without_a_tailnet_address_says_so(
    runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(monkeypatch, ["127.0.0.1", "10.0.0.2"])
    result = runner.invoke(tailnet, ["url"])
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith("http://localhost:5000/?token=")
    assert "no tailnet address found" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--port", "0"], id="port-zero"),
        pytest.param(["--port", "65536"], id="port-too-high"),
        pytest.param(["--port", "80; rm -rf /"], id="port-not-a-number"),
        pytest.param(["--scheme", "javascript"], id="scheme-not-http"),
    ],
)
def test_url_refuses_bad_options(runner: FlaskCliRunner, args: list[str]) -> None:
    result = runner.invoke(tailnet, ["url", *args])
    assert result.exit_code == 2
    assert result.stdout == ""


def test_url_with_an_unsafe_token_prints_no_link(
    runner: FlaskCliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(monkeypatch, ["100.64.0.1"])
    runner.invoke(tailnet, ["token"])
    os.chmod(state_dir / "token", 0o644)
    result = runner.invoke(tailnet, ["url"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"chmod 600 {state_dir / 'token'}" in result.stderr


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="generated"),
        pytest.param("a+b/c=d&e#f?g%h" + "x" * 28, id="hand-written-with-url-characters"),
    ],
)
def test_url_logs_a_tailnet_browser_in(
    app: Flask,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
) -> None:
    if token is not None:
        state_dir.mkdir(mode=0o700)
        (state_dir / "token").write_text(token + "\n")
        os.chmod(state_dir / "token", 0o600)
    fake_addresses(monkeypatch, ["100.64.0.1"])
    result = app.test_cli_runner().invoke(tailnet, ["url"])
    link = urlsplit(result.stdout.splitlines()[1])
    client = app.test_client()
    response = call(client, f"{link.path}?{link.query}", peer=TAILNET_PEER, host=link.netloc)
    assert response.status_code == 303
    assert "tailnet_session=" in response.headers["Set-Cookie"]
    after = call(client, "/", peer=TAILNET_PEER, host=link.netloc)
    assert after.status_code == 200
    assert after.json["method"] == "session"


# ---- real addresses on the loopback interface (root) ------------------------------------------

URL_V4, URL_V6 = "100.64.0.20", "fd7a:115c:a1e0::20"


@pytest.fixture(scope="module")
def tailnet_addresses_on_lo() -> Iterator[None]:
    with addresses_on_lo([f"{URL_V4}/32", f"{URL_V6}/128"]):
        yield


def tailscale_stand_in(bin_dir: Path, *addresses: str) -> str:
    """A PATH whose ``tailscale`` prints ``addresses`` as ``tailscale ip`` does (the real CLI is
    not installed here), followed by the real PATH. Addresses on ``lo`` are not on tailscale0,
    so without it ``flask tailnet url`` would find no tailnet address."""
    bin_dir.mkdir()
    stand_in = bin_dir / "tailscale"
    stand_in.write_text("#!/bin/sh\n" + "".join(f"echo {a}\n" for a in addresses))
    stand_in.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.root
def test_url_link_logs_in_to_a_real_server(tailnet_addresses_on_lo: None, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(state_dir)}
    path = tailscale_stand_in(tmp_path / "bin", URL_V4, URL_V6)
    with serving_example_app(URL_V4, env, tmp_path / "server.log") as port:
        printed = flask_cli("tailnet", "url", "--port", str(port), state_dir=state_dir, path=path)
        assert printed.returncode == 0, printed.stderr
        [link] = [u for u in printed.stdout.splitlines() if f"//{URL_V4}:" in u]
        assert f"http://[{URL_V6}]:{port}/?token=" in printed.stdout
        parts = urlsplit(link)
        conn = http.client.HTTPConnection(URL_V4, port, timeout=10, source_address=(URL_V4, 0))
        try:
            conn.request("GET", f"{parts.path}?{parts.query}", headers={"Host": parts.netloc})
            response = conn.getresponse()
            response.read()
            assert response.status == 303
            cookie = response.getheader("Set-Cookie", "").split(";", 1)[0]
            assert cookie.startswith("tailnet_session=")
            conn.request("GET", "/api/whoami", headers={"Host": parts.netloc, "Cookie": cookie})
            whoami = conn.getresponse()
            assert whoami.status == 200
            body = json.loads(whoami.read())
            assert (body["address"], body["method"]) == (URL_V4, "session")
        finally:
            conn.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "100.64.0.1:8000, wildcard allowed", id="the-apps-own"),
        pytest.param(
            {"TAILNET_BIND": "127.0.0.1:9000"},
            "127.0.0.1:9000 (TAILNET_BIND in the environment), wildcard allowed",
            id="the-environment-wins",
        ),
        pytest.param(
            {"TAILNET_BIND": "a", "FLASK_TAILNET_BIND": "b"},
            "unusable environment (",
            id="two-spellings-disagree",
        ),
        pytest.param(
            {"TAILNET_BIND": "unix:/run/app.sock"},
            "the server would refuse to start (refusing to bind 'unix:/run/app.sock'",
            id="a-unix-socket-in-the-environment",
        ),
        pytest.param(
            {"TAILNET_BIND": "192.168.1.5:8000"},
            "the server would refuse to start (refusing to bind '192.168.1.5:8000'",
            id="a-lan-address-in-the-environment",
        ),
    ],
)
def test_status_says_where_gunicorn_would_listen(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    app = make_app(state_dir, bind=["100.64.0.1:8000"], allow_wildcard_bind=True)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    line = next(x for x in result.stdout.splitlines() if x.startswith("gunicorn binds:"))
    assert expected in line
