"""The credential cascade: each step decides (a peer, or a denial) or passes to the next.

Steps run in order (the guard runs them, in :mod:`flask_tailnet.extension`); the first that decides
wins, and when none decides the request is denied.
A step that recognises its credential but finds it wrong denies at once instead of passing on,
so a bad credential of one kind is never rescued by another.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .pamauth import PamVerifier
from .passwords import PasswordSource
from .peer import Peer, logged_in
from .secretfile import SecretFile


class Decision(enum.Enum):
    DENY = "deny"


DENY = Decision.DENY
StepResult = Peer | Decision | None


class Step(Protocol):
    """One way to authenticate: return the authenticated peer, :data:`DENY`, or ``None`` to pass."""

    def __call__(self, environ: Mapping[str, Any], peer: Peer) -> StepResult: ...


def bearer_credential(header: object) -> bytes | None:
    """The credential of an ``Authorization: Bearer <credential>`` header value (scheme name in
    any case, surrounding whitespace ignored), as bytes; ``b""`` for a bearer header with an empty
    or unencodable credential; ``None`` when the header is absent or of another scheme."""
    if not isinstance(header, str):
        return None
    if header.startswith("Bearer "):  # the usual spelling, without the general parse
        value = header[7:]
    else:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
    try:
        return value.strip().encode("latin-1")
    except UnicodeEncodeError:
        return b""


def secret_matches(presented: bytes, secret: bytes | None) -> bool:
    """Constant-time comparison of bytes. False when either side is empty or absent."""
    if not presented or not secret:
        return False
    return hmac.compare_digest(presented, secret)


class BearerToken:
    """``Authorization: Bearer <token>`` against the app's token file.

    Passes when there is no bearer header. Denies an empty, wrong or non-ASCII token, and every
    token while the token file is missing-and-uncreatable, untrusted or empty. The token file is
    created on first need. The step is the bound method :meth:`check`.
    """

    def __init__(self, token_file: SecretFile) -> None:
        self.token_file = token_file
        self._read = token_file.read

    def check(self, environ: Mapping[str, Any], peer: Peer) -> StepResult:
        presented = bearer_credential(environ.get("HTTP_AUTHORIZATION"))
        if presented is None:
            return None
        if secret_matches(presented, self._read(create=True)):
            return logged_in(peer, "token")
        return DENY


LoginMethod = Literal["pam", "password", "token"]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The login method in force for people, and why it was chosen (``flask tailnet status``)."""

    method: LoginMethod
    why: str


class LoginCredentials:
    """What a person may log in with: the resolved method, and the bearer token in every mode.

    ``"auto"`` takes the first that applies: PAM (usable at start-up), the password variable, the
    password file, the token. The password sources are looked at on every call, so creating or
    removing the file, or setting the variable, takes effect without a restart.
    """

    def __init__(
        self,
        mode: str,
        token_file: SecretFile,
        passwords: PasswordSource,
        pam: PamVerifier | None,
        pam_problem: str | None,
    ) -> None:
        self.mode = mode
        self.token_file = token_file
        self.passwords = passwords
        self.pam = pam
        self.pam_problem = pam_problem

    def resolve(self) -> Resolution:
        """The method in force now."""
        if self.mode == "token":
            return Resolution("token", "TAILNET_AUTH is 'token'")
        if self.mode == "pam":
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

    def check(self, username: str | None, secret: str) -> tuple[LoginMethod, str | None] | None:
        """The method and user that ``secret`` (with ``username`` for PAM) logs in as, or ``None``.

        The token is accepted in every mode, in the secret field; then the resolved method is
        tried. The username is ignored except for PAM. Never raises.
        """
        try:
            presented = secret.encode("latin-1")
        except UnicodeEncodeError:
            presented = b""
        if secret_matches(presented, self.token_file.read(create=True)):
            return "token", None
        method = self.resolve().method
        if method == "pam":
            if self.pam is not None and username and self.pam.verify(username, secret):
                return "pam", username
        elif method == "password" and self.passwords.verify(secret):
            return "password", None
        return None

    def credential(self, method: str, user: str | None = None) -> bytes | None:
        """The credential in force for ``method`` (what a session's fingerprint is made from), or
        ``None`` when that method cannot log anyone in now."""
        if method == "token":
            return self.token_file.read()
        if method == "password":
            password = self.passwords.current()
            return None if password is None else password.stored
        if method == "pam" and self.pam is not None and user in self.pam.users:
            return f"pam:{self.pam.service}:{user}".encode()
        return None
