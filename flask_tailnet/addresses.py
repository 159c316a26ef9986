"""IP addresses and network policies (pure: strings in, answers out).

An address that is missing, empty or does not parse is never loopback and never a member of any
policy, not even ``"any"``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_net = ipaddress.ip_network

#: Longer values are not an address (the longest IPv6 text with a zone is far shorter).
MAX_ADDRESS_LENGTH = 64

#: Tailscale's CGNAT range. It is shared address space that ISPs use too: membership is necessary,
#: not sufficient, which is why remote peers still need a credential.
TAILNET_V4 = _net("100.64.0.0/10")
#: Inside TAILNET_V4 but used by ChromeOS VMs; Tailscale itself does not count it as a tailnet IP.
CHROMEOS_V4 = _net("100.115.92.0/23")
TAILNET_V6 = _net("fd7a:115c:a1e0::/48")
#: The in-node service address (MagicDNS resolver): inside the ranges, but never a peer.
TAILSCALE_SERVICE: frozenset[IPAddress] = frozenset(
    {ipaddress.ip_address("100.100.100.100"), ipaddress.ip_address("fd7a:115c:a1e0::53")}
)
LOCAL_EXTRA: tuple[Network, ...] = (
    _net("10.0.0.0/8"),
    _net("172.16.0.0/12"),
    _net("192.168.0.0/16"),
    _net("169.254.0.0/16"),
    _net("fc00::/7"),
    _net("fe80::/10"),
)


def parse_ip(value: object) -> IPAddress | None:
    """The address in ``value``, IPv4-mapped IPv6 judged as its IPv4; ``None`` for anything else.

    Never raises. Refused: non-strings, empty strings, surrounding or inner whitespace, brackets,
    ports, and the legacy spellings (``127.1``, ``0x7f.0.0.1``) that ``ipaddress`` refuses.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_ADDRESS_LENGTH:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            ip = ipaddress.IPv6Address(value.split("%", 1)[0])
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
    return ip


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Parse IPs and CIDRs (host bits allowed); raise ``ValueError`` naming the first bad entry."""
    result = []
    for entry in entries:
        try:
            result.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
    return tuple(result)


def is_loopback(ip: IPAddress | None) -> bool:
    """The loopback rule, for an address from :func:`parse_ip` (which judges an IPv4-mapped
    address as its IPv4): true only for 127.0.0.0/8 and ::1, never for ``None``."""
    return ip is not None and ip.is_loopback


def in_networks(ip: IPAddress | None, networks: Iterable[Network]) -> bool:
    """True if ``ip`` belongs to one of ``networks``; never for ``None``."""
    return ip is not None and any(ip.version == n.version and ip in n for n in networks)


@dataclass(frozen=True, slots=True)
class Policy:
    """Which peers may be served at all: a named policy narrowed by an optional allowlist."""

    name: str
    allowlist: tuple[Network, ...] = ()

    def admits(self, ip: IPAddress | None) -> bool:
        """True if ``ip`` may be served. Refused: ``None``; addresses outside the named policy;
        non-loopback addresses outside a non-empty allowlist."""
        if ip is None:
            return False
        if is_loopback(ip):
            return True
        if not self.contains(ip):
            return False
        return not self.allowlist or in_networks(ip, self.allowlist)

    def contains(self, ip: IPAddress | None) -> bool:
        """True if ``ip`` is inside the named policy, loopback included, allowlist ignored."""
        if ip is None:
            return False
        if self.name == "any" or is_loopback(ip) or is_tailnet(ip):
            return True
        return self.name == "local" and in_networks(ip, LOCAL_EXTRA)


def is_tailnet(ip: IPAddress | None) -> bool:
    """True for Tailscale's address ranges, without the ChromeOS block and the service address."""
    if ip is None or ip in TAILSCALE_SERVICE:
        return False
    if ip.version == 4:
        return ip in TAILNET_V4 and ip not in CHROMEOS_V4
    return ip in TAILNET_V6
