"""A relay that reaches the app from 127.0.0.1 as tailscaled does, for tests with real sockets.

Two kinds, both running in the test process (so the kernel records their sockets as owned by the
same uid as the stand-in tailscaled, as tailscaled's own are):

- **userspace networking** (netstack's ``forwardTCP``, wgengine/netstack/netstack.go): accept a
  tailnet client on a tailnet address added to lo, dial the app on ``127.0.0.1:<port>`` FIRST,
  then register the dialling socket's own address ``127.0.0.1:<ephemeral>`` -> the client's
  tailnet IP in the stand-in's proxy map (``register``: at once, after a delay, or never), pipe
  bytes both ways, and unregister once both directions are closed;
- **a serve TCP forward** (``tailscale serve --tcp``, TUN mode): the same without any
  registration, optionally sending a PROXY protocol header (v1 or v2, as ``ProxyProtocol`` makes
  tailscaled do) naming the tailnet client first.

Every socket has a timeout and every thread is a daemon joined with a timeout on stop.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal

from .tailscaled_stand_in import StandInTailscaled

Register = Literal["at once", "late", "never"]
#: How late a ``"late"`` relay registers, after its dial (seconds): tailscale issue 1616's race.
LATE = (0.050, 0.150)
_TIMEOUT = 20.0


@dataclass
class Relay:
    """One running relay: where it listens, and what it registered (for assertions)."""

    listeners: list[tuple[str, int]]
    registered: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    dialled: list[str] = field(default_factory=list)
    #: The local port the next dial binds (to show that a reused port is judged afresh).
    bind_next: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def port(self, family: int = socket.AF_INET) -> int:
        for host, port in self.listeners:
            if (":" in host) == (family == socket.AF_INET6):
                return port
        raise LookupError("no listener of that family")


def proxy_header(version: int, client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """A PROXY protocol header (v1 text or v2 binary) naming ``client`` -> ``server``."""
    src, dst = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    if version == 1:
        family = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {family} {src} {dst} {client[1]} {server[1]}\r\n".encode()
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    if src.version == 4:
        body = src.packed + dst.packed + struct.pack("!HH", client[1], server[1])
        return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body
    body = src.packed + dst.packed + struct.pack("!HH", client[1], server[1])
    return signature + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body


@contextmanager
def relaying(
    listen: Sequence[str],
    app_port: int,
    stand_in: StandInTailscaled,
    *,
    register: Register = "at once",
    proxy_protocol: int | None = None,
) -> Iterator[Relay]:
    """Relay connections accepted on each of ``listen`` (addresses on lo, a free port each) to
    ``127.0.0.1:app_port`` until the end of the ``with``."""
    servers: list[socket.socket] = []
    threads: list[threading.Thread] = []
    stopping = threading.Event()
    try:
        for host in listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            server = socket.socket(family, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((host, 0))
            server.listen(64)
            server.settimeout(0.1)
            servers.append(server)
        relay = Relay([(s.getsockname()[0], s.getsockname()[1]) for s in servers])

        def serve(server: socket.socket) -> None:
            while not stopping.is_set():
                try:
                    client, address = server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                worker = threading.Thread(
                    target=_forward,
                    args=(relay, client, address, server.getsockname(), app_port, stand_in),
                    kwargs={"register": register, "proxy_protocol": proxy_protocol},
                    daemon=True,
                )
                worker.start()
                threads.append(worker)

        for server in servers:
            thread = threading.Thread(target=serve, args=(server,), daemon=True)
            thread.start()
            threads.append(thread)
        yield relay
    finally:
        stopping.set()
        for server in servers:
            server.close()
        for thread in list(threads):
            thread.join(_TIMEOUT)


def _forward(
    relay: Relay,
    client: socket.socket,
    address: tuple[str, int],
    local: tuple[str, int],
    app_port: int,
    stand_in: StandInTailscaled,
    *,
    register: Register,
    proxy_protocol: int | None,
) -> None:
    client.settimeout(_TIMEOUT)
    peer = (str(ipaddress.ip_address(address[0].split("%")[0])), int(address[1]))
    with relay.lock:
        bind, relay.bind_next = relay.bind_next, None
    try:
        # Dial first, as forwardTCP does; netstack dials 127.0.0.1 for IPv6 tailnet clients too.
        backend = _dial(app_port, bind)
    except OSError:
        client.close()
        return
    key = f"127.0.0.1:{backend.getsockname()[1]}"
    with relay.lock:
        relay.dialled.append(key)
    timer: threading.Timer | None = None

    def do_register() -> None:
        stand_in.register_tcp(key, peer[0])
        with relay.lock:
            relay.registered.append(key)

    if register == "at once":
        do_register()
    elif register == "late":
        timer = threading.Timer(random.uniform(*LATE), do_register)
        timer.start()
    if proxy_protocol is not None:
        backend.sendall(proxy_header(proxy_protocol, peer, (local[0], local[1])))
    done = [threading.Thread(target=_pipe, args=pair, daemon=True) for pair in
            ((client, backend), (backend, client))]  # fmt: skip
    for thread in done:
        thread.start()
    for thread in done:
        thread.join(_TIMEOUT * 2)
    if timer is not None:
        timer.join(_TIMEOUT)
    if register != "never":
        stand_in.unregister_tcp(key)
        with relay.lock:
            relay.unregistered.append(key)
    backend.close()
    client.close()


def _dial(app_port: int, bind: int | None) -> socket.socket:
    backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        backend.settimeout(_TIMEOUT)
        if bind is not None:
            backend.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            backend.bind(("127.0.0.1", bind))
        backend.connect(("127.0.0.1", app_port))
    except OSError:
        backend.close()
        raise
    return backend


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then end ``sink``'s writing side (as io.Copy + CloseWrite)."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def wait_for(condition: object, timeout: float) -> bool:
    """Poll ``condition()`` every 20 ms until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(condition())  # type: ignore[operator]
