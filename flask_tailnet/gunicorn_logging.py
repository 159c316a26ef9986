"""gunicorn's logger with the secrets taken out: the ``logger_class`` of
:mod:`flask_tailnet.gunicorn`."""

from __future__ import annotations

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

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        return redact_atoms(super().atoms(resp, req, environ, request_time))
