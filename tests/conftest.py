from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from flask_tailnet import TailnetGuard, current_peer

TAILNET_PEER = "100.64.0.7"
TAILNET_HOST = "100.64.0.1:5000"


def make_app(state_dir: Path, **settings: Any) -> Flask:
    """A small guarded app: ``/`` echoes the peer, ``/healthz`` is exempt, ``/post`` takes POST."""
    app = Flask("guarded")
    app.config["TESTING"] = True
    app.config["TAILNET_STATE_DIR"] = str(state_dir)
    guard = TailnetGuard(app, **settings)

    @app.route("/", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def index() -> dict[str, Any]:
        return {
            "address": current_peer.address,
            "method": current_peer.method,
            "local": current_peer.local,
            "via_proxy": current_peer.via_proxy,
        }

    @app.get("/healthz")
    @guard.exempt
    def health() -> str:
        return "ok"

    return app


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def app_factory(state_dir: Path) -> Callable[..., Flask]:
    def factory(**settings: Any) -> Flask:
        return make_app(state_dir, **settings)

    return factory


@pytest.fixture
def app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def token(app: Flask) -> str:
    """Log in the test way: the real token, created as the CLI would."""
    value: bytes = app.extensions["tailnet"].token_file.ensure()
    return value.decode()


def call(
    client: FlaskClient,
    path: str = "/",
    *,
    peer: str = "127.0.0.1",
    host: str = "localhost",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Any:
    """One request through the real app from socket peer ``peer`` with Host ``host``."""
    return client.open(
        path,
        method=method,
        headers=headers or {},
        environ_base={"REMOTE_ADDR": peer},
        environ_overrides={"HTTP_HOST": host},
    )


# ---- CI: nothing may skip -----------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(
                f"CI=true: {skipped} test(s) skipped; under CI none may skip", red=True
            )


@pytest.fixture(autouse=True)
def _no_leftover_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLASK_TAILNET_"):
            monkeypatch.delenv(key)
