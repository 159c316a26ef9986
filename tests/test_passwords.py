"""The login password: variable first, then the file; plain text or a werkzeug hash."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from werkzeug.security import generate_password_hash

from flask_tailnet import passwords as passwords_module
from flask_tailnet.passwords import (
    MAX_PASSWORD_LENGTH,
    Password,
    PasswordSource,
    password_problem,
)
from flask_tailnet.secretfile import SecretFile


def write_private(path: Path, content: str) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(content)
    path.chmod(0o600)


@pytest.fixture
def source(tmp_path: Path) -> PasswordSource:
    return PasswordSource("TEST_PW", SecretFile(tmp_path / "state", "password"), environ={})


def test_no_source_no_password(source: PasswordSource) -> None:
    assert source.current() is None
    assert not source.verify("")
    assert not source.verify("anything")


def test_variable_wins_over_file(tmp_path: Path) -> None:
    write_private(tmp_path / "state" / "password", "from-file")
    source = PasswordSource("TEST_PW", SecretFile(tmp_path / "state", "password"), {"TEST_PW": "v"})
    assert source.verify("v")
    assert not source.verify("from-file")
    empty = PasswordSource("TEST_PW", SecretFile(tmp_path / "state", "password"), {"TEST_PW": ""})
    assert empty.verify("from-file")  # an empty variable holds no password


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("correct horse", id="plain"),
        pytest.param(generate_password_hash("correct horse", "scrypt"), id="scrypt"),
        pytest.param(generate_password_hash("correct horse", "pbkdf2"), id="pbkdf2"),
    ],
)
@pytest.mark.parametrize(
    ("attempt", "ok"),
    [
        pytest.param("correct horse", True, id="right"),
        pytest.param("correct horsE", False, id="case"),
        pytest.param("correct horse ", False, id="trailing-space"),
        pytest.param("", False, id="empty"),
        pytest.param("correct horse\x00", False, id="nul"),
        pytest.param("\udcff", False, id="surrogate"),
        pytest.param("x" * 5000, False, id="over-long"),
    ],
)
def test_verify_table(tmp_path: Path, stored: str, attempt: str, ok: bool) -> None:
    write_private(tmp_path / "state" / "password", stored + "\n")
    source = PasswordSource("TEST_PW", SecretFile(tmp_path / "state", "password"), {})
    assert source.verify(attempt) is ok


def test_the_hash_itself_is_not_the_password(tmp_path: Path) -> None:
    hashed = generate_password_hash("pw", "scrypt")
    write_private(tmp_path / "state" / "password", hashed)
    source = PasswordSource("TEST_PW", SecretFile(tmp_path / "state", "password"), {})
    assert not source.verify(hashed)


def test_untrusted_file_holds_no_password(tmp_path: Path) -> None:
    write_private(tmp_path / "state" / "password", "pw")
    (tmp_path / "state" / "password").chmod(0o644)
    source = PasswordSource("TEST_PW", SecretFile(tmp_path / "state", "password"), {})
    assert source.current() is None
    assert not source.verify("pw")


def test_file_changes_take_effect_without_restart(tmp_path: Path) -> None:
    source = PasswordSource("TEST_PW", SecretFile(tmp_path / "state", "password"), {})
    assert not source.verify("one")
    write_private(tmp_path / "state" / "password", "one")
    assert source.verify("one")
    write_private(tmp_path / "state" / "password", "two")
    assert not source.verify("one")
    assert source.verify("two")
    (tmp_path / "state" / "password").unlink()
    assert source.current() is None


def _other_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords_module, "_CPYTHON", False)


def _environ_data_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords_module, "posix", SimpleNamespace(environ={}))


@pytest.mark.parametrize(
    ("where", "fast"),
    [
        pytest.param(
            lambda monkeypatch: None, True, id="cpython-reads-the-bytes-behind-os.environ"
        ),
        pytest.param(_other_interpreter, False, id="another-interpreter-reads-os.environ"),
        pytest.param(_environ_data_elsewhere, False, id="private-data-not-posix.environ"),
    ],
)
def test_the_process_environment_is_read_at_every_check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: Callable[[pytest.MonkeyPatch], None],
    fast: bool,
) -> None:
    """os.environ is read through its fast path (the bytes mapping behind it) on CPython only,
    else through os.environ itself; either way every way of changing it is seen by the next
    check."""
    where(monkeypatch)
    data = passwords_module.cpython_environ_bytes(os.environ)
    assert (data is getattr(os.environ, "_data", None)) if fast else (data is None)
    assert passwords_module.cpython_environ_bytes(dict(os.environ)) is None
    monkeypatch.delenv("TAILNET_TEST_PW", raising=False)
    write_private(tmp_path / "state" / "password", "from-file")
    source = PasswordSource("TAILNET_TEST_PW", SecretFile(tmp_path / "state", "password"))
    assert source.current() == Password("file", b"from-file")
    monkeypatch.setenv("TAILNET_TEST_PW", "caf\u00e9")
    assert source.current() == Password("env", "caf\u00e9".encode())
    assert source.verify("caf\u00e9")
    os.environ["TAILNET_TEST_PW"] = "second"
    assert source.verify("second")
    assert not source.verify("caf\u00e9")
    os.environ["TAILNET_TEST_PW"] = ""  # empty: the file again
    assert source.current() == Password("file", b"from-file")
    del os.environ["TAILNET_TEST_PW"]
    assert source.current() == Password("file", b"from-file")
    assert not source.from_env()


def test_the_same_bytes_from_the_other_source_keep_their_origin(tmp_path: Path) -> None:
    environ = {"TEST_PW": "same"}
    write_private(tmp_path / "state" / "password", "same")
    source = PasswordSource("TEST_PW", SecretFile(tmp_path / "state", "password"), environ)
    assert source.current() == Password("env", b"same")
    environ.clear()
    assert source.current() == Password("file", b"same")


LONGEST = "p" * MAX_PASSWORD_LENGTH

#: (password, a word of the refusal or None): one table for what may be set and what logs in.
PASSWORD_RULES = [
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="spaces"),
    pytest.param("a\x00", "NUL", id="nul"),
    pytest.param("a" * (MAX_PASSWORD_LENGTH + 1), "longer", id="too-long"),
    pytest.param("caf\udce9", "not valid text", id="lone-surrogate-from-a-bad-locale"),
    pytest.param(" padded ", None, id="surrounding-spaces-kept"),
    pytest.param("ünïcødé ✓", None, id="unicode"),
    pytest.param(LONGEST, None, id="longest-accepted"),
]


@pytest.mark.parametrize(("password", "problem"), PASSWORD_RULES)
def test_password_problem_table(password: str, problem: str | None) -> None:
    found = password_problem(password)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize(("password", "problem"), PASSWORD_RULES)
def test_a_login_refuses_what_cannot_be_set(password: str, problem: str | None) -> None:
    """The login and ``flask tailnet password`` follow the same rules: a password that could not
    be set never logs in, even where the variable holds exactly it."""
    source = PasswordSource(
        "TEST_PW", SecretFile(Path("/nonexistent"), "password"), {"TEST_PW": password}
    )
    assert source.verify(password) is (problem is None)
