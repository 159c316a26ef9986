"""``flask tailnet status``: what it reports, that it prints no secret, and when it exits 1."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_tailnet.cli import tailnet

from .cli_helpers import (
    OWNER,
    UNKNOWN_UID,
    directory_under_a_file,
    linked_directory,
    state_of,
    status_entries,
    status_value,
)
from .conftest import make_app


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
    assert status_value(out, "login method") == (
        "token (TAILNET_AUTH is 'token'; TAILNET_AUTH=token)"
    )
    for label in ("token", "session_key", "password"):
        assert status_value(out, label) == f"mode 0600, owner {OWNER}, safe"
    assert dict(status_entries(out))["state directory"] == [
        str(state_dir),
        f"mode 0700, owner {OWNER}, safe",
    ]
    for secret in (token, key, generated, "hunter2", "secret"):
        assert secret not in result.output
    assert status_value(out, "limit storage").startswith("redis://")
    assert result.stderr == ""


def test_status_of_a_fresh_app(runner: FlaskCliRunner, state_dir: Path) -> None:
    result = runner.invoke(tailnet, ["status"])
    assert result.exit_code == 0
    assert status_entries(result.stdout)[2:8] == [
        ("state directory", [str(state_dir), "missing (created on first need, mode 0700)"]),
        ("token", ["missing"]),
        ("session_key", ["missing"]),
        ("password", ["missing"]),
        ("network policy", ["tailnet"]),
        ("allowed hosts", ["localhost, IP literals in the policy"]),
    ]
    assert status_value(result.stdout, "limit storage") == "memory:// (counts per process)"
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
    assert status_entries(result.stdout)[6:15] == [
        ("network policy", ["local, allowlist 100.64.0.0/16, fd7a:115c:a1e0::/64"]),
        (
            "allowed hosts",
            ["localhost, IP literals in the policy, box.tail1234.ts.net, .example.internal"],
        ),
        ("trusted proxies", ["127.0.0.1/32"]),
        ("loopback bypass", ["off"]),
        ("login limits", ["3 per minute per client address"]),
        ("limit storage", ["memory:// (counts per process)"]),
        ("sessions", ["cookie s, 3600 s"]),
        ("login page", ["/auth/login"]),
        ("gunicorn binds", ["100.64.0.1:8000, [fd7a:115c:a1e0::1]:8000, wildcard allowed"]),
    ]


def test_status_names_the_password_variable_without_its_value(password_app: Flask) -> None:
    result = password_app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 0
    assert status_entries(result.stdout)[0] == (
        "login method",
        [
            "password (a password is set in the environment variable TAILNET_TEST_PASSWORD; "
            "TAILNET_AUTH=password)"
        ],
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
    ("spoil", "label"),
    [
        pytest.param(_chmod("token", 0o644), "token", id="token-world-readable"),
        pytest.param(_chmod("session_key", 0o640), "session_key", id="key-group-readable"),
        pytest.param(_chmod("password", 0o604), "password", id="password-other-readable"),
        pytest.param(_symlink("password"), "password", id="password-is-a-symlink"),
        pytest.param(_chown("token"), "token", id="token-owned-by-another-user"),
        pytest.param(_chown("token", UNKNOWN_UID), "token", id="token-owned-by-unknown-uid"),
        pytest.param(_directory_instead_of("session_key"), "session_key", id="key-is-a-dir"),
        pytest.param(_chmod(".", 0o755), "state directory", id="directory-open"),
        pytest.param(_chown("."), "state directory", id="directory-other-owner"),
    ],
)
def test_status_exits_non_zero_when_something_is_unsafe(
    runner: FlaskCliRunner,
    app: Flask,
    state_dir: Path,
    spoil: Callable[[Path], str],
    label: str,
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
    reported = dict(status_entries(result.stdout))[label][-1]  # a directory: after its path
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
    reported = status_value(result.stdout, name)
    assert f"UNSAFE: {state_dir / name} is shorter than 43 bytes" in reported
    assert f"rm {state_dir / name}" in reported
    assert "something is UNSAFE" in result.stderr
    if len(content.strip()) > 1:
        assert content.strip().decode() not in result.output
    other = "session_key" if name == "token" else "token"
    assert status_value(result.stdout, other).endswith(", safe")


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        pytest.param(linked_directory, "is a symbolic link", id="directory-is-a-symlink"),
        pytest.param(directory_under_a_file, "Not a directory", id="directory-under-a-file"),
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
    line = dict(status_entries(result.stdout))["state directory"][1]
    assert "UNSAFE: " in line
    assert expected in line


def test_status_of_a_dangling_symlink_directory_is_not_missing(tmp_path: Path) -> None:
    (tmp_path / "state").symlink_to(tmp_path / "nowhere")
    result = make_app(tmp_path / "state").test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 1
    assert "is a symbolic link" in dict(status_entries(result.stdout))["state directory"][1]


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
    assert expected in status_value(result.stdout, "gunicorn binds")


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        pytest.param(
            {"auth": "pam", "pam_service": "no-such-service-x"},
            "TAILNET_AUTH is 'pam', but PAM cannot be used: no PAM service file",
            id="pam-unusable",
        ),
        pytest.param(
            {"auth": "password", "password_env": "UNSET_TAILNET_X"},
            "TAILNET_AUTH is 'password', but no password is set: every password login is "
            "refused until one is; set the variable UNSET_TAILNET_X of the server, or run "
            "`flask tailnet password`",
            id="password-missing",
        ),
    ],
)
def test_status_exits_non_zero_when_the_login_method_logs_nobody_in(
    state_dir: Path, settings: dict[str, str], reason: str
) -> None:
    result = make_app(state_dir, **settings).test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 1
    [login_method] = [v for label, v in status_entries(result.stdout) if label == "login method"]
    assert login_method[1].startswith("UNUSABLE, nobody logs in with it: ")
    assert reason in login_method[1]
    assert "logs nobody in: see the line marked UNUSABLE" in result.stderr


@pytest.mark.parametrize("value", ["   ", "x" * 1025], ids=["only-whitespace", "too-long"])
def test_status_exits_non_zero_when_the_password_variable_matches_no_login(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", value)
    app = make_app(state_dir, auth="password", password_env="TAILNET_TEST_PASSWORD")
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 1
    [login_method] = [v for label, v in status_entries(result.stdout) if label == "login method"]
    assert login_method[1].startswith("UNUSABLE, nobody logs in with it: ")
    assert "TAILNET_TEST_PASSWORD" in login_method[1]
    assert not value.strip() or value not in result.output  # a column of spaces is no secret


def test_status_is_fine_once_the_password_is_set(state_dir: Path) -> None:
    app = make_app(state_dir, auth="password", password_env="UNSET_TAILNET_X")
    runner = app.test_cli_runner()
    assert runner.invoke(tailnet, ["status"]).exit_code == 1
    assert runner.invoke(tailnet, ["password", "--generate"]).exit_code == 0
    result = runner.invoke(tailnet, ["status"])
    assert result.exit_code == 0, result.output
    assert "UNUSABLE" not in result.output
    assert status_value(result.stdout, "login method").startswith(
        f"password (a password is set in the password file {state_dir / 'password'}"
    )
