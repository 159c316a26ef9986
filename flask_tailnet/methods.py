"""The login method in force for people: ``TAILNET_AUTH``, or for ``"auto"`` the first that applies.

``"auto"`` takes PAM (when it was usable at start-up), else the password variable, else the
password file, else the token. The password sources are looked at on every call, so creating or
removing the file, or setting the variable, changes the method without a restart. The bearer token
is accepted in every mode; this module only chooses what the login page asks for and what a
password or PAM login is checked against (see :mod:`flask_tailnet.credentials`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .pamauth import PamVerifier
from .passwords import Password, PasswordSource, password_problem

LoginMethod = Literal["pam", "password", "token"]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The login method in force for people, and why it was chosen (``flask tailnet status``)."""

    method: LoginMethod
    why: str


class MethodChoice:
    """Chooses the login method from the ``TAILNET_AUTH`` mode, whether PAM is usable, and the
    password sources as they are now."""

    def __init__(
        self,
        mode: str,
        passwords: PasswordSource,
        pam: PamVerifier | None,
        pam_problem: str | None,
    ) -> None:
        self.mode = mode
        self.passwords = passwords
        self.pam = pam
        self.pam_problem = pam_problem

    def method(self, password: Password | None) -> LoginMethod:
        """The method in force when the current password is ``password`` (``None``: none is set).
        ``TAILNET_AUTH="password"`` stays ``"password"`` without one, which then logs nobody in."""
        if self.mode == "token":
            return "token"
        if self.mode == "pam" or (self.mode == "auto" and self.pam is not None):
            return "pam"
        return "password" if password is not None or self.mode == "password" else "token"

    def resolve(self) -> Resolution:
        """The method in force now, and why."""
        if self.mode == "token":
            return Resolution("token", "TAILNET_AUTH is 'token'")
        if self.mode == "pam":
            if self.pam is None:
                return Resolution("pam", "TAILNET_AUTH is 'pam', but PAM cannot be used")
            return Resolution("pam", "TAILNET_AUTH is 'pam'")
        if self.mode == "auto" and self.pam is not None:
            return Resolution("pam", f"PAM service {self.pam.service!r} is usable")
        password = self.passwords.current()
        if password is not None:
            where = (
                f"the environment variable {self.passwords.env_name}"
                if password.origin == "env"
                else f"the password file {self.passwords.file.path}"
            )
            return Resolution("password", f"a password is set in {where}")
        if self.mode == "password":
            return Resolution("password", "TAILNET_AUTH is 'password', but no password is set")
        return Resolution(
            "token",
            f"no PAM ({self.pam_problem}), no {self.passwords.env_name} variable, "
            "no password file: the generated token",
        )

    def unusable(self) -> str | None:
        """Why the method that ``TAILNET_AUTH`` forces logs nobody in now, and what to do; ``None``
        when it can. Such logins are refused (the token still works); the app loads regardless,
        so that ``flask tailnet password`` and ``status`` can run."""
        if self.mode == "pam" and self.pam is None:
            return (
                f"TAILNET_AUTH is 'pam', but PAM cannot be used: {self.pam_problem}; every "
                "PAM login is refused until that is fixed and the server restarted"
            )
        password = self.passwords.current()
        if self.mode == "password" and password is None:
            return (
                "TAILNET_AUTH is 'password', but no password is set: every password login is "
                f"refused until one is; set the variable {self.passwords.env_name} of the "
                "server, or run `flask tailnet password` as the server's user"
            )
        if password is not None and self.method(password) == "password" and not password.hashed:
            problem = _unmatchable(password.stored)
            if problem is not None:
                where = (
                    f"the variable {self.passwords.env_name}"
                    if password.origin == "env"
                    else f"the password file {self.passwords.file.path}"
                )
                return (
                    f"{where} holds {problem}, which no login can match: every password login "
                    "is refused until it is replaced (`flask tailnet password` sets one that "
                    "can be)"
                )
        return None


def _unmatchable(stored: bytes) -> str | None:
    """What makes a plain-text password in force one that :func:`password_problem` refuses at
    every login (so that nobody can log in with it), or ``None``."""
    try:
        return password_problem(stored.decode("utf-8"))
    except UnicodeDecodeError:
        return "a password that is not UTF-8 text"
