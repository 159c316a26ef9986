"""Fuzzing the redaction paths: random and adversarial request lines, query strings, Referers and
log messages up to the servers' limits (gunicorn: 4094-byte request line, 8190-byte header;
``flask run``: 64 kB request line), each with a real token link planted in it.

Two properties: no planted token survives redaction, and each call costs at most a multiple of a
linear scan of the same input plus the fixed budget of names one field may make the scan examine,
both measured in the same run (never an absolute number of seconds).
"""

from __future__ import annotations

import functools
import logging
import random
import string
import time
from collections.abc import Callable

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flask_tailnet import redaction as rd

from .test_redaction import linear_scan

TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"
#: Spellings of the parameter name that the guard (or a careless client) reads as ``token``.
SPELLINGS = [
    "token",
    "TOKEN",
    "Token",
    "%74oken",
    "tok%65n",
    "%74%6f%6b%65%6e",
    "%2574oken",
    "token+",
    "+token",
    "%20token",
]
#: Characters a fuzzed target is made of: every separator the parser knows, escapes, name
#: characters, letters of ``token``, a few outside ASCII.
TARGET_CHARS = "aAtTokenK0123456789%+=&;/?#.-_~!$'()*,:@[]\"<>\u00e9\u212a\u3000"
#: What a request target may not hold under gunicorn (a space ends it).
LIMITS = {"gunicorn-line": 4094, "gunicorn-header": 8190, "werkzeug-line": 65536}

WERKZEUG_REQUEST = '127.0.0.1 - - [06/Dec/2026 23:00:00] "%s" %s %s'


def _redactions(target: str) -> dict[str, tuple[str, int, Callable[[], str]]]:
    """Every place a target reaches a log line: the text it redacts there, how many fields (each
    with its own budget of names), and the code that redacts it."""
    line = f"GET {target} HTTP/1.1"

    def werkzeug_request_log() -> str:
        record = logging.LogRecord(
            "werkzeug", logging.INFO, __file__, 1, WERKZEUG_REQUEST, (line, "303", "-"), None
        )
        rd.RedactingFilter().filter(record)
        return record.getMessage()

    def werkzeug_error_log() -> str:
        message = "code 400, message Bad request syntax (%r)"
        record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1, message, (line,), None)
        rd.RedactingFilter().filter(record)
        return record.getMessage()

    query = target.partition("?")[2]
    referer = f"https://host.example.ts.net{target}"
    atoms = {
        "r": line,
        "q": query,
        "f": referer,
        "{referer}i": referer,
        "{raw_uri}e": target,
        "{query_string}e": query,
    }
    return {
        "request-line": (line, 2, lambda: rd.redact_request_line(line)),
        "url": (target, 2, lambda: rd.redact_url(target)),
        "referer": (referer, 2, lambda: rd.redact_url(referer)),
        "query": (query, 1, lambda: rd.redact_query(query)),
        "text": (line, 1, lambda: rd.redact_text(f"Invalid request line: {line!r}")),
        "atoms": ("".join(atoms.values()), 10, lambda: repr(rd.redact_atoms(atoms))),
        "werkzeug-request": (line, 2, werkzeug_request_log),
        "werkzeug-error": (line, 1, werkzeug_error_log),
    }


def _assert_redacted(target: str, token: str) -> None:
    for place, (_, _, redact) in _redactions(target).items():
        assert token not in redact(), f"{place}: {target[:200]!r}"


# ---- hypothesis: structure -------------------------------------------------------------------

junk = st.text(alphabet=TARGET_CHARS.replace("?", "").replace("#", ""), max_size=40)
query_junk = st.text(alphabet=TARGET_CHARS, max_size=40)
tokens = st.text(alphabet=TOKEN_ALPHABET, min_size=20, max_size=64)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.lists(junk, max_size=6),
    before=st.lists(query_junk, max_size=8),
    after=st.lists(query_junk, max_size=4),
    spelling=st.sampled_from(SPELLINGS),
    token=tokens,
    end=st.sampled_from(["", "&", "#frag", "&x=1"]),
)
def test_no_planted_token_survives(
    path: list[str], before: list[str], after: list[str], spelling: str, token: str, end: str
) -> None:
    """A token parameter the guard would read (it follows the first ``?`` or an ``&``), whatever
    stands in the path and around it in the query, is never logged."""
    assume(not any(token in part for part in [*path, *before, *after]))
    query = "&".join([*before, f"{spelling}={token}", *after]) + end
    target = "/" + "/".join(path) + "?" + query
    _assert_redacted(target, token)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=TARGET_CHARS + " ", max_size=300))
def test_redaction_is_idempotent_and_keeps_text_without_a_secret_name(text: str) -> None:
    for redact in (rd.redact_text, rd.redact_url, rd.redact_query, rd.redact_request_line):
        once = redact(text)
        assert redact(once) == once
        if "%" not in text and "token" not in text.lower():
            assert once == text


# ---- seeded random: adversarial inputs up to the servers' limits, and their cost ---------------

BLOCKS: list[Callable[[random.Random], str]] = [
    lambda rng: "a" * rng.randrange(1, 4000),
    lambda rng: "t" * rng.randrange(1, 4000),
    lambda rng: "token" * rng.randrange(1, 800),
    lambda rng: "%" * rng.randrange(1, 4000),
    lambda rng: "%41" * rng.randrange(1, 1000),
    lambda rng: "a=" * rng.randrange(1, 2000),
    lambda rng: "%41=&" * rng.randrange(1, 800),
    lambda rng: "token=&" * rng.randrange(1, 500),
    lambda rng: "=" * rng.randrange(1, 2000),
    lambda rng: "&" * rng.randrange(1, 2000),
    lambda rng: "\u00e9%&=" * rng.randrange(1, 800),
    lambda rng: rng.choice(["&=", "?", ";", "/", "#", '"', "'", "<", "+", "%2574oken=", "TOKEN="]),
    lambda rng: "".join(rng.choice(TARGET_CHARS) for _ in range(rng.randrange(1, 200))),
]


def _adversarial(rng: random.Random, size: int, spaces: bool) -> str:
    pieces: list[str] = []
    while sum(map(len, pieces)) < size:
        piece = rng.choice(BLOCKS)(rng)
        pieces.append(piece if spaces or rng.random() < 0.8 else piece + " ")
    text = "".join(pieces)[:size]
    return text if spaces else text.replace(" ", "")


def _target(rng: random.Random, size: int, token: str, spaces: bool) -> str:
    """A target of about ``size`` characters: adversarial path and query, a token link planted
    at a random place of the query."""
    path = _adversarial(rng, rng.randrange(1, max(2, size // 2)), spaces).replace("?", "")
    path = path.replace("#", "")
    query = _adversarial(rng, max(1, size - len(path)), spaces)
    at = rng.randrange(len(query) + 1)
    plant = f"&{rng.choice(SPELLINGS)}={token}&"
    return f"/{path}?{query[:at]}{plant}{query[at:]}"


def _best(function: Callable[[], object], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def _budget_cost() -> float:
    """What the scan's fixed budget costs: a field with more names than it examines, each one
    an escape to decode."""
    field = "%41%41=&" * (rd.MOST_CANDIDATES + 1)
    return _best(lambda: rd.redact_query(field), rounds=20)


#: A call may cost this many linear scans of its input, plus this many times the fixed budget.
PER_SCAN, PER_BUDGET = 40.0, 3.0


def test_adversarial_inputs_up_to_the_limits() -> None:
    rng = random.Random(8)  # issue 8
    budget = _budget_cost()
    for case in range(60):
        limit_name = list(LIMITS)[case % len(LIMITS)]
        size = rng.randrange(LIMITS[limit_name] // 8, LIMITS[limit_name] - 40)
        token = "".join(rng.choice(TOKEN_ALPHABET) for _ in range(43))
        target = _target(rng, size, token, spaces=limit_name == "werkzeug-line")
        _assert_redacted(target, token)
        for place, (text, fields, redact) in _redactions(target).items():
            for _ in range(3):  # a loaded machine only makes one measurement slower
                cost = _best(redact)
                scan = _best(functools.partial(linear_scan, text))
                bound = PER_SCAN * scan + PER_BUDGET * fields * budget
                if cost < bound:
                    break
            assert cost < bound, (
                f"{place}, {limit_name} case {case} ({len(target)} chars): "
                f"{cost * 1e6:.0f} us, bound {bound * 1e6:.0f} us"
            )


def test_harmless_headers_cost_nothing_to_log() -> None:
    """Headers that hold no URL are not parsed: 30 adversarial headers of 8 kB cost no more than
    30 harmless ones (about a dict copy)."""
    rng = random.Random(81)
    adversarial = {f"{{x-pad-{i}}}i": _adversarial(rng, 8190, True) for i in range(30)}
    harmless = {key: "a" * len(value) for key, value in adversarial.items()}
    for _ in range(3):
        ratio = _best(lambda: rd.redact_atoms(adversarial)) / _best(
            lambda: rd.redact_atoms(harmless)
        )
        if ratio < 3:
            break
    assert ratio < 3
    assert rd.redact_atoms(adversarial) == adversarial
