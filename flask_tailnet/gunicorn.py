"""gunicorn integration: ``gunicorn -c python:flask_tailnet.gunicorn 'app:create_app()'``.

The module-level names are gunicorn settings: ``bind`` (loopback plus this machine's tailnet
addresses, or ``TAILNET_BIND``), ``logger_class`` (a logger that redacts secrets) and the hooks
that check every bind before any socket is bound. Settings given on the command line (``-b``,
``-w``, ``-k``, ``--access-logfile``) take precedence over these, as for any gunicorn config.

In the master, before any socket is bound and any worker starts, :func:`on_starting` loads the
app once, refuses every bind that :func:`flask_tailnet.binds.check_binds` refuses (the process
exits 1 without binding anything), and creates the state directory, the token and the session
key, so that workers never race to create them. :func:`when_ready` then prints the login URLs,
once, if standard error is a terminal, never through a log; elsewhere it says how to get them.

The decisions live in :mod:`flask_tailnet.binds`; this module only adapts them to gunicorn.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shlex
import socket
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, NoReturn

from flask import Flask
from gunicorn.app.base import Application
from gunicorn.errors import ConfigError, HaltServer
from gunicorn.glogging import Logger

from . import binds as binds_module
from .addresses import parse_ip
from .binds import Bind, BindRefused
from .machine import can_listen_on, machine_addresses
from .redaction import (
    REDACTED,
    SECRET_HEADERS,
    SECRET_PARAMETERS,
    RedactingFilter,
    redact_atoms,
    redact_logger,
    redact_text,
)
from .secretfile import UnsafeSecretFile, ensure_private_dir
from .settings import DEFAULT_PORT
from .state import GuardState, guard_state
from .token import login_link

__all__ = [  # the redaction names are re-exported: gunicorn users name them from here
    "REDACTED",
    "SECRET_HEADERS",
    "SECRET_PARAMETERS",
    "RedactingFilter",
    "RedactingLogger",
    "bind",
    "logger_class",
    "on_reload",
    "on_starting",
    "redact_atoms",
    "redact_text",
    "when_ready",
]

#: The port of the default binds: gunicorn's own default, or ``$PORT`` as gunicorn reads it.
#: What to install when gunicorn is missing.
INSTALL_HINT = "pip install 'flask-tailnet[gunicorn]'"

_log = logging.getLogger("flask_tailnet")
_FD_NUMBER = re.compile(r"[0-9]{1,9}")


#: Why ``--protocol uwsgi`` is refused (see :func:`check`).
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


class RedactingLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's logger, but the access log never holds a ``token`` value, an Authorization
    header or a cookie, and the error log (``Error handling request /?token=...``, tracebacks)
    never holds a ``token`` value."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            redact_logger(log)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        return redact_atoms(super().atoms(resp, req, environ, request_time))


# ---- the app behind gunicorn's WSGI callable ------------------------------------------------

_WRAPPER_ATTRIBUTES = ("tailnet_state", "wsgi_app", "app", "application", "wrapped", "__wrapped__")


def find_guard_states(wsgi: object, max_depth: int = 8) -> list[GuardState]:
    """The guard states reachable from ``wsgi``: a Flask app, the guard's WSGI callable, or
    middleware around them that keeps what it wraps as ``app``, ``wsgi_app``, ``application``,
    ``wrapped``, ``__wrapped__`` or werkzeug's ``mounts``. ``[]`` when there is none."""
    found: list[GuardState] = []
    seen: set[int] = set()
    pending: list[tuple[object, int]] = [(wsgi, 0)]
    while pending:
        obj, depth = pending.pop()
        if id(obj) in seen or depth > max_depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, GuardState):
            found.append(obj)  # once: ``seen`` skips an object met again
            continue
        children: list[object] = []
        if isinstance(obj, Flask):
            children.append(guard_state(obj))
        for name in _WRAPPER_ATTRIBUTES:
            try:
                children.append(getattr(obj, name, None))
            except Exception:  # noqa: S112 - a proxy object that cannot answer wraps nothing
                continue
        try:
            mounts = getattr(obj, "mounts", None)
        except Exception:
            mounts = None
        if isinstance(mounts, Mapping):
            children.extend(mounts.values())
        pending.extend((child, depth + 1) for child in reversed(children) if child is not None)
    return found


# ---- what the master decides before binding -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """What :func:`on_starting` found: the checked binds and the token for the login URLs."""

    binds: tuple[Bind, ...]
    token: bytes


def login_urls(
    checked: Iterable[Bind], token: bytes, tailnet_addresses: Sequence[str]
) -> list[str]:
    """``http://<address>:<port>/?token=<token>`` for every TCP bind, IPv6 in brackets; a wildcard
    bind stands for loopback and ``tailnet_addresses``. Unix sockets and inherited file
    descriptors have no URL."""
    urls: list[str] = []
    for bind in checked:
        if bind.kind != "tcp" or bind.port is None:  # a TCP bind always has its port
            continue
        if bind.ip is None:
            hosts = [bind.host or "localhost"]
        elif bind.ip.is_unspecified:
            hosts = ["127.0.0.1", *tailnet_addresses]
        else:
            hosts = [str(bind.ip)]
        for host in hosts:
            url = login_link("http", host, bind.port, token)
            if url not in urls:
                urls.append(url)
    return urls


def _listening(checked: Iterable[Bind]) -> Iterator[Bind]:
    """``checked`` with each passed socket (``fd://N``) as the TCP address it listens on, so that
    the login URLs name what is served; a socket whose address cannot be read is left out."""
    for item in checked:
        if item.kind != "fd" or item.fd is None:
            yield item
            continue
        try:
            address = binds_module.fd_sockname(item.fd)
        except OSError:
            continue
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str):
            ip = parse_ip(address[0])
            if ip is not None:
                yield replace(item, kind="tcp", ip=ip, port=int(address[1]), host=address[0])


def _default_bind() -> tuple[list[str], bool, str | None]:
    """``TAILNET_BIND``, else loopback and this machine's tailnet addresses on ``$PORT`` (as
    gunicorn reads it) or 8000; whether that is loopback only for want of a tailnet address; and
    why the environment cannot be used (refused at start), or ``None``."""
    try:
        configured, _ = binds_module.binds_from_env(os.environ)
    except BindRefused as exc:
        return [f"127.0.0.1:{DEFAULT_PORT}"], False, str(exc)
    if configured:
        return configured, False, None
    try:
        port = int(os.environ.get("PORT", DEFAULT_PORT))
    except ValueError:
        port = DEFAULT_PORT
    found = [address for address in machine_addresses() if can_listen_on(address)]
    return binds_module.default_binds(port, found), not found, None


def _inherited_fds() -> list[int]:
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


def load_states(server: Any) -> list[GuardState]:
    """The guard states of the app ``server`` (a gunicorn Arbiter) serves, loaded once in the
    master (workers load their own, as without this module, unless ``preload_app`` is on)."""
    wsgi = server.app.wsgi() if server.cfg.preload_app else server.app.load()
    return find_guard_states(wsgi)


def checked_binds(server: Any, states: Sequence[GuardState]) -> list[Bind]:
    """The checked binds of ``server``: its ``bind`` setting, or the sockets it inherits (from
    systemd, or from the master that re-executed it). Raises :class:`BindRefused` naming every
    refused bind, when no app uses flask-tailnet, under ``--protocol uwsgi`` (its requests all
    come from the front server on loopback, without a proxy header the guard can believe), and
    for PROXY protocol senders other than loopback (see :func:`proxy_protocol_problem`)."""
    if not states:
        raise BindRefused(
            "the app gunicorn loads does not use flask-tailnet, so nothing would guard it: "
            "add `TailnetGuard(app)` to it, or serve it without flask_tailnet.gunicorn"
        )
    if _ENV_PROBLEM is not None:
        raise BindRefused(_ENV_PROBLEM)
    if str(getattr(server.cfg, "protocol", "http")).lower() == "uwsgi":
        raise BindRefused(_UWSGI_FIX)
    proxy_problem = proxy_protocol_problem(server.cfg)
    if proxy_problem is not None:
        raise BindRefused(proxy_problem)
    _, allow_env = binds_module.binds_from_env(os.environ)
    app_binds = [state.settings.bind for state in states]
    if list(server.cfg.bind) == bind and not _FROM_ENV and any(app_binds):
        # Neither -b nor TAILNET_BIND: the app's own TAILNET_BIND replaces the default.
        server.cfg.set("bind", list(next(b for b in app_binds if b)))
    specs = list(server.cfg.bind)
    # With reuse_port each worker binds the `bind` setting itself, and no inherited socket is used.
    inherited = [] if _workers_bind(server.cfg) else _inherited_fds()
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
    return checked


def _workers_bind(cfg: Any) -> bool:
    """Whether each worker binds the ``bind`` setting itself (``reuse_port``, where the system has
    ``SO_REUSEPORT``), as gunicorn decides it: the master then serves no inherited socket."""
    return bool(getattr(cfg, "reuse_port", False)) and hasattr(socket, "SO_REUSEPORT")


def prepare(state: GuardState) -> bytes:
    """Create the state directory, the token and the session key if missing (before any worker
    exists, so workers never race to create them); return the token."""
    ensure_private_dir(state.settings.state_dir)
    state.sessions.key_file.ensure()
    return state.token_file.ensure()


# ---- gunicorn hooks -------------------------------------------------------------------------


def _refuse(server: Any, message: str) -> NoReturn:
    print(f"flask-tailnet: refusing to serve: {message}", file=sys.stderr, flush=True)
    if getattr(server, "pidfile", None) is not None:
        server.pidfile.unlink()
    raise SystemExit(1)


def on_starting(server: Any) -> None:
    """gunicorn hook, in the master before any socket is bound: check the binds and prepare the
    state, or exit 1 with a message that says what to do."""
    if not isinstance(server.log, RedactingLogger):
        server.log.warning(
            "flask-tailnet: logger_class %s does not redact ?token= links, Authorization and "
            "cookies; use flask_tailnet.gunicorn.RedactingLogger or a subclass of it",
            type(server.log).__name__,
        )
    try:
        states = load_states(server)
        checked = checked_binds(server, states)
        tokens = [prepare(state) for state in states]
    except BindRefused as exc:
        _refuse(server, str(exc))
    except UnsafeSecretFile as exc:
        _refuse(server, f"{exc}; fix it, or set TAILNET_STATE_DIR to a private directory")
    except OSError as exc:
        _refuse(server, f"cannot create the state: {exc.strerror} ({exc.filename})")
    if _LOOPBACK_ONLY and list(server.cfg.bind) == bind and all(b.kind != "fd" for b in checked):
        server.log.info(
            "flask-tailnet: no tailnet address found on this machine (is Tailscale up?); "
            "binding loopback only"
        )
    server.flask_tailnet = Prepared(tuple(_listening(checked)), tokens[0])
    _check_on_reload(server)


def _check_on_reload(server: Any) -> None:
    """Make a SIGHUP's configuration pass the bind check before gunicorn binds it: gunicorn
    re-reads the configuration and binds the new addresses before it calls ``on_reload``, so the
    check runs right after the re-read, and a refusal stops the server (exit 1) without binding.
    """
    reload = getattr(server.app, "reload", None)
    if reload is None or getattr(reload, "flask_tailnet_checked", False):
        return

    def checked_reload() -> None:
        reload()
        reloaded = SimpleNamespace(cfg=server.app.cfg, app=server.app)
        try:
            checked_binds(reloaded, load_states(reloaded))
        except BindRefused as exc:
            raise HaltServer(f"flask-tailnet: refusing to serve: {exc}", 1) from None

    checked_reload.flask_tailnet_checked = True  # type: ignore[attr-defined]
    server.app.reload = checked_reload


def stderr_is_a_terminal() -> bool:
    """Whether the master's standard error is a terminal of its own: file descriptor 2 and
    ``sys.stderr`` both, and not the terminal of the first process (PID 1) of the machine or
    container. Anything else (a file, ``--capture-output``'s error log, a pipe, the journal, a
    container log, ``/dev/null``, the terminal that ``docker run -t`` or ``tty: true`` gives a
    container's main process, which the runtime's log records) may be kept and read later by
    others."""
    try:
        fileno = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # None, or a stream without a descriptor
        return False
    return os.isatty(2) and os.isatty(fileno) and not _first_process_terminal(2)


#: Where PID 1 writes: the terminal a container runtime records is the one on these.
_FIRST_PROCESS_OUTPUTS = ("/proc/1/fd/1", "/proc/1/fd/2")


def _first_process_terminal(fd: int) -> bool:
    """Whether the terminal ``fd`` is the one PID 1 of this PID namespace writes to (this process
    being PID 1 included); ``False`` when PID 1's descriptors cannot be read."""
    if os.getpid() == 1:
        return True
    try:
        ours = os.fstat(fd)
    except OSError:
        return True
    for path in _FIRST_PROCESS_OUTPUTS:
        try:
            theirs = os.stat(path)
        except OSError:
            continue
        if stat.S_ISCHR(theirs.st_mode) and theirs.st_rdev == ours.st_rdev:
            return True
    return False


def when_ready(server: Any) -> None:
    """gunicorn hook, once the sockets are bound: print the login URLs once, but only to a
    terminal (see :func:`stderr_is_a_terminal`); anywhere else, where a log could keep the token,
    print how to get them instead (``flask tailnet url``), never the token."""
    prepared: Prepared | None = getattr(server, "flask_tailnet", None)
    if prepared is None:
        return
    urls = login_urls(prepared.binds, prepared.token, machine_addresses())
    if not urls:
        return
    if stderr_is_a_terminal():
        message = (
            "flask-tailnet: to log in from another tailnet device, open one of these "
            "(anyone with the link is logged in: share it with care):\n"
            + "\n".join(f"    {url}" for url in urls)
        )
    else:
        message = (
            "flask-tailnet: standard error is not a terminal (or is a container's, which its log "
            "keeps), so the login links (which hold the token) are not printed where a log could "
            "keep them; to get them, run as this "
            f"server's user: {url_command(server, prepared.binds)}"
        )
    print(message, file=sys.stderr, flush=True)


def url_command(server: Any, checked: Iterable[Bind]) -> str:
    """The ``flask tailnet url`` command line that prints the login links of ``server``."""
    app_uri = getattr(server.app, "app_uri", None)
    app = shlex.quote(app_uri) if isinstance(app_uri, str) and app_uri else "<your app>"
    ports = [item.port for item in checked if item.kind == "tcp" and item.port]
    port = f" --port {ports[0]}" if ports else ""
    return f"flask --app {app} tailnet url{port}"


def on_reload(server: Any) -> None:
    """gunicorn hook after SIGHUP re-read the settings, before new workers start: a refused bind
    stops the server (exit 1) instead of serving it. A second line of defence: the check already
    ran before gunicorn bound the new addresses (see :func:`on_starting`)."""
    try:
        checked_binds(server, load_states(server))
    except BindRefused as exc:
        raise HaltServer(f"flask-tailnet: refusing to serve: {exc}", 1) from None


# ---- flask tailnet serve --------------------------------------------------------------------


class FlaskApplication(Application):  # type: ignore[misc]
    """gunicorn serving an already loaded Flask app: this module's settings first, then a
    ``-c`` config file, ``GUNICORN_CMD_ARGS`` and ``argv``, as ``gunicorn`` would apply them.
    The bind check and the state preparation run even when a config file sets its own hooks."""

    def __init__(self, app: Flask, argv: Sequence[str], app_uri: str | None = None) -> None:
        self.flask_app = app
        self.argv = list(argv)
        #: What ``flask --app`` was given, for the ``flask tailnet url`` hint (as gunicorn's own).
        self.app_uri = app_uri
        super().__init__("flask tailnet serve [GUNICORN OPTIONS]", prog="flask tailnet serve")

    def init(self, parser: Any, opts: Any, args: Any) -> None:
        return None

    def load_config(self) -> None:
        parser = self.cfg.parser()
        args = parser.parse_args(self.argv)
        if args.args:
            raise ConfigError(
                f"unexpected {' '.join(args.args)!r}: the app is the one `flask --app` names"
            )
        for name, value in _settings().items():
            self.cfg.set(name, value)
        env_args = parser.parse_args(self.cfg.get_cmd_args_from_env())
        config = args.config or env_args.config
        if config:
            self.load_config_from_file(config)
        for given in (env_args, args):
            for name, value in vars(given).items():
                if value is not None and name != "args":
                    self.cfg.set(name.lower(), value)
        for name, ours in _HOOKS.items():
            theirs = self.cfg.settings[name].get()
            if theirs is not ours:
                self.cfg.set(name, _both(ours, theirs))

    def load(self) -> Flask:
        return self.flask_app


def _both(first: Any, then: Any) -> Any:
    def hook(server: Any) -> None:
        first(server)
        then(server)

    return hook


def serve(app: Flask, argv: Sequence[str], app_uri: str | None = None) -> None:
    """Run ``app`` under gunicorn with this module's settings; ``argv`` are gunicorn options;
    ``app_uri`` is what ``flask --app`` was given, if anything."""
    FlaskApplication(app, argv, app_uri).run()


# ---- gunicorn settings ----------------------------------------------------------------------

bind, _LOOPBACK_ONLY, _ENV_PROBLEM = _default_bind()
_FROM_ENV = _ENV_PROBLEM is None and binds_module.binds_from_env(os.environ)[0] is not None
logger_class = RedactingLogger
_HOOKS = {"on_starting": on_starting, "when_ready": when_ready, "on_reload": on_reload}


def _settings() -> dict[str, Any]:
    """The gunicorn settings this module sets (its lower-case names gunicorn knows)."""
    return {"bind": list(bind), "logger_class": logger_class, **_HOOKS}
