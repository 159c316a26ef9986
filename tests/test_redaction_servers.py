"""Redaction under real servers: gunicorn with an access log and ``flask run``'s request log.

Hardening 1: a request made to cost the old pattern O(n^2) (a long run of name characters, then
``&=``), in the request line or in 30 headers of 8 kB, costs about what a harmless request of the
same size costs, measured in the same run. Hardening 3: a token link whose path holds
``name=value`` (``/a=b?token=...``, ``/report;view=all?token=...``) logs the browser in and the
token reaches no log line. Everything runs on 127.0.0.1 with the loopback bypass off (so a token
link is a real login); no root needed.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import example_cli, serving_example_app
from .gunicorn_helpers import free_port, gunicorn_env, request, running

R = "[redacted]"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: gunicorn's default limits (limit_request_line, limit_request_field_size).
GUNICORN_LINE, GUNICORN_FIELD = 4094, 8190
#: How many times a harmless request of the same size the adversarial one may take (about 1 now;
#: 300 for the old pattern on gunicorn's 4 kB line, a minute and a half for flask run's 60 kB one).
SLOWER = 5.0
#: ``name=value`` paths of token links (Hardening 3).
PATHS = ["/a=b", "/report;view=all", "/x=1/y=2;z=3"]


def _exchange(port: int, raw: bytes, timeout: float) -> tuple[bytes, float]:
    """Send ``raw`` to 127.0.0.1:port, read the answer to its end: its status line and the
    seconds it took (``timeout`` when the server did not answer in time)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(raw)
        received = b""
        try:
            while chunk := conn.recv(65536):  # "Connection: close": the server ends it
                received += chunk
        except TimeoutError:
            return b"(no answer)", timeout
    return received.split(b"\r\n", 1)[0], time.perf_counter() - started


def _compare(port: int, harmless: bytes, adversarial: bytes) -> tuple[float, bytes, bytes]:
    """How many times the harmless request the adversarial one takes: each sent five times, in
    turn, and the best time of each kept (a loaded machine only ever makes one slower); and both
    status lines."""
    ok_status, baseline = _exchange(port, harmless, timeout=30)
    bad_status, elapsed = b"", float("inf")
    for _ in range(5):
        # A cut-off only, so that the old quadratic code fails instead of hanging: far above SLOWER.
        cutoff = max(100 * baseline, 5.0)
        bad_status, took = _exchange(port, adversarial, timeout=cutoff)
        elapsed = min(elapsed, took)
        if took >= cutoff:
            break
        ok_status, took = _exchange(port, harmless, timeout=30)
        baseline = min(baseline, took)
    return elapsed / baseline, ok_status, bad_status


def _line(target: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: evil.example", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _target_of_length(length: int, adversarial: bool) -> str:
    """A request target of ``length`` characters: a run of name characters then ``&=`` (the old
    pattern's worst case), or a path of the same length with no ``=`` at all."""
    if adversarial:
        return "/" + "a" * (length - 3) + "&="
    return "/" + ("ab/" * length)[: length - 1]


# ---- gunicorn with an access log ---------------------------------------------------------------

ACCESS_FORMAT = (
    '%(h)s "%(r)s" %(s)s U=%(U)s q=%(q)s f="%(f)s" ref=%({referer}i)s raw=%({raw_uri}e)s '
    'loc=%({location}o)s "%(a)s"'
)


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, str]]:
    tmp = tmp_path_factory.mktemp("gunicorn-redaction")
    port = free_port("127.0.0.1")
    state_dir, access_log = tmp / "state", tmp / "access.log"
    with running(
        [("127.0.0.1", port)],
        state_dir=state_dir,
        stderr_path=tmp / "gunicorn.log",
        workers=1,  # every request to the same worker: the timings compare like with like
        extra=["--access-logfile", str(access_log), "--access-logformat", ACCESS_FORMAT],
        env=gunicorn_env(state_dir, FLASK_TAILNET_LOCAL_BYPASS="false"),
    ):
        yield port, access_log, (state_dir / "token").read_text().strip()


def _access_log(path: Path, lines: int) -> str:
    deadline = time.monotonic() + 10
    while path.read_text().count("\n") < lines and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.read_text()


@pytest.mark.parametrize("path", PATHS)
def test_gunicorn_token_link_with_name_value_path(
    gunicorn_server: tuple[int, Path, str], path: str
) -> None:
    """Hardening 3: the link logs the browser in (303 to the same path, a session cookie) and
    neither the request line, the raw URI, the path nor a Referer holding the link is logged with
    the token."""
    port, access_log, token = gunicorn_server
    before = access_log.read_text().count("\n")
    link = request("127.0.0.1", port, f"{path}?token={token}")
    assert link.status == 303, link.body
    assert link.headers["location"] == path
    session = link.headers["set-cookie"].split(";", 1)[0]
    whoami = request("127.0.0.1", port, "/api/whoami", headers={"Cookie": session})
    assert whoami.status == 200
    referred = request(
        "127.0.0.1",
        port,
        "/api/whoami",
        headers={"Cookie": session, "Referer": f"http://127.0.0.1:{port}{path}?token={token}"},
    )
    assert referred.status == 200
    logged = _access_log(access_log, before + 3)
    assert logged.count("\n") >= before + 3
    assert token not in logged
    assert f'"GET {path}?token={R} HTTP/1.1" 303' in logged
    assert f"raw={path}?token={R}" in logged
    assert f'f="http://127.0.0.1:{port}{path}?token={R}"' in logged


def test_gunicorn_request_line_at_its_limit_costs_what_a_harmless_one_does(
    gunicorn_server: tuple[int, Path, str],
) -> None:
    """Hardening 1: a refused request line of gunicorn's full 4094 bytes, made of the old
    pattern's worst case, against one of the same length without ``=``."""
    port, _, _ = gunicorn_server
    length = GUNICORN_LINE - len("GET  HTTP/1.1")
    ratio, ok, bad = _compare(
        port, _line(_target_of_length(length, False)), _line(_target_of_length(length, True))
    )
    assert ok.startswith(b"HTTP/1.1 403"), ok
    assert bad.startswith(b"HTTP/1.1 403"), bad
    print(f"gunicorn, 4094-byte request line: {ratio:.2f}x a harmless one")
    assert ratio < SLOWER, f"{ratio:.1f}x a harmless request line of the same length"


def test_gunicorn_thirty_8k_headers_cost_what_harmless_ones_do(
    gunicorn_server: tuple[int, Path, str],
) -> None:
    """Hardening 1: 30 headers of 8 kB (gunicorn's field limit) made of the old pattern's worst
    case kept a worker busy until the arbiter killed it; now headers that hold no URL are not
    parsed, and a Referer that does is parsed in linear time."""
    port, _, _ = gunicorn_server
    size = GUNICORN_FIELD - len("X-Pad-00: ") - 2

    def headers(value: str) -> list[tuple[str, str]]:
        pads = [(f"X-Pad-{i:02}", value) for i in range(29)]
        return [*pads, ("Referer", "http://h/?" + value[10:])]

    ratio, ok, bad = _compare(
        port, _line("/", headers("a" * size)), _line("/", headers("a" * (size - 2) + "&="))
    )
    assert ok.startswith(b"HTTP/1.1 403"), ok
    assert bad.startswith(b"HTTP/1.1 403"), bad
    print(f"gunicorn, 30 headers of 8 kB: {ratio:.2f}x harmless ones")
    assert ratio < SLOWER, f"{ratio:.1f}x harmless headers of the same size"


# ---- flask run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flask_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, str]]:
    tmp = tmp_path_factory.mktemp("flask-run-redaction")
    state_dir, log_path = tmp / "state", tmp / "server.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLASK_TAILNET_", "TAILNET_"))},
        "FLASK_TAILNET_STATE_DIR": str(state_dir),
        "FLASK_TAILNET_LOCAL_BYPASS": "false",
        "PYTHONUNBUFFERED": "1",
    }
    with serving_example_app("127.0.0.1", env, log_path) as port:
        yield port, log_path, example_cli(env, "token")


def _log_holds(path: Path, text: str) -> str:
    """The server's log once it holds ``text``, without werkzeug's colour codes."""
    deadline = time.monotonic() + 10
    while text not in (logged := _ANSI.sub("", path.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    return logged


@pytest.mark.parametrize("path", PATHS)
def test_flask_run_token_link_with_name_value_path(
    flask_run: tuple[int, Path, str], path: str
) -> None:
    """Hardening 3 under ``flask run``: werkzeug's request log line holds no token."""
    port, log_path, token = flask_run
    link = request("127.0.0.1", port, f"{path}?token={token}")
    assert link.status == 303, link.body
    assert link.headers["location"] == path
    session = link.headers["set-cookie"].split(";", 1)[0]
    assert request("127.0.0.1", port, "/api/whoami", headers={"Cookie": session}).status == 200
    logged = _log_holds(log_path, f"GET {path}?token={R} HTTP/1.1")
    assert f'"GET {path}?token={R} HTTP/1.1" 303' in logged
    request_log = [line for line in logged.splitlines() if '"GET ' in line]
    assert not [line for line in request_log if token in line]


def test_flask_run_60k_request_line_costs_what_a_harmless_one_does(
    flask_run: tuple[int, Path, str],
) -> None:
    """Hardening 1: a refused 60 kB request line of the old pattern's worst case stalled
    ``flask run`` for 93 s; now it costs what a refused 60 kB line without ``=`` costs."""
    port, log_path, _ = flask_run
    length = 60_000
    ratio, ok, bad = _compare(
        port, _line(_target_of_length(length, False)), _line(_target_of_length(length, True))
    )
    assert ok.startswith(b"HTTP/1.1 403"), ok
    assert bad.startswith(b"HTTP/1.1 403"), bad
    print(f"flask run, 60 kB request line: {ratio:.2f}x a harmless one")
    assert ratio < SLOWER, f"{ratio:.1f}x a harmless request line of the same length"
    assert "&=" in _log_holds(log_path, "a&= HTTP/1.1")  # it was logged, not skipped
