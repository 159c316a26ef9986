"""This machine's tailnet addresses (for the default binds and ``flask tailnet url``), and the TCP
ports this user listens on here (for ``flask tailnet url``).

Only the addresses in Tailscale's ranges on the ``tailscale0`` interface count, else (tailscaled in
userspace networking mode has no interface) what ``tailscale ip`` prints. Addresses of other
interfaces never count, even inside the ranges: CGNAT space is also handed out by ISPs, and an
address that is not tailscaled's would put the app on a network nobody chose.

The parsers are pure; :func:`machine_addresses` is the only part that runs commands, and it never
raises and never waits more than a few seconds per command. :func:`listening_ports` only reads
``/proc``: it connects to nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable

from .addresses import is_tailnet, parse_ip

#: The interface tailscaled creates on Linux (unless started with ``--tun=NAME``).
TAILSCALE_INTERFACE = "tailscale0"
#: Seconds each discovery command may take; one that takes longer counts as having printed nothing.
COMMAND_TIMEOUT = 5.0
#: Where Linux lists the TCP sockets of this network namespace, IPv4 then IPv6.
PROC_NET_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"  # the state column of a listening socket


def tailnet_addresses(candidates: Iterable[str]) -> list[str]:
    """The tailnet addresses among ``candidates``, normalized, in order and without duplicates.

    Left out: anything that is not a plain address of Tailscale's ranges, the ChromeOS block and
    the in-node service address (``100.100.100.100``, ``fd7a:115c:a1e0::53``).
    """
    found: list[str] = []
    for candidate in candidates:
        ip = parse_ip(candidate)
        if ip is not None and is_tailnet(ip) and str(ip) not in found:
            found.append(str(ip))
    return found


def interface_addresses(ip_json: str, interface: str | None = None) -> list[str]:
    """The addresses (``local``) in the output of ``ip -j addr``, only those of ``interface``
    (its ``ifname``) when one is named. What is malformed is skipped; never raises."""
    try:
        interfaces = json.loads(ip_json)
    except (ValueError, RecursionError):
        return []
    found: list[str] = []
    for entry in interfaces if isinstance(interfaces, list) else ():
        if not isinstance(entry, dict):
            continue
        if interface is not None and entry.get("ifname") != interface:
            continue
        infos = entry.get("addr_info")
        for info in infos if isinstance(infos, list) else ():
            local = info.get("local") if isinstance(info, dict) else None
            if isinstance(local, str):
                found.append(local)
    return found


def machine_addresses() -> list[str]:
    """This machine's tailnet addresses: those on ``tailscale0`` (``ip -j addr show dev
    tailscale0``), else those ``tailscale ip`` prints; ``[]`` when neither finds one.

    Never raises; each command is bounded by :data:`COMMAND_TIMEOUT`.
    """
    shown = _output("ip", "-j", "addr", "show", "dev", TAILSCALE_INTERFACE)
    found = tailnet_addresses(interface_addresses(shown, TAILSCALE_INTERFACE))
    if found:
        return found
    return tailnet_addresses(_output("tailscale", "ip").split())


def _output(command: str, *args: str) -> str:
    """What ``command`` (looked up on PATH) prints; ``""`` when it is missing, fails or hangs."""
    path = shutil.which(command)
    if path is None:
        return ""
    try:
        return subprocess.run(  # noqa: S603 - a fixed command found on PATH
            [path, *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, ValueError, subprocess.SubprocessError):
        return ""


def can_listen_on(address: str) -> bool:
    """True if this machine can listen on ``address``: a throwaway socket is bound to it, port 0,
    and closed without listening (no traffic). ``tailscale ip`` names addresses that are on no
    interface when tailscaled runs in userspace networking mode; binding them fails."""
    ip = parse_ip(address)
    if ip is None:  # an empty host would bind the wildcard
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except (OSError, ValueError):
        return False
    return True


def listening_ports_in(table: str, uid: int) -> set[int]:
    """The local ports of the listening sockets of user ``uid`` in the text of a ``/proc/net/tcp``
    (or ``tcp6``) table. What is malformed is skipped; never raises."""
    ports: set[int] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != _LISTEN or fields[7] != str(uid):
            continue
        try:
            ports.add(int(fields[1].rpartition(":")[2], 16))
        except ValueError:
            continue
    return ports


def listening_ports() -> set[int]:
    """The TCP ports that a process of this user (the effective uid) listens on, on any address,
    in this machine's network namespace; empty where :data:`PROC_NET_TCP` cannot be read (not
    Linux). Another user's sockets do not count: a local user who listens on a port would
    otherwise choose where ``flask tailnet url`` sends the token. Never raises."""
    ports: set[int] = set()
    uid = os.geteuid()
    for path in PROC_NET_TCP:
        try:
            with open(path, encoding="ascii", errors="replace") as table:
                ports |= listening_ports_in(table.read(), uid)
        except OSError:
            continue
    return ports
