"""The bearer token: its file, the one comparison every token check uses, and its login link (pure).

The token is accepted in three places, each under the failed-attempt budget: the
``Authorization: Bearer`` header (:class:`~flask_tailnet.credentials.BearerToken`), the login
form's secret field (:meth:`~flask_tailnet.credentials.LoginCredentials.verify`), and the
``?token=`` parameter of a login link (:func:`~flask_tailnet.responses.token_link_login`). All
three compare with :func:`secret_matches`.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from urllib.parse import quote, quote_from_bytes, unquote_plus

from .secretfile import MIN_SECRET_LENGTH, SecretFile

#: The token's file name in the state directory.
TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret
#: The query parameter of a login link (``/?token=...``); its value is kept out of every log line.
PARAMETER = "token"
#: What a query keeps unencoded when it is sent on: its delimiters and its escapes.
_QUERY_SAFE = "/?:@!$&'()*+,;=~%"


def token_file(state_dir: Path) -> SecretFile:
    """The token's file in ``state_dir``, created on first need, at least
    :data:`~flask_tailnet.secretfile.MIN_SECRET_LENGTH` bytes long."""
    return SecretFile(state_dir, TOKEN_FILE, min_length=MIN_SECRET_LENGTH)


def secret_matches(presented: bytes, secret: bytes | None) -> bool:
    """Constant-time comparison of bytes. False when either side is empty or absent: an empty
    token never matches, and no token file means no token."""
    if not presented or not secret:
        return False
    return hmac.compare_digest(presented, secret)


def link_parameter(query: str) -> tuple[str | None, list[str]]:
    """The ``token`` value of a query string (its last one, decoded; ``None`` when there is none)
    and the query's other parts, each as its bytes were sent, percent-encoded where they are not
    URL characters, to send the browser on without the token."""
    kept, presented = [], None
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name) == PARAMETER:
            presented = unquote_plus(value)
        elif part:
            kept.append(quote(part.encode("latin-1", "replace"), safe=_QUERY_SAFE))
    return presented, kept


def login_link(scheme: str, host: str, port: int | str, token: bytes) -> str:
    """``<scheme>://<host>:<port>/?token=<token>``, an IPv6 ``host`` in brackets. Anyone with the
    link is logged in: print it only where asked for."""
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}:{port}/?{PARAMETER}={quote_from_bytes(token, safe='')}"
