"""The guard's per-process memory stays bounded, whatever the size of what refused clients send.

Unit tests of :class:`~flask_tailnet.caches.BoundedCache`; an in-process flood of distinct large
values in every header the guard reads, measured with tracemalloc; and a real ``flask run``
flooded with distinct 60 kB ``Host`` values, measured in /proc (needs root, for the addresses).
"""

from __future__ import annotations

import gc
import io
import os
import socket
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_tailnet.caches import BoundedCache

from .conftest import TAILNET_HOST, TAILNET_PEER, addresses_on_lo, make_app, serving_example_app
from .gunicorn_helpers import children

# ---- the cache type ------------------------------------------------------------------------


def test_stores_and_reads_through_the_plain_dict() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=4, max_key_size=10)
    entries = cache.entries
    assert cache.store("a", 1, 1) == 1
    assert entries["a"] == 1
    assert entries.get("b") is None
    assert type(entries) is dict  # the hit path is a plain dict lookup


def test_a_key_over_the_size_limit_is_never_stored() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=4, max_key_size=10)
    assert cache.store("x" * 11, 7, 11) == 7  # the value is still returned
    assert len(cache) == 0
    assert cache.size == 0


def test_full_by_count_empties_then_stores() -> None:
    cache: BoundedCache[int, int] = BoundedCache(max_entries=3, max_key_size=0)
    for n in range(3):
        cache.store(n, n)
    cache.store(3, 3)
    assert cache.entries == {3: 3}


def test_full_by_bytes_empties_then_stores() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=100, max_key_size=10, max_bytes=25)
    cache.store("a" * 10, 1, 10)
    cache.store("b" * 10, 2, 10)
    assert len(cache) == 2
    cache.store("c" * 10, 3, 10)  # 30 > 25: emptied first
    assert cache.entries == {"c" * 10: 3}
    assert cache.size == 10


def test_default_byte_budget_is_count_times_key_size() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=8, max_key_size=16)
    assert cache.max_bytes == 128


def test_clear_and_forget_keep_the_same_dict() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=2, max_key_size=4)
    entries = cache.entries
    cache.store("a", 1, 1)
    cache.forget("a")
    cache.forget("missing")
    assert "a" not in entries
    cache.store("b", 2, 1)
    cache.store("c", 3, 1)
    cache.store("d", 4, 1)  # emptied in place
    cache.clear()
    assert cache.entries is entries
    assert (len(cache), cache.size) == (0, 0)


@pytest.mark.parametrize(
    ("entries", "key_size"), [(0, 1), (-1, 1), (1, -1)], ids=["no-entries", "negative", "key"]
)
def test_nonsensical_bounds_are_refused(entries: int, key_size: int) -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        BoundedCache(max_entries=entries, max_key_size=key_size)


# ---- in-process: distinct large values in every field the guard reads -------------------

BIG = 60_000


def _environ(**overrides: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
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
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    environ.update(overrides)
    return environ


def _call(app: Flask, environ: dict[str, Any]) -> str:
    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(status)

    result = app.wsgi_app(environ, start_response)
    b"".join(result)
    getattr(result, "close", lambda: None)()
    return seen[0]


def _big(n: int) -> str:
    return (f"{n:08d}" + "a" * BIG)[:BIG]


FLOODS: dict[str, Callable[[int], dict[str, Any]]] = {
    "distinct-60kB-Host": lambda n: _environ(HTTP_HOST=_big(n)),
    "distinct-60kB-Host-from-loopback": lambda n: _environ(
        HTTP_HOST=_big(n), REMOTE_ADDR="127.0.0.1"
    ),
    "distinct-60kB-session-cookie": lambda n: _environ(HTTP_COOKIE="tailnet_session=" + _big(n)),
    "distinct-60kB-Cookie-header": lambda n: _environ(HTTP_COOKIE="a=" + _big(n)),
    "distinct-60kB-Basic": lambda n: _environ(HTTP_AUTHORIZATION="Basic " + _big(n)),
    "distinct-60kB-Bearer": lambda n: _environ(HTTP_AUTHORIZATION="Bearer " + _big(n)),
    "distinct-60kB-path": lambda n: _environ(PATH_INFO="/" + _big(n)),
    "distinct-60kB-query-token": lambda n: _environ(QUERY_STRING="token=" + _big(n)),
    "distinct-60kB-X-Forwarded-For": lambda n: _environ(HTTP_X_FORWARDED_FOR=_big(n)),
    "distinct-60kB-Origin-on-POST": lambda n: _environ(
        REQUEST_METHOD="POST", HTTP_ORIGIN="http://" + _big(n)
    ),
    "distinct-60kB-Accept": lambda n: _environ(HTTP_ACCEPT=_big(n)),
}


@pytest.mark.parametrize("flood", FLOODS.values(), ids=FLOODS.keys())
def test_a_flood_of_distinct_large_values_leaves_no_memory_behind(
    state_dir: Path, flood: Callable[[int], dict[str, Any]]
) -> None:
    app = make_app(state_dir)
    app.config["TESTING"] = False
    for n in range(50):  # warm-up: every lazy import and first-use allocation
        _call(app, flood(-n - 1))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(300):  # 18 MB of distinct values, were they kept
            assert _call(app, flood(n))[:3] in {"401", "403", "429", "303"}
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 2 * BIG * 10, f"{retained} bytes kept after 300 distinct refused requests"


# ---- a real `flask run`, flooded ------------------------------------------------------------

SERVER, CLIENT = "100.64.104.10", "100.64.104.11"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _send(port: int, head: bytes) -> None:
    """Send one request and read the answer to its end. A server that closes a refused connection
    with bytes still unread makes the kernel answer with a reset: that request was served too."""
    with socket.create_connection((SERVER, port), timeout=30, source_address=(CLIENT, 0)) as s:
        s.sendall(head)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass


@pytest.mark.root
def test_flask_run_memory_stays_bounded_under_a_flood_of_large_refused_hosts(
    tmp_path: Path,
) -> None:
    """1500 distinct 60 kB Host values (90 MB, were they kept) grow the server by far less."""
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(tmp_path / "state")}
    with (
        addresses_on_lo([f"{SERVER}/32", f"{CLIENT}/32"]),
        serving_example_app(SERVER, env, tmp_path / "server.log") as port,
    ):
        pid = next(
            p
            for p in children(os.getpid())
            if f"{port}" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
        )
        good = f"GET /api/whoami HTTP/1.0\r\nHost: {SERVER}:{port}\r\n\r\n".encode()
        for _ in range(100):
            _send(port, good)
        for n in range(100):  # warm-up of the large-request path, and of the allocator
            _send(port, b"GET / HTTP/1.0\r\nHost: " + _big(-n - 1).encode() + b"\r\n\r\n")
        time.sleep(0.2)
        baseline = _rss_mb(pid)
        for n in range(1500):
            _send(port, b"GET / HTTP/1.0\r\nHost: " + _big(n).encode() + b"\r\n\r\n")
        time.sleep(0.2)
        grown = _rss_mb(pid) - baseline
    assert grown < 40, f"flask run grew by {grown:.0f} MB (from {baseline:.0f} MB)"
