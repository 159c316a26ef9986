"""What the gunicorn master does at start, before any socket is bound: the app is loaded once, the
guard states behind gunicorn's callable are found, and the state directory, token and session key
are prepared before any worker exists (``on_starting`` of ``flask_tailnet.gunicorn``). The binds
it checks then are in test_gunicorn_bindcheck.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_tailnet import gunicorn as tg
from flask_tailnet.gunicorn_hooks import Prepared, find_guard_states

from .conftest import make_app
from .gunicorn_stand_ins import (
    PREFIX,
    PlainLog,
    arbiter,
    clean_environment,  # noqa: F401 - a fixture
    gunicorn_argv,
    gunicorn_loggers,  # noqa: F401 - a fixture
    mode,
    on_a_terminal,  # noqa: F401 - a fixture
    real_arbiter,
)

pytestmark = pytest.mark.usefixtures("clean_environment", "on_a_terminal")


# ---- on_starting: accepted ---------------------------------------------------------------------


def test_accepted_bind_prepares_the_state_before_any_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    app = make_app(state_dir)
    server = arbiter(app, ["127.0.0.1:9001", "[::1]:9001"])
    tg.on_starting(server)
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "token") == 0o600
    assert mode(state_dir / "session_key") == 0o600
    token = (state_dir / "token").read_bytes().strip()
    prepared = server.flask_tailnet
    assert isinstance(prepared, Prepared)
    assert prepared.token == token
    assert [b.spec for b in prepared.binds] == ["127.0.0.1:9001", "[::1]:9001"]
    assert server.app.calls == ["load"]  # once, in the master
    assert server.log.records == []  # nothing logged, least of all the token
    assert capsys.readouterr() == ("", "")  # the URLs come with when_ready, not before


def test_preload_app_uses_gunicorn_s_loaded_app(tmp_path: Path) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"], preload_app=True)
    tg.on_starting(server)
    assert server.app.calls == ["wsgi"]


def test_existing_state_is_kept(tmp_path: Path) -> None:
    app = make_app(tmp_path / "state")
    token: bytes = app.extensions["tailnet"].token_file.ensure()
    server = arbiter(app, ["127.0.0.1:9001"])
    tg.on_starting(server)
    assert server.flask_tailnet.token == token


def test_a_logger_that_does_not_redact_is_warned_about(tmp_path: Path) -> None:
    server = arbiter(make_app(tmp_path / "state"), ["127.0.0.1:9001"])
    server.log = PlainLog()
    tg.on_starting(server)
    assert server.log.records == [
        (
            "warning",
            "flask-tailnet: logger_class PlainLog does not redact ?token= links, Authorization "
            "and cookies; use flask_tailnet.gunicorn.RedactingLogger or a subclass of it",
        )
    ]


def test_several_guarded_apps_are_all_prepared(tmp_path: Path) -> None:
    first, second = make_app(tmp_path / "a"), make_app(tmp_path / "b")
    server = arbiter(DispatcherMiddleware(first, {"/b": second}), ["127.0.0.1:9001"])
    tg.on_starting(server)
    assert (tmp_path / "a" / "token").exists()
    assert (tmp_path / "b" / "token").exists()
    assert server.flask_tailnet.token == (tmp_path / "a" / "token").read_bytes().strip()


@pytest.mark.parametrize("name", ["token", "session_key"])
def test_the_master_refuses_a_short_secret_file(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / name).write_bytes(b"a" * 42 + b"\n")
    (state_dir / name).chmod(0o600)
    server = arbiter(make_app(state_dir), ["127.0.0.1:9001"])
    with pytest.raises(SystemExit) as exited:
        tg.on_starting(server)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(PREFIX)
    assert f"{state_dir / name} is shorter than 43 bytes" in err
    assert "a" * 42 not in err
    assert (state_dir / name).read_bytes() == b"a" * 42 + b"\n", "never replaced silently"


# ---- gunicorn's own Arbiter and WSGIApplication (never run) --------------------------------------


@pytest.mark.usefixtures("gunicorn_loggers")
def test_real_arbiter_on_starting_prepares_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    monkeypatch.setenv("FLASK_TAILNET_STATE_DIR", str(state_dir))
    server = real_arbiter(monkeypatch, gunicorn_argv("127.0.0.1:9051"))
    assert isinstance(server.log, tg.RedactingLogger)
    server.cfg.on_starting(server)
    assert mode(state_dir / "token") == 0o600
    server.cfg.when_ready(server)
    token = (state_dir / "token").read_text().strip()
    err = capsys.readouterr().err
    assert err.count(token) == 1
    assert f"http://127.0.0.1:9051/?token={token}" in err
    assert "logger_class" not in err  # gunicorn's logger was ours: no warning


# ---- the apps behind gunicorn's callable ---------------------------------------------------------


class Unanswering:
    """A proxy that raises for every attribute, as some lazy wrappers do."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


def test_find_guard_states_skips_what_cannot_answer(tmp_path: Path) -> None:
    app = make_app(tmp_path / "state")
    state = app.extensions["tailnet"]
    assert find_guard_states(Unanswering()) == []
    assert find_guard_states(DispatcherMiddleware(app, {"/a": Unanswering(), "/b": app})) == [state]
    assert find_guard_states(DispatcherMiddleware(app.wsgi_app, {"/b": app})) == [state]
