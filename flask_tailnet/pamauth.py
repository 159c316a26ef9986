"""PAM: a username and the system password, checked by the host's own PAM stack.

Only the users the verifier was built with may log in, and only with an account that has a
password: PAM is never asked about anyone else, nor about an account without a password (which
a ``nullok`` stack would let in with any password; see :mod:`flask_tailnet.accounts`). Such a
refusal lasts as long as a PAM failure (:mod:`flask_tailnet.faildelay`), so its timing does not
tell who may log in. Each check opens a fresh python-pam handle and leaves credentials alone
(``resetcreds=False``). Failures are logged with PAM's code and reason, never with the password.
"""

from __future__ import annotations

import importlib
import logging
import os
import pwd
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .accounts import Account, PasswordState, password_account
from .faildelay import FailureDelay
from .pamstack import StackReport, read_stack
from .settings import DEFAULTS, PAM_SERVICE

log = logging.getLogger("flask_tailnet")

#: Usernames and passwords longer than this many bytes of UTF-8 are refused before PAM sees them.
MAX_INPUT = 1024
#: Where Linux-PAM looks for a service file, in order, when the first directory exists.
PAM_DIRS = ("/etc/pam.d", "/usr/lib/pam.d")
#: The one file Linux-PAM reads instead when there is no ``/etc/pam.d`` directory.
PAM_CONF = "/etc/pam.conf"

_SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")


def pam_problem(service: str) -> str | None:
    """Why PAM cannot check passwords for ``service``, or ``None`` when it can: python-pam imports,
    libpam loads, and the service has its own configuration.

    Refused: a service name that is not a plain file name (empty, ``/``, ``..``, a leading dot,
    anything but letters, digits and ``_.+-``), and a service without its own file, for which PAM
    would silently use its ``other`` service instead.
    """
    problem = _service_name_problem(service)
    if problem is not None:
        return problem
    try:
        pam = importlib.import_module("pam")
    except ImportError:
        return "python-pam is not installed; run: pip install python-pam"
    try:
        pam.pam()
    except Exception as exc:  # whatever ctypes raises when libpam is missing or incomplete
        return f"libpam cannot be loaded ({exc}); install libpam0g (Debian) or pam (Fedora)"
    return _config_problem(service.lower())  # libpam lowercases service names too


def _service_name_problem(service: object) -> str | None:
    if isinstance(service, str) and _SERVICE_NAME.fullmatch(service) and ".." not in service:
        return None
    return f"PAM service name {service!r} is not a plain file name"


def _config_problem(name: str) -> str | None:
    if os.path.isdir(PAM_DIRS[0]):
        if any(os.path.isfile(os.path.join(d, name)) for d in PAM_DIRS):
            return None
        return (
            f"no PAM service file {os.path.join(PAM_DIRS[0], name)} "
            "(PAM would fall back to its 'other' service)"
        )
    try:
        with open(PAM_CONF, encoding="utf-8", errors="replace") as handle:
            if any(line.split(None, 1)[:1] == [name] for line in map(str.lower, handle)):
                return None
    except OSError as exc:
        return f"no {PAM_DIRS[0]} directory and {PAM_CONF} cannot be read ({exc.strerror})"
    return f"no PAM service {name!r} in {PAM_CONF}"


class PamVerifier:
    """Checks a username and password with the PAM service ``service``.

    ``users`` are the only usernames that may log in, compared exactly, case included, as Unix
    does. The default is the user the server runs as: without root, ``pam_unix`` can check no
    other user's password. A server uid without a name leaves the set empty, refusing everyone.
    Build one only once :func:`pam_problem` returned ``None`` for the service.

    Raises ``ValueError`` for a service name that is not a plain file name or a username that is
    empty or holds whitespace or unprintable characters, and ``TypeError`` when ``users`` is a
    single string.
    """

    def __init__(
        self, service: str = DEFAULTS[PAM_SERVICE], users: Iterable[str] | None = None
    ) -> None:
        problem = _service_name_problem(service)
        if problem is not None:
            raise ValueError(problem)
        if isinstance(users, str):
            raise TypeError(f"PAM users must be a list of names, not the string {users!r}")
        if users is None:
            users = _server_user()
        names = frozenset(users)
        for name in names:
            if not isinstance(name, str) or name.split() != [name] or not name.isprintable():
                raise ValueError(f"PAM user {name!r} is not a user name")
        self.service = service
        self.users = names
        self.delay = FailureDelay(self.stack().fail_delay)

    def stack(self) -> StackReport:
        """What the service's ``auth`` stack says now (read from its files on each call)."""
        return read_stack(self.service, PAM_DIRS)

    def verify(self, username: str, password: str) -> bool:
        """True only when PAM accepts ``password`` for ``username`` (authentication, then the
        account checks). Never raises.

        Refused without asking PAM, after waiting as long as a PAM failure takes: a username not
        in :attr:`users`; an account without a password (an empty password field), whatever the
        PAM stack would say; an account whose password this process cannot examine, while the
        stack may let an empty password through (``nullok``, or a file of it unreadable); an
        empty password; either value not a string, holding a NUL or a lone surrogate, or longer
        than :data:`MAX_INPUT` bytes. Refused by PAM: every failure, logged with the username and
        PAM's code and reason. Any exception from python-pam is logged and refused.
        """
        started = time.monotonic()
        try:
            if self._ask_pam(username, password):
                return self._pam(username, password, started)
        except Exception as exc:  # python-pam's, or an unforeseen one: a refusal all the same
            log.error(
                "flask-tailnet: PAM check for %r (service %r) failed: %s: %s",
                username,
                self.service,
                type(exc).__name__,
                exc,
            )
        self.delay.wait(started)
        return False

    def _ask_pam(self, username: object, password: object) -> bool:
        """Whether PAM may be asked; a refusal is logged here."""
        if not isinstance(username, str) or username not in self.users:
            # Unnamed: a password typed into the username field must not reach the log.
            log.warning("flask-tailnet: PAM login refused for a user not in TAILNET_PAM_USERS")
            return False
        if _utf8(username) is None or _utf8(password) is None:
            log.warning(
                "flask-tailnet: PAM login refused for %r: the password is empty, too long "
                "or not text",
                username,
            )
            return False
        refusal = self.account_refusal(username)
        if refusal is not None:
            log.warning("flask-tailnet: PAM login refused for %r: %s", username, refusal)
            return False
        return True

    def account_refusal(self, username: str) -> str | None:
        """Why ``username``'s account may not log in whatever PAM says, or ``None``: it has no
        password, or this process cannot tell and the stack may let an empty password through."""
        return account_refusal(password_account(username), self.stack)

    def _pam(self, username: str, password: str, started: float) -> bool:
        handle = importlib.import_module("pam").pam()
        accepted = handle.authenticate(
            _utf8(username), _utf8(password), service=self.service, resetcreds=False
        )
        if accepted is True:
            return True
        self.delay.record(time.monotonic() - started)
        log.warning(
            "flask-tailnet: PAM refused %r (service %r): code %s, %s",
            username,
            self.service,
            handle.code,
            handle.reason,
        )
        return False


def account_refusal(account: Account, stack: Callable[[], StackReport]) -> str | None:
    """Why an account in the state ``account`` may not log in, whatever PAM says, or ``None``.
    ``stack`` is read only when the account's password could not be examined."""
    if account.state is PasswordState.EMPTY:
        return f"the account has no password ({account.where})"
    if account.state is PasswordState.UNKNOWN:
        report = stack()
        if report.may_pass_empty:
            return (
                f"its password cannot be examined ({account.where}), and PAM service "
                f"{report.service!r} {report.describe()}"
            )
    return None


@dataclass(frozen=True, slots=True)
class StatusLine:
    """One line of ``flask tailnet status`` about PAM; ``unsafe`` when PAM itself would let a
    remote login in without the right password (the guard refuses it)."""

    label: str
    text: str
    unsafe: bool = False


def pam_status(verifier: PamVerifier) -> list[StatusLine]:
    """What ``flask tailnet status`` says about PAM: the service's stack, then each user of
    ``TAILNET_PAM_USERS`` as this process sees the account. Unsafe: a user whose account has no
    password under a stack that may let an empty password through."""
    stack = verifier.stack()
    lines = [StatusLine("PAM stack", f"service {verifier.service!r} {stack.describe()}")]
    if stack.may_pass_empty:
        lines.append(StatusLine("", "the guard refuses accounts without a password itself"))
    for user in sorted(verifier.users):
        account = password_account(user)
        refusal = account_refusal(account, lambda: stack)
        if refusal is None:
            text = f"{account.state.value} ({account.where})"
        elif account.state is PasswordState.EMPTY and stack.may_pass_empty:
            text = (
                f"UNSAFE: {refusal}; PAM would accept any password, the guard refuses it: "
                f"set one (passwd {user}) or remove the user from TAILNET_PAM_USERS"
            )
        else:
            text = f"refused: {refusal}"
        lines.append(StatusLine(f"  {user}", text, text.startswith("UNSAFE")))
    return lines


def _server_user() -> tuple[str, ...]:
    try:
        return (pwd.getpwuid(os.geteuid()).pw_name,)
    except KeyError:
        log.warning(
            "flask-tailnet: uid %d has no user name; PAM logins are refused until "
            "TAILNET_PAM_USERS names a user",
            os.geteuid(),
        )
        return ()


def _utf8(value: object) -> bytes | None:
    """``value`` as UTF-8; ``None`` for a non-string, an empty string, a NUL, a lone surrogate,
    or more than :data:`MAX_INPUT` bytes."""
    if not isinstance(value, str) or not value or len(value) > MAX_INPUT or "\0" in value:
        return None
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return data if len(data) <= MAX_INPUT else None
