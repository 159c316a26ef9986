"""Whether a system account has a password, found the way ``pam_unix`` finds it.

A PAM stack with ``nullok`` (Debian's ``common-auth``) accepts any password for an account whose
password field is empty, without comparing anything. The guard asks this module first and
refuses such an account itself, so that a remote login never succeeds for it.

The account's password field is read from the user database (``/etc/passwd`` through NSS); when it
says the hash is shadowed (``x``), from ``/etc/shadow`` when this process can read it (root, or
group ``shadow``); otherwise, for the user this process runs as (or any user when run as root),
with ``unix_chkpwd``'s own empty-password test, the one ``pam_unix`` runs. When none of these
answers, the state is :attr:`PasswordState.UNKNOWN` and the caller decides (it refuses the login
when the PAM stack may let an empty password through).
"""

from __future__ import annotations

import enum
import os
import pwd
import subprocess
from dataclasses import dataclass

#: The shadow file ``pam_unix`` reads through NSS's ``files`` source.
SHADOW = "/etc/shadow"
#: Where ``pam_unix``'s helper may be, in order. Absolute paths only: never a ``PATH`` lookup.
UNIX_CHKPWD = ("/usr/sbin/unix_chkpwd", "/sbin/unix_chkpwd")

#: What glibc's ``isspace`` calls a blank: ``nss_files`` skips these at the start of a line, so
#: `` alice::...`` is ``alice``'s entry (``getent shadow alice`` shows it).
_C_SPACE = " \t\n\v\f\r"
_PAM_SUCCESS = 0
_PAM_AUTH_ERR = 7
_HELPER_TIMEOUT = 10.0


class PasswordState(enum.Enum):
    SET = "has a password"  # a non-empty hash (a locked one too: PAM refuses that itself)
    EMPTY = "has no password"
    NO_ACCOUNT = "has no account"  # PAM refuses it (user unknown)
    UNKNOWN = "cannot be checked by this process"


@dataclass(frozen=True, slots=True)
class Account:
    """What was found about one account's password, and where (for logs and ``status``)."""

    state: PasswordState
    where: str


def password_account(user: str) -> Account:
    """How ``user``'s password stands. Never raises; an answer that cannot be trusted (a
    malformed shadow line, a helper that fails in another way) is :attr:`PasswordState.UNKNOWN`."""
    try:
        entry = pwd.getpwnam(user)
    except (KeyError, ValueError, OSError):
        return Account(PasswordState.NO_ACCOUNT, "the user database")
    field = entry.pw_passwd
    if field == "":
        return Account(PasswordState.EMPTY, "an empty password field in the user database")
    if field != "x" and field != "##" + user:  # pam_unix's test for a shadowed password
        return Account(PasswordState.SET, "the user database")
    shadowed = _shadow_hash(user)
    if shadowed is not None:
        return shadowed
    return _helper_test(user, entry.pw_uid)


def _shadow_hash(user: str) -> Account | None:
    """From :data:`SHADOW`, the first line for ``user`` (as NSS's ``files`` source takes it,
    after the blanks it skips at the start of a line); ``None`` when the file cannot be read or
    has no line for ``user``."""
    try:
        with open(SHADOW, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                fields = line.lstrip(_C_SPACE).rstrip("\n").split(":")
                if fields[0] != user:
                    continue
                if len(fields) < 2:
                    return Account(PasswordState.UNKNOWN, f"a malformed line in {SHADOW}")
                if fields[1] == "":
                    return Account(PasswordState.EMPTY, f"an empty password field in {SHADOW}")
                return Account(PasswordState.SET, SHADOW)
    except OSError:
        return None
    return None


def _helper_test(user: str, uid: int) -> Account:
    """``unix_chkpwd USER nullok`` with an empty password, which succeeds exactly when the
    password field is empty. The helper checks only the caller's own account unless the caller
    is root (it fails for any other), so it is asked only then."""
    if os.getuid() not in (0, uid):
        return Account(PasswordState.UNKNOWN, f"{SHADOW} is not readable by this process")
    helper = next((path for path in UNIX_CHKPWD if os.access(path, os.X_OK)), None)
    if helper is None:
        return Account(PasswordState.UNKNOWN, f"{SHADOW} is not readable and unix_chkpwd is absent")
    try:
        done = subprocess.run(  # noqa: S603 - a fixed absolute path; argv, no shell
            [helper, user, "nullok"],
            input=b"",
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            env={},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return Account(PasswordState.UNKNOWN, f"{SHADOW} is not readable and unix_chkpwd failed")
    if done.returncode == _PAM_SUCCESS:
        return Account(PasswordState.EMPTY, "unix_chkpwd's empty-password test")
    if done.returncode == _PAM_AUTH_ERR:
        return Account(PasswordState.SET, "unix_chkpwd's empty-password test")
    return Account(
        PasswordState.UNKNOWN, f"unix_chkpwd's empty-password test answered {done.returncode}"
    )
