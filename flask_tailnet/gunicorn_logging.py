"""gunicorn's logger with the secrets taken out: the ``logger_class`` of
:mod:`flask_tailnet.gunicorn`."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

from .redaction import redact_atoms, redact_logger


class RedactingLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's logger, but the access log never holds a ``token`` value, an Authorization
    header or a cookie, and the error log (``Error handling request /?token=...``, tracebacks)
    never holds a ``token`` value."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            redact_logger(log)
        _share_error_log(self.error_log)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        return redact_atoms(super().atoms(resp, req, environ, request_time))


_LEVEL_MARK = "_tailnet_level_from_gunicorn"


def _share_error_log(error_log: logging.Logger) -> None:
    """Send the ``flask_tailnet`` logger's lines (the start-up line that says what the guard
    found of tailscaled, at info) to gunicorn's error log, at its level, when nothing else
    would show them: neither that logger (besides gunicorn's handlers, from an earlier setup)
    nor the root logger has a handler; Python's last-resort handler shows warnings only. A
    logging configuration of the user's (``--log-config``, ``logconfig_dict``, handlers set
    before) is left as it is. On a reload, gunicorn's new handlers replace the old ones."""
    ours = logging.getLogger("flask_tailnet")
    for handler in [h for h in ours.handlers if getattr(h, "_gunicorn", False)]:
        ours.removeHandler(handler)  # closed by gunicorn when it replaced them
    if ours.handlers or logging.getLogger().handlers:
        return
    shared = [h for h in error_log.handlers if getattr(h, "_gunicorn", False)]
    for handler in shared:
        ours.addHandler(handler)
    if shared:
        redact_logger(ours)  # as gunicorn's error log: no token value in a line of ours either
        if ours.level == logging.NOTSET or getattr(ours, _LEVEL_MARK, False):
            ours.setLevel(error_log.level)  # a level the user set is kept
            setattr(ours, _LEVEL_MARK, True)
        ours.propagate = False  # as gunicorn.error: a root handler added later would repeat them
