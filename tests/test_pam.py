"""The PAM verifier against real PAM: a throwaway system user checked by pam_unix (``pam_user``).

PAM itself is never replaced, only observed (``pam_calls``) or, for the error paths, broken.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pam
import pytest

from flask_tailnet import accounts, pamauth, pamstack
from flask_tailnet.accounts import Account, PasswordState, password_account
from flask_tailnet.cli import tailnet
from flask_tailnet.faildelay import MAX_WAIT, FailureDelay, libpam_spread
from flask_tailnet.pamauth import MAX_INPUT, PamVerifier, pam_problem
from flask_tailnet.pamstack import read_stack

from .conftest import (
    TAILNET_PEER,
    PamUser,
    addresses_on_lo,
    make_app,
    pam_service_file,
    serving_example_app,
)
from .test_login import basic, session_cookie, submit

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
    verifier = PamVerifier(users=["root"])
    verifier.delay = FailureDelay(configured=0.0)  # the login service's 3 s are not the point
    assert verifier.verify(username, "password") is False


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


# ---- an account without a password (nullok) -----------------------------------------------


def test_the_nullok_stack_alone_accepts_any_password(passwordless_user: PamUser) -> None:
    """The weakness itself, against PAM directly: what the guard must not pass on."""
    handle = pam.pam()
    random_password = secrets.token_urlsafe(16)
    assert handle.authenticate(
        passwordless_user.username, random_password, service=passwordless_user.service
    )


@pytest.mark.parametrize(
    "password",
    [
        pytest.param(secrets.token_urlsafe(16), id="a random password"),
        pytest.param("x", id="one character"),
        pytest.param(" ", id="a space"),
        pytest.param("x" * MAX_INPUT, id="the longest password"),
    ],
)
def test_an_account_without_a_password_never_logs_in(
    passwordless_user: PamUser,
    pam_calls: list[PamCall],
    caplog: pytest.LogCaptureFixture,
    password: str,
) -> None:
    verifier = PamVerifier(passwordless_user.service, [passwordless_user.username])
    with caplog.at_level(logging.WARNING, "flask_tailnet"):
        assert verifier.verify(passwordless_user.username, password) is False
    assert pam_calls == [], "refused before PAM is asked"
    assert "the account has no password (an empty password field in /etc/shadow)" in caplog.text
    if len(password) > 1:
        assert password not in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda u: basic(u.username, secrets.token_urlsafe(16)), id="Basic"),
        pytest.param(lambda u: basic(u.username, "a"), id="Basic, one character"),
    ],
)
def test_a_peer_cannot_log_in_as_an_account_without_a_password(
    state_dir: Path, passwordless_user: PamUser, headers: Callable[[PamUser], dict[str, str]]
) -> None:
    app = make_app(
        state_dir, pam_service=passwordless_user.service, pam_users=[passwordless_user.username]
    )
    response = app.test_client().get(
        "/", headers=headers(passwordless_user), environ_base={"REMOTE_ADDR": TAILNET_PEER}
    )
    assert (response.status_code, (response.json or {}).get("method")) == (401, None)


#: An address of this file's own on lo (helper 102's range).
SERVER_V4 = "100.64.102.1"


@pytest.mark.root
def test_a_real_server_refuses_an_account_without_a_password(
    passwordless_user: PamUser, pam_user: PamUser, tmp_path: Path
) -> None:
    """``flask run`` on a tailnet address, Debian's nullok stack, a peer on that address."""
    env = {
        **os.environ,
        "FLASK_TAILNET_STATE_DIR": str(tmp_path / "state"),
        "FLASK_TAILNET_PAM_SERVICE": passwordless_user.service,
        "FLASK_TAILNET_PAM_USERS": f"{passwordless_user.username}, {pam_user.username}",
    }
    with (
        addresses_on_lo([f"{SERVER_V4}/32"]),
        serving_example_app(SERVER_V4, env, tmp_path / "server.log") as port,
    ):

        def whoami(user: str, password: str) -> tuple[int, str | None]:
            conn = http.client.HTTPConnection(
                SERVER_V4, port, timeout=30, source_address=(SERVER_V4, 0)
            )
            try:
                conn.request("GET", "/api/whoami", headers=basic(user, password))
                response = conn.getresponse()
                body = response.read()
            finally:
                conn.close()
            method = json.loads(body)["method"] if response.status == 200 else None
            return response.status, method

        assert whoami(passwordless_user.username, secrets.token_urlsafe(16)) == (401, None)
        assert whoami(pam_user.username, pam_user.password) == (200, "pam")


def test_the_login_form_refuses_an_account_without_a_password(
    state_dir: Path, passwordless_user: PamUser
) -> None:
    app = make_app(
        state_dir, pam_service=passwordless_user.service, pam_users=[passwordless_user.username]
    )
    client = app.test_client()
    response = submit(client, secrets.token_urlsafe(16), username=passwordless_user.username)
    assert response.status_code == 401
    assert session_cookie(client) is None


def test_a_user_with_a_password_still_logs_in_under_nullok(
    pam_user: PamUser, passwordless_user: PamUser, pam_calls: list[PamCall]
) -> None:
    verifier = PamVerifier(passwordless_user.service, [pam_user.username])
    assert verifier.verify(pam_user.username, pam_user.password) is True
    assert verifier.verify(pam_user.username, "wrong") is False
    assert len(pam_calls) == 2


# ---- how the account's password is found ---------------------------------------------------


def _unreadable_shadow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(accounts, "SHADOW", str(tmp_path / "no-shadow"))


def _no_helper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _unreadable_shadow(monkeypatch, tmp_path)
    monkeypatch.setattr(accounts, "UNIX_CHKPWD", (str(tmp_path / "no-helper"),))


def _another_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not root, and not the account's own user: unix_chkpwd would refuse to answer."""
    _unreadable_shadow(monkeypatch, tmp_path)
    monkeypatch.setattr(os, "getuid", lambda: 54321)


@pytest.mark.parametrize(
    ("situation", "empty", "with_password", "where"),
    [
        pytest.param(None, "EMPTY", "SET", "/etc/shadow", id="shadow readable"),
        pytest.param(_unreadable_shadow, "EMPTY", "SET", "unix_chkpwd", id="unix_chkpwd asked"),
        pytest.param(_no_helper, "UNKNOWN", "UNKNOWN", "absent", id="no shadow, no helper"),
        pytest.param(_another_user, "UNKNOWN", "UNKNOWN", "not readable", id="another user"),
    ],
)
def test_the_password_state_of_an_account(
    pam_user: PamUser,
    passwordless_user: PamUser,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    situation: Callable[[pytest.MonkeyPatch, Path], None] | None,
    empty: str,
    with_password: str,
    where: str,
) -> None:
    if situation is not None:
        situation(monkeypatch, tmp_path)
    found = password_account(passwordless_user.username)
    assert (found.state.name, where in found.where) == (empty, True)
    found = password_account(pam_user.username)
    assert (found.state.name, where in found.where) == (with_password, True)
    assert password_account(NOBODY).state is PasswordState.NO_ACCOUNT


def test_a_server_that_is_not_root_examines_its_own_account_only(
    pam_user: PamUser, passwordless_user: PamUser
) -> None:
    """As each test user (not root, no group shadow): its own account through unix_chkpwd, the
    other one not at all. The module runs from its source on stdin under the system Python, which
    every user may run (the test's own interpreter and checkout may be private to root)."""
    setpriv = shutil.which("setpriv") or pytest.skip("needs setpriv (util-linux)")
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else None
    if python is None:
        pytest.skip("needs /usr/bin/python3")
    names = [pam_user.username, passwordless_user.username]
    script = Path(accounts.__file__).read_text() + (
        f"\nfor name in {names!r}:\n    print(password_account(name).state.name)\n"
    )
    seen = {}
    for user in (pam_user, passwordless_user):
        entry = pwd.getpwnam(user.username)
        as_user = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
        done = subprocess.run(
            [setpriv, *as_user, python, "-"],
            input=script,
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
        )
        assert done.returncode == 0, done.stderr
        seen[user.username] = done.stdout.split()
    assert seen == {
        pam_user.username: ["SET", "UNKNOWN"],
        passwordless_user.username: ["UNKNOWN", "EMPTY"],
    }


@pytest.mark.parametrize(
    ("shadow", "state"),
    [
        pytest.param("{u}::19000:0:99999:7:::\n", "EMPTY", id="empty field"),
        pytest.param("{u}:$y$j9T$salt$hash:19000::::::\n", "SET", id="a hash"),
        pytest.param("{u}:!:19000::::::\n", "SET", id="locked: PAM refuses it"),
        pytest.param("{u}:*:19000::::::\n", "SET", id="no login: PAM refuses it"),
        pytest.param("{u}\n", "UNKNOWN", id="malformed line"),
        pytest.param("{u}x::1::::::\n{u}:$6$h:1::::::\n", "SET", id="a longer name is not it"),
        pytest.param("{u}::1::::::\n{u}:$6$h:1::::::\n", "EMPTY", id="the first line counts"),
        pytest.param("#{u}::1::::::\n{u}:$6$h:1::::::\n", "SET", id="not a comment syntax"),
        pytest.param(" {u}::1::::::\n{u}:$6$h:1::::::\n", "EMPTY", id="leading space skipped"),
        pytest.param("\t{u}::1::::::\n{u}:$6$h:1::::::\n", "EMPTY", id="leading tab skipped"),
    ],
)
def test_the_shadow_line_is_read_as_nss_files_reads_it(
    pam_user: PamUser, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shadow: str, state: str
) -> None:
    path = tmp_path / "shadow"
    path.write_text(shadow.format(u=pam_user.username))
    monkeypatch.setattr(accounts, "SHADOW", str(path))
    monkeypatch.setattr(accounts, "UNIX_CHKPWD", ())
    assert password_account(pam_user.username).state.name == state


def test_an_empty_password_field_in_passwd_itself_is_refused(
    pam_user: PamUser, monkeypatch: pytest.MonkeyPatch, pam_calls: list[PamCall]
) -> None:
    real = pwd.getpwnam

    def getpwnam(name: str) -> Any:
        entry = list(real(name))
        entry[1] = ""
        return pwd.struct_passwd(entry)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    verifier = verifier_for(pam_user)
    assert verifier.verify(pam_user.username, pam_user.password) is False
    assert pam_calls == []


@pytest.mark.parametrize(
    ("user", "service", "asks_pam"),
    [
        pytest.param("passwordless_user", "passwordless_user", False, id="nullok stack: refused"),
        pytest.param("pam_user", "passwordless_user", False, id="nullok stack, has a password"),
        pytest.param("pam_user", "pam_user", True, id="stack without nullok: PAM decides"),
    ],
)
def test_an_account_this_process_cannot_examine(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    pam_calls: list[PamCall],
    user: str,
    service: str,
    asks_pam: bool,
) -> None:
    """Fail closed: refused while the stack may let an empty password through."""
    account: PamUser = request.getfixturevalue(user)
    stack: PamUser = request.getfixturevalue(service)
    _no_helper(monkeypatch, tmp_path)
    verifier = PamVerifier(stack.service, [account.username])
    assert verifier.verify(account.username, account.password or "x") is asks_pam
    assert len(pam_calls) == int(asks_pam)


# ---- the PAM stack -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "nullok", "unreadable", "delay"),
    [
        pytest.param({"svc": "auth required pam_unix.so"}, [], [], 2.0, id="plain pam_unix"),
        pytest.param(
            {"svc": "auth required pam_unix.so nodelay"}, [], [], 0.0, id="nodelay: no delay"
        ),
        pytest.param(
            {"svc": "auth [success=1 default=ignore] pam_unix.so nullok\n"},
            ["svc:1"],
            [],
            2.0,
            id="bracketed control, nullok",
        ),
        pytest.param(
            {"svc": "# c\n@include common\n", "common": "\n\nauth sufficient pam_unix.so nullok"},
            ["common:3"],
            [],
            2.0,
            id="nullok in an @include",
        ),
        pytest.param(
            {"svc": "auth include common", "common": "auth required pam_unix.so nullok_secure"},
            ["common:1"],
            [],
            2.0,
            id="nullok_secure through include",
        ),
        pytest.param(
            {"svc": "-auth substack common", "common": "auth required pam_tcb.so nullok"},
            ["common:1"],
            [],
            0.0,
            id="any module's nullok, through a substack",
        ),
        pytest.param(
            {"svc": "auth required \\\n  pam_unix.so \\\n  nullok nodelay"},
            ["svc:1"],
            [],
            0.0,
            id="continued line",
        ),
        pytest.param(
            {"svc": "auth required pam_unix.so # nullok\npassword required pam_unix.so nullok"},
            [],
            [],
            2.0,
            id="nullok in a comment or on a password line",
        ),
        pytest.param(
            {"svc": "AUTH required pam_unix.so nodelay nullok"}, ["svc:1"], [], 0.0, id="AUTH"
        ),
        pytest.param({"svc": "@include missing"}, [], ["missing"], 0.0, id="missing include"),
        pytest.param({"svc": "@include svc"}, [], ["svc"], 0.0, id="include loop"),
        pytest.param(
            {"svc": "auth include ../etc/passwd"}, [], ["../etc/passwd"], 0.0, id="include path"
        ),
        pytest.param(
            {"svc": "auth optional pam_faildelay.so delay=3000000\nauth required pam_unix.so"},
            [],
            [],
            3.0,
            id="pam_faildelay",
        ),
        pytest.param(
            {"svc": "auth optional pam_faildelay.so\nauth required pam_unix.so nodelay"},
            [],
            [],
            4.0,
            id="pam_faildelay reads login.defs",
        ),
        pytest.param(
            {"svc": "auth optional pam_faildelay.so delay=soon\nauth required pam_unix.so nodelay"},
            [],
            [],
            0.0,
            id="pam_faildelay with a delay that is no number",
        ),
        pytest.param(
            {"svc": "@include\nauth required pam_unix.so nodelay nullok"},
            ["svc:2"],
            [],
            0.0,
            id="@include without a name",
        ),
        pytest.param({"svc": None}, [], ["svc"], 0.0, id="the service file cannot be read"),
        pytest.param(
            {"svc": "@include {tmp}/abs", "abs": "auth required pam_unix.so nodelay nullok"},
            ["abs:1"],
            [],
            0.0,
            id="absolute include",
        ),
    ],
)
def test_the_stack_report(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str | None],
    nullok: list[str],
    unreadable: list[str],
    delay: float,
) -> None:
    for name, text in files.items():
        if text is None:
            (tmp_path / name).mkdir()  # there, but open() fails
        else:
            (tmp_path / name).write_text(text.format(tmp=tmp_path))
    (tmp_path / "login.defs").write_text("#FAIL_DELAY 9\nFAIL_DELAY 4\n")
    monkeypatch.setattr(pamstack, "LOGIN_DEFS", str(tmp_path / "login.defs"))
    report = read_stack("svc", (str(tmp_path),))
    assert [where.removeprefix(f"{tmp_path}/") for where in report.nullok] == nullok
    if unreadable == ["svc"]:
        assert report.unreadable, "an include loop ends, unread"
    else:
        assert [u.removeprefix(f"{tmp_path}/") for u in report.unreadable] == unreadable
    assert report.fail_delay == delay
    assert report.may_pass_empty is bool(nullok or unreadable)
    assert ("cannot be read in full" in report.describe()) is bool(unreadable)


def test_without_login_defs_pam_faildelay_adds_no_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "svc").write_text(
        "auth optional pam_faildelay.so\nauth required pam_unix.so nodelay"
    )
    monkeypatch.setattr(pamstack, "LOGIN_DEFS", str(tmp_path / "missing"))
    assert read_stack("svc", (str(tmp_path),)).fail_delay == 0.0


def _helper(code: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """A stand-in for unix_chkpwd where the real one cannot be made to answer so."""

    def install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        _unreadable_shadow(monkeypatch, tmp_path)
        helper = tmp_path / "unix_chkpwd"
        helper.write_text(f"#!/bin/sh\n{code}\n")
        helper.chmod(0o755)
        monkeypatch.setattr(accounts, "UNIX_CHKPWD", (str(helper),))
        monkeypatch.setattr(accounts, "_HELPER_TIMEOUT", 0.5)

    return install


@pytest.mark.parametrize(
    ("situation", "where"),
    [
        pytest.param(_helper("exit 9"), "answered 9", id="helper: authinfo unavailable"),
        pytest.param(_helper("exit 1"), "answered 1", id="helper: another error"),
        pytest.param(_helper("sleep 5"), "unix_chkpwd failed", id="helper hangs"),
        pytest.param(_helper("kill -9 $$"), "answered -9", id="helper killed"),
    ],
)
def test_a_helper_that_answers_otherwise_tells_nothing(
    pam_user: PamUser,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    situation: Callable[[pytest.MonkeyPatch, Path], None],
    where: str,
) -> None:
    situation(monkeypatch, tmp_path)
    found = password_account(pam_user.username)
    assert found.state is PasswordState.UNKNOWN
    assert where in found.where


def test_a_hash_in_the_user_database_itself_is_a_password(
    pam_user: PamUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pwd.getpwnam

    def getpwnam(name: str) -> Any:
        entry = list(real(name))
        entry[1] = "$y$j9T$salt$hash"
        return pwd.struct_passwd(entry)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    assert password_account(pam_user.username) == Account(PasswordState.SET, "the user database")


def test_a_shadow_file_without_the_user_asks_the_helper(
    passwordless_user: PamUser, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "shadow").write_text("someone::1::::::\n")
    monkeypatch.setattr(accounts, "SHADOW", str(tmp_path / "shadow"))
    found = password_account(passwordless_user.username)
    assert (found.state, found.where) == (PasswordState.EMPTY, "unix_chkpwd's empty-password test")


# ---- a refusal lasts as long as a PAM failure (the timing of names) ------------------------

#: pam_faildelay with a short delay, so that the test is quick yet PAM's failures are slow.
PAM_DELAY_SERVICE = """\
# flask-tailnet tests; removed afterwards
auth     optional pam_faildelay.so delay=700000
auth     [success=1 default=ignore] pam_unix.so nullok nodelay
auth     requisite pam_deny.so
auth     required pam_permit.so
account  required pam_unix.so
"""


def _timed(client: Any, username: str, password: str) -> float:
    started = time.monotonic()
    response = client.get(
        "/", headers=basic(username, password), environ_base={"REMOTE_ADDR": TAILNET_PEER}
    )
    assert response.status_code == 401
    return time.monotonic() - started


def test_a_refused_name_takes_as_long_as_a_pam_failure(
    state_dir: Path, pam_user: PamUser, passwordless_user: PamUser
) -> None:
    """Timing measured in this run: a listed user's PAM failure is the baseline; an unlisted
    name, an account without a password, and an empty name take about as long."""
    with pam_service_file(f"{pam_user.service}-delay", PAM_DELAY_SERVICE) as service:
        app = make_app(
            state_dir,
            pam_service=service,
            pam_users=[pam_user.username, passwordless_user.username],
            login_limits="1000/minute",
        )
        client = app.test_client()
        times: dict[str, list[float]] = {"unlisted": [], "no password": [], "": [], "listed": []}
        for _ in range(4):  # the refusals first: before any PAM failure was measured, too
            times["unlisted"].append(_timed(client, "tailnetnotlisted", "wrong"))
            times["no password"].append(_timed(client, passwordless_user.username, "wrong"))
            times[""].append(_timed(client, "", "wrong"))
            times["listed"].append(_timed(client, pam_user.username, "wrong"))
    baseline = statistics.median(times["listed"])
    assert baseline > 0.3, f"PAM's failure delay did not apply: {times}"
    for name, measured in times.items():
        assert statistics.median(measured) > 0.5 * baseline, (name, times)
        assert max(measured) < 2 * max(times["listed"]) + 0.5, (name, times)


def test_the_refusal_delay_draws_from_measured_failures() -> None:
    delay = FailureDelay(configured=100.0)
    assert 0.5 * MAX_WAIT <= delay.duration() <= 1.5 * MAX_WAIT, "configured, capped, spread"
    delay.record(0.25)
    delay.record(0.5)
    assert {delay.duration() for _ in range(64)} == {0.25, 0.5}
    delay.record(1e9)
    assert max(delay.duration() for _ in range(256)) == MAX_WAIT


def test_pam_failure_delay_spread_is_libpams() -> None:
    draws = [libpam_spread() for _ in range(2000)]
    assert min(draws) >= 0.5
    assert max(draws) < 1.5
    assert 0.95 < statistics.mean(draws) < 1.05


# ---- flask tailnet status ------------------------------------------------------------------


def test_status_says_pam_would_accept_any_password(
    state_dir: Path, pam_user: PamUser, passwordless_user: PamUser
) -> None:
    app = make_app(
        state_dir,
        pam_service=passwordless_user.service,
        pam_users=[pam_user.username, passwordless_user.username],
    )
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 1
    out = result.stdout
    stack = f"/etc/pam.d/{passwordless_user.service}:2"
    assert (
        f"PAM stack:        service {passwordless_user.service!r} lets accounts without a "
        f"password through (nullok in {stack})\n"
        "                  the guard refuses accounts without a password itself\n"
    ) in out
    assert f"  {pam_user.username}: has a password (/etc/shadow)" in out
    assert (
        f"  {passwordless_user.username}: UNSAFE: the account has no password (an empty password "
        f"field in /etc/shadow); PAM would accept any password, the guard refuses it: set one "
        f"(passwd {passwordless_user.username}) or remove the user from TAILNET_PAM_USERS"
    ) in out
    assert "UNSAFE" in result.stderr


def test_status_of_a_stack_without_nullok_is_safe(
    state_dir: Path, pam_user: PamUser, passwordless_user: PamUser
) -> None:
    app = make_app(
        state_dir,
        pam_service=pam_user.service,
        pam_users=[pam_user.username, passwordless_user.username],
    )
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 0, result.output
    assert (
        f"PAM stack:        service {pam_user.service!r} refuses accounts without a password "
        "(no nullok)\n"
    ) in result.stdout
    assert f"  {passwordless_user.username}: refused: the account has no password" in result.stdout


def test_status_says_which_accounts_it_cannot_examine(
    state_dir: Path,
    pam_user: PamUser,
    passwordless_user: PamUser,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _no_helper(monkeypatch, tmp_path)
    app = make_app(state_dir, pam_service=passwordless_user.service, pam_users=[pam_user.username])
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 0, result.output
    assert (
        f"  {pam_user.username}: refused: its password cannot be examined ({tmp_path}/no-shadow "
        f"is not readable and unix_chkpwd is absent), and PAM service {passwordless_user.service!r}"
        " lets accounts without a password through"
    ) in result.stdout
