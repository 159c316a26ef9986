"""Who is on the other end of a request, as the guard established it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: How a peer got in. ``"none"``: it did not (an exempt view served to an anonymous peer).
Method = Literal["loopback", "token", "none"]


@dataclass(frozen=True, slots=True)
class Peer:
    """The client of one request.

    ``address`` is the client's IP in canonical form (IPv4-mapped IPv6 shown as IPv4), or ``None``
    when it is unknown. ``local`` is true only for a loopback socket peer that came through no
    proxy. ``via_proxy`` is true when the request carried proxy headers.
    """

    address: str | None
    method: Method
    user: str | None = None
    local: bool = False
    via_proxy: bool = False

    @property
    def authenticated(self) -> bool:
        """True unless the peer is anonymous."""
        return self.method != "none"


#: The peer of a request the guard did not see (an app without the extension).
NOBODY = Peer(address=None, method="none")
