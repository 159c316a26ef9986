"""gunicorn's logs under ``flask_tailnet.gunicorn`` (``logger_class = RedactingLogger``), in
process: the access log and the error log never hold a ``token`` value, an Authorization header
or a cookie. The real server's logs are tested in test_gunicorn.py.
"""

from __future__ import annotations

import base64
import logging
import types
from datetime import timedelta
from pathlib import Path

import pytest

from flask_tailnet import gunicorn as tg

from .gunicorn_stand_ins import (
    config,
    gunicorn_loggers,  # noqa: F401 - a fixture
)

# ---- the rest, in process: the access log, odd wrappers, duplicate URLs -------------------------

SECRET = "s3cr3t-T0ken_value"
R = tg.REDACTED


@pytest.mark.usefixtures("gunicorn_loggers")
def test_redacting_logger_writes_no_secret_to_the_access_log(tmp_path: Path) -> None:
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    cfg = config(accesslog=str(access), errorlog=str(errors))
    cfg.set(
        "access_log_format",
        "%(r)s %(q)s %({authorization}i)s %({cookie}i)s %({set-cookie}o)s %(f)s",
    )
    log = tg.RedactingLogger(cfg)
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/?token={SECRET}&x=1",
        "QUERY_STRING": f"token={SECRET}&x=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": f"http://127.0.0.1/?Token={SECRET}",
    }
    request_headers = [("AUTHORIZATION", f"Bearer {SECRET}"), ("COOKIE", f"s={SECRET}")]
    response = types.SimpleNamespace(
        status="200 OK", headers=[("Set-Cookie", f"s={SECRET}")], sent=2
    )
    log.access(response, request_headers, environ, timedelta(microseconds=1500))
    log.error("Error handling request /?token=%s", SECRET)
    for handler in [*log.access_log.handlers, *log.error_log.handlers]:
        handler.flush()
    logged = access.read_text()
    assert logged == (
        f"GET /?token={R}&x=1 HTTP/1.1 token={R}&x=1 {R} {R} {R} http://127.0.0.1/?Token={R}\n"
    )
    assert SECRET not in errors.read_text()
    assert f"/?token={R}" in errors.read_text()


@pytest.mark.usefixtures("gunicorn_loggers")
def test_redacting_logger_setup_again_adds_no_second_filter() -> None:
    cfg = config()  # error log to stderr, no access log: no file handler to leak on reload
    log = tg.RedactingLogger(cfg)
    log.setup(cfg)  # what a reload does
    for logger in (log.error_log, log.access_log):
        assert sum(isinstance(f, tg.RedactingFilter) for f in logger.filters) == 1


def test_filter_redacts_a_stack(tmp_path: Path) -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "m", None, None, sinfo=f"Stack:\n  get('/?token={SECRET}')"
    )
    assert tg.RedactingFilter().filter(record)
    assert record.stack_info == f"Stack:\n  get('/?token={R}')"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"?%252574oken={SECRET}", f"?%252574oken={R}", id="encoded-three-times"),
        pytest.param(f"?%25252574oken={SECRET}", f"?%25252574oken={SECRET}", id="four-times"),
    ],
)
def test_redaction_decodes_a_name_at_most_three_times(text: str, expected: str) -> None:
    # Four times encoded is not what any app reads as "token" (it decodes once).
    assert tg.redact_text(text) == expected


@pytest.mark.usefixtures("gunicorn_loggers")
def test_a_token_sent_as_the_basic_user_name_never_reaches_the_access_log(tmp_path: Path) -> None:
    """gunicorn's ``u`` atom is the user-name part of a Basic header: ``curl -u "$TOKEN:"``."""
    access = tmp_path / "access.log"
    cfg = config(accesslog=str(access))  # gunicorn's default format, which has %(u)s
    log = tg.RedactingLogger(cfg)
    basic = base64.b64encode(f"{SECRET}:".encode()).decode()
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_AUTHORIZATION": f"Basic {basic}",
    }
    response = types.SimpleNamespace(status="401 UNAUTHORIZED", headers=[], sent=0)
    log.access(response, [("AUTHORIZATION", f"Basic {basic}")], environ, timedelta(0))
    for handler in log.access_log.handlers:
        handler.flush()
    logged = access.read_text()
    assert SECRET not in logged
    assert basic not in logged
    assert '"GET / HTTP/1.1" 401' in logged
