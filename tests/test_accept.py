"""The browser test of a request without a credential: login redirect or 401, at a bounded cost.

werkzeug's ``Accept`` parser backtracks over a run of spaces inside a media range (30,000 spaces
cost seconds), and the guard asks this question of every GET without a credential. The guard's
own parser must give werkzeug's answer for what browsers and API clients send, and cost the same
for any value of the same length.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from flask_tailnet.accept import MAX_ACCEPT_LENGTH, prefers_html

from .conftest import TAILNET_HOST, TAILNET_PEER, addresses_on_lo, serving_example_app


def werkzeug_prefers_html(accept: str) -> bool:
    """What the guard used to ask werkzeug."""
    found = parse_accept_header(accept, MIMEAccept).best_match(["application/json", "text/html"])
    return found == "text/html"


BROWSERS = {
    "chrome": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    "firefox": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "firefox-old": "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,*/*;q=0.8",
    "safari": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "ie11": "text/html, application/xhtml+xml, image/jxr, */*",
    "lynx": "text/html, text/plain, text/sgml, */*;q=0.01",
    "w3m": "text/html, text/*;q=0.5, image/*",
    "upper-case": "TEXT/HTML,*/*;Q=0.8",
    "text-wildcard": "text/*",
}
API_CLIENTS = {
    "curl": "*/*",
    "python-requests": "*/*",
    "fetch-default": "*/*",
    "axios": "application/json, text/plain, */*",
    "httpie": "application/json, */*;q=0.5",
    "json-only": "application/json",
    "image-request": "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
    "html-refused": "text/html;q=0, */*",
    "html-equal-json-first": "application/json, text/html",
    "html-lower": "text/html;q=0.5, application/json",
    "html-variant-only": "text/html;level=1",
    "bad-quality": "text/html;q=2",
    "empty": "",
}


@pytest.mark.parametrize("accept", BROWSERS.values(), ids=BROWSERS.keys())
def test_browsers_prefer_html(accept: str) -> None:
    assert prefers_html(accept)
    assert werkzeug_prefers_html(accept)


@pytest.mark.parametrize("accept", API_CLIENTS.values(), ids=API_CLIENTS.keys())
def test_api_clients_do_not(accept: str) -> None:
    assert not prefers_html(accept)
    assert not werkzeug_prefers_html(accept)


@pytest.mark.parametrize("value", [None, 0, b"text/html"], ids=["missing", "int", "bytes"])
def test_not_a_string_is_not_a_browser(value: object) -> None:
    assert not prefers_html(value)


def test_an_over_long_header_is_not_a_browsers() -> None:
    padding = ",".join(["image/png"] * 200)
    assert len(padding) > MAX_ACCEPT_LENGTH
    assert not prefers_html("text/html," + padding)
    assert prefers_html("text/html," + padding[: MAX_ACCEPT_LENGTH - 20])


_TYPES = st.sampled_from(
    [
        "text/html",
        "application/json",
        "text/*",
        "application/*",
        "*/*",
        "application/xhtml+xml",
        "application/xml",
        "image/webp",
        "text/plain",
        "TEXT/HTML",
        "Application/JSON",
    ]
)
_QUALITIES = st.one_of(
    st.just(""),
    st.sampled_from(["0", "1", "0.5", "0.9", "0.8", "0.01", "1.0", "0.0", "0.50"]).map(
        lambda q: f";q={q}"
    ),
)
_RANGES = st.tuples(_TYPES, _QUALITIES).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(_RANGES, min_size=1, max_size=8), st.sampled_from([",", ", ", " , "]))
def test_same_answer_as_werkzeug_for_browser_grammar(ranges: list[str], sep: str) -> None:
    accept = sep.join(ranges)
    assert prefers_html(accept) == werkzeug_prefers_html(accept)


# ---- the cost through the guard -------------------------------------------------------------

SPACES = 30_000
#: Each row: an Accept header that made werkzeug backtrack (or could), and a plain one of the same
#: length, which is the baseline.
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "spaces-inside-a-type": lambda n: "text/" + " " * n + "html",
    "spaces-before-a-parameter": lambda n: "text/html" + " " * n + "x;q=1",
    "tabs-inside-a-type": lambda n: "text/" + "\t" * n + "html",
    "spaces-after-a-comma": lambda n: "text/html," + " " * n + "a/b",
    "many-empty-parameters": lambda n: "text/html" + ";" * n,
    "many-ranges": lambda n: "a/b," * (n // 4),
}


def _best_of(times: int, call: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("make", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_an_adversarial_accept_costs_what_a_plain_one_does(
    app: Flask, make: Callable[[int], str]
) -> None:
    client = app.test_client()
    value = make(SPACES)

    def get(accept: str) -> Callable[[], Any]:
        def run() -> Any:
            response = client.get(
                "/",
                base_url=f"http://{TAILNET_HOST}",
                environ_base={"REMOTE_ADDR": TAILNET_PEER},
                headers={"Accept": accept},
            )
            assert response.status_code == 401
            return response

        return run

    get("*/*")()  # warm-up
    baseline = _best_of(5, get("x" * len(value)))
    adversarial = _best_of(3, get(value))
    assert adversarial < 10 * baseline, (
        f"{adversarial * 1000:.1f} ms against {baseline * 1000:.2f} ms for a plain value"
    )


@pytest.mark.parametrize("make", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_within_the_length_limit_the_parse_is_linear(make: Callable[[int], str]) -> None:
    value = make(MAX_ACCEPT_LENGTH - 20)[:MAX_ACCEPT_LENGTH]
    plain = ",".join(["image/png;q=0.5"] * 100)[:MAX_ACCEPT_LENGTH]
    baseline = _best_of(5, lambda: [prefers_html(plain) for _ in range(50)])
    adversarial = _best_of(5, lambda: [prefers_html(value) for _ in range(50)])
    assert adversarial < 10 * baseline, (
        f"{adversarial * 1e6 / 50:.0f} us against {baseline * 1e6 / 50:.0f} us for a plain value"
    )


SERVER, CLIENT = "100.64.104.20", "100.64.104.21"


@pytest.mark.root
def test_flask_run_answers_an_adversarial_accept_as_fast_as_a_plain_one(tmp_path: Path) -> None:
    """Under the development server a 30,000-space Accept cost 5.5 s before any credential."""
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(tmp_path / "state")}
    with (
        addresses_on_lo([f"{SERVER}/32", f"{CLIENT}/32"]),
        serving_example_app(SERVER, env, tmp_path / "server.log") as port,
    ):

        def get(accept: str) -> Callable[[], bytes]:
            head = f"GET / HTTP/1.0\r\nHost: {SERVER}:{port}\r\nAccept: {accept}\r\n\r\n"

            def run() -> bytes:
                with socket.create_connection(
                    (SERVER, port), timeout=60, source_address=(CLIENT, 0)
                ) as conn:
                    conn.sendall(head.encode())
                    reply = b""
                    while chunk := conn.recv(65536):
                        reply += chunk
                assert reply.startswith(b"HTTP/1.1 401"), reply[:40]
                return reply

            return run

        value = ADVERSARIAL["spaces-inside-a-type"](SPACES)
        get("*/*")()
        baseline = _best_of(5, get("x" * len(value)))
        adversarial = _best_of(3, get(value))
    assert adversarial < 10 * baseline, (
        f"{adversarial * 1000:.1f} ms against {baseline * 1000:.2f} ms for a plain value"
    )
