"""The Host check against DNS rebinding, and the same-origin test for browser requests (pure).

A web page can point its own name at 127.0.0.1 or a tailnet IP and then talk to this app as
same-origin; the browser still sends that page's name in ``Host``. So ``Host`` must name this app:
``localhost``, an IP literal the network policy admits, or a name the operator listed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .addresses import IPAddress, is_loopback, parse_ip
from .caches import BoundedCache
from .proxies import forwarded_scheme

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?")
_PORT = re.compile(r"[0-9]{1,5}")
_CACHE_LIMIT = 1024
#: Longer ``Host`` values are refused unread (a DNS name has at most 253 characters).
MAX_HOST_LENGTH = 300
#: How many distinct refused Host values are logged per check, so a flood cannot fill the log.
_LOG_LIMIT = 20

log = logging.getLogger("flask_tailnet")


@dataclass(frozen=True, slots=True)
class HostRule:
    """An allowed name, lower case without a trailing dot; ``subdomains`` for a leading-dot entry,
    which matches the name itself and every name below it."""

    name: str
    subdomains: bool = False

    def matches(self, name: str) -> bool:
        if name == self.name:
            return True
        return self.subdomains and name.endswith("." + self.name)


def parse_host_rule(entry: str) -> HostRule:
    """Parse an ``ALLOWED_HOSTS`` entry; raise ``ValueError`` for anything that is not a DNS name
    (a bare ``*`` or ``.`` included: the Host check cannot be switched off)."""
    text = entry.strip().lower()
    subdomains = text.startswith(".")
    name = text[1:] if subdomains else text
    if not name or _NAME.fullmatch(name) is None or len(name) > 254:
        raise ValueError(
            f"{entry!r} is not a host name; list names such as 'myhost.tail1a2b3.ts.net' or "
            "'.tail1a2b3.ts.net' (the Host check cannot be turned off)"
        )
    return HostRule(name.rstrip("."), subdomains)


def split_host(value: object) -> tuple[str, IPAddress | None, str] | None:
    """Split a ``Host`` value into (lower-case name or canonical IP text, parsed IP or None, port).

    Returns ``None`` for anything malformed: not a string, empty, a missing name (``:5000``), a bad
    or out-of-range port, an unclosed bracket (``[::1``), a bracket around a non-IPv6 value, a bare
    IPv6 literal, whitespace, userinfo, or a name that is not DNS syntax. Never raises.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_HOST_LENGTH:
        return None
    if value.startswith("["):
        inner, bracket, rest = value[1:].partition("]")
        ip = parse_ip(inner)
        if not bracket or ip is None or ":" not in inner:
            return None
    else:
        inner, sep, port = value.partition(":")
        rest = sep + port
        ip = parse_ip(inner)
        if ip is None and _NAME.fullmatch(inner.lower()) is None:
            return None
    port = rest[1:]
    if rest and (rest[0] != ":" or _PORT.fullmatch(port) is None or int(port) > 65535):
        return None
    if ip is not None:
        return str(ip), ip, port
    return inner.lower().rstrip("."), None, port


class HostCheck:
    """Decides whether a ``Host`` header names this app; results are cached per distinct value.

    Accepted: ``localhost`` (any case, any port), loopback IP literals, IP literals that
    ``admits_ip`` accepts, and names matching ``rules``. Everything else, and every malformed or
    missing value, is refused; the first refusals of distinct values are logged with a hint. A
    value longer than :data:`MAX_HOST_LENGTH` is refused without being remembered.
    """

    def __init__(
        self, rules: tuple[HostRule, ...], admits_ip: Callable[[IPAddress | None], bool]
    ) -> None:
        self._rules = rules
        self._admits_ip = admits_ip
        self._memo: BoundedCache[object, bool] = BoundedCache(
            max_entries=_CACHE_LIMIT, max_key_size=MAX_HOST_LENGTH
        )
        self._cache = self._memo.entries
        self._logged = 0

    def __call__(self, value: object) -> bool:
        try:
            return self._cache[value]
        except (KeyError, TypeError):
            pass
        verdict = self._decide(value)
        if not verdict and self._logged < _LOG_LIMIT:
            self._logged += 1
            log.warning(
                "flask-tailnet: refused a request for Host %.100r: not localhost, not an IP inside "
                "TAILNET_NETWORK, not in TAILNET_ALLOWED_HOSTS. If that is this app's name "
                "(a MagicDNS name, say), add it to TAILNET_ALLOWED_HOSTS.",
                value,
            )
        if isinstance(value, str):
            self._memo.store(value, verdict, len(value))
        return verdict

    def _decide(self, value: object) -> bool:
        parts = split_host(value)
        if parts is None:
            return False
        name, ip, _ = parts
        if ip is not None:
            return is_loopback(ip) or self._admits_ip(ip)
        if name == "localhost":
            return True
        return any(rule.matches(name) for rule in self._rules)


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def same_origin(origin: object, host: object, scheme: str) -> bool:
    """True if the ``Origin`` header names exactly this request's scheme and ``Host``.

    Refused: a missing or ``null`` Origin, another scheme, another host or port (a default port
    equals its absence), and anything malformed on either side.
    """
    if not isinstance(origin, str):
        return False
    origin_scheme, sep, origin_host = origin.partition("://")
    if not sep or origin_scheme.lower() != scheme:
        return False
    ours, theirs = split_host(host), split_host(origin_host)
    if ours is None or theirs is None:
        return False
    default = _DEFAULT_PORTS.get(scheme, "")
    return (ours[0], ours[2] or default) == (theirs[0], theirs[2] or default)


#: Methods that must not change state, so a cross-site request with one is not refused.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def unsafe_cross_site(environ: Mapping[str, Any], host: object) -> bool:
    """What every way in without a credential in the request refuses (the loopback bypass, a
    session cookie, Tailscale login, this node's own address): an unsafe request (a method other
    than ``GET``, ``HEAD`` and ``OPTIONS``, or any request with an ``Upgrade`` header: a WebSocket
    handshake) that :func:`cross_site` says a page of another site sent."""
    return (
        environ.get("REQUEST_METHOD") not in SAFE_METHODS or "HTTP_UPGRADE" in environ
    ) and cross_site(environ, host)


def cross_site(environ: Mapping[str, Any], host: object) -> bool:
    """True if a browser sent this request from another site: ``Sec-Fetch-Site: cross-site``, or
    an ``Origin`` (``null`` included) that is not this request's scheme and Host, unless the
    browser says ``Sec-Fetch-Site: same-origin`` (which a page cannot forge; browsers send
    ``Origin: null`` on same-origin form posts from pages with ``Referrer-Policy: no-referrer``).
    A request without ``Origin`` (curl, scripts) is not cross-site. The scheme is the one the
    client used (:func:`~flask_tailnet.proxies.forwarded_scheme`)."""
    fetch_site = str(environ.get("HTTP_SEC_FETCH_SITE", "")).lower()
    if fetch_site == "cross-site":
        return True
    if fetch_site == "same-origin":
        return False
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return False
    return not same_origin(origin, host, forwarded_scheme(environ))
