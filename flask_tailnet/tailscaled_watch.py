"""What this process knows of tailscaled: whether it runs here, its mode, its own addresses and the
ports ``tailscale serve`` forwards over raw TCP, read at start and again every
:data:`REFRESH_SECONDS` (never per request).

The knowledge decides one thing on every loopback request: whether the loopback bypass may serve
it. tailscaled connects to the app from 127.0.0.1 itself in userspace-networking mode and for TCP
forwards, so loopback is local only when the snapshot says nothing of the kind can happen, and
fails closed (:attr:`Snapshot.unknown`) whenever tailscaled runs but did not answer usably.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from .relays import NO_FORWARDS, ServeForwards, parse_serve_config
from .tailscaled import LocalAPI, LocalAPIError, TailscaledStatus, find_socket

log = logging.getLogger("flask_tailnet")

#: How often serve-config and status are re-read: a ``tailscale serve --tcp`` started while the app
#: runs is noticed within this many seconds (the staleness bound docs/security.md states).
REFRESH_SECONDS = 2.0
#: How long past its refresh time a snapshot is still used while another thread re-reads it; past
#: this, requests wait for the read.
_GRACE_SECONDS = 3.0
#: The official container's socket: used only when named, but its presence means a tailscaled runs
#: here that the guard cannot trust (see :meth:`TailscaledWatch.current`).
CONTAINER_SOCKET = "/tmp/tailscaled.sock"  # noqa: S108 - a path tailscaled's container uses

Userspace = Literal["auto"] | bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """tailscaled as last read. ``loopback_clear`` is the one flag the hot path reads: true when
    a loopback request cannot have been relayed by tailscaled (no tailscaled, or a TUN-mode one
    that forwards nothing over TCP), so the bypass may serve it without another question."""

    socket: str | None
    #: Why tailscaled is not used or not trusted, or what went wrong reading it; ``None`` if fine.
    problem: str | None
    #: tailscaled answered status and serve-config.
    reachable: bool
    #: tailscaled may be relaying but its answers are unknown: a loopback request is not local.
    unknown: bool
    version: str | None
    userspace: bool
    self_addresses: frozenset[str]
    self_name: str | None
    forwards: ServeForwards
    #: ``SERVER_PORT`` values (strings, as WSGI gives them) that serve forwards raw TCP to.
    forwarded_ports: frozenset[str]
    #: ``SERVER_PORT`` values of forwards that Funnel publishes to the internet.
    funnel_ports: frozenset[str]
    #: ``SERVER_PORT`` values of forwards that send a PROXY protocol header.
    proxy_protocol_ports: frozenset[str]
    loopback_clear: bool
    #: The uid tailscaled runs as (``SO_PEERCRED``), ``None`` when unknown.
    daemon_uid: int | None
    #: tailscaled's pid in this PID namespace (``SO_PEERCRED``), ``None`` when unknown.
    daemon_pid: int | None
    expires: float = field(compare=False)
    api: LocalAPI | None = field(default=None, compare=False)


def _snapshot(
    *,
    socket: str | None,
    problem: str | None,
    api: LocalAPI | None = None,
    status: TailscaledStatus | None = None,
    forwards: ServeForwards = NO_FORWARDS,
    unknown: bool = False,
    userspace: bool = False,
    daemon: tuple[int, int] | None = None,
) -> Snapshot:
    forwarded = frozenset(str(p) for p in forwards.tcp_ports)
    return Snapshot(
        socket=socket,
        problem=problem,
        reachable=status is not None and not unknown,
        unknown=unknown,
        version=None if status is None else status.version,
        userspace=userspace,
        self_addresses=frozenset() if status is None else status.self_addresses,
        self_name=None if status is None else status.self_name,
        forwards=forwards,
        forwarded_ports=forwarded,
        funnel_ports=frozenset(str(p) for p in forwards.funnel_ports),
        proxy_protocol_ports=frozenset(str(p) for p in forwards.proxy_protocol_ports),
        loopback_clear=not (unknown or userspace or forwarded),
        daemon_uid=None if daemon is None else daemon[1],
        daemon_pid=None if daemon is None or daemon[0] <= 0 else daemon[0],
        expires=time.monotonic() + REFRESH_SECONDS,
        api=api,
    )


class TailscaledWatch:
    """The :class:`Snapshot` of one app, re-read at most every :data:`REFRESH_SECONDS`.

    ``socket`` is ``TAILNET_TAILSCALED_SOCKET`` (``None``: the usual places), ``userspace`` is
    ``TAILNET_USERSPACE``. Thread-safe: one thread re-reads while the others keep the previous
    snapshot for up to :data:`_GRACE_SECONDS` more.
    """

    def __init__(self, socket: str | None, userspace: Userspace, *, timeout: float = 1.0) -> None:
        self.socket_setting = socket
        self.userspace_setting = userspace
        self.timeout = timeout
        self._lock = threading.Lock()
        self._last_tun: bool | None = None
        self._snapshot = self._read()

    def current(self) -> Snapshot:
        """The snapshot in force, re-read first when it is older than :data:`REFRESH_SECONDS`."""
        snapshot = self._snapshot
        if time.monotonic() < snapshot.expires:
            return snapshot
        if not self._lock.acquire(blocking=False):
            if time.monotonic() < snapshot.expires + _GRACE_SECONDS:
                return snapshot
            self._lock.acquire()
        try:
            if self._snapshot is snapshot:  # nobody re-read it while this thread waited
                self._snapshot = self._read()
            return self._snapshot
        finally:
            self._lock.release()

    def refresh(self) -> Snapshot:
        """Re-read now (``flask tailnet status``, tests)."""
        with self._lock:
            self._snapshot = self._read()
            return self._snapshot

    def _read(self) -> Snapshot:
        choice = find_socket(self.socket_setting)
        forced = self.userspace_setting
        if choice.path is None:
            if choice.problem is not None or _container_socket_present(self.socket_setting):
                problem = choice.problem or (
                    f"a tailscaled socket exists at {CONTAINER_SOCKET} (the official container's), "
                    "but it is used only when named: set TAILNET_TAILSCALED_SOCKET to it"
                )
                # a tailscaled runs here that cannot be asked: it may be relaying
                return _snapshot(
                    socket=None, problem=problem, unknown=True, userspace=forced is True
                )
            if forced is True:
                return _snapshot(
                    socket=None,
                    problem="TAILNET_USERSPACE is on but no tailscaled socket was found",
                    unknown=True,
                    userspace=True,
                )
            if self._last_tun is False:
                # It answered from a usual path in userspace mode, and its socket is gone: it may
                # still run and relay (a socket file removed under it), with nobody to ask.
                return _snapshot(
                    socket=None,
                    problem=(
                        "the socket of tailscaled, seen in userspace networking mode, is gone; "
                        "restart the app if tailscaled was removed for good"
                    ),
                    unknown=True,
                    userspace=True,
                )
            return _snapshot(socket=None, problem=None)
        api = LocalAPI(choice.path, timeout=self.timeout)
        try:
            status = api.status()
            forwards = parse_serve_config(api.serve_config())
        except (LocalAPIError, ValueError) as exc:
            unreachable = isinstance(exc, LocalAPIError) and exc.unreachable
            userspace = forced if forced != "auto" else self._last_tun is False
            # Nothing listens on the socket: tailscaled is stopped and relays nothing, unless the
            # operator said it runs in userspace mode (then its answers are needed, and missing),
            # or named a socket that does not exist: a typo, or a tailscaled not started yet,
            # either of which may relay through a socket the guard cannot see.
            named_missing = self.socket_setting is not None and not os.path.lexists(choice.path)
            # In userspace mode (known from an earlier answer) every relay needs whois, and
            # there is none: say so, as the requests will find it.
            unknown = not unreachable or bool(userspace) or named_missing
            problem = f"tailscaled at {choice.path}: {exc}"
            if named_missing:
                problem = (
                    f"TAILNET_TAILSCALED_SOCKET names {choice.path}, which does not exist (a typo, "
                    "or tailscaled has not started yet)"
                )
            return _snapshot(
                socket=choice.path,
                problem=problem,
                api=api,
                unknown=unknown,
                userspace=bool(userspace),
            )
        self._last_tun = status.tun
        # TAILNET_USERSPACE=False cannot overrule a tailscaled that says it runs in userspace
        # mode: believing it would serve every relayed tailnet peer as local.
        userspace = not status.tun or forced is True
        overruled: str | None = None
        if forced is False and not status.tun:
            overruled = (
                "TAILNET_USERSPACE is False, but tailscaled says it runs in userspace networking "
                "mode: treated as userspace (remove the setting)"
            )
        return _snapshot(
            socket=choice.path,
            problem=overruled,
            api=api,
            status=status,
            forwards=forwards,
            userspace=userspace,
            daemon=api.daemon_credentials(),
        )


def _container_socket_present(configured: str | None) -> bool:
    """Whether the official container's socket exists here without being the one named."""
    if configured is not None:
        return False
    try:
        return stat.S_ISSOCK(os.lstat(CONTAINER_SOCKET).st_mode)
    except OSError:
        return False


def describe(
    snapshot: Snapshot, *, needs_identity: bool = False, funnel_served: bool = False
) -> list[str]:
    """What the guard found, a line each: the start-up log line and ``flask tailnet status`` say
    the same. The first line names tailscaled and its mode; the rest, what it relays to
    loopback, and where such requests are refused (403) whatever credential they present.
    ``needs_identity``: a gate is set or identity is ``"required"``, so a loopback request that
    is not local and names nobody is refused, not asked for a credential. ``funnel_served``: the
    network policy is ``"any"``, so a Funnel-published forward is served (else refused)."""
    if snapshot.socket is None and snapshot.problem is None:
        return ["tailscaled: not found on this host (loopback requests are local)"]
    if not snapshot.reachable:
        lines = [f"tailscaled: NOT READABLE: {snapshot.problem}"]
        if snapshot.unknown:
            lines.append(
                "loopback: NOT LOCAL: every loopback request is refused (403: a gate or "
                "TAILNET_IDENTITY='required' needs an identity, and nobody can be named) until it "
                "answers"
                if needs_identity
                else "loopback: NOT LOCAL: every loopback request must authenticate until it "
                "answers"
            )
        else:
            lines.append("loopback: local (tailscaled is not running, so it relays nothing)")
        return lines
    mode = "userspace networking" if snapshot.userspace else "TUN"
    lines = [f"tailscaled: {snapshot.version} at {snapshot.socket}, {mode}"]
    if snapshot.problem is not None:
        lines.append(f"setting: {snapshot.problem}")
    if snapshot.userspace:
        lines.append(
            "loopback: relayed connections are told apart by whois of 127.0.0.1:REMOTE_PORT; "
            "only the others are local"
        )
    lines += _forward_lines(snapshot, needs_identity=needs_identity)
    if snapshot.funnel_ports:
        refused = "" if funnel_served else ": refused there (403) unless TAILNET_NETWORK is 'any'"
        lines.append(
            f"tailscale funnel: ON for the TCP forward to port {_ports(snapshot.funnel_ports)} "
            f"(public){refused}"
        )
    if not snapshot.userspace and not snapshot.forwarded_ports:
        lines.append("loopback: local (tailscaled relays nothing to it)")
    return lines


def _ports(ports: frozenset[str]) -> str:
    return ", ".join(sorted(ports, key=int))


def _forward_lines(snapshot: Snapshot, *, needs_identity: bool) -> list[str]:
    """The ``tailscale serve`` lines: which ports serve forwards raw TCP to, and, when a gate or
    ``"required"`` needs an identity, that loopback requests there are refused unless a PROXY
    header from tailscaled names the peer."""
    forwarded = snapshot.forwarded_ports
    if not forwarded:
        return []
    if not needs_identity:
        return [f"tailscale serve: forwards raw TCP to port {_ports(forwarded)}: not local there"]
    named = forwarded & snapshot.proxy_protocol_ports
    anonymous = forwarded - named
    lines = []
    if anonymous:
        lines.append(
            f"tailscale serve: forwards raw TCP to port {_ports(anonymous)}: not local, and "
            "refused there (403): nobody can be named, and a gate or TAILNET_IDENTITY='required' "
            "needs an identity"
        )
    if named:
        lines.append(
            f"tailscale serve: forwards raw TCP with a PROXY header to port {_ports(named)}: not "
            "local; refused there (403) without tailscaled's PROXY header naming the peer"
        )
    return lines
