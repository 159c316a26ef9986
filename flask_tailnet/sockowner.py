"""Who owns the client end of a loopback TCP connection, as the kernel records it (Linux).

In userspace-networking mode tailscaled dials the app from 127.0.0.1, and only tailscaled's whois
can say whether a loopback connection was one of its relays, after a wait of about 180 ms for a
client it does not know. The kernel already knows who made the client socket: its owner's uid
(the creator's fsuid, which passing the socket to another process does not change). A loopback
connection whose client socket belongs to a uid other than tailscaled's was not dialled by
tailscaled. This module only reads that record; the decision is the caller's.

The record comes from NETLINK_SOCK_DIAG (what ``ss -e`` reads): one exact lookup by the
connection's four addresses, which any user may make, for sockets of every user, in its own
network namespace. Read only from a socket some process still holds: once its process closed it,
the kernel reports it with no inode and either uid 0 (TIME_WAIT, and FIN_WAIT2 kept as a timewait
socket: root, whoever made it) or, for a moment, its maker's uid. Such an answer is unknown.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import NamedTuple

__all__ = ["Owner", "held_by", "loopback_client_owner", "loopback_client_uid"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
#: Every TCP state: an exact lookup ignores the mask, but say what is meant.
ALL_STATES = 0xFFFFFFFF
#: A client lookup waits at most this long for the kernel's answer (it answers at once).
TIMEOUT = 0.5

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBxI")  # inet_diag_req_v2: family, protocol, ext, pad, states
#: inet_diag_sockid: sport, dport (network order), src[16], dst[16], if, cookie[2].
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
_MESSAGE = struct.Struct("=BBBB")  # inet_diag_msg: family, state, timer, retrans, then sockid
_MESSAGE_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_SOCKID_SIZE = _SOCKID.size + _SOCKID_TAIL.size


class Owner(NamedTuple):
    """The kernel's record of a socket: the uid that made it, and its inode (the number of the
    ``socket:[N]`` link in ``/proc/<pid>/fd`` of every process that holds it)."""

    uid: int
    inode: int


def loopback_client_uid(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid of :func:`loopback_client_owner`, or None when unknown."""
    owner = loopback_client_owner(client, server)
    return None if owner is None else owner.uid


def held_by(pid: int, inode: int) -> bool | None:
    """Whether process ``pid`` holds the socket ``inode`` among its open files; None when that
    cannot be read (``pid`` not in this PID namespace, ``/proc/<pid>/fd`` closed to this user:
    only the process's own user and root may list it) or the process holds no file at all (it
    exited and is not reaped yet: a zombie's list is empty, and proves nothing). Never raises."""
    if pid <= 0 or inode <= 0:
        return None
    wanted = f"socket:[{inode}]"
    directory = f"/proc/{pid}/fd"
    listed = False
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                listed = True
                try:
                    if os.readlink(entry.path) == wanted:
                        return True
                except OSError:
                    continue  # closed since the listing
    except OSError:
        return None
    return False if listed else None


def loopback_client_owner(client: tuple[str, int], server: tuple[str, int]) -> Owner | None:
    """The owner of the client end of the TCP connection ``client`` -> ``server``
    (``(address, port)`` each, as the server saw them: ``REMOTE_ADDR``/``REMOTE_PORT`` and the
    listening address/``SERVER_PORT``), or None when unknown: no such connection, addresses that
    do not parse or mix families, a socket no process holds any more (TIME_WAIT, orphaned), not
    Linux, netlink refused. Never raises. IPv4-mapped IPv6 addresses are looked up as IPv4."""
    try:
        client_ip = _unmapped(client[0])
        server_ip = _unmapped(server[0])
        client_port, server_port = int(client[1]), int(server[1])
    except (ValueError, TypeError, IndexError):
        return None
    if client_ip.version != server_ip.version or not (
        0 < client_port < 65536 and 0 < server_port < 65536
    ):
        return None
    try:
        return _lookup(client_ip, client_port, server_ip, server_port)
    except (OSError, struct.error, ValueError, AttributeError):
        return None


def _unmapped(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _lookup(
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    client_port: int,
    server_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    server_port: int,
) -> Owner | None:
    family = socket.AF_INET if client_ip.version == 4 else socket.AF_INET6
    # The client socket's own end is "src": the kernel finds the socket bound to src:sport and
    # connected to dst:dport.
    exact = _expected(client_ip, client_port, server_ip, server_port)
    sockid = exact[0] + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES) + sockid
    sequence = int.from_bytes(os.urandom(4), "little")
    request = _HEADER.pack(
        _HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, sequence, 0
    )
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as link:
        link.settimeout(TIMEOUT)
        link.sendto(request + body, (0, 0))
        reply = link.recv(8192)
    length, kind, _flags, answered, _pid = _HEADER.unpack_from(reply)
    if answered != sequence or kind == NLMSG_ERROR or length > len(reply):
        return None  # ENOENT (no such socket) and every other error
    if kind != SOCK_DIAG_BY_FAMILY:
        return None
    offset = _HEADER.size + _MESSAGE.size
    found = reply[offset : offset + _SOCKID.size]
    # A lookup that misses the connection may find a listener on src:sport: only the exact
    # four addresses count (an IPv6 socket connected to an IPv4 address holds them mapped).
    if found not in exact:
        return None
    _expires, _rqueue, _wqueue, uid, inode = _MESSAGE_TAIL.unpack_from(reply, offset + _SOCKID_SIZE)
    return Owner(uid, inode) if inode != 0 else None


def _expected(
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    client_port: int,
    server_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    server_port: int,
) -> tuple[bytes, ...]:
    """The addresses an answer about exactly this connection carries (the request's first)."""
    forms = [(client_ip.packed.ljust(16, b"\0"), server_ip.packed.ljust(16, b"\0"))]
    if client_ip.version == 4:
        mapped = b"\0" * 10 + b"\xff\xff"
        forms.append((mapped + client_ip.packed, mapped + server_ip.packed))
    return tuple(_SOCKID.pack(client_port, server_port, src, dst) for src, dst in forms)
