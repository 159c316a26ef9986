"""Where gunicorn listens under :mod:`flask_tailnet.gunicorn`, and the check of every bind, run in
the master before any socket is bound.

What gunicorn's own settings chose (``-b``, ``GUNICORN_CMD_ARGS``, a config file) is kept. When
they chose nothing, the binds are filled in when gunicorn starts, never at import: ``TAILNET_BIND``
in the environment, else the app's ``TAILNET_BIND``, else loopback and this machine's tailnet
addresses (:class:`MachineAddresses`, looked up once per master). Then every bind, or every socket
gunicorn inherits instead, must pass :func:`flask_tailnet.binds.check_binds` for every app served.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import binds as binds_module
from .binds import Bind, BindRefused, default_port
from .machine import can_listen_on, machine_addresses
from .state import GuardState

#: The port of the default binds: gunicorn's own default, or ``$PORT`` as gunicorn reads it.

_FD_NUMBER = re.compile(r"[0-9]{1,9}")

#: Why ``--protocol uwsgi`` is refused (see :func:`checked_binds`).
_UWSGI_FIX = (
    "--protocol uwsgi cannot be guarded: every request comes through the front server on "
    "loopback, which names the client only in the packet's REMOTE_ADDR (gunicorn drops it), so "
    "every client would get the loopback bypass and no attempt budget; serve HTTP on "
    "127.0.0.1:PORT behind the proxy (proxy_pass with X-Forwarded-For) and list 127.0.0.1 in "
    "TAILNET_TRUSTED_PROXIES"
)


def proxy_protocol_problem(cfg: Any) -> str | None:
    """Why gunicorn's PROXY protocol settings may not be served, or ``None``. With
    ``--proxy-protocol`` on, gunicorn sets ``REMOTE_ADDR`` to the address a PROXY header names, so
    a sender allowed by ``--proxy-allow-from`` picks the address the guard judges (``127.0.0.1``
    gets the loopback bypass). Refused: any allowed sender that is not a loopback address or a
    network of loopback addresses only (``*``, a tailnet or LAN range)."""
    if str(getattr(cfg, "proxy_protocol", "off")).lower() in ("off", "false", "none", "0"):
        return None
    allowed = getattr(cfg, "proxy_allow_ips", None) or []
    for entry in [allowed] if isinstance(allowed, str) else allowed:
        try:
            network = ipaddress.ip_network(str(entry).strip(), strict=False)
        except ValueError:
            network = None
        if network is None or not (
            network.network_address.is_loopback and network.broadcast_address.is_loopback
        ):
            return (
                f"--proxy-protocol with --proxy-allow-from {str(entry)[:60]!r}: whoever may "
                "send a PROXY header picks the client address flask-tailnet sees (127.0.0.1 gets "
                "the loopback bypass); allow only the proxy on this machine (127.0.0.1,::1, the "
                "default)"
            )
    return None


class MachineAddresses:
    """This machine's tailnet addresses, looked up (``ip``, then ``tailscale ip``: up to seconds)
    the first time they are asked for, then kept for the life of the master: a ``SIGHUP`` reload
    keeps the default binds, and an address tailscaled gets later is used after a restart."""

    def __init__(
        self,
        find: Callable[[], list[str]] = machine_addresses,
        can_listen: Callable[[str], bool] = can_listen_on,
    ) -> None:
        self._find = find
        self._can_listen = can_listen
        self._found: list[str] | None = None
        self._bindable: list[str] | None = None

    def addresses(self) -> list[str]:
        """All of them, for the login links of a wildcard bind."""
        if self._found is None:
            self._found = list(self._find())
        return list(self._found)

    def bindable(self) -> list[str]:
        """Those this machine can listen on (not those ``tailscale ip`` names in userspace
        networking mode, which are on no interface)."""
        if self._bindable is None:
            self._bindable = [address for address in self.addresses() if self._can_listen(address)]
        return list(self._bindable)


def machine_of(server: Any) -> MachineAddresses:
    """The :class:`MachineAddresses` of ``server`` (a gunicorn Arbiter), made on first use."""
    machine: MachineAddresses | None = getattr(server, "flask_tailnet_machine", None)
    if machine is None:
        machine = MachineAddresses()
        server.flask_tailnet_machine = machine
    return machine


def environment(cfg: Any) -> dict[str, str]:
    """The process environment as the master has it once gunicorn applied its ``-e``/``--env``
    settings: the same at start and after a ``SIGHUP``, when gunicorn re-reads the settings with
    the old ones taken out of the environment and puts them back only after the check."""
    try:
        given = dict(cfg.env)
    except (AttributeError, RuntimeError):  # a malformed -e: gunicorn refuses it itself
        given = {}
    return {**os.environ, **given}


@dataclass(frozen=True, slots=True)
class Checked:
    """What :func:`checked_binds` accepted, and whether the binds are the default for want of any
    other choice (loopback and this machine's tailnet addresses)."""

    binds: list[Bind]
    default: bool


def fill_in(
    cfg: Any, states: Sequence[GuardState], environ: Mapping[str, str], machine: MachineAddresses
) -> bool:
    """Set gunicorn's ``bind`` in ``cfg`` if neither ``-b``, ``GUNICORN_CMD_ARGS`` nor a config
    file chose it: ``TAILNET_BIND`` in ``environ``, else the first app's ``TAILNET_BIND``, else
    loopback and this machine's tailnet addresses on ``$PORT`` or 8000. True when it set that
    last default. Raises :class:`BindRefused` when ``environ`` is malformed (see
    :func:`flask_tailnet.binds.binds_from_env`)."""
    env_binds, _ = binds_module.binds_from_env(environ)
    if list(cfg.bind):
        return False
    app_binds = next((list(s.settings.bind) for s in states if s.settings.bind), None)
    chosen = env_binds or app_binds
    if chosen is not None:
        cfg.set("bind", chosen)
        return False
    port = default_port(environ)
    cfg.set("bind", binds_module.default_binds(port, machine.bindable()))
    return True


def checked_binds(cfg: Any, states: Sequence[GuardState], machine: MachineAddresses) -> Checked:
    """The checked binds of gunicorn's settings ``cfg``, filled in first (:func:`fill_in`): the
    ``bind`` setting, or the sockets gunicorn inherits instead (from systemd, or from the master
    that re-executed it).

    Raises :class:`BindRefused` naming every refused bind, when no app uses flask-tailnet, when
    ``TAILNET_BIND`` or ``TAILNET_ALLOW_WILDCARD_BIND`` in the environment is malformed (even
    when ``-b`` overrides it: a setting that says something else than it seems is refused), under
    ``--protocol uwsgi`` (its requests all come from the front server on loopback, without a proxy
    header the guard can believe), and for PROXY protocol senders other than loopback (see
    :func:`proxy_protocol_problem`). The same check runs at start and on a ``SIGHUP`` reload.
    """
    if not states:
        raise BindRefused(
            "the app gunicorn loads does not use flask-tailnet, so nothing would guard it: "
            "add `TailnetGuard(app)` to it, or serve it without flask_tailnet.gunicorn"
        )
    environ = environment(cfg)
    default = fill_in(cfg, states, environ, machine)
    if str(getattr(cfg, "protocol", "http")).lower() == "uwsgi":
        raise BindRefused(_UWSGI_FIX)
    proxy_problem = proxy_protocol_problem(cfg)
    if proxy_problem is not None:
        raise BindRefused(proxy_problem)
    _, allow_env = binds_module.binds_from_env(environ)
    specs = list(cfg.bind)
    # With reuse_port each worker binds the `bind` setting itself, and no inherited socket is used.
    inherited = [] if _workers_bind(cfg) else inherited_fds()
    passed = [
        *(f"fd://{fd}" for fd in inherited),
        *(s for s in specs if s.startswith("fd://")),
    ]
    if passed:  # gunicorn then serves the passed sockets only, and binds none of the addresses
        specs = passed
    checked: list[Bind] = []
    for state in states:  # several apps behind one dispatcher: each one's policy must agree
        checked = binds_module.check_binds(
            specs,
            network=state.settings.network,
            allow_wildcard=allow_env or state.settings.allow_wildcard_bind,
            sockname=binds_module.fd_sockname,
        )
    return Checked(checked, default and not passed)


def inherited_fds() -> list[int]:
    """The sockets gunicorn will serve instead of ``bind``, as its Arbiter picks them: those
    systemd passes (``LISTEN_FDS`` with ``LISTEN_PID`` naming this process), else, in a master
    re-executed by ``SIGUSR2`` (``GUNICORN_PID`` set), those listed in ``GUNICORN_FD``.

    Read without unsetting anything: gunicorn reads the variables itself after the check. Raises
    :class:`BindRefused` for a ``GUNICORN_FD`` that is not a list of descriptor numbers (gunicorn
    would fail on it, or serve something unchecked).
    """
    try:
        systemd = int(os.environ.get("LISTEN_PID", "")) == os.getpid()
        count = int(os.environ.get("LISTEN_FDS", "")) if systemd else 0
    except ValueError:
        count = 0  # gunicorn fails on it before it binds anything
    if count != 0:  # gunicorn's test: a negative count is systemd's too, and passes no socket
        return list(range(3, 3 + max(count, 0)))
    try:
        parent = int(os.environ.get("GUNICORN_PID", "0"))
    except ValueError:
        parent = 0  # gunicorn fails on it before on_starting runs
    if not parent:
        return []
    listed = os.environ.get("GUNICORN_FD", "")
    numbers = listed.split(",")
    if not all(_FD_NUMBER.fullmatch(number) for number in numbers):
        raise BindRefused(
            f"GUNICORN_FD={listed[:40]!r} is not a list of file descriptor numbers; it is set "
            "by gunicorn for the master it re-executes on SIGUSR2, not by hand"
        )
    return [int(number) for number in numbers]


def _workers_bind(cfg: Any) -> bool:
    """Whether each worker binds the ``bind`` setting itself (``reuse_port``, where the system has
    ``SO_REUSEPORT``), as gunicorn decides it: the master then serves no inherited socket."""
    return bool(getattr(cfg, "reuse_port", False)) and hasattr(socket, "SO_REUSEPORT")
