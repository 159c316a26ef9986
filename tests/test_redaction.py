"""flask_tailnet.redaction: the URL and request-line parser, the atoms that are (and are not)
redacted, werkzeug's request log, the bound on the work and its linear cost.

The real-server side (gunicorn's access log, ``flask run``'s request log) is in
test_redaction_servers.py; random and adversarial inputs in test_redaction_fuzz.py.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable

import pytest

from flask_tailnet import redaction as rd

S = "s3cr3t-T0ken_value"
R = rd.REDACTED


# ---- the request line: path first, then the query after the first "?" --------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Hardening 3: a name=value in the path must not hide the query's token.
        pytest.param(f"GET /a=b?token={S} HTTP/1.1", f"GET /a=b?token={R} HTTP/1.1", id="path-a=b"),
        pytest.param(
            f"GET /report;view=all?token={S} HTTP/1.1",
            f"GET /report;view=all?token={R} HTTP/1.1",
            id="path-parameter-view=all",
        ),
        pytest.param(
            f"GET /x=1/y=2;z=3?a=b&token={S} HTTP/1.1",
            f"GET /x=1/y=2;z=3?a=b&token={R} HTTP/1.1",
            id="many-pairs-in-path",
        ),
        pytest.param(f"GET /?token={S} HTTP/1.1", f"GET /?token={R} HTTP/1.1", id="plain"),
        pytest.param(f"GET /?token={S}&a=1 HTTP/1.1", f"GET /?token={R}&a=1 HTTP/1.1", id="first"),
        pytest.param(f"GET /?a=1&token={S} HTTP/1.1", f"GET /?a=1&token={R} HTTP/1.1", id="last"),
        pytest.param(f"GET /?TOKEN={S} HTTP/1.1", f"GET /?TOKEN={R} HTTP/1.1", id="upper-case"),
        pytest.param(f"GET /?ToKeN={S} HTTP/1.1", f"GET /?ToKeN={R} HTTP/1.1", id="mixed-case"),
        pytest.param(f"GET /?%74oken={S} HTTP/1.1", f"GET /?%74oken={R} HTTP/1.1", id="%74oken"),
        pytest.param(f"GET /?tok%65n={S} HTTP/1.1", f"GET /?tok%65n={R} HTTP/1.1", id="tok%65n"),
        pytest.param(
            f"GET /?%74%6F%6B%65%6E={S} HTTP/1.1",
            f"GET /?%74%6F%6B%65%6E={R} HTTP/1.1",
            id="all-letters-encoded",
        ),
        pytest.param(
            f"GET /?%2574oken={S} HTTP/1.1", f"GET /?%2574oken={R} HTTP/1.1", id="%2574oken"
        ),
        pytest.param(
            f"GET /?%25%37%34oken={S} HTTP/1.1",
            f"GET /?%25%37%34oken={R} HTTP/1.1",
            id="escape-of-an-escape",
        ),
        pytest.param(
            f"GET /?%252574oken={S} HTTP/1.1",
            f"GET /?%252574oken={R} HTTP/1.1",
            id="triple-encoded",
        ),
        pytest.param(f"GET /?token+={S} HTTP/1.1", f"GET /?token+={R} HTTP/1.1", id="plus-after"),
        pytest.param(f"GET /?+token={S} HTTP/1.1", f"GET /?+token={R} HTTP/1.1", id="plus-before"),
        pytest.param(f"GET /?%20token={S} HTTP/1.1", f"GET /?%20token={R} HTTP/1.1", id="%20"),
        pytest.param("GET /?token= HTTP/1.1", f"GET /?token={R} HTTP/1.1", id="empty-value"),
        pytest.param("GET /?token HTTP/1.1", "GET /?token HTTP/1.1", id="no-value"),
        pytest.param(
            f"GET /?token={S}&token={S} HTTP/1.1",
            f"GET /?token={R}&token={R} HTTP/1.1",
            id="repeated",
        ),
        pytest.param(
            f"GET /?token={S}#frag HTTP/1.1", f"GET /?token={R}#frag HTTP/1.1", id="fragment"
        ),
        pytest.param(
            f"GET /?a=1#x&token={S} HTTP/1.1",
            f"GET /?a=1#x&token={R} HTTP/1.1",
            id="token-in-fragment",
        ),
        pytest.param(
            f"GET /?a=1?token={S} HTTP/1.1", f"GET /?a=1?token={R} HTTP/1.1", id="second-?"
        ),
        pytest.param(f"GET /??token={S}? HTTP/1.1", f"GET /??token={R} HTTP/1.1", id="doubled-?"),
        pytest.param(
            f"GET /?next=/x?token={S} HTTP/1.1",
            f"GET /?next=/x?token={R} HTTP/1.1",
            id="nested-url-in-a-value",
        ),
        pytest.param(
            f"GET /?a=1;token={S} HTTP/1.1", f"GET /?a=1;token={R} HTTP/1.1", id="semicolon"
        ),
        pytest.param(
            f"GET /?a=1&amp;token={S} HTTP/1.1",
            f"GET /?a=1&amp;token={R} HTTP/1.1",
            id="html-escaped-amp",
        ),
        pytest.param(
            f"GET /?token={S};x=1 HTTP/1.1",
            f"GET /?token={R} HTTP/1.1",
            id="semicolon-in-the-value",
        ),
        pytest.param(
            f"GET /?token={S}=x HTTP/1.1", f"GET /?token={R} HTTP/1.1", id="equals-in-the-value"
        ),
        pytest.param(
            f"GET /?token='{S}' HTTP/1.1", f"GET /?token={R} HTTP/1.1", id="quotes-in-the-value"
        ),
        pytest.param(
            f"GET /p;token={S}/x HTTP/1.1", f"GET /p;token={R}/x HTTP/1.1", id="path-parameter"
        ),
        pytest.param(f"GET /p/token={S} HTTP/1.1", f"GET /p/token={R} HTTP/1.1", id="path-segment"),
        pytest.param(
            f"GET http://h:5000/a=b?token={S} HTTP/1.1",
            f"GET http://h:5000/a=b?token={R} HTTP/1.1",
            id="absolute-form",
        ),
        pytest.param(
            "GET /?xtoken=1&tokens=2&token_=3&to-ken=4 HTTP/1.1",
            "GET /?xtoken=1&tokens=2&token_=3&to-ken=4 HTTP/1.1",
            id="other-names-kept",
        ),
        pytest.param(
            "GET /static/app.js?v=3 HTTP/1.1", "GET /static/app.js?v=3 HTTP/1.1", id="no-secret"
        ),
        # werkzeug logs the decoded target: it may hold spaces.
        pytest.param(
            f"GET /?token={S} x HTTP/1.1", f"GET /?token={R} HTTP/1.1", id="space-in-target"
        ),
        pytest.param(
            f"\x1b[32mGET /a=b?token={S} HTTP/1.1\x1b[0m",
            f"\x1b[32mGET /a=b?token={R} HTTP/1.1\x1b[0m",
            id="ansi-colours",
        ),
        # Malformed lines, as werkzeug logs them after a 400.
        pytest.param(f"GET / ?token={S}", f"GET / ?token={R}", id="token-as-the-version"),
        pytest.param(f"GET /?token={S}", f"GET /?token={R}", id="no-version"),
        pytest.param(f"/?token={S}", f"/?token={R}", id="one-word"),
        pytest.param(f"?token={S} / HTTP/1.1", f"?token={R} / HTTP/1.1", id="token-as-the-method"),
    ],
)
def test_redact_request_line(line: str, expected: str) -> None:
    assert rd.redact_request_line(line) == expected
    assert rd.redact_request_line(expected) == expected  # idempotent
    assert S not in rd.redact_text(line) or "'" in line  # free text finds the pair as well


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(f"http://h/?token={S}", f"http://h/?token={R}", id="referer"),
        pytest.param(
            f"https://h.example.ts.net:8443/a=b?token={S}",
            f"https://h.example.ts.net:8443/a=b?token={R}",
            id="referer-path-a=b",
        ),
        pytest.param(
            f"http://h/report;view=all?x=1&Token={S}#top",
            f"http://h/report;view=all?x=1&Token={R}#top",
            id="referer-path-parameter-fragment",
        ),
        pytest.param(
            f"http://[fd7a:115c:a1e0::1]:5000/?%74oken={S}",
            f"http://[fd7a:115c:a1e0::1]:5000/?%74oken={R}",
            id="referer-v6-encoded",
        ),
        pytest.param("http://h/a?b=c", "http://h/a?b=c", id="referer-no-secret"),
        # PATH_INFO is decoded: an encoded "?" becomes one.
        pytest.param(f"/a?token={S}", f"/a?token={R}", id="decoded-path"),
        pytest.param("", "", id="empty"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert rd.redact_url(url) == expected
    assert rd.redact_url(expected) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(f"token={S}", f"token={R}", id="alone"),
        pytest.param(f"a=b?c&token={S}", f"a=b?c&token={R}", id="after-a-?-in-a-value"),
        pytest.param(f"a=1;token={S}&b=2", f"a=1;token={R}&b=2", id="semicolon"),
        pytest.param(f"TOKEN={S}&token={S}", f"TOKEN={R}&token={R}", id="twice"),
        pytest.param(f"%74oken={S}", f"%74oken={R}", id="encoded"),
        pytest.param("token=", f"token={R}", id="empty"),
        pytest.param("a=1&b=2", "a=1&b=2", id="kept"),
    ],
)
def test_redact_query(query: str, expected: str) -> None:
    assert rd.redact_query(query) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f"Invalid HTTP request line: 'GET /a=b?token={S} HTTP/1.1 x'",
            f"Invalid HTTP request line: 'GET /a=b?token={R} HTTP/1.1 x'",
            id="gunicorn-error-path-a=b",
        ),
        pytest.param(
            f"code 400, message Bad request syntax ('GET /report;v=1?token={S} junk')",
            f"code 400, message Bad request syntax ('GET /report;v=1?token={R} junk')",
            id="werkzeug-error",
        ),
        pytest.param(f"<a href=/?token={S}>", f"<a href=/?token={R}>", id="html"),
        pytest.param("a=1 b=2 token", "a=1 b=2 token", id="no-secret"),
        pytest.param("no equals sign at all", "no equals sign at all", id="no-equals"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert rd.redact_text(text) == expected
    assert rd.redact_text(expected) == expected


def test_every_value_end_is_a_name_end() -> None:
    """The scan resumes at a value's end as at a name end: each value end must be one."""
    for pattern in (rd._TEXT_VALUE_END, rd._QUERY_VALUE_END, rd._PATH_VALUE_END):
        for code in range(128):
            if pattern.match(chr(code)):
                assert chr(code) in rd._NAME_ENDS, (pattern.pattern, chr(code))


# ---- the atoms: secrets, URL fields, and everything else as it is -----------------------------


ATOMS = {
    "h": "100.64.0.41",
    "r": f"GET /a=b?token={S} HTTP/1.1",
    "U": "/a=b",
    "q": f"token={S}",
    "f": f"http://h/report;view=all?token={S}",
    "u": "token-user",
    "a": "curl/8",
    "{authorization}i": f"Bearer {S}",
    "{cookie}i": f"tailnet_session={S}",
    "{referer}i": f"http://h/a=b?token={S}",
    "{x-forwarded-uri}i": f"/a=b?token={S}",
    "{x-original-uri}i": f"/a=b?token={S}",
    "{set-cookie}o": f"tailnet_session={S}; HttpOnly",
    "{location}o": f"/next?token={S}",
    "{raw_uri}e": f"/report;view=all?token={S}",
    "{request_uri}e": f"/a=b?token={S}",
    "{query_string}e": f"a=b&token={S}",
    "{path_info}e": f"/a?token={S}",
    "{http_referer}e": f"http://h/a=b?token={S}",
    "{http_x_forwarded_uri}e": f"/a=b?token={S}",
    "{wsgi.version}e": (1, 0),
}


def test_url_and_secret_atoms_are_redacted() -> None:
    redacted = rd.redact_atoms(ATOMS)
    assert set(redacted) == set(ATOMS)
    assert S not in repr(redacted)
    assert redacted["r"] == f"GET /a=b?token={R} HTTP/1.1"
    assert redacted["f"] == f"http://h/report;view=all?token={R}"
    assert redacted["{raw_uri}e"] == f"/report;view=all?token={R}"
    assert redacted["u"] == "-"
    assert redacted["{authorization}i"] == R
    for kept in ("h", "U", "a", "{wsgi.version}e"):
        assert redacted[kept] == ATOMS[kept], kept


def test_other_headers_are_logged_as_they_are() -> None:
    """Only the fields that can hold a URL are parsed: a User-Agent or any other header is not
    (so a long one costs nothing to log)."""
    atoms = {
        "a": f"agent token={S}",
        "{user-agent}i": f"agent token={S}",
        "{x-custom}i": "a" * 8000 + "&=",
        "{http_x_custom}e": "a" * 8000 + "&=",
    }
    assert rd.redact_atoms(atoms) == atoms


def test_atom_keys_are_matched_as_gunicorn_matches_them() -> None:
    """gunicorn lower-cases ``{...}`` keys (SafeAtoms); the one-letter atoms are case-sensitive:
    ``U`` (the path) is not ``u`` (the Basic user)."""
    redacted = rd.redact_atoms({"{Referer}i": f"/?token={S}", "U": "/p", "u": "x"})
    assert redacted == {"{Referer}i": f"/?token={R}", "U": "/p", "u": "-"}


# ---- werkzeug's request log ------------------------------------------------------------------


def _werkzeug_record(line: str, code: str = "303") -> logging.LogRecord:
    # What werkzeug.serving.WSGIRequestHandler.log_request hands to the "werkzeug" logger.
    return logging.LogRecord(
        "werkzeug",
        logging.INFO,
        __file__,
        1,
        '127.0.0.1 - - [06/Dec/2026 23:00:00] "%s" %s %s',
        (line, code, "-"),
        None,
    )


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(f"GET /a=b?token={S} HTTP/1.1", id="path-a=b"),
        pytest.param(f"GET /report;view=all?token={S} HTTP/1.1", id="path-parameter"),
        pytest.param(f"GET /?token=x {S} HTTP/1.1", id="decoded-space-in-value"),
        pytest.param(f'GET /?token="{S} HTTP/1.1', id="quote-before-value"),
        pytest.param(f"\x1b[1m\x1b[31mGET /a=b?token={S} HTTP/1.1\x1b[0m", id="ansi"),
    ],
)
def test_filter_redacts_werkzeugs_request_line(line: str) -> None:
    record = _werkzeug_record(line)
    assert rd.RedactingFilter().filter(record)
    message = logging.Formatter().format(record)
    assert S not in message
    assert message.startswith('127.0.0.1 - - [06/Dec/2026 23:00:00] "')
    assert message.endswith('" 303 -')
    assert f"token={R}" in message


def test_filter_redacts_free_text_and_a_traceback_linearly() -> None:
    try:
        raise ValueError(f"bad /a=b?token={S} " + "a" * 20_000 + "&=")
    except ValueError:
        record = logging.LogRecord(
            "werkzeug", logging.ERROR, __file__, 1, "Error on %s", (f"/a=b?token={S}",), None
        )
        record.exc_info = sys.exc_info()
    record.stack_info = f"Stack:\n  get('/a=b?token={S}')"
    assert rd.RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert S not in formatted
    assert f"Error on /a=b?token={R}" in formatted
    assert f"ValueError: bad /a=b?token={R}" in formatted


# ---- the bound: at most MOST_CANDIDATES names examined, then the rest is redacted ---------------


def test_too_many_candidate_names_redact_the_rest_of_the_field() -> None:
    head = "&".join(f"%41{i}=x" for i in range(rd.MOST_CANDIDATES))
    query = f"{head}&a=1&token={S}&b=2"
    redacted = rd.redact_query(query)
    assert S not in redacted
    assert redacted == f"{head}&a=1&{R}"  # from the first name not examined


def test_a_long_name_that_may_spell_token_counts_as_secret() -> None:
    name = "+" * rd.LONGEST_NAME + "token"
    assert rd.redact_query(f"{name}={S}") == f"{name}={R}"
    long_other = "%" + "a" * rd.LONGEST_NAME  # over-redacting a long odd name costs nothing
    assert rd.redact_query(f"{long_other}=v") == f"{long_other}={R}"


def test_non_ascii_ends_a_name() -> None:
    assert rd.redact_query(f"\u00e9token={S}") == f"\u00e9token={R}"
    assert rd.redact_query(f"x\u3000token={S}") == f"x\u3000token={R}"
    assert rd.redact_query("caf\u00e9=cr\u00e8me&t=1") == "caf\u00e9=cr\u00e8me&t=1"


# ---- Hardening 1: linear time ------------------------------------------------------------------

#: Inputs that made the old pattern backtrack (a long run of name characters, then "&="), and the
#: ones that make this scan do the most work per character.
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "name-run-then-&=": lambda n: "a" * (n - 2) + "&=",
    "t-run-then-&=": lambda n: "t" * (n - 2) + "&=",
    "percent-run-then-=": lambda n: "%" * (n - 1) + "=",
    "token-run-then-&=": lambda n: "token" * (n // 5) + "&=",
    "pairs-a=": lambda n: "a=" * (n // 2),
    "percent-pairs": lambda n: "%41%41=&" * (n // 8),
    "token-pairs": lambda n: "token=&" * (n // 7),
    "spaces-then-=": lambda n: " " * (n - 2) + "%=",
    "non-ascii": lambda n: "\u00e9%&=" * (n // 4),
}


def _best(function: Callable[[str], object], text: str, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        function(text)
        best = min(best, time.perf_counter() - started)
    return best


_SCAN = re.compile(r"[^\x00]*")


def linear_scan(text: str) -> object:
    """The baseline: one regex pass that visits every character of the same input."""
    return _SCAN.match(text)


#: How many times a linear scan of the same input redaction may cost (about 12 at worst on the
#: development machine), and how much four times the input may cost (4 when linear, 16 when
#: quadratic).
# A bound on the ratio to a regex scan (C code), which a tracer such as coverage's does not slow:
# under a tracer the Python side costs several times more, so the bound is wider there. The old
# backtracking pattern cost tens of thousands of scans at 8 kB, far beyond either bound.
VERSUS_SCAN = 40.0 * (5 if sys.gettrace() is not None else 1)
GROWTH = 8.0

REDACTORS: dict[str, Callable[[str], str]] = {
    "request-line": lambda text: rd.redact_request_line(f"GET /{text} HTTP/1.1"),
    "url": rd.redact_url,
    "query": rd.redact_query,
    "text": rd.redact_text,
}


def cost_ratio(function: Callable[[str], object], text: str, limit: float) -> float:
    """``function``'s cost over a linear scan's on ``text``, the best of a few tries when it
    exceeds ``limit`` (a loaded machine only makes one run slower); a ratio far beyond the limit
    fails at once (the old pattern took seconds)."""
    ratio = float("inf")
    for _ in range(4):
        ratio = min(ratio, _best(function, text) / _best(linear_scan, text))
        if ratio < limit or ratio > 100 * limit:
            break
    return ratio


@pytest.mark.parametrize("redactor", list(REDACTORS), ids=list(REDACTORS))
@pytest.mark.parametrize("make", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_redaction_time_is_linear(make: Callable[[int], str], redactor: str) -> None:
    """Redacting costs a small multiple of a linear scan of the same text, at 8 kB and at 64 kB,
    and four times the input costs about four times as much."""
    function = REDACTORS[redactor]
    small, large = make(8_192), make(65_536)
    assert (ratio := cost_ratio(function, small, VERSUS_SCAN)) < VERSUS_SCAN, f"8 kB: {ratio:.0f}x"
    assert (ratio := cost_ratio(function, large, VERSUS_SCAN)) < VERSUS_SCAN, f"64 kB: {ratio:.0f}x"
    middle = make(16_384)
    for _ in range(4):
        growth = _best(function, large) / _best(function, middle)
        if growth < GROWTH:
            break
    assert growth < GROWTH, f"x4 input cost x{growth:.1f}"
