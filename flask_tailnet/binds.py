"""Which addresses the server may listen on (pure: bind specs in, a verdict out).

A bind spec is written as gunicorn reads it (``HOST:PORT``, ``[IPV6]:PORT``, ``HOST`` for port
8000, ``unix:PATH``, ``fd://N``, an optional ``tcp://``). The check decides on the parsed address,
never on the text, so every spelling of an address gets the same answer:

- the wildcard (``0.0.0.0``, ``[::]``, ``[::ffff:0.0.0.0]``, ``:8000``, an empty spec) is refused
  unless ``TAILNET_ALLOW_WILDCARD_BIND`` is on: it serves every network the machine is on;
- loopback and the tailnet ranges are allowed (not the ChromeOS block, not the service address);
- LAN addresses (RFC 1918, fc00::/7, link-local) are allowed when the network policy is
  ``"local"`` or ``"any"``, refused under ``"tailnet"``;
- public addresses, and everything else that is none of the above (multicast, reserved, NAT64,
  documentation ranges), are refused under every policy: ``"any"`` widens who the guard serves,
  it never puts the app on a public interface by itself;
- host names other than ``localhost`` are refused: a name can resolve to anything, and
  gunicorn reads ``0``, ``127.1`` or ``0x7f.1`` as names that resolve to addresses;
- Unix sockets are refused (``unix:PATH``, and an ``fd://N`` or inherited socket that is one): a
  Unix socket peer has no address, so the guard could neither tell who sent a request nor believe
  the proxy in front of it, and would refuse every request (403). Bind 127.0.0.1 behind the proxy
  and list 127.0.0.1 in ``TAILNET_TRUSTED_PROXIES`` instead;
- ``fd://N`` is judged by the address of the socket it names.

Spellings gunicorn would misread are refused too (an IPv6 address without brackets, a second
``:PORT``, a port with a sign or spaces), so what is checked is what gets bound.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .addresses import (
    LOCAL_EXTRA,
    TAILNET_V4,
    TAILNET_V6,
    IPAddress,
    in_networks,
    is_loopback,
    is_tailnet,
    parse_ip,
)
from .settings import ALLOW_WILDCARD_BIND, BIND, DEFAULT_PORT

_WILDCARD_FIX = (
    "bind a tailnet address (tailscale ip -4) or 127.0.0.1, or set "
    f"{ALLOW_WILDCARD_BIND}=true if a container publishes the port on a tailnet address only"
)
_UNIX_FIX = (
    "a Unix socket peer has no address, so flask-tailnet can neither tell who sent a request nor "
    "believe a proxy's X-Forwarded-For from it, and would refuse every request (403); bind "
    "127.0.0.1:PORT behind the proxy and list 127.0.0.1 in TAILNET_TRUSTED_PROXIES"
)
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*")
_DIGITS = re.compile(r"[0-9]{1,5}")
_MAX_SPEC = 4096


class BindRefused(Exception):
    """A bind spec that may not be used; the message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class Bind:
    """A parsed bind spec.

    ``kind`` is ``"tcp"`` (``ip`` and ``port`` set; ``ip`` is ``None`` only for ``localhost``,
    which ``host`` names), ``"unix"`` (``path``) or ``"fd"`` (``fd``). ``ip`` is the address as
    judged: IPv4-mapped IPv6 as its IPv4, without a scope id; ``host`` is the host as gunicorn
    binds it.
    """

    spec: str
    kind: Literal["tcp", "unix", "fd"]
    ip: IPAddress | None = None
    port: int | None = None
    path: str | None = None
    fd: int | None = None
    host: str | None = None


def parse_bind(spec: str) -> Bind:
    """Parse ``spec`` as gunicorn does; raise :class:`BindRefused` for anything gunicorn would
    refuse or read differently than it looks. Host names and Unix sockets parse (``check_bind``
    judges them)."""
    if not isinstance(spec, str):
        raise BindRefused(f"a bind must be text such as 127.0.0.1:8000, not {spec!r}")
    if len(spec) > _MAX_SPEC or "\x00" in spec:
        raise BindRefused(f"refusing to bind {_show(spec)}: not a bind spec")
    if re.match(r"unix:(//)?", spec):
        return _parse_unix(spec)
    if spec.startswith("fd://"):
        number = spec[5:]
        if _DIGITS.fullmatch(number) is None:
            raise BindRefused(
                f"refusing to bind {_show(spec)}: {_show(number)} is not a file descriptor number"
            )
        return Bind(spec=spec, kind="fd", fd=int(number))
    netloc = spec[6:] if spec.startswith("tcp://") else spec
    if "://" in netloc:
        raise BindRefused(
            f"refusing to bind {_show(spec)}: not a bind spec; write HOST:PORT, [IPV6]:PORT, "
            "unix:PATH or fd://N"
        )
    host, port_text = _split_netloc(spec, netloc)
    port = _port(spec, port_text)
    host = host.lower()
    ip = parse_ip(host)
    if ip is None and host and _NAME.fullmatch(host) is None:
        raise BindRefused(
            f"refusing to bind {_show(spec)}: {_show(host)} is neither an IP address nor a host "
            "name; give an address such as 127.0.0.1:8000 or [fd7a:115c:a1e0::1]:8000"
        )
    if not host:
        # gunicorn binds an empty host as the IPv4 wildcard.
        ip = ipaddress.IPv4Address(0)
    return Bind(spec=spec, kind="tcp", ip=ip, port=port, host=host or "0.0.0.0")  # noqa: S104


def _parse_unix(spec: str) -> Bind:
    parts = re.split(r"unix:(//)?", spec)
    if len(parts) != 3:
        # gunicorn would bind only what follows the last "unix:": not what the spec looks like.
        raise BindRefused(f"refusing to bind {_show(spec)}: a socket path must not hold 'unix:'")
    path = parts[-1]
    if not path:
        raise BindRefused(f"refusing to bind {_show(spec)}: give a path, as in unix:/run/app.sock")
    return Bind(spec=spec, kind="unix", path=path)


def _split_netloc(spec: str, netloc: str) -> tuple[str, str]:
    if "[" in netloc or "]" in netloc:
        match = re.fullmatch(r"\[([^\[\]]*)\](?::([^\[\]]*))?", netloc)
        if match is None:
            raise BindRefused(
                f"refusing to bind {_show(spec)}: write an IPv6 address as [ADDRESS]:PORT"
            )
        host, port = match.group(1), match.group(2)
        if parse_ip(host) is None:
            raise BindRefused(
                f"refusing to bind {_show(spec)}: the brackets must hold an IP address"
            )
        return host, str(DEFAULT_PORT) if port is None else port
    if netloc.count(":") > 1:
        # gunicorn splits at the first ':' (0:0:0:0:0:0:0:0 would become host 0, port 0).
        try:
            ip = ipaddress.ip_address(netloc)
        except ValueError:
            fix = "write IPv6 addresses as [ADDRESS]:PORT, and one :PORT"
        else:
            fix = f"write [{ip}]:{DEFAULT_PORT}"
            if ip.is_unspecified:
                fix = (
                    "that is the wildcard address, which serves every network this machine is "
                    "on; bind a tailnet address (tailscale ip -4) or 127.0.0.1, or, with "
                    f"{ALLOW_WILDCARD_BIND}=true, write [::]:{DEFAULT_PORT}"
                )
        raise BindRefused(
            f"refusing to bind {_show(spec)}: gunicorn reads an IPv6 address without brackets "
            f"as HOST:PORT; {fix}"
        )
    if ":" in netloc:
        host, _, port = netloc.partition(":")
        return host, port
    return netloc, str(DEFAULT_PORT)


def _port(spec: str, text: str) -> int:
    if _DIGITS.fullmatch(text) is None or int(text) > 65535:
        raise BindRefused(
            f"refusing to bind {_show(spec)}: {_show(text)} is not a port (0 to 65535)"
        )
    return int(text)


def check_bind(
    spec: str,
    *,
    network: str,
    allow_wildcard: bool,
    sockname: Callable[[int], object] | None = None,
) -> Bind:
    """``spec`` parsed, if the server may listen there; else :class:`BindRefused` saying why and
    what to do. ``network`` is the ``TAILNET_NETWORK`` policy.

    A Unix socket is refused (see :func:`unix_problem`). An ``fd://N`` spec is judged by
    ``sockname(N)`` (the socket's ``getsockname()``, see :func:`fd_sockname`); without
    ``sockname`` it is refused, as it cannot be checked.
    """
    if network not in ("tailnet", "local", "any"):
        raise ValueError(f"unknown network policy {network!r}")
    bind = parse_bind(spec)
    if bind.kind == "unix":
        raise BindRefused(unix_problem(spec))
    if bind.fd is not None:
        _check_fd(spec, bind.fd, network=network, allow_wildcard=allow_wildcard, sockname=sockname)
        return bind
    if bind.ip is None:
        if bind.host != "localhost":
            raise BindRefused(
                f"refusing to bind {_show(spec)}: {_show(bind.host)} is a host name, which can "
                "resolve to any address (gunicorn reads 0 and 127.1 as names too); give an IP "
                "address: a tailnet address (tailscale ip -4) or 127.0.0.1"
            )
        return bind
    problem = address_problem(bind.ip, network=network, allow_wildcard=allow_wildcard)
    if problem is not None:
        raise BindRefused(f"refusing to bind {_show(spec)}: {problem}")
    return bind


def unix_problem(spec: str) -> str:
    """Why the Unix socket ``spec`` may not be served, with what to do instead.

    A request through a Unix socket has no client address (gunicorn sets ``REMOTE_ADDR`` to an
    empty string). The guard never counts a missing address as loopback, and believes proxy
    headers only from a trusted proxy's address, so every such request would be refused.
    """
    return f"refusing to bind {_show(spec)}: {_UNIX_FIX}"


def address_problem(ip: IPAddress, *, network: str, allow_wildcard: bool) -> str | None:
    """Why the server may not listen on ``ip`` (judged as given: normalize mapped IPv6 first),
    with what to do; ``None`` when it may."""
    if ip.is_unspecified:
        if allow_wildcard:
            return None
        return f"the wildcard address serves every network this machine is on; {_WILDCARD_FIX}"
    if is_loopback(ip) or is_tailnet(ip):
        return None
    if in_networks(ip, (TAILNET_V4, TAILNET_V6)):
        return (
            f"{ip} is inside Tailscale's ranges but is never a tailnet device's address (the "
            "ChromeOS block or the Tailscale service address); bind this machine's tailnet "
            "address (tailscale ip)"
        )
    if in_networks(ip, LOCAL_EXTRA):
        if network in ("local", "any"):
            return None
        return (
            f"{ip} is a LAN address, served to everyone on that network; bind a tailnet address "
            "(tailscale ip -4) or 127.0.0.1, or set TAILNET_NETWORK='local' to serve the LAN"
        )
    if ip.is_multicast:
        kind = "a multicast address"
    elif ip.is_global:
        kind = "a public address"
    else:
        kind = "neither a loopback, tailnet nor LAN address"
    return (
        f"{ip} is {kind}, which would serve the app beyond the tailnet; bind a tailnet address "
        "(tailscale ip -4) or 127.0.0.1 (a proxy on this machine can forward to it)"
    )


def _check_fd(
    spec: str,
    fd: int,
    *,
    network: str,
    allow_wildcard: bool,
    sockname: Callable[[int], object] | None,
) -> None:
    if sockname is None:
        raise BindRefused(f"refusing to bind {_show(spec)}: its address cannot be checked here")
    try:
        address = sockname(fd)
    except (OSError, ValueError):
        raise BindRefused(
            f"refusing to bind {_show(spec)}: file descriptor {fd} is not an open socket"
        ) from None
    if isinstance(address, str | bytes):
        raise BindRefused(f"refusing to bind {_show(spec)} (a Unix socket): {_UNIX_FIX}")
    host = address[0] if isinstance(address, tuple) and address else None
    ip = parse_ip(host) if isinstance(host, str) else None
    if ip is None:
        raise BindRefused(
            f"refusing to bind {_show(spec)}: file descriptor {fd} is not a TCP or Unix socket"
        )
    problem = address_problem(ip, network=network, allow_wildcard=allow_wildcard)
    if problem is not None:
        raise BindRefused(f"refusing to bind {_show(spec)} (listening on {ip}): {problem}")


def fd_sockname(fd: int) -> object:
    """The local address of the socket ``fd`` (``getsockname()``); ``fd`` stays open.

    Raises ``OSError`` when ``fd`` is not an open socket. The one part of this module that
    touches the operating system, given to :func:`check_bind` as ``sockname``.
    """
    with socket.socket(fileno=os.dup(fd)) as sock:
        return sock.getsockname()


def check_binds(
    specs: Iterable[str],
    *,
    network: str,
    allow_wildcard: bool,
    sockname: Callable[[int], object] | None = None,
) -> list[Bind]:
    """Every spec parsed, if each may be bound; else :class:`BindRefused` naming every refused
    one, one per line."""
    binds: list[Bind] = []
    refusals: list[str] = []
    for spec in specs:
        try:
            binds.append(
                check_bind(spec, network=network, allow_wildcard=allow_wildcard, sockname=sockname)
            )
        except BindRefused as exc:
            refusals.append(str(exc))
    if refusals:
        raise BindRefused("\n".join(refusals))
    return binds


def default_binds(port: int, tailnet_addresses: Iterable[str]) -> list[str]:
    """``127.0.0.1:PORT`` and ``ADDRESS:PORT`` for each tailnet address (IPv6 in brackets), in
    order and without duplicates; what is not a tailnet address is left out."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{port!r} is not a port (0 to 65535)")
    binds = [f"127.0.0.1:{port}"]
    for address in tailnet_addresses:
        ip = parse_ip(address) if isinstance(address, str) else None
        if ip is None or not is_tailnet(ip):
            continue
        spec = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        if spec not in binds:
            binds.append(spec)
    return binds


def default_port(environ: Mapping[str, str]) -> int:
    """The port of the default binds: ``$PORT`` as gunicorn reads it, else :data:`DEFAULT_PORT`
    (also for a ``$PORT`` that is no number). Raises :class:`BindRefused` for a number that is no
    port."""
    try:
        port = int(environ.get("PORT", DEFAULT_PORT))
    except ValueError:
        return DEFAULT_PORT
    if not 0 <= port <= 65535:
        raise BindRefused(f"PORT={port} is not a port (0 to 65535)")
    return port


def single_port(specs: Iterable[str]) -> int | None:
    """The one TCP port that ``specs`` name, or ``None`` when they name none or several. Unix
    sockets, ``fd://`` and specs that do not parse name none."""
    ports: set[int] = set()
    for spec in specs:
        try:
            bind = parse_bind(spec)
        except BindRefused:
            continue
        if bind.kind == "tcp" and bind.port is not None:
            ports.add(bind.port)
    return ports.pop() if len(ports) == 1 else None


def binds_from_env(environ: Mapping[str, str]) -> tuple[list[str] | None, bool]:
    """``TAILNET_BIND`` and ``TAILNET_ALLOW_WILDCARD_BIND`` from the process environment, read
    before the app is loaded: ``(specs or None when unset or empty, allow_wildcard)``.

    Each may also be given with Flask's ``FLASK_`` prefix (``app.config.from_prefixed_env()``),
    JSON or plain: ``TAILNET_BIND='127.0.0.1:8000 100.64.0.1:8000'`` or
    ``FLASK_TAILNET_BIND='["unix:/run/app.sock"]'``; ``true``/``false``, ``1``/``0``,
    ``yes``/``no`` for the flag. Both spellings set to different values, or a value that is
    none of these, raise :class:`BindRefused`. The specs are not checked here.
    """
    bind_text = _env(environ, BIND)
    flag_text = _env(environ, ALLOW_WILDCARD_BIND)
    specs = None if bind_text is None else bind_specs(bind_text)
    return specs or None, False if flag_text is None else _flag(flag_text)


def bind_specs(value: object) -> list[str]:
    """A ``TAILNET_BIND`` value as a list of specs: a list (or tuple) of strings, a JSON list of
    strings, or one string of specs separated by commas or spaces (``[::1]:8000`` is not JSON, so
    it is a spec). Raises :class:`BindRefused` for anything else."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):
            return [v for v in value.replace(",", " ").split() if v]
        if not isinstance(decoded, list):
            return [v for v in value.replace(",", " ").split() if v]
        value = decoded
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise BindRefused(f"{BIND} must be a list of bind specs such as 127.0.0.1:8000")


def _env(environ: Mapping[str, str], name: str) -> str | None:
    plain, prefixed = environ.get(name), environ.get(f"FLASK_{name}")
    if plain is not None and prefixed is not None and plain.strip() != prefixed.strip():
        raise BindRefused(f"{name} and FLASK_{name} are both set, differently; set one")
    value = plain if plain is not None else prefixed
    return None if value is None or not value.strip() else value


def _flag(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise BindRefused(f"{ALLOW_WILDCARD_BIND} must be true or false, not {_show(text)}")


def _show(text: object) -> str:
    """``text`` quoted for a message, cut short: a spec is not a secret, but may be huge."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."
