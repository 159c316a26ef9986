"""Stand-ins for the master-side tests of flask_tailnet.gunicorn: gunicorn's Arbiter and
application objects as the hooks use them, on a real gunicorn ``Config`` with the config module's
settings (read as gunicorn reads them), and this machine's tailnet addresses as a test gives them.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config

from flask_tailnet import gunicorn as tg
from flask_tailnet import gunicorn_links
from flask_tailnet.gunicorn_binds import MachineAddresses
from flask_tailnet.gunicorn_hooks import Prepared

PREFIX = "flask-tailnet: refusing to serve: "
TAILNET_V4 = "100.64.0.42"
#: The environment variables the hooks read: unset in every test unless the test sets them.
ENV = (
    "TAILNET_BIND",
    "FLASK_TAILNET_BIND",
    "TAILNET_ALLOW_WILDCARD_BIND",
    "FLASK_TAILNET_ALLOW_WILDCARD_BIND",
    "LISTEN_FDS",
    "LISTEN_PID",
    "GUNICORN_FD",
    "GUNICORN_PID",
    "GUNICORN_CMD_ARGS",
    "PORT",
)


class QuietLog(tg.RedactingLogger):
    """A RedactingLogger (so on_starting does not warn) that records instead of logging."""

    def __init__(self) -> None:  # no super().__init__: it would install handlers
        self.records: list[tuple[str, str]] = []

    def _record(self, level: str, msg: str, *args: Any) -> None:
        self.records.append((level, msg % args if args else msg))

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("info", msg, *args)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("warning", msg, *args)

    def text(self) -> str:
        return "\n".join(message for _, message in self.records)


class PlainLog:
    """A logger that is not a RedactingLogger, as a user's own ``logger_class`` may be."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def info(self, msg: str, *args: Any) -> None:
        self.records.append(("info", msg % args))

    def warning(self, msg: str, *args: Any) -> None:
        self.records.append(("warning", msg % args))


class FakeApp:
    """gunicorn's application object as the hooks use it: ``load()`` and ``wsgi()``."""

    def __init__(self, wsgi: object) -> None:
        self.callable = wsgi
        self.calls: list[str] = []

    def load(self) -> object:
        self.calls.append("load")
        return self.callable

    def wsgi(self) -> object:
        self.calls.append("wsgi")
        return self.callable


def machine(addresses: list[str] | None = None) -> MachineAddresses:
    """This machine's tailnet addresses as ``addresses`` (none by default), each one bindable."""
    found = list(addresses or [])
    return MachineAddresses(find=lambda: found, can_listen=lambda address: True)


class FakeArbiter:
    """The parts of gunicorn's Arbiter the hooks touch; ``addresses`` are this machine's tailnet
    addresses as the hooks find them."""

    #: Set by on_starting when it accepts the binds.
    flask_tailnet: Prepared

    def __init__(self, cfg: Any, app: Any, addresses: list[str] | None = None) -> None:
        self.cfg = cfg
        self.app = app
        self.log: Any = QuietLog()
        self.pidfile: Any = None
        self.calls: list[tuple[str, bool | None]] = []
        self.flask_tailnet_machine = machine(addresses)


def module_settings(cfg: Config) -> Config:
    """``cfg`` with the config module's settings, as gunicorn applies a ``-c python:`` module."""
    for name, value in vars(tg).items():
        if name in cfg.settings:
            cfg.set(name, value)
    return cfg


def config(binds: list[str] | None = None, **settings: Any) -> Config:
    """A real gunicorn Config with the config module's settings; ``binds`` as given by ``-b``."""
    cfg = module_settings(Config())
    if binds is not None:
        cfg.set("bind", binds)
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def arbiter(
    wsgi: object,
    binds: list[str] | None = None,
    addresses: list[str] | None = None,
    **settings: Any,
) -> FakeArbiter:
    return FakeArbiter(cfg=config(binds, **settings), app=FakeApp(wsgi), addresses=addresses)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the variables the hooks read, whatever the environment of the test run."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard error counts as a terminal: pytest's captured stderr is none, and the text of the
    links is tested here (the real terminal test starts gunicorn on a pty, see test_gunicorn.py)."""
    monkeypatch.setattr(gunicorn_links, "stderr_is_a_terminal", lambda: True)


@pytest.fixture
def gunicorn_loggers() -> Iterator[None]:
    """gunicorn's loggers as they were: a real Arbiter installs handlers on pytest's stderr."""
    saved = [
        (log, list(log.handlers), list(log.filters), log.level, log.propagate)
        for log in map(logging.getLogger, ("gunicorn.error", "gunicorn.access"))
    ]
    yield
    for log, handlers, filters, level, propagate in saved:
        for handler in log.handlers:
            if handler not in handlers:
                handler.close()
        log.handlers[:] = handlers
        log.filters[:] = filters
        log.setLevel(level)
        log.propagate = propagate


def real_arbiter(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Any:
    """gunicorn's own Arbiter and WSGIApplication for ``argv`` (never run), on a machine without
    a tailnet address."""
    monkeypatch.setenv("SERVER_SOFTWARE", "")  # the Arbiter sets it; restored afterwards
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", list(sys.path))  # WSGIApplication adds its chdir
    server = Arbiter(WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]"))
    server.flask_tailnet_machine = machine()
    return server


def gunicorn_argv(*binds: str) -> list[str]:
    """``gunicorn -c python:flask_tailnet.gunicorn [-b BIND ...] 'example_app:create_app()'``."""
    args = [arg for spec in binds for arg in ("-b", spec)]
    return ["gunicorn", "-c", "python:flask_tailnet.gunicorn", *args, "example_app:create_app()"]


def fake_tailnet_tools(tmp_path: Path, addresses: list[str]) -> str:
    """A PATH whose ``ip`` lists ``addresses`` on tailscale0 and whose ``tailscale`` prints
    nothing, so that the server's default binds do not depend on this machine's Tailscale."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    infos = ",".join(f'{{"local": "{address}"}}' for address in addresses)
    shown = f'[{{"ifname": "tailscale0", "addr_info": [{infos}]}}]' if addresses else "[]"
    (bin_dir / "ip").write_text(f"#!/bin/sh\necho '{shown}'\n")
    (bin_dir / "tailscale").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("ip", "tailscale"):
        (bin_dir / tool).chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
