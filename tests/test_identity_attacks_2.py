"""Attacks on the identity step, third round (issue 10): the orders in which its rules run.

Each row is what a hostile client does; the expected answer is what the guard must do. The app is
the real one (Flask's test client, ``REMOTE_ADDR`` and ``SERVER_PORT`` set as a server sets them
for a connection tailscaled dialled from 127.0.0.1) against the stand-in tailscaled over its
unix socket; nothing of the client is mocked.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flask_tailnet.tailscaled_watch import REFRESH_SECONDS

from .conftest import addresses_on_lo, make_app
from .gunicorn_helpers import free_port, gunicorn_env
from .tailscaled_relay import Relay, relaying
from .tailscaled_stand_in import StandInTailscaled, running_tailscaled, trusted_directory
from .test_relayed import Reply, app_server, get, token_for

# 100.64.44.x and fd7a:115c:a1e0::44:x are this file's: no other test uses them.
NODE_V4, NODE_V6 = "100.64.44.1", "fd7a:115c:a1e0::44:1"
ALICE = "100.64.44.7"  #: alice@example.com, the one address TAILNET_ALLOWLIST lists
BOB = "100.64.44.8"  #: bob@example.com, outside the allowlist

#: The port a Funnel-published ``tailscale serve --tcp`` forward sends to (this app's).
FORWARDED = 8443

#: (id, headers a public client on the internet adds to its request through the forward)
FUNNEL_CLIENT_HEADERS = [
    ("funnel-client-plain", {}),
    ("funnel-client-adds-x-forwarded-for", {"X-Forwarded-For": "100.64.44.7"}),
    ("funnel-client-adds-x-forwarded-for-loopback", {"X-Forwarded-For": "127.0.0.1"}),
    ("funnel-client-adds-forwarded", {"Forwarded": "for=100.64.44.7"}),
    ("funnel-client-adds-x-forwarded-host", {"X-Forwarded-Host": "localhost"}),
]


@pytest.mark.parametrize(
    "headers",
    [row[1] for row in FUNNEL_CLIENT_HEADERS],
    ids=[row[0] for row in FUNNEL_CLIENT_HEADERS],
)
@pytest.mark.parametrize("bypass", [True, False], ids=["bypass-on", "bypass-off"])
@pytest.mark.parametrize("with_token", [False, True], ids=["no-credential", "with-token"])
def test_a_funnel_client_through_a_tcp_forward_is_refused_whatever_headers_it_adds(
    tailscaled: StandInTailscaled,
    state_dir: Path,
    headers: dict[str, str],
    bypass: bool,
    with_token: bool,
) -> None:
    """A raw TCP forward that Funnel publishes carries the internet to 127.0.0.1 with no header
    of tailscaled's: refused (403) unless TAILNET_NETWORK is "any". Proxy headers the client
    writes itself (no trusted proxy: 127.0.0.1 is not listed) must not turn that refusal into a
    request for a credential."""
    tailscaled.serve_config = {
        "TCP": {"443": {"TCPForward": f"127.0.0.1:{FORWARDED}"}},
        "AllowFunnel": {"server.tail1a2b3.ts.net:443": True},
    }
    app = make_app(
        state_dir, TAILNET_TAILSCALED_SOCKET=tailscaled.path, TAILNET_LOCAL_BYPASS=bypass
    )
    sent = dict(headers)
    if with_token:
        token: bytes = app.extensions["tailnet"].token_file.ensure()
        sent["Authorization"] = f"Bearer {token.decode()}"
    environ: dict[str, Any] = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000"}
    reply = app.test_client().get(
        "/", base_url=f"http://127.0.0.1:{FORWARDED}", headers=sent, environ_base=environ
    )
    assert reply.status_code == 403, (reply.status_code, reply.get_data(as_text=True)[:200])


# ---- userspace mode: a relayed peer outside the allowlist ----------------------------------


@dataclass
class _Userspace:
    relay: Relay
    token: str


@pytest.fixture(scope="module", params=["flask-run", "gunicorn-gthread"])
def allowlisted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Userspace]:
    """A userspace-mode tailscaled relaying to the app for real (its relays are this process's
    sockets, as tailscaled's are its own), with ``TAILNET_ALLOWLIST`` naming alice only."""
    tmp = tmp_path_factory.mktemp("allowlisted")
    addresses = [f"{a}/32" for a in (NODE_V4, ALICE, BOB)] + [f"{NODE_V6}/128"]
    with ExitStack() as stack:
        stack.enter_context(addresses_on_lo(addresses))
        stand_in = stack.enter_context(running_tailscaled(stack.enter_context(trusted_directory())))
        stand_in.status["TUN"] = False
        stand_in.status["TailscaleIPs"] = [NODE_V4, NODE_V6]
        stand_in.status["Self"]["TailscaleIPs"] = [NODE_V4, NODE_V6]
        stand_in.add_peer(ALICE, login="alice@example.com", node="alice.tail1a2b3.ts.net")
        stand_in.add_peer(BOB, login="bob@example.com", node="bob.tail1a2b3.ts.net")
        state_dir = tmp / "state"
        token = token_for(state_dir)
        env = gunicorn_env(
            state_dir,
            FLASK_TAILNET_TAILSCALED_SOCKET=stand_in.path,
            FLASK_TAILNET_ALLOWLIST=f'["{ALICE}"]',
        )
        port = free_port()
        stack.enter_context(app_server(request.param, [port], env, tmp))
        relay = stack.enter_context(relaying([NODE_V4], port, stand_in))
        yield _Userspace(relay, token)


#: (id, headers bob adds to his relayed request, besides a valid token)
RELAYED_OUTSIDE_ALLOWLIST = [
    ("relayed-bob-plain", {}),
    ("relayed-bob-adds-x-forwarded-for", {"X-Forwarded-For": "127.0.0.1"}),
    ("relayed-bob-adds-x-forwarded-for-naming-alice", {"X-Forwarded-For": ALICE}),
    ("relayed-bob-adds-forwarded", {"Forwarded": "for=127.0.0.1"}),
    ("relayed-bob-adds-x-forwarded-proto", {"X-Forwarded-Proto": "https"}),
]


def _as(world: _Userspace, source: str, headers: dict[str, str]) -> Reply:
    sent = {"Authorization": f"Bearer {world.token}", **headers}
    return get(NODE_V4, world.relay.port(), source=source, headers=sent)


@pytest.mark.root
@pytest.mark.parametrize(
    "headers",
    [row[1] for row in RELAYED_OUTSIDE_ALLOWLIST],
    ids=[row[0] for row in RELAYED_OUTSIDE_ALLOWLIST],
)
def test_a_relayed_peer_outside_the_allowlist_is_refused_whatever_headers_it_adds(
    allowlisted: _Userspace, headers: dict[str, str]
) -> None:
    """Userspace tailscaled relays bob from 127.0.0.1; the allowlist refuses his address, token
    or not. Proxy headers he writes himself (ignored: 127.0.0.1 is no trusted proxy) must not
    make him the anonymous loopback peer, which no allowlist narrows."""
    reply = _as(allowlisted, BOB, headers)
    assert reply.status == 403, reply


@pytest.mark.root
def test_a_relayed_peer_with_ignored_proxy_headers_is_still_itself(
    allowlisted: _Userspace,
) -> None:
    """Alice, in the allowlist, adding an X-Forwarded-For of her own: admitted by her token as
    herself (her tailnet address and login), never as 127.0.0.1."""
    reply = _as(allowlisted, ALICE, {"X-Forwarded-For": "127.0.0.1"})
    assert reply.status == 200, reply
    assert (reply.body["address"], reply.body["login"], reply.body["local"]) == (
        ALICE,
        "alice@example.com",
        False,
    )


# ---- a TCP forward to this node's own tailnet address ----------------------------------------

#: The node's own address, as status gives it: the app is bound to it (the bind check's advice),
#: so ``tailscale serve --tcp`` forwards there, and tailscaled's dial comes from it too.
ME = "100.64.44.1"

#: (id, headers the client adds to what the forward relays)
FORWARDED_TO_ME_HEADERS = [
    ("plain", {}),
    ("adds-x-forwarded-for", {"X-Forwarded-For": ALICE}),
    ("adds-forwarded", {"Forwarded": f"for={ALICE}"}),
]


def _to_me(tailscaled: StandInTailscaled, *, funnel: bool) -> None:
    tailscaled.status["TailscaleIPs"] = [ME]
    tailscaled.status["Self"]["TailscaleIPs"] = [ME]
    tailscaled.add_peer(ALICE, login="alice@example.com", node="alice.tail1a2b3.ts.net")
    config: dict[str, Any] = {"TCP": {"443": {"TCPForward": f"{ME}:{FORWARDED}"}}}
    if funnel:
        config["AllowFunnel"] = {"server.tail1a2b3.ts.net:443": True}
    tailscaled.serve_config = config


def _from_me(app: Any, headers: dict[str, str]) -> Any:
    environ: dict[str, Any] = {"REMOTE_ADDR": ME, "REMOTE_PORT": "40000"}
    return app.test_client().get(
        "/", base_url=f"http://{ME}:{FORWARDED}", headers=headers, environ_base=environ
    )


@pytest.mark.parametrize(
    "headers",
    [row[1] for row in FORWARDED_TO_ME_HEADERS],
    ids=[f"funnel-client-to-own-address-{row[0]}" for row in FORWARDED_TO_ME_HEADERS],
)
@pytest.mark.parametrize("bypass", [True, False], ids=["bypass-on", "bypass-off"])
@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "own-address-trusted-proxy"])
def test_a_funnel_forward_to_this_nodes_own_address_is_refused(
    tailscaled: StandInTailscaled,
    state_dir: Path,
    headers: dict[str, str],
    bypass: bool,
    trusted: bool,
) -> None:
    """A Funnel-published raw TCP forward to the node's own tailnet address: tailscaled dials
    from that address, so the internet arrives as this node. Refused (403) unless TAILNET_NETWORK
    is "any", as on loopback, whatever headers the client writes."""
    _to_me(tailscaled, funnel=True)
    settings: dict[str, Any] = {"TAILNET_LOCAL_BYPASS": bypass}
    if trusted:
        settings["TAILNET_TRUSTED_PROXIES"] = [ME]
    app = make_app(state_dir, TAILNET_TAILSCALED_SOCKET=tailscaled.path, **settings)
    reply = _from_me(app, headers)
    assert reply.status_code == 403, (reply.status_code, reply.get_data(as_text=True)[:200])


@pytest.mark.parametrize(
    "headers",
    [row[1] for row in FORWARDED_TO_ME_HEADERS[1:]],
    ids=[
        f"peer-through-forward-to-trusted-own-address-{row[0]}"
        for row in FORWARDED_TO_ME_HEADERS[1:]
    ],
)
def test_a_peer_through_a_forward_to_a_trusted_own_address_is_not_who_it_names(
    tailscaled: StandInTailscaled, state_dir: Path, headers: dict[str, str]
) -> None:
    """The operator lists the node's own address in TAILNET_TRUSTED_PROXIES (for `tailscale
    serve`'s HTTP proxy to it). A raw TCP forward to that address relays any tailnet peer's bytes
    from it: the X-Forwarded-For it writes naming alice must not log it in as alice."""
    _to_me(tailscaled, funnel=False)
    app = make_app(
        state_dir,
        TAILNET_TAILSCALED_SOCKET=tailscaled.path,
        TAILNET_TRUSTED_PROXIES=[ME],
        TAILNET_TAILSCALE_LOGIN=True,
        TAILNET_ALLOWED_USERS=["alice@example.com"],
    )
    reply = _from_me(app, headers)
    assert reply.status_code == 403, (reply.status_code, reply.get_data(as_text=True)[:200])


# ---- a keep-alive connection outlives the forward it came through ----------------------------

#: (id, the serve configuration the connection arrives through; what its first request gets)
FORWARDS_THEN_REMOVED = [
    ("keep-alive-through-tcp-forward-then-forward-removed", False, 401),
    ("keep-alive-through-funnel-forward-then-forward-removed", True, 403),
]


@pytest.mark.parametrize(
    ("funnel", "first"),
    [row[1:] for row in FORWARDS_THEN_REMOVED],
    ids=[row[0] for row in FORWARDS_THEN_REMOVED],
)
def test_a_connection_a_forward_relayed_stays_relayed_after_the_forward_goes(
    tmp_path: Path, funnel: bool, first: int
) -> None:
    """tailscaled keeps piping a connection it forwarded when `tailscale serve --tcp … off` (or
    a Funnel switched off) removes the forward: the client, a tailnet peer or anyone on the
    internet, keeps its keep-alive connection open (gunicorn gthread) and waits. Its later
    requests are still the relay's, never local; a new connection from a local client is local
    again."""
    config: dict[str, Any] = {}
    with ExitStack() as stack:
        stand_in = stack.enter_context(running_tailscaled(stack.enter_context(trusted_directory())))
        stand_in.status["TUN"] = True
        port = free_port()
        config = {"TCP": {"443": {"TCPForward": f"127.0.0.1:{port}"}}}
        if funnel:
            config["AllowFunnel"] = {"server.tail1a2b3.ts.net:443": True}
        stand_in.serve_config = config  # read at start
        env = gunicorn_env(tmp_path / "state", FLASK_TAILNET_TAILSCALED_SOCKET=stand_in.path)
        stack.enter_context(app_server("gunicorn-gthread", [port], env, tmp_path))
        relayed = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stack.callback(relayed.close)
        statuses = [_status(relayed)]
        with stand_in.lock:
            stand_in.serve_config = None
        # The next request after REFRESH_SECONDS re-reads serve-config; gunicorn keeps the idle
        # connection for 5 s (--keep-alive 5).
        time.sleep(REFRESH_SECONDS + 0.5)
        fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stack.callback(fresh.close)
        statuses += [_status(fresh), _status(relayed)]
    assert statuses == [first, 200, first], statuses


def _status(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/", headers={"Host": conn.host})
    response = conn.getresponse()
    response.read()
    return response.status


# ---- PROXY protocol on a keep-alive connection -------------------------------------------------


def test_a_keep_alive_connection_tailscaleds_proxy_header_named_stays_that_peer(
    tmp_path: Path,
) -> None:
    """gunicorn reads a PROXY header only before a connection's first request: the requests
    after it on the same keep-alive connection come with 127.0.0.1 and no PROXY_PROTOCOL. They
    are still the tailnet peer the header named (its identity, its Tailscale login through the
    gate), never local and never the anonymous relay (which a gate refuses: a browser's second
    request would get 403)."""
    with ExitStack() as stack:
        stack.enter_context(addresses_on_lo([f"{NODE_V4}/32", f"{ALICE}/32"]))
        stand_in = stack.enter_context(running_tailscaled(stack.enter_context(trusted_directory())))
        stand_in.status["TUN"] = True
        stand_in.status["TailscaleIPs"] = [NODE_V4]
        stand_in.status["Self"]["TailscaleIPs"] = [NODE_V4]
        stand_in.add_peer(ALICE, login="alice@example.com", node="alice.tail1a2b3.ts.net")
        port = free_port()
        stand_in.serve_config = {
            "TCP": {"443": {"TCPForward": f"127.0.0.1:{port}", "ProxyProtocol": 2}}
        }
        env = gunicorn_env(
            tmp_path / "state",
            FLASK_TAILNET_TAILSCALED_SOCKET=stand_in.path,
            FLASK_TAILNET_TAILSCALE_LOGIN="true",
            FLASK_TAILNET_ALLOWED_USERS="alice@example.com",
        )
        stack.enter_context(
            app_server("gunicorn-gthread", [port], env, tmp_path, ["--proxy-protocol"])
        )
        relay = stack.enter_context(
            relaying([NODE_V4], port, stand_in, register="never", proxy_protocol=2)
        )
        conn = http.client.HTTPConnection(
            NODE_V4, relay.port(), timeout=15, source_address=(ALICE, 0)
        )
        stack.callback(conn.close)
        replies = [get(NODE_V4, relay.port(), conn=conn) for _ in range(3)]
    assert [(r.status, r.body.get("method"), r.body.get("address")) for r in replies] == [
        (200, "tailscale", ALICE)
    ] * 3, replies


# ---- odd environ values never raise out of the identity step ---------------------------------


class _NotASocket:
    """A server's connection object that is no socket (weak-referenceable, methods that fail)."""

    def getsockname(self) -> Any:
        raise OSError("not connected")

    def getpeername(self) -> Any:
        return "not a tuple"


#: (id, environ the server gives a loopback request in userspace mode)
ODD_ENVIRON = [
    ("remote-port-bytes", {"REMOTE_PORT": b"40000"}),
    ("remote-port-negative", {"REMOTE_PORT": "-1"}),
    ("remote-port-zero", {"REMOTE_PORT": "0"}),
    ("remote-port-huge", {"REMOTE_PORT": "9" * 5000}),
    ("remote-port-empty", {"REMOTE_PORT": ""}),
    ("remote-port-not-a-number", {"REMOTE_PORT": "http"}),
    ("remote-port-none", {"REMOTE_PORT": None}),
    ("server-port-none", {"SERVER_PORT": None, "REMOTE_PORT": "40000"}),
    ("connection-not-a-socket", {"REMOTE_PORT": "40000", "werkzeug.socket": _NotASocket()}),
    (
        "proxy-protocol-on-a-non-socket",
        {"PROXY_PROTOCOL": "TCP4", "werkzeug.socket": _NotASocket()},
    ),
]


@pytest.mark.parametrize(
    "extra", [row[1] for row in ODD_ENVIRON], ids=[row[0] for row in ODD_ENVIRON]
)
def test_odd_environ_on_a_userspace_loopback_request_is_not_local_and_not_a_crash(
    tailscaled: StandInTailscaled,
    state_dir: Path,
    extra: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tailscaled.status["TUN"] = False
    app = make_app(state_dir, TAILNET_TAILSCALED_SOCKET=tailscaled.path)
    environ: dict[str, Any] = {"REMOTE_ADDR": "127.0.0.1", **extra}
    reply = app.test_client().get("/", base_url="http://127.0.0.1:8080", environ_base=environ)
    assert reply.status_code in (401, 403), reply.get_data(as_text=True)[:200]
    assert "internal error" not in caplog.text
