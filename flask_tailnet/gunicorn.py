"""gunicorn integration: ``gunicorn -c python:flask_tailnet.gunicorn 'app:create_app()'``.

This is the config module gunicorn reads: its lower-case names that are gunicorn settings are
gunicorn settings, and nothing else here is one. ``bind`` is empty: nothing is looked up at
import. When gunicorn starts, :func:`on_starting` fills the binds in if neither ``-b``,
``GUNICORN_CMD_ARGS`` nor a config file chose them (``TAILNET_BIND``, else loopback and this
machine's tailnet addresses), then checks every bind before any socket is bound, and prepares the
state; ``logger_class`` is a logger that redacts secrets; :func:`when_ready` prints the login
links, once, to a terminal only; :func:`on_reload` checks the binds a ``SIGHUP`` brings. Settings
given on the command line (``-b``, ``-w``, ``-k``, ``--access-logfile``) take precedence over
these, as for any gunicorn config.

The jobs live in their own modules: :mod:`~flask_tailnet.gunicorn_binds` (where to listen, and
the bind check), :mod:`~flask_tailnet.gunicorn_hooks` (the hooks),
:mod:`~flask_tailnet.gunicorn_links` (what the start banner says),
:mod:`~flask_tailnet.gunicorn_logging` (the logger) and :mod:`~flask_tailnet.gunicorn_serve`
(``flask tailnet serve``); the decisions live in :mod:`flask_tailnet.binds`.
"""

from __future__ import annotations

from .gunicorn_hooks import on_reload, on_starting, when_ready
from .gunicorn_logging import RedactingLogger
from .redaction import (
    REDACTED,
    SECRET_HEADERS,
    SECRET_PARAMETERS,
    RedactingFilter,
    redact_atoms,
    redact_text,
)

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

#: Empty: :func:`on_starting` fills in where to listen when gunicorn starts, unless ``-b``,
#: ``GUNICORN_CMD_ARGS`` or a config file chose it (see :mod:`flask_tailnet.gunicorn_binds`).
bind: list[str] = []
logger_class = RedactingLogger
