"""A tiny WSGI app for tests/test_relays.py: it reports what the server put in environ for the
connection (``connection_of``), REMOTE_PORT, SERVER_PORT, and the kernel's owner of the client
socket, so the tests can check them against real gunicorn and ``flask run`` servers."""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from flask import Flask, request

from flask_tailnet.relays import CONNECTION_KEYS, PerConnection, connection_of
from flask_tailnet.sockowner import loopback_client_uid

app = Flask(__name__)
_serials = itertools.count(1)
#: A number per connection object: a new number means the server gave a new object.
_connections: PerConnection[int] = PerConnection()


@app.get("/probe")
def probe() -> dict[str, Any]:
    environ = request.environ
    connection = connection_of(environ)
    serial = local = peer = owner = None
    if connection is not None:
        serial = _connections.get(connection)
        if serial is None:
            serial = next(_serials)
            _connections.put(connection, serial)
        local = connection.getsockname()  # type: ignore[attr-defined]
        # The socket's own peer: behind gunicorn's --proxy-protocol, REMOTE_* and PROXY_* both
        # come from the PROXY header.
        peer = connection.getpeername()  # type: ignore[attr-defined]
        owner = loopback_client_uid(peer[:2], local[:2])
    remote_port = environ.get("REMOTE_PORT")
    weakrefable = True
    try:
        weakref.ref(environ.get("gunicorn.socket") or environ.get("werkzeug.socket"))
    except TypeError:
        weakrefable = False
    return {
        "key": next((key for key in CONNECTION_KEYS if key in environ), None),
        "socket_type": type(connection).__qualname__,
        "weakrefable": weakrefable,
        "serial": serial,
        "remote_addr": environ.get("REMOTE_ADDR"),
        "remote_port": remote_port,
        "remote_port_type": type(remote_port).__name__,
        "server_port": environ.get("SERVER_PORT"),
        "proxy_protocol": environ.get("PROXY_PROTOCOL"),
        "proxy_addr": environ.get("PROXY_ADDR"),
        "proxy_port": environ.get("PROXY_PORT"),
        "socket_peer": peer,
        "server_name": environ.get("SERVER_NAME"),
        "local_port": None if local is None else local[1],
        "owner": owner,
        "live_entries": len(_connections),
    }
