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
  ``TAILNET_TAILSCALE_LOGIN``, a peer the gates admit is served as its login, except for an
  unsafe request or a WebSocket upgrade that another site's page sent (refused, as the loopback
  bypass refuses it).
- **A local process that connects to this node's own tailnet address is local**, as loopback is.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .addresses import Policy, is_loopback, is_tailnet, parse_ip
from .caches import BoundedCache
from .gate import REFUSED, Outcome, Verdict
from .hosts import unsafe_cross_site
from .identity import IdentityRule, TailscaleIdentity, decode_header_value, fold_login
from .peer import Peer
from .proxies import as_received
from .relays import PerConnection, connection_of
from .sockowner import held_by, loopback_client_owner
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
#: How much of a header value a log line shows.
_SHOWN = 120


@dataclass(frozen=True, slots=True)
class _Known:
    """What is known of one address: its identity (``None``: not a peer, or not asked) and the
    verdicts that follow from it, built once per whois answer."""

    expires: float
    identity: TailscaleIdentity | None
    direct: Verdict  # the request came straight from the address
    proxied: Verdict  # via a proxy (a trusted one named it, or tailscaled relayed it)
    relayed: Verdict  # relayed by userspace tailscaled: ``proxied``, if the policy admits it


#: The per-connection answers of userspace mode besides a peer's address: tailscaled did not relay
#: the connection; or nothing proved that (it is not local).
_LOCAL_CONNECTION = "local"
_UNKNOWN_CONNECTION = "unknown"


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
        local_bypass: bool = True,
    ) -> None:
        self.watch = watch
        self.local_bypass = local_bypass
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
        self._forward_connections: PerConnection[bool] = PerConnection()
        #: Connections that arrived on a serve TCP forward, and their verdict: tailscaled keeps
        #: piping them after the forward is removed, so they never become local.
        self._forwarded_connections: PerConnection[Verdict] = PerConnection()
        self._any_forwarded = self._forwarded_connections.live
        #: Connections whose PROXY header tailscaled sent, and the peer it named: gunicorn reads
        #: the header before a connection's first request only.
        self._proxied_connections: PerConnection[Verdict] = PerConnection()
        self._any_proxied = self._proxied_connections.live
        self._reported_missing = False
        self._warned_proxy_protocol = False

    def __call__(self, environ: Mapping[str, Any], verdict: Verdict) -> Verdict:
        """The gate's ``verdict`` with what tailscaled knows (see the module docstring)."""
        if self._any_proxied or "PROXY_PROTOCOL" in environ:
            named = self._named_by_a_proxy_header(environ, verdict)
            if named is not None:
                if named.outcome is not Outcome.AUTHENTICATE:
                    return named
                return _no_cross_site_login(environ, self._remote(environ, named, header=True))
        outcome = verdict.outcome
        if outcome is Outcome.SERVE:
            snapshot = self.watch.current()
            if snapshot.loopback_clear and not self._any_forwarded:
                return verdict
            return _no_cross_site_login(environ, self._loopback(environ, verdict, snapshot))
        if outcome is Outcome.AUTHENTICATE:
            return _no_cross_site_login(environ, self._remote(environ, verdict))
        return verdict

    def _named_by_a_proxy_header(
        self, environ: Mapping[str, Any], verdict: Verdict
    ) -> Verdict | None:
        """The verdict of a request on a connection that began with a PROXY protocol header
        (:meth:`_proxy_protocol`), ``None`` for any other. The requests after the first on a
        keep-alive connection come without the header's address (gunicorn reads it once): they
        are the peer it named, whatever their own proxy headers say, unless the gate refused
        them."""
        if "PROXY_PROTOCOL" in environ:
            return self._proxy_protocol(environ, verdict)
        connection = connection_of(environ)
        if connection is None or verdict.outcome is Outcome.REFUSE:
            return None
        return self._proxied_connections.get(connection)

    def _proxy_protocol(self, environ: Mapping[str, Any], verdict: Verdict) -> Verdict:
        """A request whose address the server took from a PROXY protocol header (gunicorn
        ``--proxy-protocol``), which any local process may send. Believed only when the kernel
        says tailscaled made the connection (its user's socket, held by its process where that
        can be read), to a port a serve TCP forward sends the header to, and, in userspace mode,
        whois does not name the connection's own client: netstack relays a tailnet peer's raw
        bytes to that port from tailscaled's process too, and then the header is the peer's own
        (refused). Then it is a proxied peer, never local. Refused otherwise."""
        if verdict.outcome is Outcome.REFUSE:
            return verdict
        snapshot = self.watch.current()
        connection = connection_of(environ)
        port = as_received(environ).get("SERVER_PORT")
        owner = None
        client: tuple[str, int] | None = None
        if connection is not None and port in snapshot.proxy_protocol_ports:
            try:
                peer = connection.getpeername()  # type: ignore[attr-defined]
                server = connection.getsockname()  # type: ignore[attr-defined]
                client = (str(peer[0]), int(peer[1]))
                owner = loopback_client_owner(client, (server[0], server[1]))
            except (AttributeError, OSError, TypeError, ValueError, IndexError):
                owner = None
        if (
            owner is None
            or client is None
            or owner.uid != snapshot.daemon_uid
            or (snapshot.daemon_pid is not None and not held_by(snapshot.daemon_pid, owner.inode))
            or (snapshot.userspace and not self._sent_by_a_forward(connection, client, snapshot))
        ):
            if not self._warned_proxy_protocol:
                self._warned_proxy_protocol = True
                log.warning(
                    "flask-tailnet: a request carried a PROXY protocol header that tailscaled did "
                    "not send (no serve TCP forward with ProxyProtocol to this port, another "
                    "process made the connection, or a tailnet peer wrote it): refused"
                )
            return REFUSED
        if verdict.outcome is Outcome.SERVE:
            named = self._relayed_anonymous()
        else:
            named = Verdict(
                Outcome.AUTHENTICATE, Peer(verdict.peer.address, "none", via_proxy=True)
            )
        self._proxied_connections.put(connection, named)
        return named

    def _sent_by_a_forward(
        self, connection: object, client: tuple[str, int], snapshot: Snapshot
    ) -> bool:
        """Userspace mode: whether a connection tailscaled made carries a serve forward's PROXY
        header, not a tailnet peer's: whois knows netstack's relays by their client port (so the
        peer is named), never a forward's (404). Kept for the connection: a forward's 404 costs
        tailscaled's wait of about 180 ms once per connection."""
        known = self._forward_connections.get(connection)
        if known is not None:
            return known
        api = snapshot.api
        try:
            sent = api is not None and api.whois(client[0], client[1]) is None
        except (LocalAPIError, ValueError) as exc:
            log.warning("flask-tailnet: whois of a PROXY protocol connection failed (%s)", exc)
            sent = False
        self._forward_connections.put(connection, sent)
        return sent

    # -- loopback -------------------------------------------------------------------------------

    def _loopback(
        self, environ: Mapping[str, Any], verdict: Verdict, snapshot: Snapshot
    ) -> Verdict:
        """A loopback request without proxy headers: unchanged when tailscaled did not relay it,
        else the relayed peer."""
        forwarded = self._forwarded(environ, snapshot)
        if forwarded is not None:
            return forwarded
        if not snapshot.userspace or ":" in (verdict.peer.address or ":"):
            return verdict  # netstack dials 127.0.0.1 only, never ::1
        return self._userspace(environ, verdict, snapshot)

    def _forwarded(self, environ: Mapping[str, Any], snapshot: Snapshot) -> Verdict | None:
        """A request from an address tailscaled dials from (loopback, this node's own tailnet
        address) that a serve TCP forward may have relayed: the anonymous relayed peer, refused
        on a forward Funnel publishes unless the network policy is ``"any"``; ``None`` when no
        forward targets its ``SERVER_PORT`` and tailscaled's answers are known. A connection
        that arrived on a forward keeps that verdict for its life: removing a forward does not
        close the connections tailscaled pipes through it."""
        connection = connection_of(environ)
        if connection is not None:
            known = self._forwarded_connections.get(connection)
            if known is not None:
                return known
        if snapshot.unknown:
            return self._relayed_anonymous()
        port = as_received(environ).get("SERVER_PORT")
        if port not in snapshot.forwarded_ports:
            return None
        if port in snapshot.funnel_ports and self.policy.name != "any":
            verdict = REFUSED
        else:
            verdict = self._relayed_anonymous()
        if connection is not None:
            self._forwarded_connections.put(connection, verdict)
        return verdict

    def _userspace(
        self, environ: Mapping[str, Any], verdict: Verdict, snapshot: Snapshot
    ) -> Verdict:
        """Userspace mode: netstack dials every tailnet connection to 127.0.0.1 itself. A
        connection is local when the kernel says its client socket was made by a user other than
        tailscaled's, or is not held by tailscaled's process; a connection tailscaled holds is
        the peer whois names for ``127.0.0.1:REMOTE_PORT``. Anything else is not local. Answers
        are kept for the life of the connection, never by port."""
        connection = connection_of(environ)
        if connection is not None:
            known = self._connections.get(connection)
            if known == _LOCAL_CONNECTION:
                return verdict
            if known == _UNKNOWN_CONNECTION:
                return self._relayed_anonymous()
            if known is not None:
                return self._relayed_from(known)
        address = verdict.peer.address
        try:
            client_port = int(environ["REMOTE_PORT"])
        except (KeyError, TypeError, ValueError):
            return self._relayed_anonymous()
        if address is None or not 0 < client_port < 65536 or "PROXY_PROTOCOL" in environ:
            return self._relayed_anonymous()
        answer = self._relay_of(environ, connection, address, client_port, snapshot)
        if connection is not None:
            # "unknown" too: a later request's whois 404 would prove nothing (see above)
            self._connections.put(connection, answer or _UNKNOWN_CONNECTION)
        if answer is None:
            return self._relayed_anonymous()
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
        connection for, or ``None`` when that cannot be known (the request is then not local).

        Local only on the kernel's word: the client socket was made by another user than
        tailscaled's, or tailscaled's process does not hold it while the socket is still live (one
        it closed while its files were listed is in neither). A whois 404 is never proof: it is
        also tailscaled's answer for a client it relayed but has no node for (a subnet router's
        LAN client without SNAT, a node just removed)."""
        server = _server_address(environ, connection)
        if server is None:
            return None
        owner = loopback_client_owner((address, client_port), server)
        if owner is None:
            # No such live connection in the kernel's table (its client may have closed it, and
            # tailscaled then forgets it too): nothing proves it local.
            return None
        if snapshot.daemon_uid is not None and owner.uid != snapshot.daemon_uid:
            return _LOCAL_CONNECTION
        if snapshot.daemon_pid is not None and held_by(snapshot.daemon_pid, owner.inode) is False:
            # Not among tailscaled's files, or tailscaled closed it while they were listed (its
            # client hung up): local only if the socket is still live, so some process holds it.
            if loopback_client_owner((address, client_port), server) == owner:
                return _LOCAL_CONNECTION
            return None
        api = snapshot.api
        if api is None:
            return None
        try:
            identity = api.whois(address, client_port)
        except LocalAPIError as exc:
            log.warning("flask-tailnet: whois of a loopback connection failed (%s): not local", exc)
            return None
        if identity is None:
            return None
        if snapshot.self_addresses.intersection(identity.addresses):
            # Only tailscaled's own outbound proxy makes such a connection, and a tailnet peer
            # that netstack relays to that proxy's port can go through it: not local, and this
            # node's identity (its owner's) is nobody's.
            return None
        peer_address = _preferred_address(identity)
        if peer_address is None:
            return None
        self._remember(peer_address, identity if self._asks else None)
        return peer_address

    def _relayed_anonymous(self) -> Verdict:
        """A loopback request tailscaled relayed for nobody it could name: it authenticates as a
        proxied loopback peer (so its attempts spend from the shared loopback budget), unless a
        gate or ``"required"`` asks for an identity."""
        if self.rule.restricts or self.mode == "required":
            return REFUSED
        return _RELAYED_ANONYMOUS

    def _relayed_from(self, peer_address: str) -> Verdict:
        """A loopback request tailscaled relayed for the tailnet peer at ``peer_address``: that
        peer, refused when the network policy or the allowlist does not admit its address."""
        return self._known_for(peer_address).relayed

    # -- remote ---------------------------------------------------------------------------------

    def _remote(
        self, environ: Mapping[str, Any], verdict: Verdict, *, header: bool = False
    ) -> Verdict:
        """A peer the gate asks to authenticate; ``header``: its address is the one a PROXY
        header from tailscaled named (its connection's socket peer is tailscaled)."""
        peer = verdict.peer
        address = peer.address
        if address is None:
            return verdict
        if not peer.via_proxy:
            if _loopback_text(address):  # the bypass is off: still, a relayed request is not local
                snapshot = self.watch.current()
                if snapshot.loopback_clear and not self._any_forwarded:
                    return verdict
                return self._loopback(environ, verdict, snapshot)
            snapshot = self.watch.current()
            if address in snapshot.self_addresses:
                return self._self(environ, verdict, snapshot)
        elif not header:  # a proxy header's claim, trusted or not: not the socket's peer
            untrusted = self._relayed_proxy(environ)
            if untrusted is not None:
                return untrusted
        if not self._asks:
            return verdict
        known = self._known_for(address)
        if verdict.forwarded:
            claimed = environ.get(_LOGIN_HEADER)
            if claimed is not None and not _same_login(claimed, known.identity):
                log.warning(
                    "flask-tailnet: a trusted proxy sent Tailscale-User-Login %r for %s, but "
                    "tailscaled's whois says %r: refused",
                    decode_header_value(str(claimed))[:_SHOWN],
                    address,
                    None if known.identity is None else known.identity.login,
                )
                return REFUSED
        return known.proxied if peer.via_proxy else known.direct

    def _relayed_proxy(self, environ: Mapping[str, Any]) -> Verdict | None:
        """A request with proxy headers (a trusted proxy's, or headers that were ignored):
        ``None`` when its socket peer is a local process, else what the request is without its
        headers. tailscaled dials the app from 127.0.0.1 for raw TCP (userspace mode, a serve TCP
        forward to this port), and from this node's own tailnet address for a forward to that
        address, so such a socket peer with proxy headers may be a tailnet peer, or a
        Funnel client, that wrote them itself: refused is then being the client a trusted one
        names, or the anonymous loopback peer ignored ones leave (which escapes the network
        policy, the allowlist and a Funnel forward's refusal); it is the peer tailscaled relayed
        (or anonymous, or refused on a Funnel forward)."""
        snapshot = self.watch.current()
        if snapshot.loopback_clear and not self._any_forwarded:
            return None
        ip = parse_ip(as_received(environ).get("REMOTE_ADDR"))
        if ip is not None and str(ip) in snapshot.self_addresses:
            return self._forwarded(environ, snapshot)  # a forward's dial to this node's address
        if ip is None or not is_loopback(ip):
            return None
        socket_peer = Verdict(Outcome.SERVE, Peer(str(ip), "loopback", local=True))
        relayed = self._loopback(environ, socket_peer, snapshot)
        return None if relayed is socket_peer else relayed

    def _self(self, environ: Mapping[str, Any], verdict: Verdict, snapshot: Snapshot) -> Verdict:
        """A connection from this node's own tailnet address: a local process, served as local
        with the loopback bypass's cross-site refusal, unless tailscaled may have made it (a TCP
        forward to this port, refused when Funnel publishes it, or tailscaled's answers
        unknown). With the bypass off it
        authenticates as loopback does, with no Tailscale identity: whois of this node names the
        node (its owner, its tags), not the local user who connected."""
        forwarded = self._forwarded(environ, snapshot)
        if forwarded is not None:
            return forwarded
        if not self.local_bypass:
            return verdict
        if unsafe_cross_site(environ, as_received(environ).get("HTTP_HOST")):
            return REFUSED
        return Verdict(Outcome.SERVE, Peer(verdict.peer.address, "loopback", local=True))

    def _known_for(self, address: str) -> _Known:
        known = self._known.get(address)
        if known is not None and time.monotonic() < known.expires:
            return known
        identity: TailscaleIdentity | None = None
        seconds = IDENTITY_SECONDS
        snapshot = self.watch.current()
        api = snapshot.api
        if not self._asks or not is_tailnet(parse_ip(address)):
            pass  # identity off, or not a tailnet address: nobody tailscaled could name
        elif api is None:
            self._report_missing()
            seconds = FAILURE_SECONDS
        else:
            try:
                identity = api.whois(address)
            except LocalAPIError as exc:
                log.warning("flask-tailnet: whois of %s failed: %s", address, exc)
                seconds = FAILURE_SECONDS
            else:
                if identity is not None and not snapshot.self_addresses.isdisjoint(
                    identity.addresses
                ):
                    identity = None  # this node itself (a local process, via a proxy): nobody
        return self._remember(address, identity, seconds=seconds)

    def _remember(
        self, address: str, identity: TailscaleIdentity | None, *, seconds: float = IDENTITY_SECONDS
    ) -> _Known:
        proxied = self._decide(address, identity, via_proxy=True)
        known = _Known(
            expires=time.monotonic() + seconds,
            identity=identity,
            direct=self._decide(address, identity, via_proxy=False),
            proxied=proxied,
            relayed=proxied if self.policy.admits(parse_ip(address)) else REFUSED,
        )
        return self._cache.store(address, known)

    def _decide(
        self, address: str, identity: TailscaleIdentity | None, *, via_proxy: bool
    ) -> Verdict:
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


@functools.lru_cache(maxsize=_CACHE_LIMIT)
def _loopback_text(address: str) -> bool:
    """Whether the text ``address`` is a loopback address, remembered per text: parsing it costs
    more than the rest of this step on a tailnet peer's request."""
    return is_loopback(parse_ip(address))


def _no_cross_site_login(environ: Mapping[str, Any], verdict: Verdict) -> Verdict:
    """``verdict``, or refused when it admits a peer by its Tailscale login (no credential: the
    browser on the peer's node carries it to any site's request) and a page of another site sent
    an unsafe request or a WebSocket upgrade, as the loopback bypass and a session cookie
    refuse."""
    if (
        verdict.outcome is Outcome.SERVE
        and verdict.peer.method == "tailscale"
        and unsafe_cross_site(environ, as_received(environ).get("HTTP_HOST"))
    ):
        return REFUSED
    return verdict


def _same_login(claimed: object, identity: TailscaleIdentity | None) -> bool:
    """Whether a ``Tailscale-User-Login`` header (RFC 2047 decoded) names the login whois gave,
    ASCII case ignored as the gates ignore it (never Unicode case folding, which makes look-alike
    logins equal)."""
    if identity is None or identity.login is None or not isinstance(claimed, str):
        return False
    return fold_login(decode_header_value(claimed).strip()) == fold_login(identity.login)


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
