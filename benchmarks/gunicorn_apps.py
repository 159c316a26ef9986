"""The two apps ``bench_gunicorn.py`` serves with gunicorn: the example app, and the same unguarded.

``gunicorn 'benchmarks.gunicorn_apps:guarded()'`` serves :func:`example_app.create_app`;
``gunicorn 'benchmarks.gunicorn_apps:bare()'`` serves an app with the same routes and the same view
code, where ``current_peer`` is replaced by a peer read straight from the socket (no guard: nothing
is refused). Its ``/api/whoami`` answers the same JSON body as the guarded app on both benchmark
paths: ``method`` is ``"token"`` when the request has an ``Authorization`` header and ``"loopback"``
otherwise, as the guard would say for a request it let in.

Importing this module has no side effects; the apps are built by the factories.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Flask, jsonify, render_template_string, request
from flask.typing import ResponseReturnValue
from werkzeug.local import LocalProxy

from flask_tailnet import Peer

#: Where the unguarded peer of a request is kept, so it is built once per request (as the guard
#: does with its own).
_PEER_KEY = "benchmarks.unguarded_peer"


def guarded() -> Flask:
    """The example app, guarded by flask-tailnet (``FLASK_TAILNET_*`` variables configure it)."""
    from example_app import create_app  # noqa: PLC0415 - imported by the worker, not at import

    return create_app()


def _unguarded_peer() -> Peer:
    environ = request.environ
    peer = environ.get(_PEER_KEY)
    if peer is None:
        # What the guard would report for a request it let in on the benchmark's two paths.
        if "HTTP_AUTHORIZATION" in environ:
            peer = Peer(address=request.remote_addr, method="token")
        else:
            peer = Peer(address=request.remote_addr, method="loopback", local=True)
        environ[_PEER_KEY] = peer
    return cast(Peer, peer)


#: The stand-in for ``flask_tailnet.current_peer`` in the unguarded app.
current_peer: Peer = cast(Peer, LocalProxy(_unguarded_peer))


def bare(config: dict[str, Any] | None = None) -> Flask:
    """The example app's routes and views with no guard: everyone is served."""
    from example_app import PAGE  # noqa: PLC0415 - imported by the worker, not at import

    app = Flask(__name__)
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)

    # The views below are example_app's, with the guard's login prefix spelled out.
    @app.get("/")
    def index() -> ResponseReturnValue:
        logout = "/_tailnet/logout"
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
    def health() -> ResponseReturnValue:
        return "ok"

    @app.get("/admin")
    def admin() -> ResponseReturnValue:
        return jsonify(method=current_peer.method, user=current_peer.user)

    return app
