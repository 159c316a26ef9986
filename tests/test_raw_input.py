"""Requests whose bytes are not UTF-8, or not sensible, get a 4xx (or the usual redirect or 401)
from the guard and its login pages: never a 500.

WSGI hands every request-line and header byte to the app as a latin-1 character. A server that
passes raw bytes (or middleware that rewrites the environ) can so give the guard a query string,
a path, a cookie or a form that is not UTF-8; werkzeug's ``request.args`` raises
``UnicodeDecodeError`` on such a query string. Each row is one such request, as a raw environ.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from gunicorn.http.errors import InvalidChunkSize

from .conftest import TAILNET_HOST, TAILNET_PEER, make_app

HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
LOGIN = "/_tailnet/login"


def environ(**overrides: Any) -> dict[str, Any]:
    body = overrides.pop("body", b"")
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "100.64.0.1",
        "SERVER_PORT": "5000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": TAILNET_PEER,
        "HTTP_HOST": TAILNET_HOST,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
        env.setdefault("CONTENT_TYPE", "application/x-www-form-urlencoded")
    env.update(overrides)
    return env


def call(app: Flask, env: dict[str, Any]) -> tuple[int, dict[str, str]]:
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append((status, headers))

    result = app(env, start_response)
    b"".join(result)
    getattr(result, "close", lambda: None)()
    status, headers = seen[-1]
    return int(status[:3]), dict(headers)


@pytest.fixture
def served(state_dir: Path) -> Flask:
    """An app as a server runs it: exceptions become a 500, not a test failure."""
    app = make_app(state_dir)
    app.config["TESTING"] = False
    app.config["SECRET_KEY"] = "k" * 32  # so that Flask's own session reads the Cookie header
    return app


NOT_UTF8 = "\xff\xfe\xc3("  # latin-1 characters: the bytes ff fe c3 28, invalid as UTF-8
FORM_POST = {"REQUEST_METHOD": "POST", "HTTP_ORIGIN": f"http://{TAILNET_HOST}"}


class UnreadableBody(io.RawIOBase):
    """A request body the server fails to read, as a malformed chunked body does: werkzeug's
    development server raises ``OSError("Invalid chunk header")``, gunicorn its
    ``InvalidChunkSize`` (an ``OSError`` too)."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.error


def chunked_garbage(error: OSError) -> dict[str, Any]:
    return {
        **FORM_POST,
        "PATH_INFO": LOGIN,
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input_terminated": True,
        "wsgi.input": io.BufferedReader(UnreadableBody(error)),
    }


#: (environ overrides, the statuses that are a right answer)
ROWS: dict[str, tuple[dict[str, Any], set[int]]] = {
    "login-page-query-not-utf8": ({"PATH_INFO": LOGIN, "QUERY_STRING": "next=" + NOT_UTF8}, {400}),
    "login-page-query-name-not-utf8": ({"PATH_INFO": LOGIN, "QUERY_STRING": NOT_UTF8}, {400}),
    "login-page-query-percent-not-utf8": ({"PATH_INFO": LOGIN, "QUERY_STRING": "next=%FF"}, {200}),
    "login-post-query-not-utf8": (
        {**FORM_POST, "PATH_INFO": LOGIN, "QUERY_STRING": "next=" + NOT_UTF8, "body": b"csrf=x"},
        {400},
    ),
    "login-post-form-not-utf8": (
        {**FORM_POST, "PATH_INFO": LOGIN, "body": b"csrf=\xff&secret=\xfe&next=\xff"},
        {400},
    ),
    "login-post-multipart-garbage": (
        {
            **FORM_POST,
            "PATH_INFO": LOGIN,
            "CONTENT_TYPE": "multipart/form-data; boundary=zz",
            "body": b"--zz\r\n\xff\xfe\r\n",
        },
        {400},
    ),
    "login-post-chunk-size-garbage-werkzeug": (
        chunked_garbage(OSError("Invalid chunk header")),
        {400},
    ),
    "login-post-chunk-size-garbage-gunicorn": (
        chunked_garbage(InvalidChunkSize(b"zz")),
        {400},
    ),
    "login-post-cross-site-chunk-garbage": (
        {**chunked_garbage(OSError("Invalid chunk header")), "HTTP_ORIGIN": "http://evil"},
        {400, 403},
    ),
    "login-post-content-type-garbage": (
        {**FORM_POST, "PATH_INFO": LOGIN, "CONTENT_TYPE": "\xff/\xfe; charset=\xff", "body": b"a"},
        {400},
    ),
    "login-page-csrf-cookie-not-utf8": (
        {"PATH_INFO": LOGIN, "HTTP_COOKIE": "tailnet_session_csrf=" + NOT_UTF8},
        {200},
    ),
    "login-page-cookie-octal-escapes": (
        {"PATH_INFO": LOGIN, "HTTP_COOKIE": 'tailnet_session_csrf="\\377\\376"'},
        {200},
    ),
    "login-path-not-utf8": ({"PATH_INFO": LOGIN + NOT_UTF8}, {401}),
    "logout-query-not-utf8": (
        {**FORM_POST, "PATH_INFO": "/_tailnet/logout", "QUERY_STRING": NOT_UTF8},
        {303},
    ),
    "page-query-not-utf8-api": ({"QUERY_STRING": "q=" + NOT_UTF8}, {401}),
    "page-query-not-utf8-browser": ({"QUERY_STRING": "q=" + NOT_UTF8, "HTTP_ACCEPT": HTML}, {303}),
    "page-path-not-utf8-browser": ({"PATH_INFO": "/" + NOT_UTF8, "HTTP_ACCEPT": HTML}, {303}),
    "token-link-not-utf8": ({"QUERY_STRING": "token=" + NOT_UTF8 + "&a=" + NOT_UTF8}, {401}),
    "token-name-not-utf8": ({"QUERY_STRING": NOT_UTF8 + "token=x"}, {401}),
    "session-cookie-not-utf8": ({"HTTP_COOKIE": "tailnet_session=" + NOT_UTF8}, {401}),
    "app-session-cookie-not-utf8": ({"HTTP_COOKIE": "session=" + NOT_UTF8}, {401}),
    "bearer-not-latin1-text": ({"HTTP_AUTHORIZATION": "Bearer " + NOT_UTF8}, {401}),
    "basic-not-base64": ({"HTTP_AUTHORIZATION": "Basic " + NOT_UTF8}, {401}),
    "basic-not-utf8-inside": ({"HTTP_AUTHORIZATION": "Basic /w==:"}, {401}),
    "host-not-utf8": ({"HTTP_HOST": NOT_UTF8}, {403}),
    "origin-not-utf8-on-post": ({"REQUEST_METHOD": "POST", "HTTP_ORIGIN": NOT_UTF8}, {401}),
    "accept-not-utf8": ({"HTTP_ACCEPT": "text/" + NOT_UTF8}, {401}),
    "forwarded-for-not-utf8": ({"HTTP_X_FORWARDED_FOR": NOT_UTF8}, {401}),
    "script-name-not-utf8": ({"SCRIPT_NAME": "/" + NOT_UTF8, "HTTP_ACCEPT": HTML}, {303}),
    "method-garbage": ({"REQUEST_METHOD": NOT_UTF8}, {401}),
}


@pytest.mark.parametrize(("overrides", "expected"), ROWS.values(), ids=ROWS.keys())
def test_undecodable_input_gets_a_4xx_never_a_500(
    served: Flask,
    overrides: dict[str, Any],
    expected: set[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        status, _ = call(served, environ(**overrides))
    assert status in expected
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an exception was logged"


def test_the_login_redirect_keeps_the_query_bytes_as_sent(served: Flask) -> None:
    """A query that is not UTF-8 comes back from the login page percent-encoded byte for byte,
    not turned into other characters."""
    status, headers = call(
        served, environ(PATH_INFO="/page", QUERY_STRING="q=\xff&r=%41", HTTP_ACCEPT=HTML)
    )
    assert status == 303
    location = urlsplit(headers["Location"])
    assert location.path == LOGIN
    assert location.query == "next=%2Fpage%3Fq%3D%FF%26r%3D%2541"
    # The login page reads it back as werkzeug does: the byte that is not UTF-8 stays escaped.
    status, _ = call(served, environ(PATH_INFO=LOGIN, QUERY_STRING=location.query))
    assert status == 200


def test_a_token_link_keeps_the_other_parameters_bytes(served: Flask, token: str) -> None:
    status, headers = call(
        served, environ(PATH_INFO="/page", QUERY_STRING=f"a=\xff&token={token}&b=%20")
    )
    assert status == 303
    assert headers["Location"].endswith("/page?a=%FF&b=%20")
