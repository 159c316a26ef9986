"""The credential cascade: each step decides (a peer, or a denial) or passes to the next.

Steps run in order (the guard runs them, in :mod:`flask_tailnet.extension`); the first that decides
wins, and when none decides the request is denied.
A step that recognises its credential but finds it wrong denies at once instead of passing on,
so a bad credential of one kind is never rescued by another.
"""

from __future__ import annotations

import base64
import enum
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from .attempts import Attempts, InForce, Limited
from .caches import BoundedCache
from .hosts import unsafe_cross_site
from .methods import LoginMethod, MethodChoice
from .peer import Peer, logged_in
from .proxies import original_host
from .secretfile import SecretFile
from .sessions import Session, SessionCodec, SessionMethod
from .token import secret_matches
from .watch import RECHECK_SECONDS


class Decision(enum.Enum):
    DENY = "deny"  # 401: the credential is wrong
    FORBID = "forbid"  # 403: a cross-site request riding on a session cookie


DENY = Decision.DENY
FORBID = Decision.FORBID
StepResult = Peer | Decision | Limited | None


class Step(Protocol):
    """One step of the cascade, called with the request's environ and its anonymous peer: the
    authenticated peer, :data:`DENY` (401) or :data:`FORBID` (403), :class:`Limited` (429), or
    ``None`` to pass to the next step."""

    def __call__(self, environ: Mapping[str, Any], peer: Peer) -> StepResult: ...


def bearer_credential(header: object) -> bytes | None:
    """The credential of an ``Authorization: Bearer <credential>`` header value (scheme name in
    any case, surrounding whitespace ignored), as bytes; ``b""`` for a bearer header with an empty
    or unencodable credential; ``None`` when the header is absent or of another scheme."""
    if not isinstance(header, str):
        return None
    if header.startswith("Bearer "):  # the usual spellings, without the general parse
        value = header[7:]
    elif header.startswith("Basic "):
        return None
    else:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
    try:
        return value.strip().encode("latin-1")
    except UnicodeEncodeError:
        return b""


class BearerToken:
    """``Authorization: Bearer <token>`` against the app's token file, under the attempt budget.

    Passes when there is no bearer header. Denies an empty, wrong or non-ASCII token, and every
    token while the token file is missing-and-uncreatable, untrusted or empty; a client over its
    budget is :class:`Limited` before its token is compared. The token file is created on first
    need. The step is the bound method :meth:`authenticate`.
    """

    def __init__(self, token_file: SecretFile, attempts: Attempts) -> None:
        self.token_file = token_file
        self.attempts = attempts
        self._read = token_file.read

    def authenticate(self, environ: Mapping[str, Any], peer: Peer) -> StepResult:
        presented = bearer_credential(environ.get("HTTP_AUTHORIZATION"))
        if presented is None:
            return None
        result = self.attempts.attempt_token(peer, presented, self._read(create=True))
        return DENY if result is None else result


def basic_credential(header: object) -> tuple[str, str] | None:
    """(username, password) of an ``Authorization: Basic`` header value, or ``None`` when the
    header is absent or of another scheme. A malformed Basic value (bad base64, no colon, not
    UTF-8) gives ``("", "")``, which matches nothing."""
    if not isinstance(header, str):
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return "", ""
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else ("", "")


class BasicAuth:
    """``Authorization: Basic`` with the login form's credential, under the attempt budget.

    The username matters for PAM only. Passes when there is no Basic header; denies a malformed
    or wrong one. The step is the bound method :meth:`authenticate`.
    """

    def __init__(self, credentials: LoginCredentials, attempts: Attempts) -> None:
        self.credentials = credentials
        self.attempts = attempts
        self._remembered = attempts.remembered  # bound once: this runs on every Basic request
        self._in_force = credentials.in_force

    def authenticate(self, environ: Mapping[str, Any], peer: Peer) -> StepResult:
        header = environ.get("HTTP_AUTHORIZATION")
        if not isinstance(header, str) or (
            not header.startswith("Basic ") and header.lstrip()[:6].lower() != "basic "
        ):
            return None
        # The header as sent is what the budget and the remembered successes are keyed on, so
        # that a client that sends the same credential again is served before any parsing.
        presented = header.encode("latin-1", "replace")
        remembered, _ = self._remembered(peer, presented, self._in_force)
        if remembered is not None:
            return remembered
        username, password = basic_credential(header) or ("", "")
        if not password:
            return DENY

        def verify() -> Peer | None:
            found = self.credentials.verify(username, password)
            return None if found is None else logged_in(peer, found[0], found[1])

        result = self.attempts.attempt(peer, presented, self.credentials.in_force, verify)
        return DENY if result is None else result


class SessionCookie:
    """The signed session cookie of a browser that logged in.

    Passes when there is no valid cookie (a stale one is not an error: the browser is sent to the
    login page). A cookie-authenticated unsafe request or WebSocket upgrade from another site is
    refused (403), as on the loopback bypass.

    A ``Cookie`` header whose session was verified is remembered with the state directory's watch
    generation (see :mod:`flask_tailnet.watch`): while nothing in the directory changed, for at
    most :data:`~flask_tailnet.watch.RECHECK_SECONDS`, and while the session is within its
    lifetime, the same header is served without verifying it again. The session key, the token
    and the password file are all in that directory, so a rotation, a new password file or a new
    session key ends the shortcut at once, as it ends the session. A session made with the
    password variable is re-verified on every request: the variable is not in the directory.
    The step is the bound method :meth:`authenticate`.
    """

    def __init__(self, name: str, codec: SessionCodec, credentials: LoginCredentials) -> None:
        self.name = name
        self.codec = codec
        self.credentials = credentials
        self._prefix = name + "="
        self._watch = codec.key_file.watch
        shared = {credentials.token_file.watch, credentials.passwords.file.watch}
        self._memo_enabled = shared == {self._watch}
        self._memo_cache: BoundedCache[str, tuple[int, float, Session]] = BoundedCache(
            max_entries=_MEMO_LIMIT, max_key_size=_MEMO_KEY_SIZE, max_bytes=_MEMO_BYTES
        )
        self._memo = self._memo_cache.entries

    def authenticate(self, environ: Mapping[str, Any], peer: Peer) -> StepResult:
        header = environ.get("HTTP_COOKIE")
        if not header or self._prefix not in header:
            return None
        memo = self._memo.get(header)
        if (
            memo is not None
            and memo[0] == self._watch.generation()
            and _monotonic() < memo[1]
            and self.codec.in_lifetime(memo[2])
        ):
            session = memo[2]
        else:
            found = self._verify(header)
            if found is None:
                return None
            session = found
        if unsafe_cross_site(environ, original_host(environ)):
            return FORBID
        return logged_in(peer, "session", session.user)

    def _verify(self, header: str) -> Session | None:
        """The session of ``header``'s cookie, verified in full, remembered when it may be."""
        generation = self._watch.generation()  # before the files are read: a change after is seen
        recheck_at = _monotonic() + RECHECK_SECONDS
        self._memo_cache.forget(header)
        session = self.codec.open(
            cookie_value(header, self.name), self.credentials.session_credential
        )
        if session is None:
            return None
        if session.method == "pam" and not self.credentials.pam_user_allowed(session.user):
            return None
        if self._memo_enabled and (
            session.method != "password" or not self.credentials.passwords.from_env()
        ):
            self._memo_cache.store(header, (generation, recheck_at, session), len(header))
        return session


_MEMO_LIMIT = 1024
#: Longer ``Cookie`` headers are verified on every request, never remembered.
_MEMO_KEY_SIZE = 8192
_MEMO_BYTES = 1 << 20
_monotonic = time.monotonic


def cookie_value(header: str, name: str) -> str | None:
    """The value of the first cookie ``name`` in a ``Cookie`` header, or ``None``. A cookie whose
    name merely ends with ``name`` does not count."""
    prefix = name + "="
    start = header.find(prefix)
    while start > 0 and header[start - 1] not in " ;":
        start = header.find(prefix, start + 1)
    if start < 0:
        return None
    end = header.find(";", start)
    return header[start + len(prefix) : end if end >= 0 else None].strip().strip('"')


#: Seconds between two log lines saying that the forced login method logs nobody in.
_REMIND_SECONDS = 60.0
log = logging.getLogger("flask_tailnet")


class LoginCredentials:
    """What a person may log in with: the method in force (chosen by :mod:`flask_tailnet.methods`),
    and the bearer token in every mode."""

    def __init__(self, token_file: SecretFile, choice: MethodChoice) -> None:
        self.token_file = token_file
        self.choice = choice
        self.passwords = choice.passwords
        self.pam = choice.pam
        self._method = choice.method  # bound once: in_force runs on remembered requests
        self._quiet_until = 0.0

    def verify(self, username: str | None, secret: str) -> tuple[LoginMethod, str | None] | None:
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
        method = self._method(self.passwords.current())
        if method == "pam":
            # An empty username goes to the verifier too: its refusal takes as long as PAM's.
            if self.pam is not None and self.pam.verify(username or "", secret):
                return "pam", username
        elif method == "password" and self.passwords.verify(secret):
            return "password", None
        self._remind_if_unusable()
        return None

    def _remind_if_unusable(self) -> None:
        """Log :meth:`~flask_tailnet.methods.MethodChoice.unusable`'s reason at a refused login,
        at most once a minute."""
        now = time.monotonic()
        if now < self._quiet_until:
            return
        reason = self.choice.unusable()
        if reason is not None:
            self._quiet_until = now + _REMIND_SECONDS
            log.error("flask-tailnet: a login was refused: %s", reason)

    def in_force(self, peer: Peer) -> InForce:
        """What ``peer``'s way in depends on now: its credential, and for the resolved methods
        the method itself (switching from PAM to a password ends remembered PAM logins)."""
        if peer.method == "token":
            return self.token_file.read()
        password = self.passwords.current()
        method = self._method(password)
        if peer.method != method:
            return None
        if method == "password":
            return None if password is None else password.stored
        return self.pam_user_allowed(peer.user)

    def session_credential(self, method: SessionMethod) -> bytes | None:
        """What a session made with ``method`` is bound to now (see :meth:`credential`)."""
        if method == "token":  # the most frequent, on every request of a token session
            return self.token_file.read()
        return self.credential(method)

    def pam_user_allowed(self, user: str | None) -> bool:
        return self.pam is not None and user is not None and user in self.pam.users

    def credential(self, method: str, user: str | None = None) -> bytes | None:
        """The credential in force for ``method`` (what a session's fingerprint is made from), or
        ``None`` when that method cannot log anyone in now."""
        if method == "token":
            return self.token_file.read()
        if method == "password":
            password = self.passwords.current()
            return None if password is None else password.stored
        if method == "pam" and self.pam is not None:
            # A stable marker, never the password: PAM sessions end by logout, lifetime, or a new
            # session key; the user's membership is checked separately.
            return f"pam:{self.pam.service}".encode()
        return None
