"""Proxy headers: which mark a proxied request, and when a forwarded address is believed (pure).

Headers are claims. A forwarded client address counts only when the socket peer is a proxy the
operator named in ``TAILNET_TRUSTED_PROXIES`` (werkzeug's ProxyFix rule); from anyone else the
headers are ignored for identity, but they still mark the request as proxied, and a proxied request
is never local.
"""

from __future__ import annotations

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
_MAX_HOPS = 32


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
