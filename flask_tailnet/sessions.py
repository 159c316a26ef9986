"""The signed session cookie: who logged in, how, when, and with which credential.

The cookie value is ``payload.timestamp.signature`` from an itsdangerous
:class:`~itsdangerous.TimestampSigner` (HMAC-SHA256) keyed with ``<state dir>/session_key``. The
payload is compact JSON ``[user, method, fingerprint]`` in URL-safe base64. Pure: no Flask here;
the adapter sets the cookie's attributes (HttpOnly, SameSite, Secure).

The cookie never holds a credential nor a plain hash of one: code-server put the password hash in
its cookie and the hash became a password (docs/security.md, "The known attacks", item 8). The
fingerprint is an HMAC of the credential under a key derived from the session key, cut to 16
bytes, so a stolen cookie cannot be used to test password guesses offline without the server's key,
and it is checked against the credential in force *now*, so rotating the token or changing the
password ends the sessions made with the old one (Jupyter #1566; item 7 of the same list).
Rotating ``session_key`` ends every session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeGuard

from itsdangerous import BadData, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode

from .caches import BoundedCache
from .secretfile import MIN_SECRET_LENGTH, SecretFile
from .settings import DEFAULTS, SESSION_LIFETIME

#: The session key's file name in the state directory.
SESSION_KEY_FILE = "session_key"
#: How a session was opened.
SessionMethod = Literal["token", "password", "pam"]
METHODS: frozenset[str] = frozenset(("token", "password", "pam"))

#: The session lifetime when none is given: ``TAILNET_SESSION_LIFETIME``'s default.
DEFAULT_LIFETIME = float(DEFAULTS[SESSION_LIFETIME])
#: How far in the future (seconds) an issue time may lie: clocks step back (NTP), not forward.
MAX_CLOCK_SKEW = 60.0
#: Longer cookie values are refused unread (browsers keep at most 4096 bytes per cookie).
MAX_COOKIE_LENGTH = 4096

_COOKIE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_FINGERPRINT_BYTES = 16
_FINGERPRINT_LABEL = b"flask-tailnet credential fingerprint"
#: Entries kept in each cache (verified cookies; fingerprints) before it is emptied.
_CACHE_LIMIT = 1024
#: Bytes of keys each cache holds at most: cookies are at most MAX_COOKIE_LENGTH, credentials
#: longer than that are fingerprinted every time instead of remembered.
_CACHE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Session:
    """An opened session cookie: ``user`` (``None`` for the shared token), ``method`` and
    ``issued_at`` (unix seconds, from the signed timestamp)."""

    user: str | None
    method: SessionMethod
    issued_at: int


class _Signer(TimestampSigner):
    """A TimestampSigner whose clock can be injected."""

    def __init__(self, key: bytes, salt: str, now: Callable[[], float]) -> None:
        super().__init__(key, salt=salt, digest_method=hashlib.sha256)
        self._now = now

    def get_timestamp(self) -> int:
        return int(self._now())


class _Keyed:
    """What one key value gives: the signer, the fingerprint key, and bounded caches of the
    cookies whose signature verified under this key and of credential fingerprints. A rotated
    key gets a new instance, so nothing verified under the old key survives."""

    __slots__ = ("fingerprint_cache", "fingerprint_key", "fingerprints", "key", "opened", "signer")

    def __init__(self, key: bytes, salt: str, now: Callable[[], float]) -> None:
        self.key = key
        self.signer = _Signer(key, salt, now)
        self.fingerprint_key = hmac.digest(key, _FINGERPRINT_LABEL, "sha256")
        self.opened: BoundedCache[str, tuple[Session, bytes]] = BoundedCache(
            max_entries=_CACHE_LIMIT, max_key_size=MAX_COOKIE_LENGTH, max_bytes=_CACHE_BYTES
        )
        self.fingerprint_cache: BoundedCache[bytes, bytes] = BoundedCache(
            max_entries=_CACHE_LIMIT, max_key_size=MAX_COOKIE_LENGTH, max_bytes=_CACHE_BYTES
        )
        self.fingerprints = self.fingerprint_cache.entries

    def fingerprint(self, credential: bytes) -> bytes:
        fingerprint = self.fingerprints.get(credential)
        if fingerprint is None:
            digest = hmac.digest(self.fingerprint_key, credential, "sha256")
            fingerprint = base64.urlsafe_b64encode(digest[:_FINGERPRINT_BYTES]).rstrip(b"=")
            self.fingerprint_cache.store(credential, fingerprint, len(credential))
        return fingerprint


class SessionCodec:
    """Issues and opens session cookies signed with the key in ``key_file``.

    The key is read on every call (a poll of the state directory's watch, or one ``lstat``,
    while it is unchanged); the signer and the fingerprint key are built once per key value, and
    a cookie's signature and payload are checked once per key value (verified cookies are cached;
    the lifetime and the credential are checked on every call). While the key file is
    missing-and-uncreatable, untrusted, empty or shorter than
    :data:`~flask_tailnet.secretfile.MIN_SECRET_LENGTH` bytes, no cookie is issued and every
    cookie is refused.
    """

    def __init__(
        self,
        key_file: SecretFile,
        lifetime: timedelta | float = DEFAULT_LIFETIME,
        *,
        salt: str = "flask-tailnet session",
        now: Callable[[], float] = time.time,
    ) -> None:
        seconds = lifetime.total_seconds() if isinstance(lifetime, timedelta) else float(lifetime)
        if not seconds > 0:
            raise ValueError(f"session lifetime must be positive, not {lifetime!r}")
        self.key_file = key_file
        self.lifetime = seconds
        self.salt = salt
        self._read = key_file.read
        self._now = now
        self._keyed: _Keyed | None = None

    def _keys(self) -> _Keyed | None:
        """The state for the key now in the file, or ``None`` when it is unusable: missing and
        uncreatable, untrusted, empty, or shorter than
        :data:`~flask_tailnet.secretfile.MIN_SECRET_LENGTH` bytes, whatever the key file allows
        (a short key could be guessed online, one forged cookie at a time)."""
        key = self._read(create=True)
        if key is None or len(key) < MIN_SECRET_LENGTH:
            return None
        keyed = self._keyed
        if keyed is None or keyed.key != key:
            keyed = self._keyed = _Keyed(key, self.salt, self._now)
        return keyed

    def in_lifetime(self, session: Session) -> bool:
        """True while ``session`` is within its lifetime, and its issue time not in the future by
        more than :data:`MAX_CLOCK_SKEW`."""
        return -MAX_CLOCK_SKEW <= self._now() - session.issued_at <= self.lifetime

    def fingerprint(self, credential: bytes) -> str | None:
        """The credential's fingerprint: a keyed HMAC, useless without the server's key.
        ``None`` when the credential is empty or the key is unusable."""
        keyed = self._keys()
        if keyed is None or not credential:
            return None
        return keyed.fingerprint(credential).decode("ascii")

    def issue(self, *, user: str | None, method: SessionMethod, credential: bytes) -> str | None:
        """The cookie value for a login by ``user`` with ``method`` and ``credential``; ``None``
        (no cookie) when the credential is empty or the key is unusable. Raises ``ValueError``
        for an unknown method."""
        if method not in METHODS:
            raise ValueError(f"unknown session method {method!r}")
        keyed = self._keys()
        if keyed is None or not credential:
            return None
        payload = json.dumps(
            [user, method, keyed.fingerprint(credential).decode("ascii")],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return keyed.signer.sign(base64_encode(payload)).decode("ascii")

    def open(
        self, cookie: str | None, current_credential: Callable[[SessionMethod], bytes | None]
    ) -> Session | None:
        """The session a cookie proves, or ``None``.

        Refused: a missing, empty or oversized cookie; anything but three URL-safe base64
        segments; a bad or non-canonically encoded signature (tampered, or signed with another
        or a rotated key); any cookie while the key is unusable; an issue time older than the
        lifetime or more than :data:`MAX_CLOCK_SKEW` in the future; a malformed payload; an
        unknown method; a method for which ``current_credential(method)`` now returns ``None``
        or ``b""``; a fingerprint that does not match that credential. Never raises for any
        cookie value (exceptions from ``current_credential`` propagate).
        """
        if not cookie or len(cookie) > MAX_COOKIE_LENGTH:
            return None
        keyed = self._keys()
        if keyed is None:
            return None
        opened = keyed.opened.entries.get(cookie)
        if opened is None:
            opened = _verify(keyed, cookie)
            if opened is None:
                return None
            keyed.opened.store(cookie, opened, len(cookie))
        session, presented = opened
        if not self.in_lifetime(session):
            return None
        credential = current_credential(session.method)
        if not credential:
            return None
        if not hmac.compare_digest(presented, keyed.fingerprint(credential)):
            return None
        return session


def _verify(keyed: _Keyed, cookie: str) -> tuple[Session, bytes] | None:
    """The session and fingerprint a cookie carries if its signature and payload are sound."""
    if _COOKIE.fullmatch(cookie) is None:
        return None
    try:
        # base64 decoding ignores stray bits and characters: one signature, one spelling.
        signature = cookie[cookie.rindex(".") + 1 :]
        if base64_encode(base64_decode(signature)).decode("ascii") != signature:
            return None
        signed, stamp = keyed.signer.unsign(cookie, return_timestamp=True)
        issued_at = int(stamp.timestamp())
        data = json.loads(base64_decode(signed))
    except (BadData, ValueError, OverflowError, RecursionError):
        return None
    if not (isinstance(data, list) and len(data) == 3):
        return None
    user, method, presented = data
    if not (
        (user is None or isinstance(user, str))
        and _is_method(method)
        and isinstance(presented, str)
        and presented.isascii()
    ):
        return None
    return Session(user, method, issued_at), presented.encode("ascii")


def _is_method(value: object) -> TypeGuard[SessionMethod]:
    return isinstance(value, str) and value in METHODS
