"""Attacks on the identity step found by attacking the released guard (issue 10, round 2).

Each row is what a hostile tailnet peer or local user does; the expected answer is what the guard
must do. The servers are real (werkzeug's threaded server on a real loopback socket, the stand-in
tailscaled on its unix socket, the kernel's socket records); where the attack is a race, the test
makes the race's losing order happen every time by running tailscaled's move (closing its socket)
at the moment the guard is between two of its own steps.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from flask_tailnet import current_peer, identify

from .conftest import make_app
from .tailscaled_stand_in import StandInTailscaled

_WAIT = 10.0


class _Served:
    """A real threaded werkzeug server of ``app`` on 127.0.0.1, and what each request became."""

    def __init__(self, app: Flask) -> None:
        self.statuses: list[str] = []
        self.ran_as_local: list[bool] = []
        inner = app.wsgi_app

        def recorder(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            def record(status: str, headers: Any, *rest: Any) -> Any:
                self.statuses.append(status)
                return start_response(status, headers, *rest)

            return inner(environ, record)

        app.wsgi_app = recorder  # type: ignore[method-assign]

        @app.post("/act")
        def act() -> str:
            self.ran_as_local.append(current_peer.local)
            return "done"

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for_answer(self) -> str:
        deadline = time.monotonic() + _WAIT
        while not self.statuses and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.statuses, "the server did not answer in time"
        return self.statuses[0]

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(_WAIT)


@pytest.fixture
def userspace(tailscaled: StandInTailscaled, state_dir: Path) -> Iterator[_Served]:
    """A userspace-mode tailscaled (the stand-in, in this process: the sockets this test makes are
    its process's, as tailscaled's relays are) and the app served for real next to it."""
    tailscaled.status["TUN"] = False
    served = _Served(make_app(state_dir, TAILNET_TAILSCALED_SOCKET=tailscaled.path))
    yield served
    served.stop()


def _closing_before(monkeypatch: pytest.MonkeyPatch, name: str, relay: list[socket.socket]) -> None:
    """Make ``identify.<name>`` close tailscaled's end of the relayed connection first: the
    tailnet client went away (RST, or FIN after its request) and tailscaled closed its dial."""
    real = getattr(identify, name)

    def closing(*args: Any, **kwargs: Any) -> Any:
        if relay:
            relay.pop().close()
        return real(*args, **kwargs)

    monkeypatch.setattr(identify, name, closing)


RACES = [
    pytest.param("held_by", id="tailscaled-closes-its-dial-while-the-guard-reads-its-fds"),
    pytest.param("loopback_client_owner", id="tailscaled-closes-its-dial-before-the-kernel-lookup"),
]


@pytest.mark.parametrize("step", RACES)
def test_a_relay_tailscaled_closes_mid_decision_is_never_local(
    userspace: _Served, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A tailnet peer sends a state-changing request through userspace tailscaled and hangs up at
    once, many times over: whenever tailscaled closes its dial while the guard is between asking
    the kernel who owns the client socket and listing tailscaled's open files, the socket is in
    neither. It must not be taken as a local process's: the request is not served as local (it
    needs no answer to do harm)."""

    relay = socket.create_connection(("127.0.0.1", userspace.port), timeout=_WAIT)
    relay.sendall(
        f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{userspace.port}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    pending = [relay]
    _closing_before(monkeypatch, step, pending)
    try:
        status = userspace.wait_for_answer()
    finally:
        relay.close()
    assert pending == [], "the guard never reached the step the race is timed at"
    assert userspace.ran_as_local == [], "a relayed request was served as local"
    assert status.startswith(("401", "403")), status


def test_a_relay_tailscaled_keeps_open_is_not_local(userspace: _Served) -> None:
    """The baseline: the same request on a connection tailscaled keeps open (and registered
    nothing for) is not local either."""
    with socket.create_connection(("127.0.0.1", userspace.port), timeout=_WAIT) as relay:
        relay.sendall(
            f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{userspace.port}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        status = userspace.wait_for_answer()
    assert userspace.ran_as_local == []
    assert status.startswith("401"), status
