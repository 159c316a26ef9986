"""Where a login may send the browser next (pure).

Only a same-site relative path is allowed: an open redirect on login would send the fresh session,
or a ``?token=`` in the Referer, to another site (Jupyter, CVE-2023-39968).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

_MAX_LENGTH = 2048


def safe_next(value: object, default: str = "/") -> str:
    """``value`` if it is a path on this site, else ``default``.

    Refused: anything that is not a string, empty, over-long, not starting with exactly one ``/``;
    scheme-relative (``//evil``), backslash (``/\\evil``, which browsers read as ``//``), a scheme
    or a host (``https://``, ``javascript:``), control characters (tab and newline too), and the
    percent-encoded forms of all of these (decoded repeatedly before checking).
    """
    if not isinstance(value, str) or not value or len(value) > _MAX_LENGTH:
        return default
    decoded = value
    for _ in range(3):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        return default
    for candidate in (value, decoded):
        if not candidate.startswith("/") or candidate.startswith(("//", "/\\")):
            return default
        if "\\" in candidate or any(ord(c) < 0x20 or ord(c) == 0x7F for c in candidate):
            return default
        parts = urlsplit(candidate)
        if parts.scheme or parts.netloc:
            return default
    return value
