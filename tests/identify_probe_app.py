"""A guarded app for tests/test_identify.py's real-server rows: its settings come as JSON in
``IDENTIFY_PROBE_SETTINGS``; ``/who`` tells what the guard established of the peer."""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask

from flask_tailnet import TailnetGuard, current_peer

app = Flask(__name__)
TailnetGuard(app, **json.loads(os.environ["IDENTIFY_PROBE_SETTINGS"]))


@app.get("/who")
def who() -> dict[str, Any]:
    identity = current_peer.tailscale
    return {
        "address": current_peer.address,
        "method": current_peer.method,
        "user": current_peer.user,
        "local": current_peer.local,
        "login": None if identity is None else identity.login,
    }
