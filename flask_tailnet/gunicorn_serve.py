"""``flask tailnet serve``: gunicorn serving the app ``flask --app`` names, with the settings of
:mod:`flask_tailnet.gunicorn`, whose hooks run even when a config file sets its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Flask
from gunicorn.app.base import Application
from gunicorn.errors import ConfigError

from .gunicorn_hooks import on_reload, on_starting, when_ready

#: The config module, named as ``gunicorn -c`` takes it.
CONFIG_MODULE = "python:flask_tailnet.gunicorn"

_HOOKS = {"on_starting": on_starting, "when_ready": when_ready, "on_reload": on_reload}


class FlaskApplication(Application):  # type: ignore[misc]
    """gunicorn serving an already loaded Flask app: :mod:`flask_tailnet.gunicorn`'s settings
    first, then a ``-c`` config file, ``GUNICORN_CMD_ARGS`` and ``argv``, as ``gunicorn`` would
    apply them. The bind check and the state preparation run even when a config file sets its own
    hooks (ours first)."""

    def __init__(self, app: Flask, argv: Sequence[str], app_uri: str | None = None) -> None:
        self.flask_app = app
        self.argv = list(argv)
        #: What ``flask --app`` was given, for the ``flask tailnet url`` hint (as gunicorn's own).
        self.app_uri = app_uri
        super().__init__("flask tailnet serve [GUNICORN OPTIONS]", prog="flask tailnet serve")

    def init(self, parser: Any, opts: Any, args: Any) -> None:
        return None

    def load_config(self) -> None:
        parser = self.cfg.parser()
        args = parser.parse_args(self.argv)
        if args.args:
            raise ConfigError(
                f"unexpected {' '.join(args.args)!r}: the app is the one `flask --app` names"
            )
        self.load_config_from_module_name_or_filename(CONFIG_MODULE)
        env_args = parser.parse_args(self.cfg.get_cmd_args_from_env())
        config = args.config or env_args.config
        if config:
            self.load_config_from_file(config)
        for given in (env_args, args):
            for name, value in vars(given).items():
                if value is not None and name != "args":
                    self.cfg.set(name.lower(), value)
        for name, ours in _HOOKS.items():
            theirs = self.cfg.settings[name].get()
            if theirs is not ours:
                self.cfg.set(name, _both(ours, theirs))

    def load(self) -> Flask:
        return self.flask_app


def _both(first: Any, then: Any) -> Any:
    def hook(server: Any) -> None:
        first(server)
        then(server)

    return hook


def serve(app: Flask, argv: Sequence[str], app_uri: str | None = None) -> None:
    """Run ``app`` under gunicorn with :mod:`flask_tailnet.gunicorn`'s settings; ``argv`` are
    gunicorn options; ``app_uri`` is what ``flask --app`` was given, if anything."""
    FlaskApplication(app, argv, app_uri).run()
