"""Secrets kept out of log lines (pure): ``?token=`` values, Authorization, cookies.

Used by the gunicorn integration (its access and error logs) and by the guard itself, which puts
:class:`RedactingFilter` on werkzeug's logger, so that ``flask run``'s request log never holds a
token link either.

Every function here is linear in its input and bounded, whatever a client sends: no pattern is
matched against a whole line (a backtracking pattern let one 60 kB request line stall a server for
a minute and a half). A field is folded to lower-case ASCII in one pass, the places where a secret
name could start (``token`` or a ``%`` escape) are found with ``bytes.find``, and at most
:data:`MOST_CANDIDATES` of them are examined in Python; past that the rest of the field is
redacted whole. Only the access-log fields that can hold a URL or a query are parsed as one (the
request line, the path, the query, the Referer, the raw URI, a redirect); other atoms are kept as
they are, and a formatted log line is then read once more as free text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from .token import PARAMETER

#: What a secret is replaced by in a log line.
REDACTED = "[redacted]"
#: Query parameters whose value is a secret (the ``?token=`` login links).
SECRET_PARAMETERS = frozenset({PARAMETER})
#: Headers whose value is never logged, in gunicorn's atom spelling (lower case).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
#: Access-log atoms derived from a secret header: gunicorn's ``u`` is the user name part of a
#: Basic header, which a client may fill with the token (``curl -u "$TOKEN:"``).
DERIVED_ATOMS = frozenset({"u"})
#: Request and response headers that hold a URL, in gunicorn's atom spelling: their ``token``
#: parameters are redacted. Other headers (User-Agent, ...) are logged as they are.
URL_HEADERS = frozenset(
    {
        "referer",
        "location",
        "content-location",
        "x-original-uri",
        "x-original-url",
        "x-forwarded-uri",
        "x-rewrite-url",
    }
)
#: The most places that may start a secret name examined in one field; past them the rest of the
#: field is replaced by ``[redacted]`` (a field with that many is an attack, not a link).
MOST_CANDIDATES = 32
#: The longest parameter name decoded to see whether it spells ``token``: a longer one that holds
#: ``token`` or a ``%`` escape counts as secret without being decoded.
LONGEST_NAME = 128

# What ends a parameter name (as in a query, a path, a request line or free text); every other
# ASCII character may be part of one. A character outside ASCII ends a name too: a secret name is
# ASCII (or escaped), and ending names early can only make more of them match.
_ASCII_SPACE = "".join(chr(c) for c in range(128) if chr(c).isspace())
_NAME_ENDS = _ASCII_SPACE + "?&;=/\"'#<>"
# ``text.encode("ascii", "replace")`` turns every non-ASCII character into ``?`` (a name end) and
# keeps the offsets; this table then lower-cases letters and turns every name end into NUL.
_FOLD = bytes(
    0
    if chr(c) in _NAME_ENDS
    else 1
    if c == 0
    else ord(chr(c).lower())
    if chr(c).isascii() and chr(c).isupper()
    else c
    for c in range(256)
)
_END = b"\0"
_SHORTEST_SECRET = min(len(name) for name in SECRET_PARAMETERS)
_MARKERS = (b"%", *sorted(name.encode("ascii") for name in SECRET_PARAMETERS))

# Where a secret value ends. Every value end is also a name end (the scan relies on it).
_TEXT_VALUE_END = re.compile(r"[&\s\"'#<>]")  # free text: a quote or a space ends a URL in it
_QUERY_VALUE_END = re.compile(r"[&#]")  # a query and the fragment after it
_PATH_VALUE_END = re.compile(r"[/;&#]")  # a path segment or ``;`` parameter


def _is_secret_name(raw: str) -> bool:
    if len(raw) > LONGEST_NAME:
        return True
    name = raw
    # Decoded as often as a careless client may have encoded it (``%2574oken``): over-redacting
    # a parameter the app would not read as the token costs nothing. Decoding only shortens a
    # name, so one already shorter than every secret name is not decoded further.
    for _ in range(3):
        if len(name) < _SHORTEST_SECRET or ("%" not in name and "+" not in name):
            break
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return name.strip().lower() in SECRET_PARAMETERS


def _redact_pairs(text: str, value_end: re.Pattern[str]) -> str:
    """``text`` with the value of every ``name=value`` whose name spells a secret parameter
    replaced by ``[redacted]``; a name runs back to the previous name end, a value on to
    ``value_end``. Linear: one fold, ``find`` from left to right, a bounded number of names."""
    if "=" not in text:
        return text
    folded = text.encode("ascii", "replace").translate(_FOLD)
    if not any(marker in folded for marker in _MARKERS):
        return text
    pieces: list[str] = []
    kept = 0  # text[kept:] is not yet in pieces
    position = 0  # 0 or the offset of a name end: where the next name is looked for
    upcoming = [folded.find(marker) for marker in _MARKERS]
    for examined in range(MOST_CANDIDATES + 1):
        at = -1
        for index, marker in enumerate(_MARKERS):
            if 0 <= upcoming[index] < position:
                upcoming[index] = folded.find(marker, position)
            if upcoming[index] >= 0 and (at < 0 or upcoming[index] < at):
                at = upcoming[index]
        if at < 0:
            break
        start = folded.rfind(_END, position, at) + 1
        if examined == MOST_CANDIDATES:  # too many to examine: fail closed
            pieces += [text[kept:start], REDACTED]
            kept = len(text)
            break
        end = folded.find(_END, at)
        if end < 0:
            break  # the name runs to the end of the text: no ``=``, no value
        if text[end] == "=" and _is_secret_name(text[start:end]):
            stop = value_end.search(text, end + 1)
            position = stop.start() if stop else len(text)
            pieces += [text[kept : end + 1], REDACTED]
            kept = position
        else:
            position = end
    pieces.append(text[kept:])
    return "".join(pieces)


def redact_text(text: str) -> str:
    """``text`` with the value of every ``token`` parameter replaced by ``[redacted]``, wherever it
    stands: a query string, a URI, a request line, a Referer, a log message. The name counts
    however it is cased or percent-encoded; a value ends at ``&``, ``#``, a quote, ``<``, ``>`` or
    white space (for a URL field, :func:`redact_url` reads the URL's own structure)."""
    return _redact_pairs(text, _TEXT_VALUE_END)


def redact_query(query: str) -> str:
    """A query string (without its ``?``) with the value of every ``token`` parameter redacted,
    up to the next ``&`` or ``#``; the name counts however it is cased or percent-encoded, and
    wherever a name starts (after ``&``, ``;``, ``?``, ``/``, ``=`` or white space)."""
    return _redact_pairs(query, _QUERY_VALUE_END)


def redact_url(url: str) -> str:
    """A URL or request target (``/path;p=v?query#fragment``, ``http://host/...``) read as a
    path up to its first ``?`` and a query after it: a ``token`` parameter of the query is
    redacted up to ``&`` or ``#``, one in the path (``/p/token=...``, ``/p;token=...``) up to the
    next ``/``, ``;``, ``&`` or ``#``. A ``name=value`` in the path (``/a=b?token=...``) does not
    hide the query from it."""
    mark = url.find("?")
    if mark < 0:
        return _redact_pairs(url, _PATH_VALUE_END)
    path, query = url[:mark], url[mark + 1 :]
    return f"{_redact_pairs(path, _PATH_VALUE_END)}?{redact_query(query)}"


def redact_request_line(line: str) -> str:
    """A request line (``GET /a?token=... HTTP/1.1``, as gunicorn's ``r`` atom or werkzeug's
    request log writes it) with its target read by :func:`redact_url`: the target is what lies
    between the first and the last space, so a target with spaces in it (werkzeug logs the decoded
    path) is still one. The method and version words are read the same way, in case a malformed
    line put the target there."""
    method, space, rest = line.partition(" ")
    if not space:
        return redact_url(line)
    target, last_space, version = rest.rpartition(" ")
    if not last_space:
        return f"{redact_url(method)} {redact_url(rest)}"
    return f"{redact_url(method)} {redact_url(target)} {redact_url(version)}"


_URL_ATOMS: dict[str, Callable[[str], str]] = {
    "r": redact_request_line,
    "U": redact_url,
    "q": redact_query,
    "f": redact_url,
    "{raw_uri}e": redact_url,
    "{request_uri}e": redact_url,
    "{path_info}e": redact_url,
    "{script_name}e": redact_url,
    "{query_string}e": redact_query,
    **{f"{{{name}}}i": redact_url for name in URL_HEADERS},
    **{f"{{{name}}}o": redact_url for name in URL_HEADERS},
    **{f"{{http_{name.replace('-', '_')}}}e": redact_url for name in URL_HEADERS},
}
_SECRET_ATOMS = frozenset(
    [f"{{{name}}}i" for name in SECRET_HEADERS]
    + [f"{{{name}}}o" for name in SECRET_HEADERS]
    + [f"{{http_{name.replace('-', '_')}}}e" for name in SECRET_HEADERS]
)


def redact_atoms(atoms: Mapping[str, Any]) -> dict[str, Any]:
    """gunicorn's access-log atoms with the values of Authorization, Proxy-Authorization, Cookie
    and Set-Cookie (as request headers ``{...}i``, response headers ``{...}o`` and environ
    ``{http_...}e``) replaced by ``[redacted]``, the Basic user name ``u`` by ``-``, and ``token``
    parameters redacted in the atoms that hold a URL or a query: ``r``, ``U``, ``q``, ``f``,
    ``{raw_uri}e``, ``{request_uri}e``, ``{path_info}e``, ``{script_name}e``,
    ``{query_string}e`` and the :data:`URL_HEADERS` (Referer, Location, ...). Every other atom is
    kept as it is."""
    redacted: dict[str, Any] = {}
    for key, value in atoms.items():
        folded = key.lower() if key.startswith("{") else key  # ``U`` is not ``u``
        if folded in DERIVED_ATOMS:
            redacted[key] = "-"  # gunicorn's own spelling of "no user"
        elif folded in _SECRET_ATOMS:
            redacted[key] = REDACTED
        elif folded in _URL_ATOMS and isinstance(value, str):
            redacted[key] = _URL_ATOMS[folded](value)
        else:
            redacted[key] = value
    return redacted


# werkzeug's request log: ``"<address> - - [<date>] \"%s\" %s %s"`` with the request line, the
# status and the size as arguments (werkzeug.serving.WSGIRequestHandler.log_request).
_WERKZEUG_REQUEST = '"%s" %s %s'


def _redacted_message(record: logging.LogRecord) -> str:
    args = record.args
    if (
        isinstance(record.msg, str)
        and record.msg.endswith(_WERKZEUG_REQUEST)
        and isinstance(args, tuple)
        and len(args) == 3
        and isinstance(args[0], str)
    ):
        record.args = (redact_request_line(args[0]), *args[1:])
        return record.getMessage()
    return redact_text(record.getMessage())


class RedactingFilter(logging.Filter):
    """Replaces a record's message, traceback and stack by their redacted text, so that no handler
    (a file, syslog, a ``logconfig_dict`` one) ever formats a ``token`` value. werkzeug's request
    log line has its request line read as one (:func:`redact_request_line`); any other message,
    traceback or stack is read as free text (:func:`redact_text`)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redacted_message(record)
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
