"""The example app plus ``/pid``, which says which worker process answered (for the gunicorn tests).

``/pid?hold=<seconds>`` keeps the worker busy for up to 0.2 s before answering, so that concurrent
clients spread over every worker of a sync gunicorn instead of all landing on the first one free.
The route is behind the guard like every other: a tailnet peer gets it only with the token.
"""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

import example_app
from flask_tailnet import current_peer


def create_app() -> Flask:
    app = example_app.create_app()

    @app.get("/pid")
    def pid() -> ResponseReturnValue:
        hold = min(max(request.args.get("hold", 0.0, type=float), 0.0), 0.2)
        if hold:
            time.sleep(hold)
        return jsonify(pid=os.getpid(), method=current_peer.method)

    return app
