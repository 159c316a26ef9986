"""Who the peer is: the step between the gate and the credential cascade (pure: no Flask).

The gate decides on the socket address and the Host alone. This step asks tailscaled (through a
:class:`~flask_tailnet.tailscaled_watch.TailscaledWatch`) what the address cannot tell:

- **A loopback request is local only if tailscaled did not relay it.** tailscaled connects from
  127.0.0.1 itself for a TCP forward of ``tailscale serve`` to this port, and for every tailnet
  connection in userspace-networking mode. Such a request is never local: it is the remote peer
  whois names (policy, allowlist, gates, credential or Tailscale login apply), or, when nobody
  can be named, an anonymous proxied peer that must authenticate. Refused: a loopback request on
  a TCP forward that Funnel publishes, unless the network policy is ``"any"``.
- **A remote peer gets its Tailscale identity** from whois of its address (of the forwarded
  client's, behind a trusted proxy; never from a header), cached per address for
  :data:`IDENTITY_SECONDS`. Refused (403): a peer the gates (``TAILNET_ALLOWED_USERS``,
  ``TAILNET_ALLOWED_TAGS``, ``TAILNET_REQUIRED_CAPABILITY``) do not admit, one without an
  identity when a gate is set or ``TAILNET_IDENTITY`` is ``"required"``, and a request whose
  ``Tailscale-User-Login`` from a trusted proxy disagrees with whois. With
  ``TAILNET_TAILSCALE_LOGIN``, a peer the gates admit is served as its login.
- **A local process that connects to this node's own tailnet address is local**, as loopback is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .addresses import Policy, is_loopback, is_tailnet, parse_ip
from .caches import BoundedCache
from .gate import REFUSED, SAFE_METHODS, Outcome, Verdict
from .hosts import cross_site
from .identity import IdentityRule, TailscaleIdentity
from .peer import Peer
from .proxies import as_received
from .relays import PerConnection, connection_of
from .sockowner import loopback_client_uid
from .tailscaled import LocalAPIError
from .tailscaled_watch import Snapshot, TailscaledWatch

log = logging.getLogger("flask_tailnet")

IdentityMode = Literal["auto", "required", "off"]

#: How long a whois answer (a peer, or "not a peer") is reused for the same address: a grant
#: revoked in the tailnet policy stops admitting within this many seconds.
IDENTITY_SECONDS = 10.0
#: How long a failed whois (timeout, 5xx...) is remembered, so a tailscaled in trouble is not
#: asked again by every request; never longer than an answer.
FAILURE_SECONDS = 1.0
_CACHE_LIMIT = 4096
_LOGIN_HEADER = "HTTP_TAILSCALE_USER_LOGIN"


@dataclass(frozen=True, slots=True)
class _Known:
    """What is known of one address: its identity (``None``: not a peer, or not asked) and the
    verdicts that follow from it, built once per whois answer."""

    expires: float
    identity: TailscaleIdentity | None
    direct: Verdict  # the request came straight from the address
    proxied: Verdict  # via a proxy (a trusted one named it, or tailscaled relayed it)


#: A connection tailscaled did not relay (the per-connection answer of userspace mode).
_LOCAL_CONNECTION = "local"


class Identify:
    """The identity step of one app (see the module docstring)."""

    def __init__(
        self,
        *,
        watch: TailscaledWatch,
        mode: IdentityMode,
        rule: IdentityRule,
        tailscale_login: bool,
        policy: Policy,
    ) -> None:
        self.watch = watch
        self.mode = mode
        self.rule = rule
        self.tailscale_login = tailscale_login
        self.policy = policy
        self._asks = mode != "off"
        self._cache: BoundedCache[str, _Known] = BoundedCache(
            max_entries=_CACHE_LIMIT, max_key_size=0
        )
        self._known = self._cache.entries
        self._connections: PerConnection[str] = PerConnection()
        self._reported_missing = False

    def __call__(self, environ: Mapping[str, Any], verdict: Verdict) -> Verdict:
        """The gate's ``verdict`` with what tailscaled knows (see the module docstring)."""
        outcome = verdict.outcome
        if outcome is Outcome.SERVE:
            snapshot = self.watch.current()
            if snapshot.loopback_clear:
                return verdict
            return self._loopback(environ, verdict, snapshot)
        if outcome is Outcome.AUTHENTICATE:
            return self._remote(environ, verdict)
        return verdict

    # -- loopback -------------------------------------------------------------------------------

    def _loopback(self, environ: Mapping[str, Any], verdict: Verdict, snapshot: Snapshot) -> Verdict:
        """A loopback request without proxy headers: unchanged when tailscaled did not relay it,
        else the relayed peer."""
        port = environ.get("SERVER_PORT")
        if snapshot.unknown:
            return self._relayed_anonymous()
        if port in snapshot.funnel_ports and self.policy.name != "any":
            return REFUSED
        if port in snapshot.forwarded_ports:
            return self._relayed_anonymous()
        if not snapshot.userspace or ":" in (verdict.peer.address or ":"):
            return verdict  # netstack dials 127.0.0.1 only, never ::1
        return self._userspace(environ, verdict, snapshot)

    def _userspace(self, environ: Mapping[str, Any], verdict: Verdict, snapshot: Snapshot) -> Verdict:
        """Userspace mode: the connection is local only when tailscaled's proxy map does not hold
        its client port (whois 404), or the kernel says another user than tailscaled's owns it.
        Answers are kept for the life of the connection, never by port."""
        connection = connection_of(environ)
        if connection is not None:
            known = self._connections.get(connection)
            if known is not None:
                return verdict if known == _LOCAL_CONNECTION else self._relayed_from(known)
        address = verdict.peer.address
        try:
            client_port = int(environ["REMOTE_PORT"])
        except (KeyError, TypeError, ValueError):
            return self._relayed_anonymous()
        if address is None or not 0 < client_port < 65536:
            return self._relayed_anonymous()
        answer = self._relay_of(environ, connection, address, client_port, snapshot)
        if answer is None:
            return self._relayed_anonymous()
        if connection is not None:
            self._connections.put(connection, answer)
        return verdict if answer == _LOCAL_CONNECTION else self._relayed_from(answer)

    def _relay_of(
        self,
        environ: Mapping[str, Any],
        connection: object,
        address: str,
        client_port: int,
        snapshot: Snapshot,
    ) -> str | None:
        """:data:`_LOCAL_CONNECTION`, the tailnet address of the peer tailscaled relayed the
        connection for, or ``None`` when that cannot be known (the request is then not local)."""
        daemon = snapshot.daemon_uid
        if daemon is not None:
            server = _server_address(environ, connection)
            if server is not None:
                owner = loopback_client_uid((address, client_port), server)
                if owner is not None and owner != daemon:
                    return _LOCAL_CONNECTION
        api = snapshot.api
        if api is None:
            return None
        try:
            identity = api.whois(address, client_port)
        except LocalAPIError as exc:
            log.warning("flask-tailnet: whois of a loopback connection failed (%s): not local", exc)
            return None
        if identity is None:
            return _LOCAL_CONNECTION
        if snapshot.self_addresses.intersection(identity.addresses):
            return _LOCAL_CONNECTION
        peer_address = _preferred_address(identity)
        if peer_address is None:
            return None
        self._remember(peer_address, identity)
        return peer_address

    def _relayed_anonymous(self) -> Verdict:
        """A loopback request tailscaled relayed for nobody it could name: it authenticates as a
        proxied loopback peer (so its attempts spend from the shared loopback budget), unless a
        gate or ``"required"`` asks for an identity."""
        if self.rule.restricts or self.mode == "required":
            return REFUSED
        return _RELAYED_ANONYMOUS

    def _relayed_from(self, peer_address: str) -> Verdict:
        """A loopback request tailscaled relayed for the tailnet peer at ``peer_address``."""
        if not self.policy.admits(parse_ip(peer_address)):
            return REFUSED
        return self._known_for(peer_address).proxied

    # -- remote ---------------------------------------------------------------------------------

    def _remote(self, environ: Mapping[str, Any], verdict: Verdict) -> Verdict:
        peer = verdict.peer
        address = peer.address
        if address is None:
            return verdict
        if not peer.via_proxy:
            ip = parse_ip(address)
            if is_loopback(ip):  # the bypass is off: still, a relayed request is not local
                snapshot = self.watch.current()
                if snapshot.loopback_clear:
                    return verdict
                relayed = self._loopback(environ, verdict, snapshot)
                return verdict if relayed is verdict else relayed
            if address in self.watch.current().self_addresses:
                return self._self(environ, verdict, address)
        if not self._asks:
            return verdict
        known = self._known_for(address)
        if verdict.forwarded:
            claimed = environ.get(_LOGIN_HEADER)
            if claimed is not None and not _same_login(claimed, known.identity):
                return REFUSED
        return known.proxied if peer.via_proxy else known.direct

    def _self(self, environ: Mapping[str, Any], verdict: Verdict, address: str) -> Verdict:
        """A local process that connected to this node's own tailnet address: local, with the
        loopback bypass's cross-site refusal."""
        if (
            environ.get("REQUEST_METHOD") not in SAFE_METHODS or "HTTP_UPGRADE" in environ
        ) and cross_site(environ, as_received(environ).get("HTTP_HOST")):
            return REFUSED
        return Verdict(Outcome.SERVE, Peer(address, "loopback", local=True))

    def _known_for(self, address: str) -> _Known:
        known = self._known.get(address)
        if known is not None and time.monotonic() < known.expires:
            return known
        identity: TailscaleIdentity | None = None
        seconds = IDENTITY_SECONDS
        api = self.watch.current().api
        if not is_tailnet(parse_ip(address)):
            pass  # not a tailnet address: nobody tailscaled could name
        elif api is None:
            self._report_missing()
            seconds = FAILURE_SECONDS
        else:
            try:
                identity = api.whois(address)
            except LocalAPIError as exc:
                log.warning("flask-tailnet: whois of %s failed: %s", address, exc)
                seconds = FAILURE_SECONDS
        return self._remember(address, identity, seconds=seconds)

    def _remember(
        self, address: str, identity: TailscaleIdentity | None, *, seconds: float = IDENTITY_SECONDS
    ) -> _Known:
        known = _Known(
            expires=time.monotonic() + seconds,
            identity=identity,
            direct=self._decide(address, identity, via_proxy=False),
            proxied=self._decide(address, identity, via_proxy=True),
        )
        return self._cache.store(address, known)

    def _decide(self, address: str, identity: TailscaleIdentity | None, *, via_proxy: bool) -> Verdict:
        """The verdict for a remote peer at ``address`` with ``identity``."""
        if identity is None and (self.mode == "required" or self.rule.restricts):
            return REFUSED
        if not self.rule.admits(identity):
            return REFUSED
        if identity is not None and self.tailscale_login:
            user = identity.login or identity.node
            peer = Peer(address, "tailscale", user, via_proxy=via_proxy, tailscale=identity)
            return Verdict(Outcome.SERVE, peer)
        peer = Peer(address, "none", via_proxy=via_proxy, tailscale=identity)
        return Verdict(Outcome.AUTHENTICATE, peer)

    def _report_missing(self) -> None:
        if self.mode == "required" and not self._reported_missing:
            self._reported_missing = True
            log.error(
                "flask-tailnet: TAILNET_IDENTITY is 'required' but tailscaled does not answer "
                "(%s): every remote peer is refused until it does",
                self.watch.current().problem or "no socket found",
            )


_RELAYED_ANONYMOUS = Verdict(Outcome.AUTHENTICATE, Peer("127.0.0.1", "none", via_proxy=True))


def _same_login(claimed: object, identity: TailscaleIdentity | None) -> bool:
    """Whether a ``Tailscale-User-Login`` header names the login whois gave."""
    if identity is None or identity.login is None or not isinstance(claimed, str):
        return False
    return claimed.strip().casefold() == identity.login.casefold()


def _preferred_address(identity: TailscaleIdentity) -> str | None:
    """The peer's tailnet IPv4 address, else its IPv6 one; ``None`` when it has neither."""
    tailnet = [a for a in identity.addresses if is_tailnet(parse_ip(a))]
    tailnet.sort(key=lambda a: ":" in a)
    return tailnet[0] if tailnet else None


def _server_address(environ: Mapping[str, Any], connection: object) -> tuple[str, int] | None:
    """The local end of the request's connection: the socket's own, else ``SERVER_NAME`` and
    ``SERVER_PORT`` when they are an address (not a wildcard)."""
    getsockname = getattr(connection, "getsockname", None)
    if getsockname is not None:
        try:
            name = getsockname()
            return str(name[0]), int(name[1])
        except (OSError, TypeError, ValueError, IndexError):
            return None
    ip = parse_ip(environ.get("SERVER_NAME"))
    if ip is None or ip.is_unspecified:
        return None
    try:
        return str(ip), int(environ["SERVER_PORT"])
    except (KeyError, TypeError, ValueError):
        return None
