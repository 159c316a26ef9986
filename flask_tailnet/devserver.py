"""Whether ``flask run`` may start werkzeug's debugger on the address it is asked to listen on.

werkzeug's debugger (``flask run --debug``) wraps the whole app, so it answers its own requests
(``/console``, ``?__debugger__=yes&cmd=...``) before the guard, which wraps ``app.wsgi_app``
inside it, sees them; only its PIN protects the console. It trusts the host ``flask run`` was
given, so on a tailnet or LAN address every peer of that network reaches it. The guard cannot be
put in front of it, so the server is refused instead: the debugger may run on loopback only.
"""

from __future__ import annotations

import click
from flask.helpers import get_debug_flag

from .addresses import parse_ip
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
    if (ip is not None and ip.is_loopback) or host == "localhost":
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
