"""How a storage URI is shown in messages and logs: every part that can hold a secret masked.

One function, :func:`mask_uri`, for every place a URI is shown (the rate limiter's errors and
log lines, ``flask tailnet status``), so that no place masks less than another. It works on the
text, not on a parse: a URL parser stops at the first ``@``, ``/``, ``?`` or ``#`` that may just
as well be part of an unescaped password, and a masker that guesses wrong shows the password.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: Query parameter names whose value is a credential, whatever else the name says
#: (``password``, ``sentinel_password``, ``passwd``, ``auth_token``, ``ssl_keyfile_password``...).
_SECRET_NAME = re.compile(r"pass|pwd|token|secret|key|auth|cred|sig|user", re.IGNORECASE)
#: What follows a ``:`` in hosts without user information, when it is not a port: a password
#: written without its ``@host`` (``redis://default:hunter2/0``), which a URL parser reads as one.
_NOT_A_PORT = re.compile(r":([^,:]*[^0-9,:][^,:]*)")
_BRACKETS = re.compile(r"\[[^\]]*\]")


def _not_ports(hosts: str) -> list[str]:
    """The pieces of ``hosts`` (the text between ``//`` and the path) that follow a ``:`` and are
    not a port number; IPv6 literals in brackets are left out."""
    return _NOT_A_PORT.findall(_BRACKETS.sub("", hosts))


def mask_uri(uri: object) -> str:
    """``uri`` as it may be shown: the user information (everything before the last ``@``,
    user and password alike, however many hosts or ``@`` signs it holds) replaced by ``***``;
    without an ``@``, the hosts replaced by ``***`` when one has a "port" that is not a number
    (a password written without its ``@host``, as in ``redis://default:hunter2/0``);
    the value of every query parameter replaced by ``***`` (its name kept), a parameter without
    a value and the fragment replaced whole. The scheme, hosts, ports and path are kept.

    An ``@`` after a ``?`` or ``#`` leaves no way to tell the user information from the query
    (``redis://h?password=p@ss`` and ``redis://u:p?ss@h`` have one shape), so everything after
    the scheme is masked then. A text without a scheme is masked the same way; anything that is
    not a string is ``***``. Characters that are not printable are escaped, so the result is one
    log line.
    """
    if not isinstance(uri, str):
        return MASK
    scheme = _SCHEME.match(uri)
    head = scheme.group() if scheme else ""
    rest = uri[len(head) :]
    # The last "@", not the first: a password may hold an unescaped "@".
    at = rest.rfind("@")
    if at >= 0:
        if any(0 <= rest.find(mark) < at for mark in "?#"):
            return _printable(head + MASK)
        rest = f"{MASK}@{rest[at + 1 :]}"
    else:
        hosts = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if _not_ports(hosts):
            rest = MASK + rest[len(hosts) :]
    rest, hashmark, _ = rest.partition("#")
    rest, question, query = rest.partition("?")
    if question:
        rest += "?" + "&".join(
            f"{name}={MASK}" if equals else MASK
            for name, equals, _ in (part.partition("=") for part in query.split("&"))
        )
    if hashmark:
        rest += f"#{MASK}"
    return _printable(head + rest)


def uri_secrets(uri: object) -> tuple[str, ...]:
    """The parts of ``uri`` that may be secret, as written and percent-decoded, longest first:
    everything before its last ``@``, the user and the password in it, and each piece of it
    between ``:``, ``/``, ``?``, ``#`` and ``@`` (a URL parser ends the host at the first
    ``/``, ``?`` or ``#``, so from ``redis://u:pa?ss@h`` it reports a port ``pa``); without an
    ``@``, every "port" that is not a number (``redis://default:hunter2/0``); the value of
    every query parameter whose name could name a credential (see :data:`_SECRET_NAME`); and the
    fragment. For scrubbing text that a storage library wrote about ``uri`` (an exception
    message), where the URI itself may not be recognisable any more. A short piece makes the
    scrubbed text hard to read, never a secret readable."""
    if not isinstance(uri, str):
        return ()
    scheme = _SCHEME.match(uri)
    rest = uri[scheme.end() :] if scheme else uri
    userinfo = rest.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    before, _, fragment = rest.partition("#")
    found = {userinfo, user, password, fragment, *re.split(r"[:/?#@]", userinfo)}
    if not userinfo:
        found.update(_not_ports(re.split(r"[/?#]", rest, maxsplit=1)[0]))
    for name, _, value in (part.partition("=") for part in before.partition("?")[2].split("&")):
        if _SECRET_NAME.search(urllib.parse.unquote_plus(name)):
            found.add(value)
    found |= {urllib.parse.unquote(part) for part in found}
    found |= {urllib.parse.unquote_plus(part) for part in found}
    found.discard("")
    return tuple(sorted(found, key=len, reverse=True))


def without_secrets(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every one of ``secrets`` (longest first) replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _printable(text: str) -> str:
    """``text`` with every character that is not printable (a line break, an escape code)
    written as its Python escape, so that a URI cannot forge or hide log lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
