"""The gunicorn hooks of :mod:`flask_tailnet.gunicorn`, run in the master.

:func:`on_starting`, before any socket is bound and any worker starts, loads the app once, fills
in and checks every bind (:mod:`flask_tailnet.gunicorn_binds`; a refusal exits 1 without binding
anything), and creates the state directory, the token and the session key, so that workers never
race to create them. It also makes a ``SIGHUP``'s new settings pass the same check before gunicorn
binds them. :func:`when_ready` then prints the login links once
(:mod:`flask_tailnet.gunicorn_links`); :func:`on_reload` checks the binds again after a reload.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from flask import Flask
from gunicorn.errors import HaltServer

from .binds import Bind, BindRefused
from .gunicorn_binds import checked_binds, machine_of
from .gunicorn_links import (
    links_message,
    listening,
    login_urls,
    no_tailnet_message,
    url_command,
)
from .gunicorn_logging import RedactingLogger
from .secretfile import UnsafeSecretFile, ensure_private_dir
from .state import GuardState, guard_state

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


def load_states(app: Any, cfg: Any) -> list[GuardState]:
    """The guard states of the app gunicorn's application ``app`` serves, loaded once in the
    master (workers load their own, as without this module, unless ``preload_app`` is on)."""
    wsgi = app.wsgi() if cfg.preload_app else app.load()
    return find_guard_states(wsgi)


@dataclass(frozen=True, slots=True)
class Prepared:
    """What :func:`on_starting` found: the checked binds, the token for the login URLs, and
    whether the server listens on loopback only because no tailnet address was found."""

    binds: tuple[Bind, ...]
    token: bytes
    no_tailnet_address: bool = False


def prepare(state: GuardState) -> bytes:
    """Create the state directory, the token and the session key if missing (before any worker
    exists, so workers never race to create them); return the token."""
    ensure_private_dir(state.settings.state_dir)
    state.sessions.key_file.ensure()
    return state.token_file.ensure()


def _refuse(server: Any, message: str) -> NoReturn:
    print(f"flask-tailnet: refusing to serve: {message}", file=sys.stderr, flush=True)
    if getattr(server, "pidfile", None) is not None:
        server.pidfile.unlink()
    raise SystemExit(1)


def on_starting(server: Any) -> None:
    """gunicorn hook, in the master before any socket is bound: choose and check the binds and
    prepare the state, or exit 1 with a message that says what to do."""
    if not isinstance(server.log, RedactingLogger):
        server.log.warning(
            "flask-tailnet: logger_class %s does not redact ?token= links, Authorization and "
            "cookies; use flask_tailnet.gunicorn.RedactingLogger or a subclass of it",
            type(server.log).__name__,
        )
    machine = machine_of(server)
    try:
        states = load_states(server.app, server.cfg)
        checked = checked_binds(server.cfg, states, machine)
        tokens = [prepare(state) for state in states]
    except BindRefused as exc:
        _refuse(server, str(exc))
    except UnsafeSecretFile as exc:
        _refuse(server, f"{exc}; fix it, or set TAILNET_STATE_DIR to a private directory")
    except OSError as exc:
        _refuse(server, f"cannot create the state: {exc.strerror} ({exc.filename})")
    if checked.default and not machine.bindable():
        server.log.info(
            "flask-tailnet: no tailnet address found on this machine (is Tailscale up?); "
            "binding loopback only"
        )
    # tailscaled in userspace networking mode has addresses, none on an interface: it forwards
    # tailnet connections to loopback, so the loopback bind is reached from the tailnet.
    no_tailnet = checked.default and not machine.addresses()
    server.flask_tailnet = Prepared(tuple(listening(checked.binds)), tokens[0], no_tailnet)
    _check_on_reload(server)


def _check_on_reload(server: Any) -> None:
    """Make a SIGHUP's configuration pass the bind check before gunicorn binds it: gunicorn
    re-reads the configuration and binds the new addresses before it calls ``on_reload``, so the
    check (which also fills in the default binds again) runs right after the re-read, and a
    refusal stops the server (exit 1) without binding.
    """
    reload = getattr(server.app, "reload", None)
    if reload is None or getattr(reload, "flask_tailnet_checked", False):
        return

    def checked_reload() -> None:
        reload()
        _check_or_halt(server.app.cfg, server.app, server)

    checked_reload.flask_tailnet_checked = True  # type: ignore[attr-defined]
    server.app.reload = checked_reload


def _check_or_halt(cfg: Any, app: Any, server: Any) -> None:
    try:
        checked_binds(cfg, load_states(app, cfg), machine_of(server))
    except BindRefused as exc:
        raise HaltServer(f"flask-tailnet: refusing to serve: {exc}", 1) from None


def when_ready(server: Any) -> None:
    """gunicorn hook, once the sockets are bound: print the login URLs once, only to a terminal;
    anywhere else how to get them (``flask tailnet url``), never the token. With no tailnet
    address found, say what to do instead (a loopback link is no use to another device)."""
    prepared: Prepared | None = getattr(server, "flask_tailnet", None)
    if prepared is None:
        return
    get_them = url_command(server, prepared.binds)
    if prepared.no_tailnet_address:
        message = no_tailnet_message(prepared.binds, get_them)
    else:
        urls = login_urls(prepared.binds, prepared.token, machine_of(server).addresses())
        if not urls:
            return
        message = links_message(urls, get_them)
    print(message, file=sys.stderr, flush=True)


def on_reload(server: Any) -> None:
    """gunicorn hook after SIGHUP re-read the settings, before new workers start: a refused bind
    stops the server (exit 1) instead of serving it. A second line of defence: the check already
    ran before gunicorn bound the new addresses (see :func:`on_starting`)."""
    _check_or_halt(server.cfg, server.app, server)
