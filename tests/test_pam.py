"""The PAM verifier against real PAM: a throwaway system user checked by pam_unix (``pam_user``).

PAM itself is never replaced, only observed (``pam_calls``) or, for the error paths, broken.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pam
import pytest

from flask_tailnet import pamauth
from flask_tailnet.pamauth import MAX_INPUT, PamVerifier, pam_problem

from .conftest import PamUser

#: Allowed, but no such account exists.
NOBODY = "tailnetnobody"


def verifier_for(user: PamUser) -> PamVerifier:
    return PamVerifier(user.service, [user.username, NOBODY])


class PamCall:
    """What one real python-pam handle was asked (never the password)."""

    def __init__(self, handle: Any, username: bytes, service: str, resetcreds: bool) -> None:
        self.handle = handle
        self.username = username
        self.service = service
        self.resetcreds = resetcreds


@pytest.fixture
def pam_calls(monkeypatch: pytest.MonkeyPatch) -> list[PamCall]:
    """Record every ``pam.pam().authenticate`` call; the real PAM still answers."""
    calls: list[PamCall] = []
    real = pam.pam

    class Recording(real):  # type: ignore[misc, valid-type]
        def authenticate(
            self, username: bytes, password: bytes, service: str, **kwargs: Any
        ) -> bool:
            calls.append(PamCall(self, username, service, kwargs["resetcreds"]))
            result: bool = super().authenticate(username, password, service, **kwargs)
            return result

    monkeypatch.setattr(pam, "pam", Recording)
    return calls


# ---- what PAM decides ---------------------------------------------------------------------


def test_the_right_password_is_accepted(pam_user: PamUser, pam_calls: list[PamCall]) -> None:
    assert verifier_for(pam_user).verify(pam_user.username, pam_user.password) is True
    assert len(pam_calls) == 1


@pytest.mark.parametrize(
    "attempt",
    [
        pytest.param(lambda u: (u.username, "wrong"), id="wrong password"),
        pytest.param(lambda u: (u.username, u.password[:-1]), id="password missing its last char"),
        pytest.param(lambda u: (u.username, u.password + "x"), id="password with a char added"),
        pytest.param(lambda u: (u.username, u.password.swapcase()), id="password case swapped"),
        pytest.param(lambda u: (u.username, f" {u.password}"), id="password with a leading space"),
        pytest.param(lambda u: (NOBODY, u.password), id="allowed user without an account"),
    ],
)
def test_pam_refuses(
    pam_user: PamUser,
    pam_calls: list[PamCall],
    caplog: pytest.LogCaptureFixture,
    attempt: Callable[[PamUser], tuple[str, str]],
) -> None:
    username, password = attempt(pam_user)
    with caplog.at_level(logging.WARNING, "flask_tailnet"):
        assert verifier_for(pam_user).verify(username, password) is False
    assert len(pam_calls) == 1, "refused by PAM, not before it"
    assert "code " in caplog.text


def test_each_check_has_a_fresh_handle_and_resets_no_credentials(
    pam_user: PamUser, pam_calls: list[PamCall]
) -> None:
    verifier = verifier_for(pam_user)
    assert verifier.verify(pam_user.username, pam_user.password) is True
    assert verifier.verify(pam_user.username, "wrong") is False
    assert verifier.verify(pam_user.username, pam_user.password) is True
    assert len({id(call.handle) for call in pam_calls}) == 3
    assert all(call.resetcreds is False for call in pam_calls)
    assert all(call.service == pam_user.service for call in pam_calls)
    assert all(call.username == pam_user.username.encode() for call in pam_calls)


def test_checks_in_parallel_threads_do_not_mix(pam_user: PamUser) -> None:
    verifier = verifier_for(pam_user)
    attempts = [(pam_user.password, True), ("wrong", False)] * 16
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda a: verifier.verify(pam_user.username, a[0]), attempts))
    assert results == [expected for _, expected in attempts]


# ---- what is refused before PAM is asked --------------------------------------------------


@pytest.mark.parametrize(
    "attempt",
    [
        pytest.param(lambda u: (u.username, u.password), id="right password, user not allowed"),
        pytest.param(lambda u: (u.username.upper(), u.password), id="username in upper case"),
        pytest.param(lambda u: (f" {u.username}", u.password), id="username with a leading space"),
        pytest.param(lambda u: (f"{u.username}\n", u.password), id="username with a newline"),
        pytest.param(lambda u: (f"{u.username}\0", u.password), id="NUL after the username"),
        pytest.param(lambda u: ("", u.password), id="empty username"),
        pytest.param(lambda u: ("root", u.password), id="root, not allowed"),
    ],
)
def test_a_user_not_allowed_is_refused_without_asking_pam(
    pam_user: PamUser,
    pam_calls: list[PamCall],
    caplog: pytest.LogCaptureFixture,
    attempt: Callable[[PamUser], tuple[str, str]],
) -> None:
    username, password = attempt(pam_user)
    verifier = PamVerifier(pam_user.service, [NOBODY])
    with caplog.at_level(logging.WARNING, "flask_tailnet"):
        assert verifier.verify(username, password) is False
    assert pam_calls == []
    assert pam_user.password not in caplog.text
    if username:
        assert username not in caplog.text, "a password typed as a username must not be logged"


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("", id="empty password"),
        pytest.param("pass\0word", id="NUL inside the password"),
        pytest.param("\0", id="NUL alone"),
        pytest.param("pass\udcffword", id="lone surrogate (undecodable byte)"),
        pytest.param("\ud800", id="lone high surrogate alone"),
        pytest.param("x" * 10_000, id="10 kB password"),
        pytest.param("x" * (MAX_INPUT + 1), id="one byte over the cap"),
        pytest.param("é" * (MAX_INPUT // 2 + 1), id="under the cap in chars, over it in bytes"),
        pytest.param(None, id="None instead of a password"),
        pytest.param(b"bytes", id="bytes instead of a password"),
    ],
)
def test_unusable_passwords_are_refused_without_asking_pam(
    pam_user: PamUser, pam_calls: list[PamCall], password: Any
) -> None:
    assert verifier_for(pam_user).verify(pam_user.username, password) is False
    assert pam_calls == []


@pytest.mark.parametrize("username", [None, b"root", 0, ["root"]], ids=repr)
def test_a_username_of_another_type_is_refused(username: Any) -> None:
    assert PamVerifier(users=["root"]).verify(username, "password") is False


def test_the_cap_itself_still_reaches_pam(pam_user: PamUser, pam_calls: list[PamCall]) -> None:
    assert verifier_for(pam_user).verify(pam_user.username, "x" * MAX_INPUT) is False
    assert len(pam_calls) == 1


# ---- python-pam or libpam broken ----------------------------------------------------------


class _BrokenHandle:
    code = 0
    reason = None

    def authenticate(self, *args: Any, **kwargs: Any) -> bool:
        raise ValueError("none of username, password, or service may contain NUL")


def _no_libpam() -> Any:
    raise AttributeError("/usr/bin/python3: undefined symbol: pam_start")


def _no_python_pam(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pam", None)


@pytest.mark.parametrize(
    "break_pam",
    [
        pytest.param(lambda mp: mp.setattr(pam, "pam", _no_libpam), id="libpam missing"),
        pytest.param(lambda mp: mp.setattr(pam, "pam", _BrokenHandle), id="authenticate raises"),
        pytest.param(_no_python_pam, id="python-pam missing"),
    ],
)
def test_an_exception_from_python_pam_is_a_logged_refusal(
    pam_user: PamUser,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    break_pam: Callable[[pytest.MonkeyPatch], None],
) -> None:
    break_pam(monkeypatch)
    with caplog.at_level(logging.ERROR, "flask_tailnet"):
        assert verifier_for(pam_user).verify(pam_user.username, pam_user.password) is False
    assert pam_user.username in caplog.text
    assert pam_user.password not in caplog.text


# ---- logs ---------------------------------------------------------------------------------


def test_a_failed_attempt_logs_user_code_and_reason_never_the_password(
    pam_user: PamUser, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = f"{pam_user.password}-wrong"
    verifier = verifier_for(pam_user)
    with caplog.at_level(logging.DEBUG):
        assert verifier.verify(pam_user.username, wrong) is False
        assert verifier.verify(NOBODY, wrong) is False
        assert verifier.verify(pam_user.username, f"{wrong}\0") is False
        assert verifier.verify("not-allowed", wrong) is False
        assert verifier.verify(pam_user.username, pam_user.password) is True
    refused = [r.getMessage() for r in caplog.records if r.name == "flask_tailnet"]
    assert f"{pam_user.username!r}" in refused[0]
    assert f"code {pam.PAM_AUTH_ERR}, Authentication failure" in refused[0]
    assert f"code {pam.PAM_USER_UNKNOWN}, User not known" in refused[1]
    assert len(refused) == 4, "a success logs nothing"
    for record in caplog.records:
        for secret in (wrong, pam_user.password):
            assert secret not in record.getMessage()
            assert secret not in repr(record.args)


# ---- construction -------------------------------------------------------------------------


def test_the_default_is_the_login_service_and_the_server_user() -> None:
    verifier = PamVerifier()
    assert verifier.service == "login"
    assert verifier.users == frozenset({pwd.getpwuid(os.geteuid()).pw_name})


def test_a_server_uid_without_a_name_allows_nobody(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def getpwuid(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    with caplog.at_level(logging.WARNING, "flask_tailnet"):
        verifier = PamVerifier()
    assert verifier.users == frozenset()
    assert "TAILNET_PAM_USERS" in caplog.text


def test_users_are_compared_exactly(pam_user: PamUser) -> None:
    assert PamVerifier(pam_user.service, ("Alice", "alice")).users == {"Alice", "alice"}


@pytest.mark.parametrize(
    ("users", "error"),
    [
        pytest.param("root", TypeError, id="one string, not a list"),
        pytest.param([""], ValueError, id="empty name"),
        pytest.param(["ro ot"], ValueError, id="name with a space"),
        pytest.param(["root\n"], ValueError, id="name with a newline"),
        pytest.param(["root\0"], ValueError, id="name with a NUL"),
        pytest.param(["\udcff"], ValueError, id="lone surrogate"),
        pytest.param([None], ValueError, id="not a string"),
    ],
)
def test_bad_users_are_refused_at_construction(users: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        PamVerifier("login", users)


@pytest.mark.parametrize("service", ["", "../etc/passwd", "a/b", "..", ".hidden", "a b", "x\0"])
def test_a_service_that_is_not_a_plain_file_name_is_refused(service: str) -> None:
    with pytest.raises(ValueError, match="not a plain file name"):
        PamVerifier(service)
    problem = pam_problem(service)
    assert problem is not None
    assert "not a plain file name" in problem


# ---- pam_problem --------------------------------------------------------------------------


def test_pam_is_usable_for_the_test_service(pam_user: PamUser) -> None:
    assert pam_problem(pam_user.service) is None
    assert pam_problem(pam_user.service.upper()) is None, "libpam lowercases service names"


def test_a_missing_service_is_named(pam_user: PamUser) -> None:
    problem = pam_problem(f"{pam_user.service}-missing")
    assert problem is not None
    assert f"/etc/pam.d/{pam_user.service}-missing" in problem


def test_pam_problem_names_a_missing_python_pam(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_python_pam(monkeypatch)
    problem = pam_problem("login")
    assert problem is not None
    assert "python-pam" in problem


def test_pam_problem_names_a_missing_libpam(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pam, "pam", _no_libpam)
    problem = pam_problem("login")
    assert problem is not None
    assert "libpam" in problem


@pytest.mark.parametrize(
    ("pam_conf", "problem"),
    [
        pytest.param("other auth required pam_deny.so\nmine auth required pam_unix.so\n", None),
        pytest.param("MINE auth required pam_unix.so\n", None, id="service field in capitals"),
        pytest.param("#mine auth required pam_unix.so\n", "no PAM service 'mine'", id="comment"),
        pytest.param("other auth required pam_deny.so\n", "no PAM service 'mine'", id="absent"),
        pytest.param(None, "cannot be read", id="no pam.conf"),
    ],
)
def test_without_pam_d_the_service_must_be_in_pam_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pam_conf: str | None, problem: str | None
) -> None:
    conf = tmp_path / "pam.conf"
    if pam_conf is not None:
        conf.write_text(pam_conf)
    monkeypatch.setattr(pamauth, "PAM_DIRS", (str(tmp_path / "pam.d"),))
    monkeypatch.setattr(pamauth, "PAM_CONF", str(conf))
    found = pam_problem("mine")
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_the_vendor_directory_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr" / "mine").write_text("auth required pam_unix.so\n")
    monkeypatch.setattr(pamauth, "PAM_DIRS", (str(tmp_path / "etc"), str(tmp_path / "usr")))
    assert pam_problem("mine") is None
    assert pam_problem("other-one") is not None
