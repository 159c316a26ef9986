"""Proxy headers: which mark a proxied request, and when a forwarded address is believed (pure).

Headers are claims. A forwarded client address counts only when the socket peer is a proxy the
operator named in ``TAILNET_TRUSTED_PROXIES`` (werkzeug's ProxyFix rule); from anyone else the
headers are ignored for identity, but they still mark the request as proxied, and a proxied request
is never local. One forwarded value is read from any sender, the scheme (see
:func:`forwarded_scheme` for why that is safe). The socket's own values, where werkzeug's
``ProxyFix`` rewrote them, are read through :func:`as_received`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .addresses import IPAddress, Network, in_networks, parse_ip

#: WSGI keys of the headers that mean "a proxy handled this request": the standard forwarding
#: headers, and every header ``tailscale serve`` sets or strips (see docs/security.md).
PROXY_HEADER_KEYS = frozenset(
    {
        "HTTP_FORWARDED",
        "HTTP_X_FORWARDED_FOR",
        "HTTP_X_FORWARDED_HOST",
        "HTTP_X_FORWARDED_PROTO",
        "HTTP_X_FORWARDED_PORT",
        "HTTP_X_FORWARDED_PREFIX",
        "HTTP_X_FORWARDED_SERVER",
        "HTTP_X_REAL_IP",
        "HTTP_VIA",
        "HTTP_TAILSCALE_USER_LOGIN",
        "HTTP_TAILSCALE_USER_NAME",
        "HTTP_TAILSCALE_USER_PROFILE_PIC",
        "HTTP_TAILSCALE_FUNNEL_REQUEST",
        "HTTP_TAILSCALE_HEADERS_INFO",
        "HTTP_TAILSCALE_APP_CAPABILITIES",
    }
)
FUNNEL_KEY = "HTTP_TAILSCALE_FUNNEL_REQUEST"
#: werkzeug's ProxyFix keeps the socket's values here when it rewrites REMOTE_ADDR and HTTP_HOST.
PROXY_FIX_ORIG = "werkzeug.proxy_fix.orig"
_MAX_HOPS = 32


def as_received(environ: Mapping[str, Any]) -> Mapping[str, Any]:
    """Where ``REMOTE_ADDR`` and ``HTTP_HOST`` hold what the socket received: the values werkzeug's
    ``ProxyFix`` saved before it rewrote them from forwarded headers, else ``environ`` itself. The
    guard decides on these, never on a value a client put in a header."""
    return environ.get(PROXY_FIX_ORIG, environ)  # type: ignore[no-any-return]


def original_host(environ: Mapping[str, Any]) -> object:
    """The ``Host`` header as the socket received it (see :func:`as_received`); ``None`` when
    there was none."""
    return as_received(environ).get("HTTP_HOST")


def forwarded_scheme(environ: Mapping[str, Any]) -> str:
    """The scheme the client used, lower case: ``X-Forwarded-Proto`` when the request has it, from
    any sender, else the connection's (``http`` when unknown).

    Unlike a forwarded address, this claim is believed without ``TAILNET_TRUSTED_PROXIES``,
    because it decides nothing about who is served. It is read for two things only: whether the
    session and CSRF cookies are ``Secure`` (a false claim can only make a browser drop its own
    cookie), and the scheme of the cross-site test's ``Origin`` comparison, which defends a
    person's browser against pages on other sites, and such a page cannot add the header (a
    ``fetch()`` that adds it needs a CORS preflight the app would have to approve). The ``Origin``'s
    host and port must still equal the ``Host``, and a request with the header is proxied, so it
    never gets the loopback bypass. docs/security.md (CSRF) argues this in full."""
    scheme = environ.get("HTTP_X_FORWARDED_PROTO") or environ.get("wsgi.url_scheme", "http")
    return str(scheme).strip().lower()


def forwarded_client(x_forwarded_for: object, trusted: tuple[Network, ...]) -> IPAddress | None:
    """The rightmost ``X-Forwarded-For`` entry that is not itself a trusted proxy.

    Call it only when the socket peer is a trusted proxy. Returns ``None`` (no client, refused)
    when the header is missing, every entry is a trusted proxy, the chain is absurdly long, or the
    entry that would be the client does not parse.
    """
    if not isinstance(x_forwarded_for, str):
        return None
    hops = x_forwarded_for.split(",")
    if len(hops) > _MAX_HOPS:
        return None
    for hop in reversed(hops):
        ip = parse_ip(hop.strip())
        if ip is None:
            return None
        if not in_networks(ip, trusted):
            return ip
    return None
