"""The rows of bench_wsgi.py that involve tailscaled: apps that ask a stand-in tailscaled (the
tests' one, tests/tailscaled_stand_in.py: the real wire format on a unix socket, served by a
thread of this process), and real loopback connections for the userspace-networking rows.

In userspace mode the guard decides a loopback connection by the kernel's record of who owns its
client socket (``sock_diag``): a connection another user made is local without asking tailscaled.
Here tailscaled is this process, so the client ends are made by a forked child running as
``nobody``; the server ends are accepted here and stand in the environ as ``werkzeug.socket``,
as ``flask run`` puts them there. Making them needs root (to start the child as another user);
without it those rows are skipped with a note.
"""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: only benchmarks/ is on the path
    sys.path.insert(0, str(ROOT))

from flask_tailnet.tailscaled import LocalAPI  # noqa: E402
from tests.tailscaled_stand_in import (  # noqa: E402 - after the path fix above
    StandInTailscaled,
    running_tailscaled,
    trusted_directory,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "PEER_LOGIN",
    "StandInTailscaled",
    "add_peer",
    "new_connections",
    "on_connection",
    "other_user_connections",
    "stand_ins",
    "whois_microseconds",
]

#: The whois answer the stand-in gives for the benchmark's tailnet peer.
PEER_LOGIN = "alice@example.com"
#: Real loopback connections made for the userspace rows (each is one client socket in the
#: child and one accepted socket here).
CONNECTIONS = 256
NOBODY = 65534


@contextmanager
def stand_ins() -> Iterator[tuple[StandInTailscaled, StandInTailscaled]]:
    """Two stand-in tailscaleds: one in TUN mode, one in userspace-networking mode; both know
    the benchmark's tailnet peer."""
    with ExitStack() as stack:
        found = []
        for tun in (True, False):
            directory = stack.enter_context(trusted_directory())
            # A thread that wakes 20 times a second (the tests' stand-in) takes the GIL from
            # the requests being timed: the token and session rows measured 15 points slower.
            # tailscaled is another process; here its thread wakes only to stop.
            stand_in = stack.enter_context(running_tailscaled(directory, poll_interval=1.0))
            stand_in.status["TUN"] = tun
            found.append(stand_in)
        yield found[0], found[1]


def add_peer(stand_in: StandInTailscaled, address: str) -> None:
    stand_in.add_peer(address, login=PEER_LOGIN, display_name="Alice Example")


@contextmanager
def other_user_connections(count: int = CONNECTIONS) -> Iterator[list[socket.socket]]:
    """``count`` live loopback TCP connections whose client ends a child process of ``nobody``
    holds until the end of the ``with``; yields the server ends. Call it before any thread is
    started (it forks). Raises PermissionError when not root."""
    if os.geteuid() != 0:
        raise PermissionError("making a client socket owned by another user needs root")
    with socket.create_server(("127.0.0.1", 0), backlog=count + 16) as listener:
        port = listener.getsockname()[1]
        # the child cannot read the standard library as nobody: load the codec connect() needs
        "127.0.0.1".encode("idna")
        ready_read, ready_write = os.pipe()
        stop_read, stop_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: as nobody, connect, say so, hold them until the pipe closes
            status = 1
            try:
                os.close(ready_read)
                os.close(stop_write)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                held = [socket.socket() for _ in range(count)]
                for client in held:
                    client.connect(("127.0.0.1", port))
                os.write(ready_write, b"1")
                os.read(stop_read, 1)
                del held
                status = 0
            finally:
                os._exit(status)
        os.close(ready_write)
        os.close(stop_read)
        accepted: list[socket.socket] = []
        try:
            listener.settimeout(30)
            accepted = [listener.accept()[0] for _ in range(count)]
            if os.read(ready_read, 1) != b"1":
                raise RuntimeError("the client process did not connect")
            yield accepted
        finally:
            for connection in accepted:
                connection.close()
            os.close(stop_write)  # the child reads end of file and exits
            os.close(ready_read)
            os.waitpid(pid, 0)


class _NewConnection:
    """A fresh object for a live connection: to the guard, a connection it has not seen, so it
    asks the kernel again (a server gives every new connection a new socket object)."""

    __slots__ = ("__weakref__", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def getpeername(self) -> Any:
        return self._sock.getpeername()


def on_connection(environ: WSGIEnvironment, connection: socket.socket) -> WSGIEnvironment:
    """``environ`` as ``flask run`` gives it for a request on ``connection``."""
    client_port = connection.getpeername()[1]
    return {**environ, "werkzeug.socket": connection, "REMOTE_PORT": str(client_port)}


def new_connections(
    connections: list[socket.socket],
) -> Callable[[WSGIEnvironment], WSGIEnvironment]:
    """A per-request environ maker: each request on a connection the guard has not seen (the
    live connections in turn, each under a new object)."""
    ring = itertools.cycle([(c, str(c.getpeername()[1])) for c in connections])

    def fresh(environ: WSGIEnvironment) -> WSGIEnvironment:
        connection, client_port = next(ring)
        made = environ.copy()
        made["werkzeug.socket"] = _NewConnection(connection)
        made["REMOTE_PORT"] = client_port
        return made

    return fresh


def microseconds(call: Callable[[], object], count: int) -> float:
    """The median time of ``count`` calls, in microseconds."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def whois_microseconds(stand_in: StandInTailscaled, address: str, count: int) -> float:
    """An uncached whois: one LocalAPI call (connect, request, parse), median of ``count``."""
    api = LocalAPI(stand_in.path)

    def ask() -> None:
        if api.whois(address) is None:
            raise RuntimeError(f"the stand-in does not know {address}")

    return microseconds(ask, count)
