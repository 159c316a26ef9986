"""sockowner.py: the kernel's owner of the client end of a loopback TCP connection, read with real
sockets: our own, another user's (a child that dropped to ``nobody``), IPv4 and IPv6, and the
answers the kernel gives that must not be read as an owner (a listener, a closed socket)."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from flask_tailnet.sockowner import held_by, loopback_client_owner, loopback_client_uid

from .gunicorn_helpers import ROOT

Address = tuple[str, int]


@contextmanager
def listening(host: str) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen(8)
        yield server


def pair(server: socket.socket) -> tuple[socket.socket, socket.socket, Address, Address]:
    """A connection made by this process: client, accepted, the client's and server's addresses."""
    client = socket.socket(server.family, socket.SOCK_STREAM)
    client.connect(server.getsockname())
    accepted, peer = server.accept()
    return client, accepted, peer[:2], server.getsockname()[:2]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_our_own_connection_is_ours(host: str) -> None:
    with listening(host) as server:
        client, accepted, peer, local = pair(server)
        with client, accepted:
            assert loopback_client_uid(peer, local) == os.geteuid()


def test_an_ipv4_mapped_address_is_looked_up_as_ipv4() -> None:
    """A dual-stack server reports ``::ffff:127.0.0.1``; the client socket is IPv4."""
    with listening("127.0.0.1") as server:
        client, accepted, (address, port), (server_address, server_port) = pair(server)
        with client, accepted:
            assert (
                loopback_client_uid(
                    (f"::ffff:{address}", port), (f"::ffff:{server_address}", server_port)
                )
                == os.geteuid()
            )


def test_an_ipv6_socket_connected_to_ipv4() -> None:
    with listening("127.0.0.1") as server:
        client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        client.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
        accepted, peer = server.accept()
        with client, accepted:
            assert loopback_client_uid(peer[:2], server.getsockname()[:2]) == os.geteuid()


@pytest.mark.parametrize(
    ("client", "server"),
    [
        pytest.param(("127.0.0.1", 1), ("127.0.0.1", 2), id="no-such-connection"),
        pytest.param(("::1", 1), ("::1", 2), id="no-such-ipv6-connection"),
        pytest.param(("not-an-address", 1), ("127.0.0.1", 2), id="not-an-address"),
        pytest.param(("127.0.0.1", 0), ("127.0.0.1", 2), id="port-zero"),
        pytest.param(("127.0.0.1", 70000), ("127.0.0.1", 2), id="port-out-of-range"),
        pytest.param(("127.0.0.1", "x"), ("127.0.0.1", 2), id="port-not-a-number"),
        pytest.param(("127.0.0.1", 1), ("::1", 2), id="mixed-families"),
        pytest.param(("", 1), ("127.0.0.1", 2), id="empty-address"),
        pytest.param((), ("127.0.0.1", 2), id="empty-tuple"),
    ],
)
def test_unknown_is_none_never_an_exception(client: Any, server: Any) -> None:
    assert loopback_client_uid(client, server) is None


def test_a_connection_that_does_not_exist_is_not_read_as_a_listener() -> None:
    """The kernel answers a missed exact lookup with a listener on the client's address:port
    when there is one. That socket owns no connection to the server: None, not its owner."""
    with listening("127.0.0.1") as listener:
        assert loopback_client_uid(listener.getsockname(), ("127.0.0.1", 1)) is None


def test_the_right_end_of_the_connection() -> None:
    """Asked the other way round, the answer is about the server's accepted socket (ours as
    well): the caller must pass the client first. Swapped ports of one connection both exist."""
    with listening("127.0.0.1") as server:
        client, accepted, peer, local = pair(server)
        with client, accepted:
            assert loopback_client_uid(local, peer) == os.geteuid()
            assert loopback_client_uid(peer, (local[0], local[1] + 1)) is None


# ---- another user's connection: a child that drops to `nobody` ---------------------------------

CHILD = """
import encodings.idna, os, socket, sys
host, port, uid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
client = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
client.connect((host, port))
client.sendall(b"GET / HTTP/1.1\\r\\n\\r\\n")
print(client.getsockname()[1], flush=True)
sys.stdin.readline()
client.close()
print("closed", flush=True)
sys.stdin.readline()
"""


@contextmanager
def connection_as(uid: int, server: socket.socket) -> Iterator[tuple[subprocess.Popen[str], int]]:
    host, port = server.getsockname()[:2]
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, host, str(port), str(uid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip().isdigit(), f"child did not connect: {line!r}"
            yield child, int(line)
        finally:
            child.kill()
            child.wait(timeout=10)


def nobody() -> int:
    if os.geteuid() != 0:
        pytest.skip("connecting as another user needs root")
    return pwd.getpwnam("nobody").pw_uid


@pytest.mark.root
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_another_users_connection_is_theirs(host: str) -> None:
    uid = nobody()
    with listening(host) as server, connection_as(uid, server) as (_child, port):
        accepted, peer = server.accept()
        with accepted:
            assert peer[1] == port
            assert loopback_client_uid(peer[:2], server.getsockname()[:2]) == uid


@pytest.mark.root
def test_a_closed_client_socket_is_unknown_not_root() -> None:
    """A client that sent its request and closed: the kernel reports its socket with no inode and
    uid 0 (a timewait socket, FIN_WAIT2 or TIME_WAIT) whoever made it, or for a moment its maker's
    uid. Either must read as unknown: root is the uid tailscaled usually runs as, and any uid but
    tailscaled's would read as "not tailscaled"."""
    uid = nobody()
    with listening("127.0.0.1") as server, connection_as(uid, server) as (child, _port):
        accepted, peer = server.accept()
        with accepted:
            assert loopback_client_uid(peer[:2], server.getsockname()[:2]) == uid
            assert child.stdin is not None
            assert child.stdout is not None
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "closed"
            deadline = time.monotonic() + 5
            while accepted.recv(4096):  # the request, then the end of the stream
                assert time.monotonic() < deadline
            assert loopback_client_uid(peer[:2], server.getsockname()[:2]) is None


@pytest.mark.root
def test_a_user_without_privileges_reads_every_users_sockets() -> None:
    """The lookup needs no privilege: a server running as ``nobody`` sees root's client socket."""
    uid = nobody()
    with listening("127.0.0.1") as server:
        client, accepted, peer, local = pair(server)
        with client, accepted:
            script = (
                "import os, sys\n"
                "from flask_tailnet.sockowner import loopback_client_uid\n"
                f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
                f"print(loopback_client_uid({peer!r}, {local!r}))\n"
            )
            result = subprocess.run(
                [sys.executable, "-c", script],
                check=False,
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=30,
            )
            assert result.stdout.strip() == str(os.geteuid()), result.stderr


def test_lookup_costs_little_next_to_a_whois_miss() -> None:
    """One lookup, measured against a baseline in the same run: a loopback TCP connect + accept +
    close (what the client paid to reach the app anyway). tailscaled's whois of an unknown
    loopback key waits about 180 ms; this must stay within a small multiple of the connect."""
    with listening("127.0.0.1") as server:
        client, accepted, peer, local = pair(server)
        with client, accepted:
            rounds = 300
            start = time.perf_counter()
            for _ in range(rounds):
                assert loopback_client_uid(peer, local) == os.geteuid()
            lookup = (time.perf_counter() - start) / rounds
        start = time.perf_counter()
        for _ in range(rounds):
            extra, other, _peer, _local = pair(server)
            extra.close()
            other.close()
        connect = (time.perf_counter() - start) / rounds
    print(f"sock_diag lookup {lookup * 1e6:.1f} us, loopback connect {connect * 1e6:.1f} us")
    assert lookup < 10 * connect


# ---- which process holds the socket: /proc/<pid>/fd -------------------------------------------


def test_the_process_that_holds_the_client_socket_is_found() -> None:
    """This process holds the client end of its own connection, and not the client end of a
    connection another process made (the test behind "a connection tailscaled's process does not
    hold is local")."""
    with listening("127.0.0.1") as server:
        client, accepted, peer, local = pair(server)
        with client, accepted:
            owner = loopback_client_owner(peer, local)
            assert owner is not None
            assert owner.uid == os.geteuid()
            assert held_by(os.getpid(), owner.inode) is True
        with connection_as(os.geteuid(), server) as (child, _port):
            accepted, peer = server.accept()
            with accepted:
                theirs = loopback_client_owner(peer[:2], server.getsockname()[:2])
                assert theirs is not None
                assert held_by(os.getpid(), theirs.inode) is False
                assert held_by(child.pid, theirs.inode) is True


@pytest.mark.parametrize(
    ("pid", "inode"),
    [
        pytest.param(0, 1234, id="pid-outside-this-namespace"),
        pytest.param(-1, 1234, id="negative-pid"),
        pytest.param(2**22 + 12345, 1234, id="no-such-process"),
        pytest.param(1, 0, id="no-inode"),
    ],
)
def test_a_process_that_cannot_be_read_is_unknown_never_false(pid: int, inode: int) -> None:
    """Unknown is None, so the caller never reads "not tailscaled's" from a failure."""
    assert held_by(pid, inode) is None


@pytest.mark.root
def test_another_users_process_cannot_be_listed_by_an_unprivileged_user() -> None:
    """A user that is neither root nor the process's own cannot list its files: unknown."""
    uid = nobody()
    script = (  # imports first: the interpreter's files need not be readable by `nobody`
        "import os, sys; from flask_tailnet.sockowner import held_by; os.setgroups([]); "
        "os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[1])); "
        "print(held_by(int(sys.argv[2]), 1234))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(uid), str(os.getpid())],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=True,
    )
    assert done.stdout.strip() == "None"
