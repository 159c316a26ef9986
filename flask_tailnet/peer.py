"""Who is on the other end of a request, as the guard established it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .caches import BoundedCache

if TYPE_CHECKING:
    from .identity import TailscaleIdentity

#: How a peer got in: the loopback bypass (or a local process on this node's own tailnet address),
#: the bearer token, a session cookie, the password or PAM (Basic auth), or its Tailscale identity
#: (``TAILNET_TAILSCALE_LOGIN``). ``"none"``: it did not (an exempt view served to an anonymous
#: peer).
Method = Literal["loopback", "token", "session", "password", "pam", "tailscale", "none"]


@dataclass(frozen=True, slots=True)
class Peer:
    """The client of one request.

    ``address`` is the client's IP in canonical form (IPv4-mapped IPv6 shown as IPv4), or ``None``
    when it is unknown. ``local`` is true only when the loopback bypass served the request: a
    loopback socket peer, no proxy header, ``TAILNET_LOCAL_BYPASS`` on, and tailscaled did not relay
    the connection. ``via_proxy`` is true when the request came through a proxy: it carried proxy
    headers, or tailscaled relayed it to loopback. ``tailscale`` is the peer's Tailscale identity,
    from tailscaled's whois (never from a header), or ``None``.
    """

    address: str | None
    method: Method
    user: str | None = None
    local: bool = False
    via_proxy: bool = False
    tailscale: TailscaleIdentity | None = None

    @property
    def authenticated(self) -> bool:
        """True unless the peer is anonymous."""
        return self.method != "none"


#: The environ key that holds the request's :class:`Peer` once the guard decided it (the anonymous
#: peer while a request without a credential is answered).
PEER_KEY = "flask_tailnet.peer"

#: The peer of a request the guard did not see (an app without the extension).
NOBODY = Peer(address=None, method="none")

_LOGGED_IN_LIMIT = 4096
#: User names longer than this are shared no more (PAM refuses far shorter input).
_USER_SIZE = 1024
_LoggedIn = tuple[str | None, bool, Method, str | None, "TailscaleIdentity | None"]
_LOGGED_IN_CACHE: BoundedCache[_LoggedIn, Peer] = BoundedCache(
    max_entries=_LOGGED_IN_LIMIT, max_key_size=_USER_SIZE
)
_LOGGED_IN = _LOGGED_IN_CACHE.entries


def logged_in(anonymous: Peer, method: Method, user: str | None = None) -> Peer:
    """``anonymous`` after authenticating with ``method`` as ``user``.

    Peers are immutable values, so equal ones are shared from a bounded cache: building a frozen
    dataclass costs more than the rest of a token check.
    """
    key = (anonymous.address, anonymous.via_proxy, method, user, anonymous.tailscale)
    peer = _LOGGED_IN.get(key)
    if peer is None:
        peer = Peer(
            anonymous.address, method, user, False, anonymous.via_proxy, anonymous.tailscale
        )
        _LOGGED_IN_CACHE.store(key, peer, len(user or ""))
    return peer
