"""relays.py: every TCP forward in tailscaled's serve configuration, and the connection a request
came on, checked against real gunicorn (sync, gthread) and ``flask run`` servers."""

from __future__ import annotations

import gc
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_tailnet.relays import (
    NO_FORWARDS,
    PerConnection,
    ServeForwards,
    connection_of,
    parse_serve_config,
)

from .gunicorn_helpers import GUNICORN, ROOT, free_port, gunicorn_env, running

# ---- parse_serve_config: what tailscaled's GET /localapi/v0/serve-config holds ---------------

HTTPS_ONLY = {
    "TCP": {"443": {"HTTPS": True}},
    "Web": {"node.tail1a2b3.ts.net:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:5000"}}}},
}
#: The deployment the seeds recommend: the app on loopback, published as a Tailscale Service.
SEEDS_SERVICE = {"Services": {"svc:mcp-api": {"TCP": {"443": {"TCPForward": "127.0.0.1:8443"}}}}}

VALID = [
    pytest.param(None, NO_FORWARDS, id="null-nothing-served"),
    pytest.param({}, NO_FORWARDS, id="empty-object"),
    pytest.param(
        {"TCP": {"5000": {"TCPForward": "127.0.0.1:5000"}}},
        ServeForwards(frozenset({5000}), False, ("127.0.0.1:5000",)),
        id="top-level-tcp-forward",
    ),
    pytest.param(
        {"TCP": {"443": {"TCPForward": "localhost:5000", "TerminateTLS": "node.ts.net"}}},
        ServeForwards(frozenset({5000}), False, ("localhost:5000",)),
        id="tls-terminated-tcp-to-localhost",
    ),
    pytest.param(
        {"TCP": {"8443": {"TCPForward": "[::1]:5001", "ProxyProtocol": 2}}},
        ServeForwards(
            frozenset({5001}), False, ("[::1]:5001",), proxy_protocol_ports=frozenset({5001})
        ),
        id="proxy-protocol-to-ipv6-loopback",
    ),
    pytest.param(
        {"TCP": {"7000": {"TCPForward": ":5002"}, "7001": {"TCPForward": "5003"}}},
        ServeForwards(frozenset({5002, 5003}), False, ("5003", ":5002")),
        id="empty-host-and-bare-port-count",
    ),
    pytest.param(
        {"TCP": {"7002": {"TCPForward": "db.internal:5004"}}},
        ServeForwards(frozenset({5004}), False, ("db.internal:5004",)),
        id="a-named-host-counts-its-port",
    ),
    pytest.param(
        {"TCP": {"7003": {"TCPForward": "unix:/run/app.sock"}}},
        ServeForwards(frozenset(), False, ("unix:/run/app.sock",)),
        id="unix-socket-target-no-tcp-port",
    ),
    pytest.param(HTTPS_ONLY, NO_FORWARDS, id="https-only"),
    pytest.param(
        {"Web": {"node.ts.net:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:5000"}}}}},
        NO_FORWARDS,
        id="web-proxies-only",
    ),
    pytest.param(
        SEEDS_SERVICE,
        ServeForwards(frozenset({8443}), False, ("127.0.0.1:8443",)),
        id="seeds-service-svc-mcp-api",
    ),
    pytest.param(
        {"Services": {"svc:web": {"Web": {"web.ts.net:443": {"Handlers": {}}}, "Tun": False}}},
        NO_FORWARDS,
        id="service-web-only",
    ),
    pytest.param(
        {"Foreground": {"3c5e8f": {"TCP": {"5000": {"TCPForward": "127.0.0.1:5000"}}}}},
        ServeForwards(frozenset({5000}), False, ("127.0.0.1:5000",)),
        id="foreground-session",
    ),
    pytest.param(
        {"Foreground": {"3c5e8f": SEEDS_SERVICE}},
        ServeForwards(frozenset({8443}), False, ("127.0.0.1:8443",)),
        id="foreground-with-nested-service",
    ),
    pytest.param(
        {
            "TCP": {"443": {"HTTPS": True}},
            "AllowFunnel": {"node.ts.net:443": True},
        },
        ServeForwards(frozenset(), True, ()),
        id="allow-funnel",
    ),
    pytest.param({"AllowFunnel": {"node.ts.net:443": False}}, NO_FORWARDS, id="allow-funnel-false"),
    pytest.param(
        {
            "Foreground": {
                "s1": {
                    "TCP": {"10000": {"TCPForward": "127.0.0.1:5005"}},
                    "AllowFunnel": {"node.ts.net:10000": True},
                }
            }
        },
        ServeForwards(frozenset({5005}), True, ("127.0.0.1:5005",), frozenset({5005})),
        id="funnel-in-foreground-session",
    ),
    pytest.param(
        {
            "TCP": {"443": {"TCPForward": "127.0.0.1:5000"}},
            "Services": {"svc:a": {"TCP": {"443": {"TCPForward": "127.0.0.1:5001"}}}},
            "Foreground": {"s": {"TCP": {"80": {"TCPForward": "127.0.0.1:5000"}}}},
        },
        ServeForwards(frozenset({5000, 5001}), False, ("127.0.0.1:5000", "127.0.0.1:5001")),
        id="everywhere-at-once",
    ),
    pytest.param(
        {"TCP": {"443": None}, "Services": {"svc:a": None}, "Foreground": {"s": None}},
        NO_FORWARDS,
        id="null-entries-forward-nothing",
    ),
    pytest.param(
        {
            "TCP": {
                "443": {"TCPForward": "127.0.0.1:5000"},
                "8443": {"TCPForward": "127.0.0.1:5001"},
            },
            "AllowFunnel": {"node.ts.net:8443": True, "node.ts.net:443": False},
        },
        ServeForwards(
            frozenset({5000, 5001}), True, ("127.0.0.1:5000", "127.0.0.1:5001"), frozenset({5001})
        ),
        id="funnel-publishes-only-the-forward-on-its-serve-port",
    ),
    pytest.param(
        {
            "TCP": {"443": {"TCPForward": "127.0.0.1:5000"}},
            "Foreground": {"s": {"AllowFunnel": {"node.ts.net:443": True}}},
        },
        ServeForwards(frozenset({5000}), True, ("127.0.0.1:5000",), frozenset({5000})),
        id="funnel-of-a-session-counts-for-every-forward-on-its-port",
    ),
]


@pytest.mark.parametrize(("document", "expected"), VALID)
def test_parse_serve_config(document: object, expected: ServeForwards) -> None:
    assert parse_serve_config(document) == expected


def test_parse_reads_tailscaled_json_text() -> None:
    """The answer as tailscaled writes it (json.Marshal of ipn.ServeConfig: keys are strings)."""
    text = '{"TCP":{"443":{"TCPForward":"127.0.0.1:8443","ProxyProtocol":2}},"Services":{}}'
    forwards = parse_serve_config(json.loads(text))
    assert forwards.forwards_to(8443)
    assert not forwards.forwards_to(443)
    assert not NO_FORWARDS.forwards_to(8443)


def _nested(depth: int) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for _ in range(depth):
        config = {"Foreground": {"s": config}}
    return config


MALFORMED = [
    pytest.param([], id="a-list"),
    pytest.param("TCP", id="a-string"),
    pytest.param({"TCP": []}, id="tcp-not-an-object"),
    pytest.param({"TCP": {"https": {"TCPForward": "127.0.0.1:5000"}}}, id="port-key-not-a-number"),
    pytest.param({"TCP": {"70000": {"HTTPS": True}}}, id="port-key-out-of-range"),
    pytest.param({"TCP": {"443": {"TCPForward": "127.0.0.1"}}}, id="tcp-forward-without-port"),
    pytest.param({"TCP": {"443": {"TCPForward": "[::1]"}}}, id="tcp-forward-v6-without-port"),
    pytest.param({"TCP": {"443": {"TCPForward": "::1:5000"}}}, id="tcp-forward-v6-no-brackets"),
    pytest.param({"TCP": {"443": {"TCPForward": "127.0.0.1:0"}}}, id="tcp-forward-port-zero"),
    pytest.param({"TCP": {"443": {"TCPForward": "127.0.0.1:+80"}}}, id="tcp-forward-signed-port"),
    pytest.param(
        {"TCP": {"443": {"TCPForward": "127.0.0.1:\u0665\u0660\u0660\u0660"}}},
        id="tcp-forward-unicode-digits",
    ),
    pytest.param({"TCP": {"443": {"TCPForward": 5000}}}, id="tcp-forward-not-a-string"),
    pytest.param({"TCP": {"443": {"HTTPS": "yes"}}}, id="https-not-a-boolean"),
    pytest.param({"TCP": {"443": {"ProxyProtocol": True}}}, id="proxy-protocol-a-boolean"),
    pytest.param({"TCP": {"443": "127.0.0.1:5000"}}, id="handler-not-an-object"),
    pytest.param({"TCP": {"443": {"TCPForwardTo": "127.0.0.1:5000"}}}, id="unknown-handler-field"),
    pytest.param({"Listeners": {"443": "127.0.0.1:5000"}}, id="unknown-top-level-field"),
    pytest.param({"Services": []}, id="services-not-an-object"),
    pytest.param({"Services": {"svc:a": {"TCP": {"x": {}}}}}, id="service-port-key-not-a-number"),
    pytest.param({"Services": {"svc:a": {"Udp": {}}}}, id="unknown-service-field"),
    pytest.param({"Services": {"svc:a": {"Tun": "yes"}}}, id="service-tun-not-a-boolean"),
    pytest.param({"Foreground": {"s": []}}, id="foreground-session-not-an-object"),
    pytest.param({"Foreground": {"s": {"TCP": {"1": {"TCPForward": 1}}}}}, id="foreground-bad"),
    pytest.param({"AllowFunnel": {"node.ts.net:443": "true"}}, id="allow-funnel-not-a-boolean"),
    pytest.param({"Web": []}, id="web-not-an-object"),
    pytest.param({"Web": {"node.ts.net:443": "proxy"}}, id="web-entry-not-an-object"),
    pytest.param({1: {}}, id="non-string-key"),
    pytest.param(_nested(20), id="foreground-nested-without-end"),
]


@pytest.mark.parametrize("document", MALFORMED)
def test_parse_refuses_malformed_shapes(document: object) -> None:
    with pytest.raises(ValueError, match="serve config"):
        parse_serve_config(document)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["", "127.0.0.1:5000", "unix:/x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "TCP",
                    "Web",
                    "Services",
                    "Foreground",
                    "AllowFunnel",
                    "TCPForward",
                    "HTTPS",
                    "ProxyProtocol",
                    "443",
                    "svc:a",
                    "s",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_parse_answers_or_refuses_never_crashes(document: object) -> None:
    """Any JSON: forwards whose ports are real ports, or ValueError; nothing else escapes."""
    try:
        forwards = parse_serve_config(document)
    except ValueError:
        return
    assert all(0 < port < 65536 for port in forwards.tcp_ports)


# ---- connection_of ----------------------------------------------------------------------------


class Conn:
    """A stand-in for a server's connection object (weak-referenceable, identity-compared)."""


def test_connection_of_reads_gunicorn_then_werkzeug() -> None:
    gunicorn, werkzeug = Conn(), Conn()
    assert connection_of({"gunicorn.socket": gunicorn}) is gunicorn
    assert connection_of({"werkzeug.socket": werkzeug}) is werkzeug
    assert connection_of({"gunicorn.socket": gunicorn, "werkzeug.socket": werkzeug}) is gunicorn


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="no-connection-key"),
        pytest.param({"gunicorn.socket": None}, id="none"),
        pytest.param({"gunicorn.socket": 5}, id="not-weak-referenceable"),
        pytest.param({"HTTP_GUNICORN.SOCKET": Conn()}, id="header-shaped-key-is-not-it"),
    ],
)
def test_connection_of_none(environ: dict[str, Any]) -> None:
    assert connection_of(environ) is None


# ---- PerConnection ----------------------------------------------------------------------------


def test_entry_dies_with_its_connection() -> None:
    answers: PerConnection[str] = PerConnection()
    connection = Conn()
    answers.put(connection, "remote")
    assert answers.get(connection) == "remote"
    del connection
    gc.collect()
    assert len(answers) == 0


def test_two_connections_never_share_an_entry() -> None:
    answers: PerConnection[str] = PerConnection()
    first, second = Conn(), Conn()
    answers.put(first, "local")
    assert answers.get(second) is None
    answers.put(second, "remote")
    assert (answers.get(first), answers.get(second)) == ("local", "remote")


def test_a_new_object_at_a_dead_ones_address_gets_nothing() -> None:
    """CPython reuses an object's memory (its id) at once: the new object must not inherit."""
    answers: PerConnection[str] = PerConnection()
    reused = 0
    for _ in range(200):
        old = Conn()
        old_id = id(old)
        answers.put(old, "local")
        del old
        new = Conn()
        reused += id(new) == old_id
        assert answers.get(new) is None
        del new
    assert reused > 0  # the attack was really tried
    assert len(answers) == 0


def test_put_again_keeps_the_latest_and_still_dies() -> None:
    answers: PerConnection[int] = PerConnection()
    connection = Conn()
    answers.put(connection, 1)
    answers.put(connection, 2)
    assert answers.get(connection) == 2
    del connection
    gc.collect()
    assert len(answers) == 0


def test_per_connection_from_many_threads() -> None:
    answers: PerConnection[int] = PerConnection()
    errors: list[str] = []
    start = threading.Barrier(8)

    def work(number: int) -> None:
        start.wait()
        for round_ in range(2000):
            mine = Conn()
            answers.put(mine, number * 10_000 + round_)
            if answers.get(mine) != number * 10_000 + round_:
                errors.append(f"thread {number} round {round_}")
            if round_ % 97 == 0:
                gc.collect()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    gc.collect()
    assert errors == []
    assert len(answers) == 0


def test_put_refuses_an_object_that_cannot_be_weakly_referenced() -> None:
    with pytest.raises(TypeError):
        PerConnection[int]().put(5, 1)


# ---- real servers: what they put in environ -----------------------------------------------------

PROBE_APP = "tests.relays_probe_app:app"


@contextmanager
def flask_run(port: int, log_path: Path) -> Iterator[None]:
    """``flask --app tests.relays_probe_app run`` (threaded, werkzeug's server) on 127.0.0.1."""
    env = gunicorn_env(log_path.parent)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", PROBE_APP, "run", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                probe(http.client.HTTPConnection("127.0.0.1", port, timeout=2))
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"flask run did not start: {log_path.read_text()}")
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def probe(conn: http.client.HTTPConnection, host: str | None = None) -> dict[str, Any]:
    """One GET /probe on ``conn`` (kept open); the answer, plus the client's own port and whether
    the server asked to close."""
    conn.putrequest("GET", "/probe", skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    response = conn.getresponse()
    answer: dict[str, Any] = json.loads(response.read())
    answer["client_port"] = client_port
    answer["closing"] = response.will_close
    answer["version"] = response.version
    return answer


#: --threads above 1 would turn the sync worker into gthread (gunicorn's config does so).
THREADS = {"sync": [], "gthread": ["--threads", "2"]}


@contextmanager
def server(kind: str, port: int, tmp_path: Path) -> Iterator[None]:
    if kind == "flask-run":
        with flask_run(port, tmp_path / "flask.log"):
            yield
        return
    worker = {"gunicorn-sync": "sync", "gunicorn-gthread": "gthread"}[kind]
    with running(
        [("127.0.0.1", port)],
        state_dir=tmp_path,
        stderr_path=tmp_path / "gunicorn.log",
        workers=1,
        worker_class=worker,
        command=GUNICORN,
        extra=[*THREADS[worker], "--keep-alive", "5", PROBE_APP],
        env=gunicorn_env(tmp_path),
    ):
        yield


SERVERS = ["gunicorn-sync", "gunicorn-gthread", "flask-run"]
#: Keep-alive: gunicorn's sync worker closes every connection after one request (by design), and
#: werkzeug 3.1's server sends "Connection: close" on every response (serving.py, "Always close").
KEEPS_ALIVE = {"gunicorn-sync": False, "gunicorn-gthread": True, "flask-run": False}
REMOTE_PORT_TYPE = {"gunicorn-sync": "str", "gunicorn-gthread": "str", "flask-run": "int"}
CONNECTION_KEY = {
    "gunicorn-sync": "gunicorn.socket",
    "gunicorn-gthread": "gunicorn.socket",
    "flask-run": "werkzeug.socket",
}


@pytest.mark.parametrize("kind", SERVERS)
def test_real_server_connection_and_ports(kind: str, tmp_path: Path) -> None:
    """What each real server puts in environ: the connection object (one per connection, the same
    for keep-alive requests, weak-referenceable), REMOTE_PORT (the client socket's own port), and
    SERVER_PORT from the listening socket even when the Host header names another port."""
    port = free_port()
    with server(kind, port, tmp_path):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            first = probe(conn)
            # Another port in the Host header, on the same connection when it is kept alive.
            second = probe(conn, host=f"127.0.0.1:{port + 1}")
        finally:
            conn.close()
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            third = probe(other, host="example.com:443")
        finally:
            other.close()

    for answer in (first, second, third):
        assert answer["key"] == CONNECTION_KEY[kind]
        assert answer["weakrefable"] is True
        assert answer["remote_port_type"] == REMOTE_PORT_TYPE[kind]
        assert int(answer["remote_port"]) == answer["client_port"]
        assert answer["server_port"] == str(port), "SERVER_PORT followed the Host header"
        assert answer["local_port"] == port
        assert answer["remote_addr"] == "127.0.0.1"
        assert answer["owner"] == os.geteuid(), "the kernel's owner of our own client socket"
    assert third["serial"] != first["serial"], "a new connection got an old connection's entry"
    if KEEPS_ALIVE[kind]:
        assert not first["closing"]
        assert second["serial"] == first["serial"], "one keep-alive connection, two objects"
        assert second["client_port"] == first["client_port"]
    else:
        assert first["closing"], "the server kept a connection alive"
        assert second["serial"] != first["serial"]


def test_gunicorn_proxy_protocol_believes_any_local_sender(tmp_path: Path) -> None:
    """For the docs: with ``--proxy-protocol``, gunicorn takes REMOTE_ADDR from a PROXY header
    sent by any client on loopback (``proxy_allow_ips`` defaults to 127.0.0.1,::1) and serves a
    connection without one as before. A local user can claim a tailnet address. PROXY_ADDR and
    PROXY_PORT come from the header too (its destination); only the socket itself
    (``connection_of(environ).getpeername()``) says who sent it, and the kernel names its owner."""
    port = free_port()
    with running(
        [("127.0.0.1", port)],
        state_dir=tmp_path,
        stderr_path=tmp_path / "gunicorn.log",
        workers=1,
        worker_class="gthread",
        command=GUNICORN,
        extra=["--threads", "2", "--proxy-protocol", "v1", PROBE_APP],
        env=gunicorn_env(tmp_path),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as forged:
            forged.sendall(
                f"PROXY TCP4 100.64.3.7 127.0.0.1 40000 {port}\r\n".encode()
                + b"GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            reply = b""
            while chunk := forged.recv(65536):
                reply += chunk
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            without = probe(plain)
        finally:
            plain.close()
    claimed = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert claimed["remote_addr"] == "100.64.3.7"
    assert claimed["remote_port"] == "40000"
    assert (claimed["proxy_addr"], claimed["proxy_port"]) == ("127.0.0.1", str(port))
    assert claimed["socket_peer"][0] == "127.0.0.1"
    assert claimed["socket_peer"][1] != 40000
    assert claimed["owner"] == os.geteuid()
    assert without["remote_addr"] == "127.0.0.1"
    assert without["proxy_protocol"] is None
