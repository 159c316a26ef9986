"""Secrets kept out of log lines (pure): ``?token=`` values, Authorization, cookies.

Used by the gunicorn integration (its access and error logs) and by the guard itself, which puts
:class:`RedactingFilter` on werkzeug's logger, so that ``flask run``'s request log never holds a
token link either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

#: What a secret is replaced by in a log line.
REDACTED = "[redacted]"
#: Query parameters whose value is a secret (the ``?token=`` login links).
SECRET_PARAMETERS = frozenset({"token"})
#: Headers whose value is never logged, in gunicorn's atom spelling (lower case).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
#: Access-log atoms derived from a secret header: gunicorn's ``u`` is the user name part of a
#: Basic header, which a client may fill with the token (``curl -u "$TOKEN:"``).
DERIVED_ATOMS = frozenset({"u"})

# A ``name=value`` pair as it appears in a query string, a URI, a request line or free text. The
# name stops at every character that separates parameters or words, so the leftmost match is the
# whole name; the value runs to the next separator of a query or of a log line.
_PARAMETER = re.compile(r"""([^\s?&;=/"'#<>]+)=([^&\s"'#<>]*)""")
_SECRET_ATOMS = frozenset(
    [f"{{{name}}}i" for name in SECRET_HEADERS]
    + [f"{{{name}}}o" for name in SECRET_HEADERS]
    + [f"{{http_{name.replace('-', '_')}}}e" for name in SECRET_HEADERS]
)


def _is_secret_name(raw: str) -> bool:
    name = raw
    # Decoded as often as a careless client may have encoded it (``%2574oken``): over-redacting
    # a parameter the app would not read as the token costs nothing.
    for _ in range(3):
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return name.strip().lower() in SECRET_PARAMETERS


def _redact_parameter(match: re.Match[str]) -> str:
    if _is_secret_name(match.group(1)):
        return f"{match.group(1)}={REDACTED}"
    return match.group(0)


def redact_text(text: str) -> str:
    """``text`` with the value of every ``token`` parameter replaced by ``[redacted]``, wherever it
    stands: a query string, a URI, a request line, a Referer, a log message. The name counts
    however it is cased or percent-encoded."""
    if "=" not in text:
        return text
    return _PARAMETER.sub(_redact_parameter, text)


def redact_atoms(atoms: Mapping[str, Any]) -> dict[str, Any]:
    """gunicorn's access-log atoms with the values of Authorization, Proxy-Authorization, Cookie
    and Set-Cookie (as request headers ``{...}i``, response headers ``{...}o`` and environ
    ``{http_...}e``) replaced by ``[redacted]``, the Basic user name ``u`` by ``-``, and ``token``
    parameters redacted in every text atom (``r``, ``q``, ``f``, ``{raw_uri}e``, ``{referer}i``,
    ...)."""
    redacted: dict[str, Any] = {}
    for key, value in atoms.items():
        if key in DERIVED_ATOMS:
            redacted[key] = "-"  # gunicorn's own spelling of "no user"
        elif key.lower() in _SECRET_ATOMS:
            redacted[key] = REDACTED
        elif isinstance(value, str):
            redacted[key] = redact_text(value)
        else:
            redacted[key] = value
    return redacted


class RedactingFilter(logging.Filter):
    """Replaces a record's message, traceback and stack by their redacted text, so that no handler
    (a file, syslog, a ``logconfig_dict`` one) ever formats a ``token`` value."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def redact_logger(logger: logging.Logger) -> None:
    """Put one :class:`RedactingFilter` on ``logger`` (a second call adds none). A filter on a
    logger sees the records logged to it, whatever handlers format them."""
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
