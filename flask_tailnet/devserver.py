"""Whether werkzeug's development server may start its debugger on the address it is asked to
listen on (``flask run --debug``, ``app.run(debug=True)``).

werkzeug's debugger wraps the whole app, so it answers its own requests (``/console``,
``?__debugger__=yes&cmd=...``) before the guard, which wraps ``app.wsgi_app`` inside it, sees
them; only its PIN protects the console. It trusts the host it was given, so on a tailnet or LAN
address every peer of that network reaches it. The guard cannot be put in front of it, so the
server is refused instead: the debugger may run on loopback only.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import click
from flask import Flask, cli
from flask.helpers import get_debug_flag

from .addresses import is_loopback, parse_ip
from .settings import ConfigurationError

#: How ``flask run`` names the options that decide the debugger and the address.
_HOST, _DEBUGGER = "host", "debugger"


class DebuggerRefused(click.ClickException, ConfigurationError):
    """``flask run`` would start werkzeug's debugger where others can reach it; ``flask run``
    prints the message (``Error: ...``) and exits 1 before it listens."""


def debugger_problem(host: object, debugger: bool) -> str | None:
    """Why werkzeug's debugger may not serve ``host`` (what ``flask run --host`` was given), or
    ``None`` when it may: the debugger is off, or ``host`` is a loopback address or
    ``localhost``. Refused: every other address (tailnet, LAN, the wildcard) and host name."""
    if not debugger:
        return None
    ip = parse_ip(host) if isinstance(host, str) else None
    if is_loopback(ip) or host == "localhost":
        return None
    return (
        f"refusing to start werkzeug's debugger on {host!r}: it answers every client of that "
        "address (its console at /console, ?__debugger__= requests) before flask-tailnet's "
        "guard sees the request. Run `flask run --debug` on 127.0.0.1 (the default), or add "
        "--no-debugger to serve tailnet peers, or serve with `flask tailnet serve`"
    )


def flask_run_problem() -> str | None:
    """:func:`debugger_problem` for the ``flask run`` command loading the app right now, read
    from its options as ``flask run`` resolves them (``--debugger``/``--no-debugger``, else
    ``--debug`` or ``FLASK_DEBUG``); ``None`` when the app is not being loaded by ``flask run``."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.info_name != "run" or _HOST not in ctx.params:
        return None
    debugger = ctx.params.get(_DEBUGGER)
    if debugger is None:
        debugger = get_debug_flag()
    return debugger_problem(ctx.params[_HOST], bool(debugger))


def refuse_debugger_in_app_run(app: Flask) -> None:
    """Make ``app.run(...)`` refuse (:class:`DebuggerRefused`, before anything listens) to start
    werkzeug's debugger on an address other than loopback, as ``flask run`` does. It resolves the
    debugger and the address as ``Flask.run`` does: ``use_debugger``, else ``debug``, else
    ``FLASK_DEBUG`` (``.env`` included) or ``app.debug``; ``host``, else ``SERVER_NAME``'s host,
    else 127.0.0.1."""
    run = app.run

    @functools.wraps(run)
    def checked_run(
        host: str | None = None,
        port: int | None = None,
        debug: bool | None = None,
        load_dotenv: bool = True,
        **options: Any,
    ) -> None:
        if os.environ.get("FLASK_RUN_FROM_CLI") != "true":  # else Flask ignores the call
            problem = _app_run_problem(app, host, debug, load_dotenv, options)
            if problem is not None:
                raise DebuggerRefused(problem)
        run(host, port, debug, load_dotenv, **options)

    app.run = checked_run  # type: ignore[method-assign]


def _app_run_problem(
    app: Flask, host: str | None, debug: bool | None, load_dotenv: bool, options: dict[str, Any]
) -> str | None:
    if load_dotenv:
        cli.load_dotenv()  # Flask.run loads it first too: FLASK_DEBUG may come from .env
    debugger = options.get("use_debugger")
    if debugger is None:
        if debug is not None:
            debugger = bool(debug)
        else:
            debugger = get_debug_flag() if "FLASK_DEBUG" in os.environ else app.debug
    if not host:
        server_name = app.config.get("SERVER_NAME")
        host = (server_name.partition(":")[0] if isinstance(server_name, str) else "") or None
    return debugger_problem(host or "127.0.0.1", bool(debugger))
