"""flask-tailnet: serve a Flask app over a Tailscale tailnet safely, with one line.

``TailnetGuard(app)`` serves loopback requests without login, asks tailnet peers for a
credential, and refuses everyone else.
"""

from __future__ import annotations

from importlib import metadata

from .extension import TailnetGuard, current_peer
from .identity import TailscaleIdentity
from .peer import Peer
from .settings import ConfigurationError

__all__ = ["ConfigurationError", "Peer", "TailnetGuard", "TailscaleIdentity", "current_peer"]

try:
    #: The installed distribution's version, from its metadata.
    __version__ = metadata.version("flask-tailnet")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
