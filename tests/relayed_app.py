"""The app tests/test_relayed.py serves with real servers (``flask run``, gunicorn): ``/`` says who
the guard thinks the peer is, Tailscale identity included; ``/healthz`` is exempt (readiness).

``FLASK_TAILNET_*`` environment variables set ``TAILNET_*`` as in the example app. Two switches
for the tests, neither a setting: ``RELAYED_APP_HIDE_CONNECTION=1`` removes the server's
connection object from environ (a server that gives none), and ``RELAYED_APP_DROP_UNKNOWN=1``
drops ``TAILNET_*`` keys the installed flask-tailnet does not know (to run these tests against an
older flask-tailnet and see them fail on behaviour, not on configuration).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from flask_tailnet import TailnetGuard, current_peer
from flask_tailnet.settings import DEFAULTS

#: Where gunicorn and werkzeug put the connection object (flask_tailnet.relays.CONNECTION_KEYS;
#: written out so that this app also runs on a flask-tailnet without that module).
CONNECTION_KEYS = ("gunicorn.socket", "werkzeug.socket")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    if os.environ.get("RELAYED_APP_DROP_UNKNOWN") == "1":
        for key in [k for k in app.config if k.startswith("TAILNET_") and k not in DEFAULTS]:
            del app.config[key]
    guard = TailnetGuard(app)

    @app.get("/")
    def whoami() -> ResponseReturnValue:
        identity = getattr(current_peer, "tailscale", None)
        return jsonify(
            address=current_peer.address,
            method=current_peer.method,
            user=current_peer.user,
            local=current_peer.local,
            via_proxy=current_peer.via_proxy,
            login=None if identity is None else identity.login,
            node=None if identity is None else identity.node,
        )

    @app.get("/healthz")
    @guard.exempt
    def health() -> ResponseReturnValue:
        return "ok"

    if os.environ.get("RELAYED_APP_HIDE_CONNECTION") == "1":
        app.wsgi_app = _without(CONNECTION_KEYS, app.wsgi_app)  # type: ignore[method-assign]
    return app


def _without(keys: Iterable[str], wsgi_app: Any) -> Any:
    hidden = frozenset(keys)

    def hide(environ: dict[str, Any], start_response: Any) -> Any:
        return wsgi_app({k: v for k, v in environ.items() if k not in hidden}, start_response)

    return hide
