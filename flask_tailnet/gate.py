"""The decision core: which requests are refused, served as local, or must authenticate (pure).

:meth:`Gate.admit` takes a WSGI environ and knows nothing of Flask. In order it applies the Host
check, takes the peer from the socket (never from a header), resolves proxy headers, applies the
network policy and the loopback bypass with its cross-site exception. What it cannot settle it
leaves to the credential cascade (:mod:`flask_tailnet.credentials`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .addresses import IPAddress, Network, Policy, in_networks, parse_ip
from .hosts import HostCheck, HostRule, same_origin
from .peer import Peer
from .proxies import FUNNEL_KEY, PROXY_HEADER_KEYS, forwarded_client

log = logging.getLogger("flask_tailnet")

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CACHE_LIMIT = 4096
#: werkzeug's ProxyFix keeps the socket's values here when it rewrites REMOTE_ADDR and HTTP_HOST.
PROXY_FIX_ORIG = "werkzeug.proxy_fix.orig"


class Outcome(enum.Enum):
    SERVE = "serve"
    AUTHENTICATE = "authenticate"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a request; ``peer`` is who it is from as far as the gate can tell."""

    outcome: Outcome
    peer: Peer


_UNKNOWN = Peer(address=None, method="none")
REFUSED = Verdict(Outcome.REFUSE, _UNKNOWN)


@dataclass(frozen=True, slots=True)
class _SocketPeer:
    """What the gate knows about one socket address; cached per REMOTE_ADDR value."""

    ip: IPAddress | None
    admitted: bool
    trusted_proxy: bool
    verdict: Verdict
    proxied: Verdict


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
        self.host_ok = HostCheck(allowed_hosts, policy.admits)
        self.trusted_proxies = trusted_proxies
        self.local_bypass = local_bypass
        self._peers: dict[object, _SocketPeer] = {}
        self._warned_untrusted_proxy = False

    def admit(self, environ: Mapping[str, Any]) -> Verdict:
        """Decide a request. Refused: a Host that does not name this app; a socket peer (or, via a
        trusted proxy, a forwarded client) outside the policy; a Funnel request unless the policy
        is ``"any"``; a cross-site unsafe request or WebSocket upgrade to a loopback peer."""
        orig = environ.get(PROXY_FIX_ORIG)
        source = environ if orig is None else orig
        host = source.get("HTTP_HOST")
        if not self.host_ok(host):
            return REFUSED
        peer = self._socket_peer(source.get("REMOTE_ADDR"))
        if not PROXY_HEADER_KEYS.isdisjoint(environ.keys()):
            return self._proxied(environ, peer)
        verdict = peer.verdict
        if (
            verdict.outcome is Outcome.SERVE
            and (environ.get("REQUEST_METHOD") not in _SAFE_METHODS or "HTTP_UPGRADE" in environ)
            and _cross_site(environ, host)
        ):
            return REFUSED
        return verdict

    def _proxied(self, environ: Mapping[str, Any], peer: _SocketPeer) -> Verdict:
        if not peer.trusted_proxy:
            if not self._warned_untrusted_proxy:
                self._warned_untrusted_proxy = True
                log.warning(
                    "flask-tailnet: a request from %s carried proxy headers, but that address is "
                    "not in TAILNET_TRUSTED_PROXIES: the headers are ignored and the request must "
                    "authenticate. If a proxy such as `tailscale serve` or nginx runs on this "
                    "host, list its address in TAILNET_TRUSTED_PROXIES.",
                    peer.ip,
                )
            return peer.proxied
        client = forwarded_client(environ.get("HTTP_X_FORWARDED_FOR"), self.trusted_proxies)
        if FUNNEL_KEY in environ and self.policy.name != "any":
            return REFUSED
        if not self.policy.admits(client):
            return REFUSED
        return Verdict(Outcome.AUTHENTICATE, Peer(str(client), "none", via_proxy=True))

    def _socket_peer(self, remote_addr: object) -> _SocketPeer:
        try:
            return self._peers[remote_addr]
        except (KeyError, TypeError):
            pass
        ip = parse_ip(remote_addr)
        admitted = self.policy.admits(ip)
        address = None if ip is None else str(ip)
        if not admitted:
            verdict = REFUSED
        elif ip is not None and ip.is_loopback and self.local_bypass:
            verdict = Verdict(Outcome.SERVE, Peer(address, "loopback", local=True))
        else:
            verdict = Verdict(Outcome.AUTHENTICATE, Peer(address, "none"))
        proxied = (
            Verdict(Outcome.AUTHENTICATE, Peer(address, "none", via_proxy=True))
            if admitted
            else REFUSED
        )
        result = _SocketPeer(
            ip=ip,
            admitted=admitted,
            trusted_proxy=in_networks(ip, self.trusted_proxies),
            verdict=verdict,
            proxied=proxied,
        )
        if isinstance(remote_addr, str):
            if len(self._peers) >= _CACHE_LIMIT:
                self._peers.clear()
            self._peers[remote_addr] = result
        return result


def _cross_site(environ: Mapping[str, Any], host: object) -> bool:
    """True if a browser sent this request from another site: ``Sec-Fetch-Site: cross-site``, or
    an ``Origin`` (``null`` included) that is not this request's scheme and Host."""
    if environ.get("HTTP_SEC_FETCH_SITE", "").lower() == "cross-site":
        return True
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return False
    return not same_origin(origin, host, environ.get("wsgi.url_scheme", "http"))
