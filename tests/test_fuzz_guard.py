"""Fuzzing the guard's parsing paths: every header and part of the request line that the guard or
its login pages read, with random and adversarial values up to the servers' limits.

For every value: no exception escapes (nothing logged at ERROR, no 500), the answer is one the
guard gives a tailnet peer without a credential, the protected page is never served, and the call
costs at most a bounded multiple of what the same request with a plain value of the same length
costs, measured in the same run (a quadratic parse of a 64 kB value costs seconds; a linear one,
about what the plain value costs).
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import TAILNET_HOST, TAILNET_PEER, make_app

#: werkzeug's development server reads lines of up to 64 kB; gunicorn's default limits are 4 kB
#: for the request line and 8 kB per header.
LIMIT = 65_000
#: How many times a plain request of the same length a fuzzed one may cost.
RATIO = 25
#: Every answer the guard gives a tailnet peer that has no credential.
EXPECTED = {200, 303, 400, 401, 403, 405, 413, 429}
PATHS = ["/", "/healthz", "/_tailnet/login", "/_tailnet/logout", "/missing"]
#: Where a 200 is a right answer without a credential: the exempt view and the login page.
OPEN_PATHS = {"/healthz", "/_tailnet/login"}

#: The environ key of each field, and how a value is placed in it.
FIELDS: dict[str, Callable[[str], dict[str, str]]] = {
    "Host": lambda v: {"HTTP_HOST": v},
    "Accept": lambda v: {"HTTP_ACCEPT": v},
    "Authorization": lambda v: {"HTTP_AUTHORIZATION": v},
    "Cookie": lambda v: {"HTTP_COOKIE": v},
    "query": lambda v: {"QUERY_STRING": v},
    "path": lambda v: {"PATH_INFO": "/" + v},
    "X-Forwarded-For": lambda v: {"HTTP_X_FORWARDED_FOR": v},
    "Origin": lambda v: {"HTTP_ORIGIN": v},
}

#: Pieces a value is made of: what the parsers split on, quote with, or backtrack over.
ADVERSARIAL = [" ", "\t", ";", ",", "=", "/", "%", '"', "\\", "&", ":", ".", "*", "[", "]"]
ADVERSARIAL += ["a", "0", "\xff", "\x00", "\x7f", "%FF", "%2F", "+", "?", "#", "@", "q=", "\r"]
PREFIXES = ["", "text/", "text/html;", "Basic ", "Bearer ", "bearer  ", "tailnet_session="]
PREFIXES += ["tailnet_session_csrf=", "token=", "next=", "http://", "100.64.0.1:5000", "[::1]:"]
PREFIXES += ["a=b; ", "1.2.3.4, ", "localhost:", "_tailnet/login?"]
LATIN1 = st.characters(min_codepoint=0, max_codepoint=255)


@st.composite
def values(draw: st.DrawFn) -> str:
    """A random short value, or a long adversarial run between a meaningful prefix and a tail."""
    if draw(st.booleans()):
        return draw(st.text(LATIN1, max_size=300))
    unit = "".join(draw(st.lists(st.sampled_from(ADVERSARIAL), min_size=1, max_size=4)))
    count = draw(st.integers(min_value=1, max_value=LIMIT // len(unit)))
    return draw(st.sampled_from(PREFIXES)) + unit * count + draw(st.text(LATIN1, max_size=20))


def environ(path: str, method: str, accept: str, **overrides: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "100.64.0.1",
        "SERVER_PORT": "5000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": TAILNET_PEER,
        "HTTP_HOST": TAILNET_HOST,
        "HTTP_ACCEPT": accept,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    env.update(overrides)
    return env


def answer(app: Flask, env: dict[str, Any]) -> tuple[int, float]:
    """The status of one request and its cost in seconds (the best of two runs, so a pause of
    the machine during one run does not count)."""
    best, seen = float("inf"), []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(status)

    for _ in range(2):
        run = dict(env, **{"wsgi.input": io.BytesIO(b"")})
        start = time.perf_counter()
        result = app(run, start_response)
        b"".join(result)
        getattr(result, "close", lambda: None)()
        best = min(best, time.perf_counter() - start)
    return int(seen[-1][:3]), best


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, _Errors, float]]:
    """The app as a server runs it, a handler that collects every ERROR record, and the cost of
    the most expensive ordinary answer (a login page, a redirect, a 401), measured now."""
    app = make_app(Path(tmp_path_factory.mktemp("fuzz")) / "state")
    app.config["TESTING"] = False
    app.config["SECRET_KEY"] = "k" * 32  # Flask's own session then parses the Cookie header
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    browser = "text/html,*/*;q=0.8"
    ordinary = [
        environ("/", "GET", "*/*"),
        environ("/", "GET", browser),
        environ("/_tailnet/login", "GET", browser),
        environ("/healthz", "GET", "*/*"),
    ]
    for env in ordinary:  # warm-up
        answer(app, env)
    ordinary_cost = max(min(answer(app, env)[1] for _ in range(5)) for env in ordinary)
    try:
        yield app, errors, ordinary_cost
    finally:
        logging.getLogger().removeHandler(errors)


def _plain(value: str) -> str:
    return "x" * len(value)


def check(served: tuple[Flask, _Errors, float], field: str, value: str, **request: str) -> None:
    """One fuzzed request against every assertion of this module."""
    app, errors, ordinary_cost = served
    place = FIELDS[field]
    path, method, accept = request["path"], request["method"], request["accept"]
    errors.records.clear()
    status, cost = answer(app, environ(path, method, accept, **place(value)))
    _, plain_cost = answer(app, environ(path, method, accept, **place(_plain(value))))
    assert status in EXPECTED, f"{field}: {status}"
    assert not errors.records, f"{field}: {errors.records[0].getMessage()}"
    if status == 200:
        assert path in OPEN_PATHS or (field == "path" and value in ("healthz", "_tailnet/login"))
    bound = RATIO * (plain_cost + ordinary_cost)
    for _ in range(5):  # load slows single measurements; a superlinear parse is slow every time
        if cost < bound:
            break
        cost = min(cost, answer(app, environ(path, method, accept, **place(value)))[1])
        plain = answer(app, environ(path, method, accept, **place(_plain(value))))[1]
        bound = max(bound, RATIO * (plain + ordinary_cost))
    assert cost < bound, (
        f"{field} ({len(value)} chars): {cost * 1000:.1f} ms, bound {bound * 1000:.1f}"
    )


@pytest.mark.parametrize("field", FIELDS.keys())
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    value=values(),
    path=st.sampled_from(PATHS),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    accept=st.sampled_from(["*/*", "text/html,*/*;q=0.8", "application/json"]),
)
def test_fuzzed_field_gets_an_expected_answer_in_bounded_time(
    served: tuple[Flask, _Errors, float],
    field: str,
    value: str,
    path: str,
    method: str,
    accept: str,
) -> None:
    check(served, field, value, path=path, method=method, accept=accept)


SPACES = " " * 30_000
#: Values known to hurt a parser: (field, value, path, method).
KNOWN: dict[str, tuple[str, str, str, str]] = {
    "accept-spaces-inside-a-type": ("Accept", "text/" + SPACES + "html", "/", "GET"),
    "accept-spaces-before-a-parameter": ("Accept", "text/html" + SPACES + "a;q=1", "/", "GET"),
    "query-not-utf8-on-the-login-page": ("query", "next=\xff\xfe", "/_tailnet/login", "GET"),
    "query-not-utf8-on-a-login-post": ("query", "\xff", "/_tailnet/login", "POST"),
    "query-thousands-of-token-parameters": ("query", "token=x&" * 8000, "/", "GET"),
    "query-thousands-of-parameters-on-the-login-page": (
        "query",
        "a=b&" * 16000,
        "/_tailnet/login",
        "GET",
    ),
    "cookie-thousands-of-pairs": ("Cookie", "a=b; " * 13000, "/", "GET"),
    "cookie-escaped-quotes": ("Cookie", 'a="' + '\\"' * 30000 + '"', "/", "GET"),
    "cookie-session-name-repeated": ("Cookie", "xtailnet_session=;" * 3500, "/", "GET"),
    "authorization-basic-after-spaces": ("Authorization", SPACES + "Basic a", "/", "GET"),
    "authorization-bearer-60kB": ("Authorization", "Bearer " + "a" * 60000, "/", "GET"),
    "host-60kB": ("Host", "a" * 60000, "/", "GET"),
    "host-brackets": ("Host", "[" * 60000, "/", "GET"),
    "path-60kB-of-slashes": ("path", "/" * 60000, "/", "GET"),
    "path-60kB-of-escapes": ("path", "%" * 60000, "/", "GET"),
    "forwarded-for-thousands-of-hops": ("X-Forwarded-For", "1.2.3.4," * 8000, "/", "GET"),
    "origin-60kB-on-post": ("Origin", "http://" + "a" * 60000, "/", "POST"),
    "origin-60kB-on-login-post": ("Origin", "http://" + ":" * 60000, "/_tailnet/login", "POST"),
}


@pytest.mark.parametrize(("field", "value", "path", "method"), KNOWN.values(), ids=KNOWN.keys())
def test_known_hard_values(
    served: tuple[Flask, _Errors, float], field: str, value: str, path: str, method: str
) -> None:
    for accept in ("*/*", "text/html,*/*;q=0.8"):
        check(served, field, value, path=path, method=method, accept=accept)
