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
from typing import Any, Protocol

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
