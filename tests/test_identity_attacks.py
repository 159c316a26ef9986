"""Attacks on the identity step found by attacking the released guard (issue 10, round 2).

Each row is what a hostile tailnet peer or local user does; the expected answer is what the guard
must do. The servers are real (werkzeug's threaded server on a real loopback socket, the stand-in
tailscaled on its unix socket, the kernel's socket records); where the attack is a race, the test
makes the race's losing order happen every time by running tailscaled's move (closing its socket)
at the moment the guard is between two of its own steps.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from flask_tailnet import current_peer, identify, sockowner

from .conftest import addresses_on_lo, make_app
from .gunicorn_helpers import free_port, gunicorn_env
from .tailscaled_relay import Relay, proxy_header, relaying
from .tailscaled_stand_in import StandInTailscaled, running_tailscaled, trusted_directory
from .test_relayed import app_server

_WAIT = 10.0


class _Served:
    """A real threaded werkzeug server of ``app`` on 127.0.0.1, and what each request became."""

    def __init__(self, app: Flask) -> None:
        self.statuses: list[str] = []
        self.ran_as_local: list[bool] = []
        inner = app.wsgi_app

        def recorder(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            def record(status: str, headers: Any, *rest: Any) -> Any:
                self.statuses.append(status)
                return start_response(status, headers, *rest)

            return inner(environ, record)

        app.wsgi_app = recorder  # type: ignore[method-assign]

        @app.post("/act")
        def act() -> str:
            self.ran_as_local.append(current_peer.local)
            return "done"

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for_answer(self) -> str:
        deadline = time.monotonic() + _WAIT
        while not self.statuses and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.statuses, "the server did not answer in time"
        return self.statuses[0]

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(_WAIT)


@pytest.fixture
def userspace(tailscaled: StandInTailscaled, state_dir: Path) -> Iterator[_Served]:
    """A userspace-mode tailscaled (the stand-in, in this process: the sockets this test makes are
    its process's, as tailscaled's relays are) and the app served for real next to it."""
    tailscaled.status["TUN"] = False
    served = _Served(make_app(state_dir, TAILNET_TAILSCALED_SOCKET=tailscaled.path))
    yield served
    served.stop()


def _closing_before(monkeypatch: pytest.MonkeyPatch, name: str, relay: list[socket.socket]) -> None:
    """Make ``identify.<name>`` close tailscaled's end of the relayed connection first: the
    tailnet client went away (RST, or FIN after its request) and tailscaled closed its dial."""
    real = getattr(identify, name)

    def closing(*args: Any, **kwargs: Any) -> Any:
        if relay:
            relay.pop().close()
        return real(*args, **kwargs)

    monkeypatch.setattr(identify, name, closing)


RACES = [
    pytest.param("held_by", id="tailscaled-closes-its-dial-while-the-guard-reads-its-fds"),
    pytest.param("loopback_client_owner", id="tailscaled-closes-its-dial-before-the-kernel-lookup"),
]


@pytest.mark.parametrize("step", RACES)
def test_a_relay_tailscaled_closes_mid_decision_is_never_local(
    userspace: _Served, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A tailnet peer sends a state-changing request through userspace tailscaled and hangs up at
    once, many times over: whenever tailscaled closes its dial while the guard is between asking
    the kernel who owns the client socket and listing tailscaled's open files, the socket is in
    neither. It must not be taken as a local process's: the request is not served as local (it
    needs no answer to do harm)."""

    pending: list[socket.socket] = []
    _closing_before(monkeypatch, step, pending)  # before the request: the server may be quick
    relay = socket.create_connection(("127.0.0.1", userspace.port), timeout=_WAIT)
    pending.append(relay)
    relay.sendall(
        f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{userspace.port}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    try:
        status = userspace.wait_for_answer()
    finally:
        relay.close()
    assert pending == [], "the guard never reached the step the race is timed at"
    assert userspace.ran_as_local == [], "a relayed request was served as local"
    assert status.startswith(("401", "403")), status


def test_a_relay_tailscaled_keeps_open_is_not_local(userspace: _Served) -> None:
    """The baseline: the same request on a connection tailscaled keeps open (and registered
    nothing for) is not local either."""
    with socket.create_connection(("127.0.0.1", userspace.port), timeout=_WAIT) as relay:
        relay.sendall(
            f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{userspace.port}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        status = userspace.wait_for_answer()
    assert userspace.ran_as_local == []
    assert status.startswith("401"), status


def test_a_relay_whois_names_as_this_node_is_not_local(
    tailscaled: StandInTailscaled, state_dir: Path
) -> None:
    """A relayed connection whose client whois names as this node itself: in userspace mode only
    tailscaled's own outbound proxy (SOCKS5 / HTTP on localhost) makes one, and a tailnet peer that
    netstack relays to that proxy's port can go through it back to this node. Not local, and the
    node's identity (its owner's login) is no identity."""
    me = "100.64.43.1"
    tailscaled.status["TUN"] = False
    tailscaled.status["TailscaleIPs"] = [me]
    tailscaled.status["Self"]["TailscaleIPs"] = [me]
    tailscaled.add_peer(me, login="owner@example.com", node="server.tail1a2b3.ts.net")
    served = _Served(make_app(state_dir, TAILNET_TAILSCALED_SOCKET=tailscaled.path))
    try:
        with socket.create_connection(("127.0.0.1", served.port), timeout=_WAIT) as relay:
            tailscaled.register_tcp(f"127.0.0.1:{relay.getsockname()[1]}", f"{me}:41641")
            relay.sendall(
                f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            status = served.wait_for_answer()
    finally:
        served.stop()
    assert served.ran_as_local == [], "a relay that whois names as this node was served as local"
    assert status.startswith("401"), status


# ---- A PROXY header a tailnet peer writes itself, through userspace tailscaled -----------------

# 100.64.43.x is this file's: no other test uses it.
NODE = "100.64.43.1"
ALICE = "100.64.43.7"
BOB = "100.64.43.8"


@dataclass
class _Proxied:
    stand_in: StandInTailscaled
    netstack: Relay  # userspace tailscaled relaying a tailnet client's raw bytes (registers it)
    forward: Relay  # serve's TCP forward with ProxyProtocol 1 (registers nothing, sends the header)


@pytest.fixture(scope="module")
def proxied_userspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Proxied]:
    """gunicorn --proxy-protocol on a port that a serve TCP forward (ProxyProtocol 1) targets, on a
    userspace-mode node: netstack also relays a tailnet client's own connection to that port."""
    tmp = tmp_path_factory.mktemp("proxied-userspace")
    with ExitStack() as stack:
        stack.enter_context(addresses_on_lo([f"{a}/32" for a in (NODE, ALICE, BOB)]))
        directory = stack.enter_context(trusted_directory())
        stand_in = stack.enter_context(running_tailscaled(directory))
        stand_in.status["TUN"] = False
        stand_in.status["TailscaleIPs"] = [NODE]
        stand_in.status["Self"]["TailscaleIPs"] = [NODE]
        stand_in.add_peer(ALICE, login="alice@example.com", node="alice.tail1a2b3.ts.net")
        stand_in.add_peer(BOB, login="bob@example.com", node="bob.tail1a2b3.ts.net")
        port = free_port()
        stand_in.serve_config = {
            "TCP": {"443": {"TCPForward": f"127.0.0.1:{port}", "ProxyProtocol": 1}}
        }
        env = gunicorn_env(
            tmp / "state",
            FLASK_TAILNET_TAILSCALED_SOCKET=stand_in.path,
            FLASK_TAILNET_TAILSCALE_LOGIN="true",
            FLASK_TAILNET_ALLOWED_USERS="alice@example.com",
        )
        stack.enter_context(app_server("gunicorn-gthread", [port], env, tmp, ["--proxy-protocol"]))
        netstack = stack.enter_context(relaying([NODE], port, stand_in))
        forward = stack.enter_context(
            relaying([NODE], port, stand_in, register="never", proxy_protocol=1)
        )
        yield _Proxied(stand_in, netstack, forward)


def _send_from(source: str, port: int, data: bytes) -> tuple[int, dict[str, Any]]:
    """``data`` from a socket bound to the tailnet address ``source`` to NODE:``port``; the
    status and JSON body of the answer."""
    with socket.create_connection((NODE, port), timeout=15, source_address=(source, 0)) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"raw": body[:200]}
    return status, parsed if isinstance(parsed, dict) else {"raw": parsed}


def _get(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.root
@pytest.mark.parametrize(
    "version",
    [1, 2],
    ids=["peer-writes-proxy-v1-naming-alice", "peer-writes-proxy-v2-naming-alice"],
)
def test_a_proxy_header_a_tailnet_peer_wrote_is_not_believed(
    proxied_userspace: _Proxied, version: int
) -> None:
    """bob connects to the node's own address on the app's port: userspace tailscaled relays his
    raw bytes to 127.0.0.1 from its own process, like the forward that sends PROXY headers. The
    PROXY header naming alice is bob's own: he must not be served as alice (nor as anyone)."""
    header = proxy_header(version, (ALICE, 40001), (NODE, 443))
    status, body = _send_from(BOB, proxied_userspace.netstack.port(), header + _get(f"{NODE}:443"))
    assert body.get("login") != "alice@example.com", body
    assert status == 403, (status, body)


@pytest.mark.root
def test_the_forwards_own_proxy_header_is_still_believed(proxied_userspace: _Proxied) -> None:
    """The case the fix must not break: the serve forward's header names alice, who is served
    as herself by Tailscale login."""
    status, body = _send_from(ALICE, proxied_userspace.forward.port(), _get(f"{NODE}:443"))
    assert status == 200, (status, body)
    assert (body["method"], body["login"], body["address"]) == (
        "tailscale",
        "alice@example.com",
        ALICE,
    )


# ---- tailscaled's pid, once tailscaled has gone ---------------------------------------------


def test_a_dead_unreaped_tailscaled_holds_nothing_known() -> None:
    """tailscaled exited (crashed, restarted) and its parent has not reaped it yet: its pid is a
    zombie, whose open-file list is empty. Until the next snapshot names the new tailscaled, every
    relay of tailscaled's user would be "not held by tailscaled's process", so local: the list of
    a process that holds no file at all (every live tailscaled holds its LocalAPI socket) is
    unknown, never proof."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        inode = os.fstat(sock.fileno()).st_ino
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        try:
            deadline = time.monotonic() + _WAIT
            while time.monotonic() < deadline:
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
                time.sleep(0.01)
            assert sockowner.held_by(pid, inode) is None
        finally:
            os.waitpid(pid, 0)
