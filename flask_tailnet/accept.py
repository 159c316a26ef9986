"""Whether a request comes from a browser that should be sent to the login page (pure).

The guard asks this of every GET or HEAD that arrives without a credential, before anything about
the client is known, so the answer must cost little whatever the ``Accept`` header holds.
werkzeug's parser is not used here: its media-range split (``[ \\t]*;[ \\t]*``) backtracks over a
run of spaces inside an item, and 30,000 spaces cost seconds. This parser scans the header once,
refuses to look at more than :data:`MAX_ACCEPT_LENGTH` characters, and gives werkzeug's
``best_match`` answer for every ``Accept`` value a browser sends.
"""

from __future__ import annotations

import re

#: A longer ``Accept`` header is not a browser's (they send 100 to 300 characters): such a request
#: is answered as an API client's, with 401, and its header is not parsed.
MAX_ACCEPT_LENGTH = 1024

_QUALITY = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_HTML, _ANY_TEXT = ("text", "html"), ("text", "*")
_JSON, _ANY_APPLICATION = ("application", "json"), ("application", "*")


def prefers_html(accept: object) -> bool:
    """True when an ``Accept`` value prefers ``text/html`` to ``application/json``.

    Each of the two types takes the quality of the most specific media range that names it
    (``text/html`` before ``text/*`` before ``*/*``; the highest quality among equals); HTML wins
    when its quality is positive and higher than JSON's, or equal with a more specific range.
    So a browser's navigation (``text/html,...,*/*;q=0.8``) prefers HTML, and ``*/*``, JSON
    clients and a missing header do not.

    False, without parsing, for anything but a string, an empty value and a value longer than
    :data:`MAX_ACCEPT_LENGTH`. Ignored, as werkzeug ignores them: a range with a quality that is
    not a number between 0 and 1, ``type/subtype`` with a parameter other than ``q`` (it names a
    variant, not the plain type), ``*/subtype``, and anything without a ``/``. Never raises.
    """
    if not isinstance(accept, str) or not accept or len(accept) > MAX_ACCEPT_LENGTH:
        return False
    html = json = (-1, 0.0)  # (specificity, quality) of the best range naming each
    for item in accept.split(","):
        media, _, params = item.partition(";")
        kind, slash, subtype = media.strip(" \t").lower().partition("/")
        if not slash or (kind == "*" and subtype != "*"):
            continue
        specificity = 0 if kind == "*" else 1 if subtype == "*" else 2
        quality, variant = _quality(params) if params else (1.0, False)
        if quality is None or (variant and specificity == 2):
            continue
        if specificity == 0 or (kind, subtype) in (_HTML, _ANY_TEXT):
            html = max(html, (specificity, quality))
        if specificity == 0 or (kind, subtype) in (_JSON, _ANY_APPLICATION):
            json = max(json, (specificity, quality))
    html_specificity, html_quality = html
    json_specificity, json_quality = json
    if html_quality <= 0:
        return False
    return html_quality > json_quality or (
        html_quality == json_quality and html_specificity > json_specificity
    )


def _quality(params: str) -> tuple[float | None, bool]:
    """The ``q`` of a range's parameters (1 when absent), ``None`` when it is not a number in
    [0, 1]; and whether another parameter names a variant. A parameter without ``=`` is dropped,
    as werkzeug drops it."""
    quality = 1.0
    variant = False
    for param in params.split(";"):
        name, equals, value = param.partition("=")
        if not equals:
            continue
        if name.strip(" \t").lower() != "q":
            variant = True
            continue
        value = value.strip(" \t")
        if _QUALITY.fullmatch(value) is None:
            return None, variant
        quality = float(value)
        if not 0 <= quality <= 1:
            return None, variant
    return quality, variant
