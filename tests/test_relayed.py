"""End to end: no loopback request that tailscaled relayed is ever served as local.

Real sockets and real servers (``flask run``, gunicorn gthread with keep-alive, gunicorn sync)
serve tests/relayed_app.py with ``TAILNET_TAILSCALED_SOCKET`` set to a stand-in tailscaled
(tests/tailscaled_stand_in.py). A relay (tests/tailscaled_relay.py) plays tailscaled's part: it
accepts tailnet clients on addresses added to lo (100.64.41.x, fd7a:115c:a1e0::41:x, used by no
other test) and dials the app on 127.0.0.1 from the test process, which is root, as the stand-in's
"tailscaled" is. Every row of the tables below is an attack or the case it must not break.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flask_tailnet.tailscaled_watch import REFRESH_SECONDS

from .conftest import addresses_on_lo
from .gunicorn_helpers import free_port, gunicorn_env, kill_group, netloc, running
from .relayed_app import create_app
from .tailscaled_relay import Relay, proxy_header, relaying, wait_for
from .tailscaled_stand_in import StandInTailscaled, running_tailscaled, trusted_directory

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.relayed_app:create_app()"
NODE_V4, NODE_V6 = "100.64.41.1", "fd7a:115c:a1e0::41:1"
ALICE_V4, ALICE_V6 = "100.64.41.7", "fd7a:115c:a1e0::41:7"
BOB = "100.64.41.8"
TAGGED = "100.64.41.9"
#: A client tailscaled relays but has no node for (a LAN client behind a subnet router that does
#: not SNAT, or a node gone from the netmap): whois answers 404 for it.
NO_NODE = "100.64.41.10"
ADDRESSES = [f"{a}/32" for a in (NODE_V4, ALICE_V4, BOB, TAGGED, NO_NODE)] + [
    f"{a}/128" for a in (NODE_V6, ALICE_V6)
]
KINDS = ["flask-run", "gunicorn-gthread", "gunicorn-sync"]
#: How long past REFRESH_SECONDS a running server may take to notice a change in tailscaled.
MARGIN = 4.0


# ---- the world: stand-in tailscaled, addresses, servers -------------------------------------


@pytest.fixture(scope="module", autouse=True)
def tailnet_addresses() -> Iterator[None]:
    """The node's and the peers' tailnet addresses on lo, for the whole module (set up before,
    and removed after, every server that uses them)."""
    with addresses_on_lo(ADDRESSES):
        yield


def add_peers(stand_in: StandInTailscaled, *, tun: bool) -> None:
    stand_in.status["TUN"] = tun
    stand_in.status["TailscaleIPs"] = [NODE_V4, NODE_V6]
    stand_in.status["Self"]["TailscaleIPs"] = [NODE_V4, NODE_V6]
    stand_in.add_peer(
        ALICE_V4,
        login="alice@example.com",
        node="alice-laptop.tail1a2b3.ts.net",
        addresses=(ALICE_V4, ALICE_V6),
    )
    stand_in.add_peer(BOB, login="bob@example.com", node="bob-laptop.tail1a2b3.ts.net")
    stand_in.add_peer(TAGGED, tags=("tag:ci",), node="ci.tail1a2b3.ts.net")


@contextmanager
def flask_run(port: int, env: dict[str, str], log_path: Path) -> Iterator[None]:
    """``flask --app tests.relayed_app run`` (werkzeug's threaded server) on 127.0.0.1."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", APP, "run", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if not wait_for(lambda: healthy(port) or proc.poll() is not None, 30):
            pytest.fail(f"flask run did not start: {log_path.read_text()}")
        if proc.poll() is not None:
            pytest.fail(f"flask run exited: {log_path.read_text()}")
        yield
    finally:
        kill_group(proc)


def healthy(port: int) -> bool:
    """The server answers. Any answer: this process is the stand-in tailscaled's, so its own
    loopback requests are not local, and a gate refuses them (403) as it refuses any relay."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status in (200, 403)
    except OSError:
        return False
    finally:
        conn.close()


@contextmanager
def app_server(
    kind: str, ports: list[int], env: dict[str, str], log_dir: Path, extra: Sequence[str] = ()
) -> Iterator[None]:
    """The app under ``kind`` on 127.0.0.1:``ports`` (flask run: the first only)."""
    if kind == "flask-run":
        with flask_run(ports[0], env, log_dir / "flask.log"):
            yield
        return
    worker = kind.removeprefix("gunicorn-").removesuffix("-v4-mapped")
    threads = ["--threads", "4", "--keep-alive", "5"] if worker == "gthread" else []
    # -v4-mapped: an IPv6 socket bound to ::ffff:127.0.0.1 (what a dual-stack listener sees of
    # IPv4 loopback): the kernel and getpeername() give mapped addresses.
    host = "::ffff:127.0.0.1" if kind.endswith("-v4-mapped") else "127.0.0.1"
    with running(
        [(host, port) for port in ports],
        state_dir=log_dir,
        stderr_path=log_dir / "gunicorn.log",
        workers=1,
        worker_class=worker,
        app=APP,
        extra=[*extra, *threads],  # a bare --proxy-protocol must not take the app as its value
        env=env,
    ):
        yield


def token_for(state_dir: Path) -> str:
    app = create_app({"TAILNET_STATE_DIR": str(state_dir)})
    value: bytes = app.extensions["tailnet"].token_file.ensure()
    return value.decode()


@dataclass
class World:
    kind: str
    stand_in: StandInTailscaled
    app_port: int
    token: str
    relay: Relay  # registers at once
    late: Relay  # registers 50-150 ms after its dial
    silent: Relay  # registers nothing


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


def get(
    host: str,
    port: int,
    *,
    source: str | None = None,
    headers: dict[str, str] | None = None,
    host_header: str | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    """One GET / (on ``conn`` when given, kept open; else on a new connection)."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection(
            host, port, timeout=15, source_address=None if source is None else (source, 0)
        )
    try:
        conn.putrequest("GET", "/", skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host_header or netloc(host, port))
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        raw = response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw.decode(errors="replace")[:200]}
        return Reply(response.status, body if isinstance(body, dict) else {"raw": body})
    finally:
        if own:
            conn.close()


@contextmanager
def userspace_world(kind: str, tmp: Path, **settings: str) -> Iterator[World]:
    with ExitStack() as stack:
        directory = stack.enter_context(trusted_directory())
        stand_in = stack.enter_context(running_tailscaled(directory))
        add_peers(stand_in, tun=False)
        state_dir = tmp / "state"
        token = token_for(state_dir)
        env = gunicorn_env(state_dir, FLASK_TAILNET_TAILSCALED_SOCKET=stand_in.path, **settings)
        port = free_port()
        stack.enter_context(app_server(kind, [port], env, tmp))
        listen = [NODE_V4, NODE_V6]
        relay = stack.enter_context(relaying(listen, port, stand_in))
        late = stack.enter_context(relaying(listen, port, stand_in, register="late"))
        silent = stack.enter_context(relaying(listen, port, stand_in, register="never"))
        yield World(kind, stand_in, port, token, relay, late, silent)


@pytest.fixture(scope="module", params=[*KINDS, "gunicorn-gthread-v4-mapped"])
def plain(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Userspace mode, identity on, no gate: a relayed peer must present a credential."""
    with userspace_world(request.param, tmp_path_factory.mktemp("plain")) as world:
        yield world


@pytest.fixture(scope="module", params=KINDS)
def login(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Userspace mode with Tailscale login for alice only."""
    with userspace_world(
        request.param,
        tmp_path_factory.mktemp("login"),
        FLASK_TAILNET_TAILSCALE_LOGIN="true",
        FLASK_TAILNET_ALLOWED_USERS="alice@example.com",
    ) as world:
        yield world


def through(world: World, relay: Relay, source: str, **kwargs: Any) -> Reply:
    """A request from the tailnet client at ``source``, relayed to the app."""
    node = NODE_V6 if ":" in source else NODE_V4
    port = relay.port(socket.AF_INET6 if ":" in source else socket.AF_INET)
    return get(node, port, source=source, **kwargs)


def refused_credential(reply: Reply) -> bool:
    """401 (or the login redirect): the peer must authenticate; never served."""
    return reply.status in (401, 303) and reply.body.get("method") is None


# ---- 1a: userspace mode, a relayed request is the remote peer ---------------------------------

#: (id, the tailnet client's address, the Host header it sends)
RELAYED_WITHOUT_CREDENTIAL = [
    ("relayed-from-tailnet-ipv4", ALICE_V4, None),
    ("relayed-from-tailnet-ipv6-netstack-dials-127", ALICE_V6, None),
    ("relayed-with-host-localhost", ALICE_V4, "localhost"),
    ("relayed-with-host-127.0.0.1", ALICE_V4, "127.0.0.1"),
    ("relayed-bob", BOB, None),
]


@pytest.mark.parametrize(
    ("source", "host"),
    [row[1:] for row in RELAYED_WITHOUT_CREDENTIAL],
    ids=[row[0] for row in RELAYED_WITHOUT_CREDENTIAL],
)
def test_relayed_request_without_credential_is_not_local(
    plain: World, source: str, host: str | None
) -> None:
    reply = through(plain, plain.relay, source, host_header=host)
    assert refused_credential(reply), reply


#: Held before this issue too (a request with proxy headers never gets the loopback bypass):
#: kept as regression rows, not as proof of the fix.
RELAYED_WITH_PROXY_HEADERS = [
    ("relayed-forging-tailscale-user-login", {"Tailscale-User-Login": "alice@example.com"}),
    ("relayed-forging-x-forwarded-for-loopback", {"X-Forwarded-For": "127.0.0.1"}),
]


@pytest.mark.parametrize(
    "headers",
    [row[1] for row in RELAYED_WITH_PROXY_HEADERS],
    ids=[row[0] for row in RELAYED_WITH_PROXY_HEADERS],
)
def test_relayed_request_with_forged_proxy_headers_is_not_local(
    plain: World, headers: dict[str, str]
) -> None:
    reply = through(plain, plain.relay, ALICE_V4, headers=headers)
    assert refused_credential(reply), reply


@pytest.mark.parametrize("source", [ALICE_V4, ALICE_V6], ids=["ipv4", "ipv6"])
def test_relayed_request_with_token_is_the_peer(plain: World, source: str) -> None:
    """Admitted by its token as the remote peer: its tailnet address (the IPv4 one whois gives,
    never 127.0.0.1) and its Tailscale identity."""
    reply = through(plain, plain.relay, source, headers={"Authorization": f"Bearer {plain.token}"})
    assert reply.status == 200, reply
    assert reply.body["method"] == "token"
    assert reply.body["address"] == ALICE_V4
    assert reply.body["local"] is False
    assert reply.body["via_proxy"] is True
    assert reply.body["login"] == "alice@example.com"
    assert reply.body["node"] == "alice-laptop.tail1a2b3.ts.net"


@pytest.fixture(scope="module")
def identity_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Userspace mode with TAILNET_IDENTITY="off" (relays are still told apart)."""
    with userspace_world(
        "gunicorn-gthread", tmp_path_factory.mktemp("off"), FLASK_TAILNET_IDENTITY="off"
    ) as world:
        yield world


def test_with_identity_off_a_relayed_peer_has_no_identity(identity_off: World) -> None:
    """Identity "off" still tells relays apart (the peer is its tailnet address, never local),
    but gives the relayed peer no Tailscale identity, as it gives a direct peer none."""
    anonymous = through(identity_off, identity_off.relay, ALICE_V4)
    assert refused_credential(anonymous), anonymous
    reply = through(
        identity_off,
        identity_off.relay,
        ALICE_V4,
        headers={"Authorization": f"Bearer {identity_off.token}"},
    )
    assert reply.status == 200, reply
    assert (reply.body["method"], reply.body["address"]) == ("token", ALICE_V4)
    assert reply.body["local"] is False
    assert reply.body.get("login") is None


# ---- 1b: Tailscale login and the gate ---------------------------------------------------------

#: (id, client address, token?, expected status, expected user)
LOGIN_ROWS = [
    ("alice-admitted-by-tailscale-login", ALICE_V4, False, 200, "alice@example.com"),
    ("alice-over-ipv6-admitted", ALICE_V6, False, 200, "alice@example.com"),
    ("bob-refused-by-the-gate", BOB, False, 403, None),
    ("bob-with-the-token-still-refused", BOB, True, 403, None),
    ("tagged-node-never-matches-a-user-entry", TAGGED, False, 403, None),
]


@pytest.mark.parametrize(
    ("source", "with_token", "status", "user"),
    [row[1:] for row in LOGIN_ROWS],
    ids=[row[0] for row in LOGIN_ROWS],
)
def test_relayed_request_with_tailscale_login(
    login: World, source: str, with_token: bool, status: int, user: str | None
) -> None:
    headers = {"Authorization": f"Bearer {login.token}"} if with_token else {}
    reply = through(login, login.relay, source, headers=headers)
    assert reply.status == status, reply
    if status == 200:
        assert reply.body["method"] == "tailscale"
        assert reply.body["user"] == user
        assert reply.body["address"] == ALICE_V4
        assert reply.body["local"] is False


# ---- 1c: a direct loopback request stays local --------------------------------------------------

NOBODY_CLIENT = """
import encodings.idna, http.client, json, os, socket, struct, sys
port, uid, bind, requests = (int(a) for a in sys.argv[1:5])
if uid:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
# Closed with a reset: no TIME_WAIT keeps the port from being used again at once.
sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
sock.bind(("127.0.0.1", bind))
sock.settimeout(15)
sock.connect(("127.0.0.1", port))
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
conn.sock = sock
replies = []
for _ in range(requests):
    conn.request("GET", "/")
    response = conn.getresponse()
    replies.append({"status": response.status, "body": response.read().decode()})
    if response.will_close:
        break
conn.close()
print(json.dumps({"replies": replies}))
"""


def get_as(uid: int, port: int, *, bind: int = 0, requests: int = 1) -> Reply:
    """GET / on 127.0.0.1:``port`` from another process running as ``uid`` (root drops to it;
    0 stays root), from 127.0.0.1:``bind`` (0: any port); the first reply."""
    return gets_as(uid, port, bind=bind, requests=requests)[0]


def gets_as(uid: int, port: int, *, bind: int = 0, requests: int = 1) -> list[Reply]:
    """Up to ``requests`` GETs on one connection from another process (see :func:`get_as`)."""
    done = subprocess.run(
        [sys.executable, "-c", NOBODY_CLIENT, str(port), str(uid), str(bind), str(requests)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    return [Reply(r["status"], json.loads(r["body"])) for r in answer["replies"]]


def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def is_local(reply: Reply) -> bool:
    return reply.status == 200 and reply.body.get("method") == "loopback" and reply.body["local"]


def test_another_users_loopback_request_is_local_without_whois(plain: World) -> None:
    """The kernel says nobody, not tailscaled's uid, made the client socket: no whois at all."""
    before = len(plain.stand_in.whois_calls)
    reply = get_as(nobody(), plain.app_port)
    assert is_local(reply), reply
    assert plain.stand_in.whois_calls[before:] == []


def test_roots_loopback_request_is_local_without_whois(plain: World) -> None:
    """root made it, as tailscaled runs, but in another process: tailscaled's process does not
    hold the client socket (the kernel's record, /proc/<tailscaled>/fd), so it is local without
    a whois; on a keep-alive connection (gthread) every request is."""
    before = len(plain.stand_in.whois_calls)
    replies = gets_as(0, plain.app_port, requests=2)
    assert all(is_local(reply) for reply in replies), replies
    assert plain.stand_in.whois_calls[before:] == []


def test_a_connection_tailscaleds_process_holds_is_never_local(plain: World) -> None:
    """A loopback connection made by tailscaled's own process (the stand-in's, here the test
    process) that whois cannot place (404) is not local: tailscaled relayed it for someone."""
    before = len(plain.stand_in.whois_calls)
    direct = socket.create_connection(("127.0.0.1", plain.app_port), timeout=15)
    client_port = direct.getsockname()[1]
    conn = http.client.HTTPConnection("127.0.0.1", plain.app_port, timeout=15)
    conn.sock = direct
    try:
        replies = [get("127.0.0.1", plain.app_port, conn=conn)]
        if plain.kind.startswith("gunicorn-gthread"):  # the others close after one response
            replies.append(get("127.0.0.1", plain.app_port, conn=conn))
    finally:
        conn.close()
    assert all(refused_credential(reply) for reply in replies), replies
    assert plain.stand_in.whois_calls[before:] == [f"127.0.0.1:{client_port}"]


# ---- 1d: a lookup that races the registration ------------------------------------------------


def test_a_relay_that_registers_late_is_never_local(plain: World) -> None:
    """The relay registers 50-150 ms after its dial (tailscale issue 1616), while the request is
    already on its way: tailscaled's retries find it; never served as local."""
    replies = [through(plain, plain.late, ALICE_V4) for _ in range(6)]
    assert all(refused_credential(reply) for reply in replies), replies
    assert wait_for(lambda: len(plain.late.unregistered) >= 6, 10)


# ---- 1e: a relay that registers nothing ------------------------------------------------------


def test_a_relay_that_registers_nothing_is_not_local(plain: World) -> None:
    """A connection tailscaled's process holds that whois cannot place (tailscaled registered
    nothing) is not local: a whois 404 is never proof."""
    reply = through(plain, plain.silent, ALICE_V4)
    assert refused_credential(reply), reply


def test_a_relayed_client_tailscaled_has_no_node_for_is_not_local(plain: World) -> None:
    """netstack registers every client it relays to 127.0.0.1, but whois answers 404 when the
    registered IP is no node's (ipnlocal WhoIs: "no node for proxymapped IP"): a LAN client that
    a subnet router without SNAT forwards to a userspace node with --accept-routes, or a node
    removed from the netmap. The connection is held by tailscaled's process: never local."""
    reply = through(plain, plain.relay, NO_NODE)
    assert refused_credential(reply), reply


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server that gives no connection object (gunicorn sync, the app hides it)."""
    with userspace_world(
        "gunicorn-sync", tmp_path_factory.mktemp("hidden"), RELAYED_APP_HIDE_CONNECTION="1"
    ) as world:
        yield world


def test_without_a_connection_object_a_whois_miss_is_not_local(hidden: World) -> None:
    """No connection object: a 404 cannot be tied to the connection's first request, so a relay
    that registered nothing must authenticate; another user's request is still local."""
    assert refused_credential(through(hidden, hidden.silent, ALICE_V4))
    assert refused_credential(get("127.0.0.1", hidden.app_port))
    assert refused_credential(through(hidden, hidden.relay, ALICE_V4))
    assert is_local(get_as(nobody(), hidden.app_port))


# ---- 1f: keep-alive and reused ports ---------------------------------------------------------


def test_keep_alive_relayed_connection_stays_the_remote_peer(plain: World) -> None:
    """Every request of a relayed keep-alive connection (gthread keeps it) is the remote peer."""
    conn = http.client.HTTPConnection(
        NODE_V4, plain.relay.port(), timeout=15, source_address=(ALICE_V4, 0)
    )
    try:
        replies = [get(NODE_V4, plain.relay.port(), conn=conn) for _ in range(3)]
    finally:
        conn.close()
    assert all(refused_credential(reply) for reply in replies), replies


def test_a_relayed_connection_on_a_port_judged_local_before_is_the_peer(plain: World) -> None:
    """A direct root connection (another process) from 127.0.0.1:P is local (remembered for that
    connection); it ends, and tailscaled's next dial gets the same port P: that connection is
    the remote peer. Answers are kept per connection, never per port."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    first = get_as(0, plain.app_port, bind=port)
    assert is_local(first), first
    plain.relay.bind_next = port
    replies = [through(plain, plain.relay, ALICE_V4)]
    assert f"127.0.0.1:{port}" in plain.relay.dialled, "the relay did not reuse the port"
    assert all(refused_credential(reply) for reply in replies), replies
    assert plain.stand_in.whois_calls.count(f"127.0.0.1:{port}") == 1


# ---- 2: TUN mode, tailscale serve forwards raw TCP to the app ---------------------------------


@dataclass
class Tun:
    stand_in: StandInTailscaled
    forwarded: int  # the port serve forwards to (when a row says so)
    other: int  # another port of the same server: nothing forwards to it
    token: str
    stop: Callable[[], None]  # stops the stand-in tailscaled (its socket goes)


@contextmanager
def tun_world(
    tmp: Path,
    extra: Sequence[str] = (),
    serve_config: Callable[[int], Any] | None = None,
) -> Iterator[Tun]:
    with ExitStack() as stack:
        directory = stack.enter_context(trusted_directory())
        daemon = ExitStack()
        stack.callback(daemon.close)
        stand_in = daemon.enter_context(running_tailscaled(directory))
        add_peers(stand_in, tun=True)
        forwarded, other = free_port(), free_port()
        if serve_config is not None:  # read at start: the server's first snapshot has it
            stand_in.serve_config = serve_config(forwarded)
        state_dir = tmp / "state"
        token = token_for(state_dir)
        env = gunicorn_env(state_dir, FLASK_TAILNET_TAILSCALED_SOCKET=stand_in.path)
        stack.enter_context(app_server("gunicorn-gthread", [forwarded, other], env, tmp, extra))
        yield Tun(stand_in, forwarded, other, token, daemon.close)


@pytest.fixture(scope="module")
def tun(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tun]:
    with tun_world(tmp_path_factory.mktemp("tun")) as world:
        yield world


def outcome(reply: Reply) -> str:
    if is_local(reply):
        return "local"
    if refused_credential(reply):
        return "credential"
    if reply.status == 403:
        return "refused"
    return f"unexpected {reply}"


def both(world: Tun) -> tuple[str, str]:
    """What a direct loopback request (root) gets on the forwarded port and on the other."""
    return (
        outcome(get("127.0.0.1", world.forwarded)),
        outcome(get("127.0.0.1", world.other)),
    )


def tcp(target: str, **handler: Any) -> dict[str, Any]:
    return {"TCP": {"443": {"TCPForward": target, **handler}}}


#: (id, serve-config (a function of the forwarded port), what loopback gets on that port)
SERVE_CONFIGS = [
    ("top-level-tcp-forward", lambda p: tcp(f"127.0.0.1:{p}"), "credential"),
    (
        "tls-terminated-tcp-forward",
        lambda p: tcp(f"127.0.0.1:{p}", TerminateTLS="server.tail1a2b3.ts.net"),
        "credential",
    ),
    ("forward-to-localhost-by-name", lambda p: tcp(f"localhost:{p}"), "credential"),
    (
        "service-svc-mcp-api-tcp-443",
        lambda p: {"Services": {"svc:mcp-api": tcp(f"127.0.0.1:{p}")}},
        "credential",
    ),
    (
        "foreground-session-without-bg",
        lambda p: {"Foreground": {"a1b2c3": {"TCP": {"8443": {"TCPForward": f"127.0.0.1:{p}"}}}}},
        "credential",
    ),
    (
        "foreground-session-service",
        lambda p: {"Foreground": {"a1b2c3": {"Services": {"svc:mcp-api": tcp(f"127.0.0.1:{p}")}}}},
        "credential",
    ),
    (
        "funnel-published-tcp-forward",
        lambda p: {**tcp(f"127.0.0.1:{p}"), "AllowFunnel": {"server.tail1a2b3.ts.net:443": True}},
        "refused",
    ),
    (
        "http-serve-only-sets-x-forwarded-for",
        lambda p: {
            "TCP": {"443": {"HTTPS": True}},
            "Web": {
                "server.tail1a2b3.ts.net:443": {
                    "Handlers": {"/": {"Proxy": f"http://127.0.0.1:{p}"}}
                }
            },
        },
        "local",
    ),
]


@pytest.mark.parametrize(
    ("config", "expected"),
    [row[1:] for row in SERVE_CONFIGS],
    ids=[row[0] for row in SERVE_CONFIGS],
)
def test_serve_tcp_forward_to_the_port_is_not_local(tun: Tun, config: Any, expected: str) -> None:
    """serve-config changes while the server runs; it notices within REFRESH_SECONDS (+ a
    margin for a loaded machine). Only the forwarded port loses the bypass."""
    assert wait_for(lambda: both(tun) == ("local", "local"), REFRESH_SECONDS + MARGIN)
    with tun.stand_in.lock:
        tun.stand_in.serve_config = config(tun.forwarded)
    try:
        started = time.monotonic()
        noticed = wait_for(lambda: both(tun) == (expected, "local"), REFRESH_SECONDS + MARGIN)
        elapsed = time.monotonic() - started
        assert noticed, f"after {elapsed:.1f} s: {both(tun)}"
        print(f"serve-config change noticed after {elapsed:.2f} s")
    finally:
        with tun.stand_in.lock:
            tun.stand_in.serve_config = None


#: (id, how tailscaled fails to answer serve-config/status)
UNREADABLE = [
    ("serve-config-500", {"fail_with": (500, "internal error")}),
    ("localapi-403", {"fail_with": (403, "serve config denied")}),
    ("serve-config-with-an-unknown-field", {"serve_config": {"TCP": {}, "Tunnels": {}}}),
    (
        "localapi-answer-not-json",
        {"raw_answer": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{{{"},
    ),
]


@pytest.mark.parametrize(
    "failure", [row[1] for row in UNREADABLE], ids=[row[0] for row in UNREADABLE]
)
def test_unreadable_tailscaled_makes_no_loopback_local(tun: Tun, failure: dict[str, Any]) -> None:
    assert wait_for(lambda: both(tun) == ("local", "local"), REFRESH_SECONDS + MARGIN)
    for name, value in failure.items():
        setattr(tun.stand_in, name, value)
    try:
        assert wait_for(
            lambda: both(tun) == ("credential", "credential"), REFRESH_SECONDS + MARGIN
        ), both(tun)
    finally:
        tun.stand_in.fail_with = None
        tun.stand_in.raw_answer = None
        tun.stand_in.serve_config = None


def test_relayed_tcp_forward_of_a_tailnet_client_needs_a_credential(tun: Tun) -> None:
    """A serve TCP forward relayed through real sockets (registers nothing, as tailscaled's
    serve does not): the tailnet client needs the token, and then is only the anonymous relay."""
    with tun.stand_in.lock:
        tun.stand_in.serve_config = tcp(f"127.0.0.1:{tun.forwarded}")
    try:
        assert wait_for(lambda: both(tun)[0] == "credential", REFRESH_SECONDS + MARGIN)
        with relaying([NODE_V4], tun.forwarded, tun.stand_in, register="never") as relay:
            anonymous = get(NODE_V4, relay.port(), source=ALICE_V4)
            token = get(
                NODE_V4,
                relay.port(),
                source=ALICE_V4,
                headers={"Authorization": f"Bearer {tun.token}"},
            )
    finally:
        with tun.stand_in.lock:
            tun.stand_in.serve_config = None
    assert refused_credential(anonymous), anonymous
    assert token.status == 200, token
    assert (token.body["method"], token.body["local"]) == ("token", False)


@pytest.mark.parametrize(
    ("how", "after"),
    [
        # The socket is named (TAILNET_TAILSCALED_SOCKET): a named socket that does not exist is
        # a typo as much as a stopped tailscaled, so nothing is local until it is back.
        pytest.param("socket-gone", ("credential", "credential"), id="named-socket-gone"),
        pytest.param("connection-refused", ("local", "local"), id="connection-refused"),
    ],
)
def test_stopped_tailscaled_in_tun_mode(tmp_path: Path, how: str, after: tuple[str, str]) -> None:
    """tailscaled stopped relays nothing: once its socket refuses connections, the port it
    forwarded to is local again (a forward seen while it ran does not linger); a named socket
    that is gone leaves nothing local."""
    with tun_world(tmp_path) as world:
        world.stand_in.serve_config = tcp(f"127.0.0.1:{world.forwarded}")
        assert wait_for(lambda: both(world) == ("credential", "local"), REFRESH_SECONDS + MARGIN)
        path = world.stand_in.path
        world.stop()
        if how == "connection-refused":
            refusing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            refusing.bind(path)  # bound, never listening: connect() gets ECONNREFUSED
            os.chmod(path, 0o666)
        try:
            assert wait_for(lambda: both(world) == after, REFRESH_SECONDS + MARGIN), both(world)
        finally:
            if how == "connection-refused":
                refusing.close()


# ---- 3: PROXY protocol from tailscaled's serve forward (gunicorn --proxy-protocol) ------------

RAW_CLIENT = """
import encodings.idna, os, socket, sys
port, uid, data = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
    sock.sendall(data)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
sys.stdout.buffer.write(answer)
"""


def raw_as(uid: int, port: int, data: bytes, *, elsewhere: bool = False) -> Reply:
    """Send ``data`` to 127.0.0.1:``port`` from a process running as ``uid`` (this one, the
    stand-in tailscaled's, for our own uid unless ``elsewhere``); the reply."""
    if uid == os.geteuid() and not elsewhere:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(data)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        text = answer.decode("latin-1")
    else:
        done = subprocess.run(
            [sys.executable, "-c", RAW_CLIENT, str(port), str(uid), data.hex()],
            capture_output=True,
            timeout=30,
            check=False,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr[-2000:]
        text = done.stdout.decode("latin-1")
    head, _, body = text.partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"raw": body[:200]}
    return Reply(status, parsed if isinstance(parsed, dict) else {"raw": parsed})


def http_get(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tun]:
    """gunicorn --proxy-protocol (PROXY v1 or v2, detected) in TUN mode; serve forwards tcp:443
    (ProxyProtocol 2) and tcp:8443 (ProxyProtocol 1) to the forwarded port."""

    def config(port: int) -> dict[str, Any]:
        return {
            "TCP": {
                "443": {"TCPForward": f"127.0.0.1:{port}", "ProxyProtocol": 2},
                "8443": {"TCPForward": f"127.0.0.1:{port}", "ProxyProtocol": 1},
            }
        }

    with tun_world(
        tmp_path_factory.mktemp("proxied"), extra=["--proxy-protocol"], serve_config=config
    ) as world:
        yield world


@pytest.mark.parametrize(
    ("version", "source"),
    [(1, ALICE_V4), (2, ALICE_V4), (1, ALICE_V6), (2, ALICE_V6)],
    ids=["v1-ipv4", "v2-ipv4", "v1-ipv6", "v2-ipv6"],
)
def test_proxy_protocol_from_tailscaled_is_the_tailnet_client(
    proxied: Tun, version: int, source: str
) -> None:
    """tailscaled (root, like the relay) sends the PROXY header naming the tailnet client: the
    request is that client (whois of its address), never local; a credential is still needed."""
    node = NODE_V6 if ":" in source else NODE_V4
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with relaying(
        [node], proxied.forwarded, proxied.stand_in, register="never", proxy_protocol=version
    ) as relay:
        anonymous = get(node, relay.port(family), source=source)
        admitted = get(
            node,
            relay.port(family),
            source=source,
            headers={"Authorization": f"Bearer {proxied.token}"},
        )
    assert refused_credential(anonymous), anonymous
    assert admitted.status == 200, admitted
    assert admitted.body["address"] == source
    assert (admitted.body["method"], admitted.body["local"]) == ("token", False)
    assert admitted.body["login"] == "alice@example.com"
    assert source in proxied.stand_in.whois_calls, "identity not from whois of the client"


def proxy_v1(client: str, port: int) -> bytes:
    return proxy_header(1, (client, 40001), (NODE_V4, 443)) + http_get(f"{NODE_V4}:443")


def proxy_v2(client: str, port: int) -> bytes:
    return proxy_header(2, (client, 40002), (NODE_V4, 443)) + http_get(f"{NODE_V4}:443")


def plain_get(client: str, port: int) -> bytes:
    return http_get(f"127.0.0.1:{port}")


#: (id, sender, which port, request bytes (client address, port) -> bytes, expected outcome)
PROXY_ATTACKS = [
    ("nobody-claims-a-tailnet-peer-v1", "nobody", "forwarded", proxy_v1, ALICE_V4, "refused"),
    ("nobody-claims-a-tailnet-peer-v2", "nobody", "forwarded", proxy_v2, ALICE_V4, "refused"),
    ("nobody-claims-loopback", "nobody", "forwarded", proxy_v1, "127.0.0.1", "refused"),
    ("nobody-claims-this-nodes-own-address", "nobody", "forwarded", proxy_v2, NODE_V4, "refused"),
    (
        "nobody-claims-a-peer-on-a-port-without-a-forward",
        "nobody",
        "other",
        proxy_v1,
        ALICE_V4,
        "refused",
    ),
    (
        "root-claims-a-peer-on-a-port-without-proxy-protocol",
        "root",
        "other",
        proxy_v2,
        ALICE_V4,
        "refused",
    ),
    (
        # tailscaled's user, but not its process: the socket is not among its open files
        "root-process-that-is-not-tailscaled-claims-a-peer-on-the-forwarded-port",
        "root-elsewhere",
        "forwarded",
        proxy_v2,
        ALICE_V4,
        "refused",
    ),
    (
        "nobody-without-a-header-on-the-forwarded-port",
        "nobody",
        "forwarded",
        plain_get,
        "",
        "credential",
    ),
    ("nobody-without-a-header-on-the-other-port", "nobody", "other", plain_get, "", "local"),
]


@pytest.mark.parametrize(
    ("sender", "which", "build", "client", "expected"),
    [row[1:] for row in PROXY_ATTACKS],
    ids=[row[0] for row in PROXY_ATTACKS],
)
def test_a_proxy_header_tailscaled_did_not_send_is_refused(
    proxied: Tun, sender: str, which: str, build: Any, client: str, expected: str
) -> None:
    port = proxied.forwarded if which == "forwarded" else proxied.other
    uid = nobody() if sender == "nobody" else os.geteuid()
    reply = raw_as(uid, port, build(client, port), elsewhere=sender == "root-elsewhere")
    assert outcome(reply) == expected, reply
