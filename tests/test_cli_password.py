"""``flask tailnet password``: the prompt on a terminal, one line of standard input otherwise, the
rules a password must meet, --generate and --remove, what it says before writing a password the
login page will not ask for, and the refusals of an unsafe state directory or password file."""

from __future__ import annotations

import os
import pty
import select
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_tailnet import cli as cli_module
from flask_tailnet.cli import tailnet
from flask_tailnet.passwords import MAX_PASSWORD_LENGTH

from .cli_helpers import (
    directory_under_a_file,
    flask_cli,
    linked_directory,
    password_login,
    state_of,
)
from .conftest import PAM_TEST_SERVICE, ROOT, make_app, pam_service_file


@pytest.fixture(autouse=True)
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The click runner's standard input is never a terminal: these tests that type at the prompt
    say it is one (the piped tests below say it is not)."""
    monkeypatch.setattr(cli_module, "stdin_is_a_terminal", lambda: True)


@pytest.fixture
def piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module, "stdin_is_a_terminal", lambda: False)


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


@pytest.mark.parametrize(
    "args",
    [["password"], ["password", "--generate"], ["password", "--remove"]],
    ids=" ".join,
)
@pytest.mark.parametrize(
    ("spoil", "directory"),
    [
        pytest.param(_open_directory, "state", id="directory-open-to-others"),
        pytest.param(linked_directory, "state", id="directory-is-a-symlink"),
        pytest.param(directory_under_a_file, "file/state", id="directory-under-a-file"),
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


def test_password_sets_the_first_password_of_an_app_in_password_mode(state_dir: Path) -> None:
    """TAILNET_AUTH="password" with no password yet loads the app, so the command that sets the
    password runs; the first login works at once."""
    app = make_app(state_dir, auth="password", password_env="TAILNET_UNSET_FOR_TESTS")
    result = app.test_cli_runner().invoke(tailnet, ["password"], input="first one\nfirst one\n")
    assert result.exit_code == 0, result.output
    assert "login method now: password (a password is set in the password file" in result.stderr
    assert state_of(app).credentials.verify(None, "first one") == ("password", None)


# ---- standard input that is not a terminal: one line, for scripts ---------------------------


@pytest.mark.parametrize(
    ("given", "password"),
    [
        pytest.param("from a script\n", "from a script", id="one-line"),
        pytest.param("no newline at the end", "no newline at the end", id="no-line-ending"),
        pytest.param("crlf\r\n", "crlf", id="crlf-line-ending"),
        pytest.param(" padded \n", " padded ", id="spaces-kept"),
        pytest.param("first\nsecond\n", "first", id="only-the-first-line"),
        pytest.param(f"{LONGEST}\n", LONGEST, id="longest-accepted"),
    ],
)
def test_password_reads_one_line_when_stdin_is_not_a_terminal(
    piped: None, runner: FlaskCliRunner, state_dir: Path, given: str, password: str
) -> None:
    result = runner.invoke(tailnet, ["password"], input=given)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "New password" not in result.stderr  # no prompt, no confirmation
    assert password.strip() not in result.stderr  # never echoed
    assert password_login(state_dir, password)
    assert not password_login(state_dir, password + "x")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param("", "no password on standard input", id="nothing-at-all"),
        pytest.param("\n", "refusing an empty password", id="empty-line"),
        pytest.param(" \t \n", "refusing an empty password", id="blank-line"),
        pytest.param("pw\x00x\n", "NUL character", id="nul-byte"),
        pytest.param(f"{LONGEST}x\n", "longer than 1024", id="one-over-the-longest"),
        pytest.param("x" * 1_000_000, "longer than 1024", id="a-megabyte-without-a-newline"),
    ],
)
def test_password_from_stdin_refused_writes_nothing(
    piped: None, runner: FlaskCliRunner, state_dir: Path, given: str, message: str
) -> None:
    result = runner.invoke(tailnet, ["password"], input=given)
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stdout == ""
    assert not (state_dir / "password").exists()


def test_installed_password_command_reads_a_pipe_without_a_warning(state_dir: Path) -> None:
    """A script's ``echo "$PW" | flask tailnet password`` on an app in password mode with no
    password yet: no GetPassWarning, no abort, nothing echoed, and the password logs in."""
    result = flask_cli(
        "tailnet",
        "password",
        state_dir=state_dir,
        env={"FLASK_TAILNET_AUTH": "password"},
        stdin="piped s3cret\n",
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr
    assert "piped s3cret" not in result.stdout + result.stderr
    assert "login method now: password" in result.stderr
    assert password_login(state_dir, "piped s3cret")


# ---- a password the login page will not ask for -------------------------------------------


def test_generate_says_first_that_the_token_is_asked_for(state_dir: Path) -> None:
    result = (
        make_app(state_dir, auth="token")
        .test_cli_runner()
        .invoke(tailnet, ["password", "--generate"])
    )
    assert result.exit_code == 0
    note = "note: the login page will not ask for this password: it asks for the token"
    assert note in result.stderr
    assert result.stderr.index(note) < result.stderr.index("wrote a scrypt hash")


def test_password_says_first_that_the_variable_wins(password_app: Flask) -> None:
    result = password_app.test_cli_runner().invoke(tailnet, ["password"], input="x1\nx1\n")
    assert result.exit_code == 0
    note = "the variable TAILNET_TEST_PASSWORD is set here"
    assert note in result.stderr
    assert result.stderr.index(note) < result.stderr.index("New password:")


def test_no_note_when_the_login_page_asks_for_the_file(state_dir: Path) -> None:
    app = make_app(state_dir, pam_service="no-such-service-x")  # auto, and PAM unusable
    result = app.test_cli_runner().invoke(tailnet, ["password", "--generate"])
    assert result.exit_code == 0
    assert "note:" not in result.stderr
    assert "login method now: password" in result.stderr


@pytest.mark.root
def test_generate_where_pam_is_usable_says_so_before_writing(state_dir: Path) -> None:
    """With PAM usable, "auto" logs people in with PAM: a password written now is not asked
    for, and the command says so before it writes."""
    if os.geteuid() != 0:
        pytest.skip("a PAM service file in /etc/pam.d needs root")
    with pam_service_file(f"flask-tailnet-h9cli-{os.getpid()}", PAM_TEST_SERVICE) as service:
        app = make_app(state_dir, pam_service=service)
        result = app.test_cli_runner().invoke(tailnet, ["password", "--generate"])
    assert result.exit_code == 0
    note = (
        "note: the login page will not ask for this password: it asks for a user name and "
        f"system password (PAM service '{service}' is usable; TAILNET_AUTH=auto); "
        'set TAILNET_AUTH="password" to log in with it'
    )
    assert note in result.stderr
    assert result.stderr.index(note) < result.stderr.index("wrote a scrypt hash")
    assert "login method now: pam" in result.stderr


def test_installed_password_command_prompts_on_a_real_terminal_without_echo(
    state_dir: Path,
) -> None:
    """On a real terminal (a pseudo-terminal here) the command prompts twice and the terminal
    shows nothing of what is typed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: only exec, nothing of pytest (and never return into it)
        try:
            os.chdir(ROOT)
            os.environ.update(FLASK_TAILNET_STATE_DIR=str(state_dir), FLASK_TAILNET_AUTH="password")
            os.execv(
                sys.executable,
                [sys.executable, "-m", "flask", "--app", "example_app", "tailnet", "password"],
            )
        finally:
            os._exit(127)
    shown = bytearray()

    def read_until(marker: bytes) -> None:
        deadline = time.monotonic() + 30
        while marker not in shown and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    shown.extend(os.read(fd, 1024))
                except OSError:  # the child closed the terminal
                    return

    try:
        for prompt in (b"New password:", b"Repeat for confirmation:"):
            read_until(prompt)
            os.write(fd, b"typed s3cret\n")
        read_until(b"login method now")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, shown.decode(errors="replace")
    assert b"typed s3cret" not in shown
    assert b"Warning" not in shown
    assert password_login(state_dir, "typed s3cret")
