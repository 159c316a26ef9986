"""The token file: created private, published whole, re-read on change, refused when unsafe."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask

from flask_tailnet import secretfile, watch
from flask_tailnet.cli import tailnet
from flask_tailnet.secretfile import SecretFile, UnsafeSecretFile
from flask_tailnet.token import secret_matches

from .conftest import TAILNET_HOST, TAILNET_PEER, call, make_app


def remote(client: Any, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return int(call(client, peer=TAILNET_PEER, host=TAILNET_HOST, headers=headers).status_code)


def token_file(app: Flask) -> SecretFile:
    return app.extensions["tailnet"].token_file  # type: ignore[no-any-return]


def test_created_with_private_modes(state_dir: Path) -> None:
    old = os.umask(0)
    try:
        token = SecretFile(state_dir, "token").ensure()
    finally:
        os.umask(old)
    assert (state_dir.stat().st_mode & 0o777) == 0o700
    assert ((state_dir / "token").stat().st_mode & 0o777) == 0o600
    assert len(token) >= 43
    assert token.decode().replace("-", "").replace("_", "").isalnum()


def test_mode_is_set_at_creation_never_by_chmod(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    def no_chmod(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("chmod after creation")

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    SecretFile(state_dir, "token").ensure()
    created = [(p, f, m) for p, f, m in opened if f & os.O_CREAT]
    assert created, "the secret must be created with os.open"
    for _path, flags, mode in created:
        assert flags & os.O_EXCL
        assert flags & os.O_NOFOLLOW
        assert mode == 0o600


def test_temporary_files_do_not_linger(state_dir: Path) -> None:
    secret = SecretFile(state_dir, "token")
    secret.ensure()
    secret.rotate()
    assert sorted(p.name for p in state_dir.iterdir()) == ["token"]


def test_whitespace_is_stripped(state_dir: Path) -> None:
    secret = SecretFile(state_dir, "token")
    secret.ensure()
    (state_dir / "token").write_bytes(b"  abc-def \n\n")
    assert secret.read() == b"abc-def"


UNSAFE_MODES = [
    pytest.param(0o640, id="group-readable"),
    pytest.param(0o620, id="group-writable"),
    pytest.param(0o604, id="world-readable"),
    pytest.param(0o602, id="world-writable"),
    pytest.param(0o666, id="everyone"),
    pytest.param(0o610, id="group-executable"),
]


@pytest.mark.parametrize("mode", UNSAFE_MODES)
def test_file_open_to_others_is_refused(
    app: Flask, client: Any, token: str, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = token_file(app).path
    os.chmod(path, mode)
    with caplog.at_level(logging.ERROR, "flask_tailnet"):
        assert remote(client, token) == 401
    assert f"chmod 600 {path}" in caplog.text
    assert token not in caplog.text
    with pytest.raises(UnsafeSecretFile, match="chmod 600"):
        token_file(app).ensure()
    os.chmod(path, 0o600)
    assert remote(client, token) == 200


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o770, 0o777])
def test_directory_open_to_others_is_refused(
    app: Flask,
    client: Any,
    token: str,
    state_dir: Path,
    mode: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    os.chmod(state_dir, mode)
    os.utime(token_file(app).path)  # any change makes the guard look again
    with caplog.at_level(logging.ERROR, "flask_tailnet"):
        assert remote(client, token) == 401
    assert f"chmod 700 {state_dir}" in caplog.text


def test_symlink_planted_in_place_of_the_token(
    app: Flask, client: Any, token: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    attacker = tmp_path / "attacker-token"
    attacker.write_text("attacker-chosen-token")
    attacker.chmod(0o600)
    path = token_file(app).path
    path.unlink()
    path.symlink_to(attacker)
    with caplog.at_level(logging.ERROR, "flask_tailnet"):
        assert remote(client, "attacker-chosen-token") == 401
        assert remote(client, token) == 401
    assert "symbolic link" in caplog.text
    with pytest.raises(UnsafeSecretFile, match="symbolic link"):
        token_file(app).ensure()


def test_dangling_symlink_is_not_followed_on_creation(state_dir: Path, tmp_path: Path) -> None:
    state_dir.mkdir(mode=0o700)
    target = tmp_path / "created-through-link"
    (state_dir / "token").symlink_to(target)
    secret = SecretFile(state_dir, "token")
    assert secret.read(create=True) is None
    with pytest.raises(UnsafeSecretFile):
        secret.ensure()
    assert not target.exists()


def test_symlinked_state_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeSecretFile, match="symbolic link"):
        SecretFile(link, "token").ensure()
    assert SecretFile(link, "token").read(create=True) is None


def test_not_a_regular_file_is_refused(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    (state_dir / "token").mkdir(mode=0o700)
    with pytest.raises(UnsafeSecretFile, match="not a regular file"):
        SecretFile(state_dir, "token").ensure()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_file_owned_by_another_user_is_refused(app: Flask, client: Any, token: str) -> None:
    os.chown(token_file(app).path, 65534, 65534)
    assert remote(client, token) == 401
    with pytest.raises(UnsafeSecretFile, match="owned by uid 65534"):
        token_file(app).ensure()


@pytest.mark.parametrize("content", [b"", b"\n", b"   \n\t "], ids=["empty", "newline", "blanks"])
def test_empty_token_matches_nothing(app: Flask, client: Any, token: str, content: bytes) -> None:
    token_file(app).path.write_bytes(content)
    for presented in ["", " ", token]:
        assert remote(client, presented) == 401
    with pytest.raises(UnsafeSecretFile, match="empty"):
        token_file(app).ensure()


def test_rotation_is_seen_without_restart(app: Flask, client: Any, token: str) -> None:
    assert remote(client, token) == 200
    result = app.test_cli_runner().invoke(tailnet, ["token", "--rotate"])
    new = result.output.strip()
    assert result.exit_code == 0
    assert new
    assert new != token
    assert remote(client, token) == 401
    assert remote(client, new) == 200


def test_replacement_by_rename_and_in_place_edit_are_seen(
    app: Flask, client: Any, token: str, state_dir: Path
) -> None:
    assert remote(client, token) == 200
    staged = state_dir / "staged"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    renamed = "renamed-into-place-token-" + "r" * 43  # tokens are at least 43 bytes
    os.write(fd, f"{renamed}\n".encode())
    os.close(fd)
    os.replace(staged, state_dir / "token")
    assert remote(client, token) == 401
    assert remote(client, renamed) == 200
    edited = "edited-in-place-token-xyz-" + "e" * 50
    with open(state_dir / "token", "r+b") as handle:  # same inode, new content and size
        handle.write(f"{edited}\n".encode())
    assert remote(client, edited) == 200


def _count_file_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real_lstat, real_open = os.lstat, os.open

    def count_lstat(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("lstat")
        return real_lstat(path, *args, **kwargs)

    def count_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("open")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", count_lstat)
    monkeypatch.setattr(os, "open", count_open)
    return calls


@pytest.mark.skipif(not watch.AVAILABLE, reason="inotify is Linux only")
def test_no_file_call_per_request_when_unchanged_and_watched(
    app: Flask, client: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert remote(client, token) == 200
    assert remote(client, token) == 200  # the watch is armed by now
    calls = _count_file_calls(monkeypatch)
    for _ in range(5):
        assert remote(client, token) == 200
    assert calls == []


def test_one_stat_per_request_when_unchanged_and_unwatched(
    app: Flask, client: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unwatched(monkeypatch)
    assert remote(client, token) == 200
    calls = _count_file_calls(monkeypatch)
    for _ in range(5):
        assert remote(client, token) == 200
    assert calls == ["lstat"] * 5


def test_watched_file_is_looked_at_again_after_the_recheck_interval(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = SecretFile(state_dir, "token")
    value = secret.ensure()
    assert secret.read() == value
    assert secret.read() == value
    now = [time.monotonic()]
    monkeypatch.setattr(secretfile, "_monotonic", lambda: now[0])
    calls = _count_file_calls(monkeypatch)
    assert secret.read() == value
    assert calls == []
    now[0] += watch.RECHECK_SECONDS + 0.01
    assert secret.read() == value
    assert calls == ["lstat"]


def _unwatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a system without inotify: every file falls back to an lstat per check."""
    monkeypatch.setattr(watch, "AVAILABLE", False)
    watch.disarm_all()


def test_token_created_on_first_need(app: Flask, client: Any, state_dir: Path) -> None:
    assert not state_dir.exists()
    assert call(client).status_code == 200  # loopback needs no token: nothing created
    assert not (state_dir / "token").exists()
    assert remote(client, "guess") == 401  # a bearer credential is the first need
    assert (state_dir / "token").exists()


RACE = """
import sys, time
from pathlib import Path
from flask_tailnet.secretfile import SecretFile
start = float(sys.argv[2])
while time.time() < start:
    pass
token = SecretFile(Path(sys.argv[1]), "token").read(create=True)
print(token.decode() if token else "NONE")
"""


@pytest.mark.parametrize("round_", range(5))
def test_processes_racing_to_create_agree_on_one_token(tmp_path: Path, round_: int) -> None:
    state = tmp_path / f"race{round_}"
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(state), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    tokens = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(tokens) == 1
    (token,) = tokens
    assert token != "NONE"
    assert (state / "token").read_text().strip() == token
    assert sorted(p.name for p in state.iterdir()) == ["token"]


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("")
    with pytest.raises(UnsafeSecretFile, match="not a directory"):
        SecretFile(not_a_dir, "token").ensure()


def test_oversized_file_is_refused(state_dir: Path) -> None:
    secret = SecretFile(state_dir, "token")
    secret.ensure()
    secret.path.write_bytes(b"x" * (64 * 1024 + 1))
    assert secret.read() is None
    with pytest.raises(UnsafeSecretFile, match="larger than"):
        secret.ensure()


def test_unusable_state_dir_is_logged_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    with caplog.at_level(logging.ERROR, "flask_tailnet"):
        make_app(state)
    assert f"chmod 700 {state}" in caplog.text


def test_uncreatable_token_fails_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    app = make_app(blocker / "state")  # the parent is a file: nothing can be created
    with caplog.at_level(logging.ERROR, "flask_tailnet"):
        assert remote(app.test_client(), "anything") == 401
    assert str(blocker / "state" / "token") in caplog.text
    result = app.test_cli_runner().invoke(tailnet, ["token"])
    assert result.exit_code != 0
    assert "TAILNET_STATE_DIR" in result.output


def _lie(monkeypatch: pytest.MonkeyPatch, path: Path, answer: Any, times: int = 1000) -> None:
    """Make the next ``times`` ``os.lstat(path)`` calls answer ``answer()``: the window in which
    another process (or an attacker) changes the file between our look and our action."""
    real_lstat = os.lstat
    left = [times]

    def lstat(target: Any, *args: Any, **kwargs: Any) -> Any:
        if left[0] > 0 and str(target) == str(path):
            left[0] -= 1
            return answer()
        return real_lstat(target, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)


def test_symlink_swapped_in_after_the_check_is_not_followed(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = SecretFile(state_dir, "token")
    secret.ensure()
    attacker = tmp_path / "attacker"
    attacker.write_text("attacker-chosen-token")
    attacker.chmod(0o600)
    secret.path.unlink()
    secret.path.symlink_to(attacker)
    _lie(monkeypatch, secret.path, lambda: os.stat(attacker))  # it looks like a plain file
    assert secret.read() is None


def test_creation_race_keeps_the_token_that_won(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = SecretFile(state_dir, "token").ensure()
    loser = SecretFile(state_dir, "token")

    def missing() -> Any:
        raise FileNotFoundError(2, "No such file or directory")

    _lie(monkeypatch, loser.path, missing, times=2)  # the loser looked before the winner linked
    assert loser.read(create=True) == winner
    assert (state_dir / "token").read_bytes().strip() == winner


@pytest.mark.parametrize(
    ("presented", "secret", "matches"),
    [
        pytest.param(b"", b"", False, id="empty-vs-empty"),
        pytest.param(b"", None, False, id="empty-vs-absent"),
        pytest.param(b"x", None, False, id="absent-secret"),
        pytest.param(b"", b"x", False, id="empty-presented"),
        pytest.param(b"x", b"x", True, id="equal"),
        pytest.param(b"x", b"xx", False, id="prefix"),
    ],
)
def test_secret_matches_table(presented: bytes, secret: bytes | None, matches: bool) -> None:
    assert secret_matches(presented, secret) is matches


def test_a_rotation_removes_only_stale_temporaries_of_dead_writers(state_dir: Path) -> None:
    secret = SecretFile(state_dir, "token")
    secret.ensure()
    stale = state_dir / ".token.0123456789abcdef.tmp"
    young = state_dir / ".token.fedcba9876543210.tmp"  # a live writer's, mid-write
    other = state_dir / ".password.0123456789abcdef.tmp"  # another file's
    odd = state_dir / ".token.not-sixteen-hex.tmp"
    for path in (stale, young, other, odd):
        path.write_bytes(b"never used\n")
        path.chmod(0o600)
    an_hour_ago = time.time() - 3600
    for path in (stale, other, odd):
        os.utime(path, (an_hour_ago, an_hour_ago))
    secret.rotate()
    assert not stale.exists()
    assert young.exists()
    assert other.exists()
    assert odd.exists()


@pytest.mark.parametrize(
    ("me", "owner", "fix"),
    [
        pytest.param(1000, 1001, "run: chown 1000 /s/token", id="the-server-user-takes-it-back"),
        pytest.param(
            0,
            1001,
            "if the server runs as uid 1001, run this command as that user (sudo -u '#1001' ...);"
            " if it runs as root: chown 0 /s/token",
            id="root-is-not-told-to-take-a-services-files",
        ),
    ],
)
def test_ownership_fix(me: int, owner: int, fix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: me)
    assert secretfile._ownership_fix(owner, Path("/s/token")) == fix


# ---- a secret shorter than a generated one is refused --------------------------------------------

#: (file content, what the refusal says). Every row is shorter than the 43 bytes of a generated
#: token once surrounding whitespace is stripped.
WEAK_CONTENTS = [
    pytest.param(b"x\n", "shorter than 43 bytes", id="one-byte"),
    pytest.param(b"k", "shorter than 43 bytes", id="one-byte-no-newline"),
    pytest.param(b"a" * 42 + b"\n", "shorter than 43 bytes", id="42-chars"),
    pytest.param(b"   \t" + b"b" * 42 + b" \n\n", "shorter than 43 bytes", id="42-chars-padded"),
    pytest.param(b"\t" * 10 + b"c" * 30 + b"\n" * 10, "shorter than 43 bytes", id="padding-to-43"),
    pytest.param("\u00e9".encode() * 21, "shorter than 43 bytes", id="21-two-byte-chars"),
    pytest.param(b" \n\t\n ", "empty", id="empty-after-strip"),
    pytest.param(b"", "empty", id="empty"),
]
STRONG_CONTENTS = [
    pytest.param(b"Z" * 43, id="43-chars-even-all-the-same"),
    pytest.param(b"  " + b"y" * 43 + b"\n", id="43-chars-padded"),
    pytest.param(b"0123456789" * 10, id="100-chars"),
    pytest.param("\u00e9".encode() * 22, id="22-two-byte-chars-are-44-bytes"),
]
WEAKLY_HELD = ["token", "session_key"]


def write_secret(path: Path, content: bytes) -> None:
    """``content`` into ``path``, as a careful hand would: a private file in a private directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, 0o600)


@pytest.mark.parametrize("name", WEAKLY_HELD)
@pytest.mark.parametrize(("content", "refusal"), WEAK_CONTENTS)
def test_a_short_secret_file_is_refused(
    state_dir: Path, name: str, content: bytes, refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(state_dir)
    state = app.extensions["tailnet"]
    secret_file = {"token": state.token_file, "session_key": state.sessions.key_file}[name]
    write_secret(secret_file.path, content)
    with caplog.at_level(logging.ERROR, logger="flask_tailnet"):
        assert secret_file.read(create=True) is None
    assert refusal in caplog.text
    assert str(secret_file.path) in caplog.text
    problem = secret_file.problem()
    assert problem is not None
    assert refusal in problem
    with pytest.raises(UnsafeSecretFile, match=refusal):
        secret_file.ensure()
    assert secret_file.path.read_bytes() == content, "refused, not replaced behind the user's back"
    if len(content.strip()) >= 8:
        assert content.strip().decode(errors="replace") not in problem


@pytest.mark.parametrize(("content", "refusal"), WEAK_CONTENTS)
def test_a_short_token_is_denied_everywhere(state_dir: Path, content: bytes, refusal: str) -> None:
    app = make_app(state_dir)
    write_secret(state_dir / "token", content)
    client = app.test_client()
    presented = content.strip().decode(errors="replace")
    assert remote(client, presented) == 401
    basic = base64.b64encode(f"x:{presented}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    assert call(client, peer=TAILNET_PEER, host=TAILNET_HOST, headers=headers).status_code == 401
    link = call(client, f"/?token={quote(presented)}", peer=TAILNET_PEER, host=TAILNET_HOST)
    assert link.status_code != 303
    assert "Set-Cookie" not in link.headers or "tailnet_session=" not in link.headers["Set-Cookie"]


@pytest.mark.parametrize("name", WEAKLY_HELD)
@pytest.mark.parametrize("content", STRONG_CONTENTS)
def test_a_secret_as_long_as_a_generated_one_is_accepted(
    state_dir: Path, name: str, content: bytes
) -> None:
    app = make_app(state_dir)
    state = app.extensions["tailnet"]
    secret_file = {"token": state.token_file, "session_key": state.sessions.key_file}[name]
    write_secret(secret_file.path, content)
    assert secret_file.read() == content.strip()
    assert secret_file.problem() is None
    if name == "token" and content.isascii():  # a header carries Latin-1, not UTF-8
        assert remote(app.test_client(), content.strip().decode()) == 200


def test_the_password_file_keeps_its_own_rules(state_dir: Path) -> None:
    """A password is a human one, checked under the budget: any non-empty one is read."""
    app = make_app(state_dir)
    password_file = app.extensions["tailnet"].credentials.passwords.file
    write_secret(password_file.path, b"pw\n")
    assert password_file.read() == b"pw"
    assert password_file.problem() is None


@pytest.mark.parametrize("content", [b"", b"  \n", b"x", b"a" * 42])
def test_a_short_secret_is_never_written(state_dir: Path, content: bytes) -> None:
    secret_file = make_app(state_dir).extensions["tailnet"].token_file
    with pytest.raises(ValueError, match="refusing to write"):
        secret_file.write(content)
    assert not secret_file.path.exists()


def test_every_generated_secret_is_long_enough() -> None:
    assert all(len(secretfile.new_token()) >= secretfile.MIN_SECRET_LENGTH for _ in range(200))
