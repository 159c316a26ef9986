"""A small real app behind flask-tailnet: an HTML page, a JSON endpoint, an exempt health check and
an admin view that asks even loopback for a credential.

Run it with ``flask --app example_app run`` (loopback) or
``flask --app example_app run --host <your tailnet IP>``; ``flask --app example_app tailnet token``
prints the token that tailnet peers send as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, render_template_string, url_for
from flask.typing import ResponseReturnValue

from flask_tailnet import TailnetGuard, current_peer

guard = TailnetGuard()

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>flask-tailnet example</title>
  <style>
    body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; }
    code { background: #f2f2f2; padding: 0.1rem 0.3rem; border-radius: 3px; }
  </style>
</head>
<body>
  <h1>Hello from flask-tailnet</h1>
  <p>You are <code>{{ peer.address }}</code>, let in by <code>{{ peer.method }}</code>.</p>
  <p>The same, as JSON: <a href="/api/whoami">/api/whoami</a>.</p>
  {% if peer.method == "session" %}
  <form method="post" action="{{ logout }}"><button type="submit">Sign out</button></form>
  {% endif %}
</body>
</html>
"""


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the example app. ``FLASK_TAILNET_*`` environment variables set ``TAILNET_*``."""
    app = Flask(__name__)
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    guard.init_app(app)

    @app.get("/")
    def index() -> ResponseReturnValue:
        logout = url_for("tailnet.logout")
        return render_template_string(PAGE, peer=current_peer, logout=logout)

    @app.get("/api/whoami")
    def whoami() -> ResponseReturnValue:
        return jsonify(
            address=current_peer.address,
            method=current_peer.method,
            user=current_peer.user,
            local=current_peer.local,
        )

    @app.get("/healthz")
    @guard.exempt
    def health() -> ResponseReturnValue:
        return "ok"

    @app.get("/admin")
    @guard.login_required
    def admin() -> ResponseReturnValue:
        return jsonify(method=current_peer.method, user=current_peer.user)

    return app
