"""The decision core: which requests are refused, served as local, or must authenticate (pure).

:meth:`Gate.admit` takes a WSGI environ and knows nothing of Flask. In order it applies the Host
check, takes the peer from the socket (never from a header), resolves proxy headers, applies the
network policy and the loopback bypass with its cross-site exception. What it cannot settle it
leaves to the credential cascade (:mod:`flask_tailnet.credentials`).

Everything that depends only on the socket address and the Host header is decided once per
distinct pair and cached, so the common request costs one dictionary lookup and a few key tests.
Pairs that the checks refuse for their length (see :data:`~flask_tailnet.hosts.MAX_HOST_LENGTH`)
are decided every time instead, so the cache's memory stays bounded whatever clients send.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .addresses import (
    MAX_ADDRESS_LENGTH,
    IPAddress,
    Network,
    Policy,
    in_networks,
    is_loopback,
    parse_ip,
)
from .caches import BoundedCache
from .hosts import MAX_HOST_LENGTH, SAFE_METHODS, HostCheck, HostRule, cross_site
from .peer import Peer
from .proxies import FUNNEL_KEY, PROXY_FIX_ORIG, PROXY_HEADER_KEYS, forwarded_client

log = logging.getLogger("flask_tailnet")

_CACHE_LIMIT = 4096


class Outcome(enum.Enum):
    SERVE = "serve"
    AUTHENTICATE = "authenticate"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a request; ``peer`` is who it is from as far as the gate can tell.
    ``forwarded``: the peer's address is a trusted proxy's claim (``X-Forwarded-For``)."""

    outcome: Outcome
    peer: Peer
    forwarded: bool = False


_UNKNOWN = Peer(address=None, method="none")
REFUSED = Verdict(Outcome.REFUSE, _UNKNOWN)


@dataclass(frozen=True, slots=True)
class _Route:
    """The decision for one (socket address, Host) pair, as far as it depends on nothing else."""

    verdict: Verdict  # for a request without proxy headers
    proxied: Verdict  # for a request with proxy headers, from a peer that is not a trusted proxy
    trusted_proxy: bool  # the Host is fine and the socket peer is a trusted proxy
    bypass: bool  # the loopback bypass serves it, unless it is cross-site


class Gate:
    """Steps 1 to 5 of the decision, for one app's settings."""

    def __init__(
        self,
        *,
        policy: Policy,
        allowed_hosts: tuple[HostRule, ...] = (),
        trusted_proxies: tuple[Network, ...] = (),
        local_bypass: bool = True,
    ) -> None:
        self.policy = policy
        self.host_ok = HostCheck(allowed_hosts, policy.contains)
        self.trusted_proxies = trusted_proxies
        self.local_bypass = local_bypass
        # Keys longer than the checks accept are never stored: a refused 60 kB Host is decided
        # again (in constant time) rather than kept.
        self._route_cache: BoundedCache[tuple[object, object], _Route] = BoundedCache(
            max_entries=_CACHE_LIMIT, max_key_size=MAX_ADDRESS_LENGTH + MAX_HOST_LENGTH
        )
        self._routes = self._route_cache.entries
        self._warned_untrusted_proxy = False

    def admit(self, environ: Mapping[str, Any]) -> Verdict:
        """Decide a request. Refused: a Host that does not name this app; a socket peer (or, via a
        trusted proxy, a forwarded client) outside the policy; any request marked as Funnel traffic
        unless the policy is ``"any"``; a cross-site unsafe request or WebSocket upgrade to the
        loopback bypass."""
        # proxies.as_received, inlined: a call costs a tenth of this method, on every request
        source = environ.get(PROXY_FIX_ORIG, environ)
        key = (source.get("REMOTE_ADDR"), source.get("HTTP_HOST"))
        try:
            route = self._routes[key]
        except (KeyError, TypeError):
            route = self._route(key)
        if not PROXY_HEADER_KEYS.isdisjoint(environ):  # the fastest of the spellings measured
            return self._proxied(environ, route)
        if (  # hosts.unsafe_cross_site, inlined: every loopback request would pay the call
            route.bypass
            and (environ.get("REQUEST_METHOD") not in SAFE_METHODS or "HTTP_UPGRADE" in environ)
            and cross_site(environ, key[1])
        ):
            return REFUSED
        return route.verdict

    def _proxied(self, environ: Mapping[str, Any], route: _Route) -> Verdict:
        """A request that carries proxy headers: never local, and Funnel traffic is public."""
        if route.verdict is REFUSED and not route.trusted_proxy:
            return REFUSED
        if FUNNEL_KEY in environ and self.policy.name != "any":
            return REFUSED
        if not route.trusted_proxy:
            if not self._warned_untrusted_proxy:
                self._warned_untrusted_proxy = True
                log.warning(
                    "flask-tailnet: a request from %s carried proxy headers, but that address is "
                    "not in TAILNET_TRUSTED_PROXIES: the headers are ignored and the request must "
                    "authenticate. If a proxy such as `tailscale serve` or nginx runs on this "
                    "host, list its address in TAILNET_TRUSTED_PROXIES.",
                    route.proxied.peer.address,
                )
            return route.proxied
        client = forwarded_client(environ.get("HTTP_X_FORWARDED_FOR"), self.trusted_proxies)
        if not self.policy.admits(client):
            return REFUSED
        return Verdict(
            Outcome.AUTHENTICATE, Peer(str(client), "none", via_proxy=True), forwarded=True
        )

    def _route(self, key: tuple[object, object]) -> _Route:
        remote_addr, host = key
        ip: IPAddress | None = parse_ip(remote_addr)
        address = None if ip is None else str(ip)
        host_ok = self.host_ok(host)
        admitted = host_ok and self.policy.admits(ip)
        bypass = admitted and is_loopback(ip) and self.local_bypass
        if not admitted:
            verdict = REFUSED
        elif bypass:
            verdict = Verdict(Outcome.SERVE, Peer(address, "loopback", local=True))
        else:
            verdict = Verdict(Outcome.AUTHENTICATE, Peer(address, "none"))
        proxied = (
            Verdict(Outcome.AUTHENTICATE, Peer(address, "none", via_proxy=True))
            if admitted
            else REFUSED
        )
        route = _Route(
            verdict=verdict,
            proxied=proxied,
            trusted_proxy=host_ok and in_networks(ip, self.trusted_proxies),
            bypass=bypass,
        )
        if isinstance(remote_addr, str | None) and isinstance(host, str | None):
            address_size, host_size = len(remote_addr or ""), len(host or "")
            if address_size <= MAX_ADDRESS_LENGTH and host_size <= MAX_HOST_LENGTH:
                self._route_cache.store(key, route, address_size + host_size)
        return route
