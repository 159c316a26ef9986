"""Relays that reach the app from loopback: what ``tailscale serve`` forwards, and which TCP
connection a request came on (pure).

``tailscale serve --tcp`` and ``--tls-terminated-tcp`` (and the same under Funnel) make tailscaled
dial the app from 127.0.0.1 with no header and register nothing tailscaled's whois could answer:
a loopback request to a port such a forward targets is not known to be local.
:func:`parse_serve_config` finds every forward in tailscaled's ``GET /localapi/v0/serve-config``
answer (ipn.ServeConfig): the top-level ``TCP``, every ``Services`` entry (Tailscale Services,
``svc:name``), and every ``Foreground`` session (``tailscale serve`` without ``--bg``: a whole
nested ServeConfig, read with the same rules, Services included).

Answers about a connection (whois of ``127.0.0.1:REMOTE_PORT`` in userspace mode) hold only for
that connection: ports are reused as soon as it closes. :class:`PerConnection` remembers a value
for the life of the object :func:`connection_of` returns, never by address or port.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "CONNECTION_KEYS",
    "NO_FORWARDS",
    "PerConnection",
    "ServeForwards",
    "connection_of",
    "parse_serve_config",
]

T = TypeVar("T")

#: Fields of a ServeConfig (ipn/serve.go). ``ETag`` is ``json:"-"``: never in the document.
_CONFIG_FIELDS = frozenset({"TCP", "Web", "Services", "AllowFunnel", "Foreground"})
#: Fields of a ServiceConfig: the same ``TCP`` and ``Web``, and ``Tun`` (L3 forwarding).
_SERVICE_FIELDS = frozenset({"TCP", "Web", "Tun"})
#: Fields of a TCPPortHandler, with the JSON type each must have.
_HANDLER_FIELDS: Mapping[str, type] = {
    "HTTPS": bool,
    "HTTP": bool,
    "TCPForward": str,
    "TerminateTLS": str,
    "ProxyProtocol": int,
}
#: How deep Foreground sessions may nest. tailscaled writes one level; deeper is read, not trusted
#: to end: a document nested past this is refused rather than walked without bound.
_MAX_DEPTH = 4
#: environ keys that hold the object standing for the request's TCP connection: gunicorn (every
#: worker: sync, gthread, gevent/eventlet) and werkzeug's server (``flask run``).
CONNECTION_KEYS = ("gunicorn.socket", "werkzeug.socket")


@dataclass(frozen=True, slots=True)
class ServeForwards:
    """What tailscaled's serve configuration relays to local TCP ports."""

    #: Target ports of every TCPForward (any host: ``127.0.0.1``, ``localhost``, ``[::1]``, a name).
    tcp_ports: frozenset[int]
    #: Any ``AllowFunnel`` entry true (here or in a Foreground session).
    funnel: bool
    #: The TCPForward targets as tailscaled holds them, sorted, for messages (``unix:`` ones too).
    targets: tuple[str, ...]
    #: Target ports of the TCPForwards whose serve port ``AllowFunnel`` publishes (any host name).
    funnel_ports: frozenset[int] = frozenset()
    #: Target ports of the TCPForwards that send a PROXY protocol header.
    proxy_protocol_ports: frozenset[int] = frozenset()

    def forwards_to(self, port: int) -> bool:
        """Whether some TCPForward targets ``port`` (whatever host it names)."""
        return port in self.tcp_ports


NO_FORWARDS = ServeForwards(frozenset(), False, ())


def parse_serve_config(document: object) -> ServeForwards:
    """The forwards in tailscaled's serve-config answer (its JSON, decoded).

    ``None`` (tailscaled answers ``null`` when nothing is served) and ``{}`` are no forwards.
    Refused with ValueError (the caller must treat the configuration as unknown, never as "no
    forwards"): anything but an object; an unknown field in a ServeConfig, a Services entry or a
    TCP handler (a newer tailscaled may have added a place a forward can hide); a field of the
    wrong type; a TCP key that is not a port number; a TCPForward that is empty or names no port
    (``unix:PATH`` targets are kept in ``targets`` but forward to no TCP port); Foreground sessions
    nested deeper than tailscaled writes them.

    A target's port counts whatever its host: tailscaled dials names and addresses of this host as
    readily as ``127.0.0.1``, and an extra port only costs a local client a credential.
    """
    found = _Found()
    funnel = _walk_config(document, found, depth=0)
    return ServeForwards(
        frozenset(found.ports),
        funnel,
        tuple(sorted(found.targets)),
        frozenset(
            port for serve in found.funnel_serve_ports for port in found.forwarded.get(serve, ())
        ),
        frozenset(found.proxy_protocol_ports),
    )


class _Found:
    """What the walk collects."""

    def __init__(self) -> None:
        self.ports: set[int] = set()
        self.targets: set[str] = set()
        self.proxy_protocol_ports: set[int] = set()
        #: serve port -> target ports, over every level (top, Services, Foreground sessions)
        self.forwarded: dict[int, set[int]] = {}
        self.funnel_serve_ports: set[int] = set()


def _walk_config(config: object, found: _Found, *, depth: int) -> bool:
    """Collect one ServeConfig's forwards; return whether it allows Funnel anywhere. A forward
    whose serve port some ``AllowFunnel`` key (``host:port``) names, at any level, is a Funnel one:
    any host name, any level, since tailscaled merges them and the same node answers to all."""
    if config is None:
        return False
    if depth > _MAX_DEPTH:
        raise ValueError("serve config: Foreground sessions nested too deeply")
    fields = _object(config, "serve config")
    _known(fields, _CONFIG_FIELDS, "serve config")
    _walk_tcp(fields.get("TCP"), found)
    _web(fields.get("Web"))
    for service in _entries(fields.get("Services"), "Services"):
        if service is None:
            continue
        service_fields = _object(service, "Services entry")
        _known(service_fields, _SERVICE_FIELDS, "Services entry")
        _walk_tcp(service_fields.get("TCP"), found)
        _web(service_fields.get("Web"))
        _typed(service_fields, "Tun", bool, "Services entry")
    funnel = False
    allow = fields.get("AllowFunnel")
    for host_port, allowed in () if allow is None else _object(allow, "AllowFunnel").items():
        if not isinstance(allowed, bool):
            raise ValueError("serve config: an AllowFunnel value is not a boolean")
        if allowed:
            funnel = True
            found.funnel_serve_ports.add(_target_port(host_port))
    for session in _entries(fields.get("Foreground"), "Foreground"):
        funnel = _walk_config(session, found, depth=depth + 1) or funnel
    return funnel


def _walk_tcp(tcp: object, found: _Found) -> None:
    """Collect the TCP forwards of one TCP map."""
    if tcp is None:
        return
    for key, handler in _object(tcp, "TCP").items():
        serve_port = _port(key, "a TCP key")
        if handler is None:
            continue
        fields = _object(handler, "TCP handler")
        _known(fields, frozenset(_HANDLER_FIELDS), "TCP handler")
        for name, kind in _HANDLER_FIELDS.items():
            _typed(fields, name, kind, "TCP handler")
        target = fields.get("TCPForward", "")
        if target == "":
            continue
        found.targets.add(target)
        if not target.startswith("unix:"):
            port = _target_port(target)
            found.ports.add(port)
            found.forwarded.setdefault(serve_port, set()).add(port)
            if fields.get("ProxyProtocol"):
                found.proxy_protocol_ports.add(port)


def _target_port(target: str) -> int:
    """The port of a TCPForward target: ``host:port``, ``[v6]:port``, ``:port`` (Go dials the
    local host), or a bare port (the CLI expands it to ``127.0.0.1:port``; counted the same).
    Refused as Go's dialer refuses it: an IPv6 address without brackets, no port."""
    if target.startswith("["):
        host, bracket, port = target.partition("]:")
        if not bracket or "]" in host:
            raise ValueError("serve config: a TCPForward target names no port")
    elif target.count(":") > 1:
        raise ValueError("serve config: a TCPForward target's IPv6 address has no brackets")
    else:
        port = target.rpartition(":")[2]
    return _port(port, "a TCPForward target's port")


def _port(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) < 65536:
        raise ValueError(f"serve config: {what} is not a port number")
    return int(text)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ValueError(f"serve config: {what} is not an object")
    return value


def _entries(value: object, what: str) -> list[Any]:
    """The values of a JSON map (absent or null: none)."""
    return [] if value is None else list(_object(value, what).values())


def _known(fields: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    unknown = fields.keys() - known
    if unknown:
        raise ValueError(f"serve config: {what} has unknown fields ({len(unknown)})")


def _typed(fields: Mapping[str, Any], name: str, kind: type, what: str) -> None:
    value = fields.get(name)
    # bool is an int in Python, never in JSON.
    if value is not None and (
        not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    ):
        raise ValueError(f"serve config: {what} field {name} has the wrong type")


def _web(web: object) -> None:
    """Web holds HTTP handlers (``tailscale serve`` as a reverse proxy sets X-Forwarded-For, so
    its requests are never taken as local): only its shape is checked."""
    for server in _entries(web, "Web"):
        if server is not None:
            _object(server, "Web entry")


def connection_of(environ: Mapping[str, Any]) -> object | None:
    """The object standing for the request's TCP connection: the same object for every request
    on one keep-alive connection, another for every other connection, gone with the connection
    (``gunicorn.socket``; ``werkzeug.socket``). None when the server puts none there, or one that
    cannot be weakly referenced (it could not be told from a later connection's)."""
    for key in CONNECTION_KEYS:
        connection: object = environ.get(key)
        if connection is not None:
            try:
                weakref.ref(connection)
            except TypeError:
                return None
            return connection
    return None


class PerConnection(Generic[T]):
    """Values remembered for the life of a connection object, safe from many threads at once.

    Keyed by the object's identity, held weakly: an entry goes when its object is collected,
    and no two live objects share one (never by port or address, which the kernel reuses).
    """

    def __init__(self) -> None:
        # One dict, each read and write a single operation: atomic under the GIL, so no lock
        # (a lock would deadlock when a collection inside put() runs the weakref callback).
        self._entries: dict[int, tuple[weakref.ref[Any], T]] = {}

    def get(self, connection: object) -> T | None:
        """The value put for this very object, or None."""
        entry = self._entries.get(id(connection))
        if entry is None or entry[0]() is not connection:
            return None
        return entry[1]

    def put(self, connection: object, value: T) -> None:
        """Remember ``value`` until ``connection`` is collected (TypeError when it cannot be
        weakly referenced: :func:`connection_of` never returns such an object)."""
        key = id(connection)
        reference = weakref.ref(connection, _forget(self._entries, key))
        self._entries[key] = (reference, value)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def live(self) -> Mapping[int, object]:
        """The entries themselves, read-only by contract: empty exactly when nothing is
        remembered. A hot path keeps it to test that without a call."""
        return self._entries


def _forget(
    entries: dict[int, tuple[weakref.ref[Any], Any]], key: int
) -> Callable[[weakref.ref[Any]], None]:
    # Runs while the object is being collected, possibly inside put() on this thread. Its id
    # cannot be reused before the callback returns, so the entry at ``key`` is this object's
    # unless a later put() for the same object replaced it with its own reference.
    def forget(reference: weakref.ref[Any]) -> None:
        entry = entries.get(key)
        if entry is not None and entry[0] is reference:
            entries.pop(key, None)

    return forget
