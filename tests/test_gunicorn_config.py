"""The config module ``flask_tailnet.gunicorn`` as gunicorn reads it, and ``flask tailnet serve``'s
``FlaskApplication``: which settings it gives gunicorn, that importing it looks nothing up, the
precedence of a config file, ``GUNICORN_CMD_ARGS`` and the command line, and a config file's own
hooks (run after ours).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gunicorn.errors import ConfigError, HaltServer

from flask_tailnet import gunicorn as tg
from flask_tailnet.gunicorn_binds import fill_in
from flask_tailnet.gunicorn_serve import FlaskApplication, serve

from .conftest import make_app
from .gunicorn_stand_ins import (
    FakeArbiter,
    clean_environment,  # noqa: F401 - a fixture
    fake_tailnet_tools,
    machine,
    on_a_terminal,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.usefixtures("clean_environment", "on_a_terminal")


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="no-TAILNET_BIND"),
        pytest.param({"TAILNET_BIND": "x", "FLASK_TAILNET_BIND": "y"}, id="malformed-TAILNET_BIND"),
    ],
)
def test_importing_the_config_module_looks_nothing_up(env: dict[str, str], tmp_path: Path) -> None:
    """gunicorn imports the module to read its settings (so do ``flask tailnet serve`` and config
    files that star-import it): nothing runs ``ip`` or ``tailscale`` then, whatever the
    environment says, and ``bind`` is left for the start to fill in."""
    calls = tmp_path / "calls"
    path = fake_tailnet_tools(tmp_path, ["100.64.109.6"])
    for tool in ("ip", "tailscale"):
        (tmp_path / "bin" / tool).write_text(f"#!/bin/sh\necho {tool} >> {calls}\n")
    code = "import flask_tailnet.gunicorn as g; print(g.bind)"
    environ = {k: v for k, v in os.environ.items() if not k.endswith("TAILNET_BIND")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, **env, "PATH": path},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "[]\n"
    assert not calls.exists()


# ---- FlaskApplication: flask tailnet serve's settings ------------------------------------------


@dataclass(frozen=True)
class Precedence:
    argv: list[str]
    cmd_args: str | None
    expected: dict[str, Any]


PRECEDENCE = [
    pytest.param(
        Precedence([], None, {"bind": ["127.0.0.1:8000"], "workers": 1}), id="module-settings"
    ),
    pytest.param(
        Precedence(["-c", "{one}"], None, {"bind": ["127.0.0.1:9061"], "workers": 2}),
        id="file-over-module",
    ),
    pytest.param(
        Precedence(
            ["-c", "{one}"], "-w 3 -b 127.0.0.1:9062", {"bind": ["127.0.0.1:9062"], "workers": 3}
        ),
        id="env-over-file",
    ),
    pytest.param(
        Precedence(["-c", "{one}", "-w", "4"], "-w 3", {"bind": ["127.0.0.1:9061"], "workers": 4}),
        id="argv-over-env",
    ),
    pytest.param(
        Precedence([], "-c {one}", {"bind": ["127.0.0.1:9061"], "workers": 2}),
        id="env-names-the-file",
    ),
    pytest.param(
        # Only the argv's file is read, as gunicorn does: none of the env's file's settings.
        Precedence(["-c", "{two}"], "-c {one}", {"bind": ["127.0.0.1:9063"], "workers": 1}),
        id="argv-file-instead-of-env-file",
    ),
    pytest.param(
        Precedence(
            ["-b", "[::1]:9064", "-k", "gthread"],
            None,
            {"bind": ["[::1]:9064"], "worker_class_str": "gthread"},
        ),
        id="argv-over-module",
    ),
]


@pytest.fixture
def config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # gunicorn registers each config file as sys.modules["__config__"]: put it back afterwards.
    monkeypatch.setitem(sys.modules, "__config__", types.ModuleType("__config__"))
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text("bind = ['127.0.0.1:9061']\nworkers = 2\n")
    two.write_text("bind = ['127.0.0.1:9063']\n")
    return {"one": str(one), "two": str(two)}


@pytest.mark.parametrize("case", PRECEDENCE)
def test_flask_application_settings_precedence(
    case: Precedence,
    config_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case.cmd_args is not None:
        monkeypatch.setenv("GUNICORN_CMD_ARGS", case.cmd_args.format(**config_files))
    app = make_app(tmp_path / "state")
    application = FlaskApplication(app, [arg.format(**config_files) for arg in case.argv])
    cfg = application.cfg
    # The binds nothing chose are filled in when gunicorn starts (here: no tailnet address).
    fill_in(cfg, [app.extensions["tailnet"]], {}, machine())
    for name, value in case.expected.items():
        assert getattr(cfg, name) == value, name
    assert cfg.logger_class is tg.RedactingLogger
    assert cfg.on_starting is tg.on_starting  # no file set a hook: ours, not wrapped
    assert application.load() is app


def test_flask_application_refuses_an_app_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    application = object.__new__(FlaskApplication)  # load_config alone, without the exit
    application.argv = ["-w", "2", "other:app"]
    application.usage, application.prog = None, "flask tailnet serve"
    application.load_default_config()
    with pytest.raises(ConfigError, match="unexpected 'other:app': the app is the one"):
        application.load_config()
    # Through gunicorn's own loading, the error is printed and the process exits 1.
    with pytest.raises(SystemExit) as exited:
        FlaskApplication(make_app(tmp_path / "state"), ["other:app"])
    assert exited.value.code == 1
    assert "the app is the one `flask --app` names" in capsys.readouterr().err


HOOKS_FILE = """\
def on_starting(server):
    server.calls.append(("on_starting", hasattr(server, "flask_tailnet")))

def when_ready(server):
    server.calls.append(("when_ready", None))

def on_reload(server):
    server.calls.append(("on_reload", None))
"""


def test_a_config_file_s_own_hooks_run_after_ours(
    config_files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text(HOOKS_FILE)
    application = FlaskApplication(
        make_app(tmp_path / "state"), ["-c", str(hooks), "-b", "127.0.0.1:9071"]
    )
    cfg = application.cfg
    assert cfg.on_starting is not tg.on_starting
    server = FakeArbiter(cfg=cfg, app=application)
    cfg.on_starting(server)
    cfg.when_ready(server)
    cfg.on_reload(server)
    # Ours first: the state is prepared (and the bind checked) before the file's hook runs.
    assert server.calls == [("on_starting", True), ("when_ready", None), ("on_reload", None)]
    assert (tmp_path / "state" / "token").read_text().strip() in capsys.readouterr().err


def test_a_config_file_s_hook_does_not_run_when_ours_refuses(
    config_files: dict[str, str], tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text(HOOKS_FILE)
    application = FlaskApplication(
        make_app(tmp_path / "state"), ["-c", str(hooks), "-b", "0.0.0.0:9072"]
    )
    server = FakeArbiter(cfg=application.cfg, app=application)
    with pytest.raises(SystemExit):
        application.cfg.on_starting(server)
    with pytest.raises(HaltServer):
        application.cfg.on_reload(server)
    assert server.calls == []


def test_a_config_file_that_star_imports_the_module_runs_each_hook_once(
    config_files: dict[str, str], tmp_path: Path
) -> None:
    star = tmp_path / "star.py"
    star.write_text("from flask_tailnet.gunicorn import *\nworkers = 3\n")
    application = FlaskApplication(make_app(tmp_path / "state"), ["-c", str(star)])
    assert application.cfg.workers == 3
    for name in ("on_starting", "when_ready", "on_reload"):
        assert application.cfg.settings[name].get() is getattr(tg, name)


def test_serve_runs_the_flask_application(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[FlaskApplication] = []

    def run(self: FlaskApplication) -> None:
        ran.append(self)

    monkeypatch.setattr(FlaskApplication, "run", run)
    app = make_app(tmp_path / "state")
    serve(app, ["-w", "2"])
    (application,) = ran
    assert application.load() is app
    assert application.cfg.workers == 2
