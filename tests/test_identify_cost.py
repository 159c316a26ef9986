"""The identity step on a tailnet peer's request costs less than parsing its address once (it
used to parse it on every request: 11 points of a bare Flask request, benchmarks/bench_wsgi.py),
and still tells a loopback peer from a tailnet one when the loopback bypass is off."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flask_tailnet.addresses import parse_ip
from flask_tailnet.gate import Outcome

from .conftest import TAILNET_HOST, TAILNET_PEER, call, make_app
from .tailscaled_stand_in import StandInTailscaled


def _best(function: Callable[[], object], number: int = 2000, repeat: int = 7) -> float:
    """The fastest of ``repeat`` runs of ``number`` calls, per call (a loaded machine only
    slows a run down)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            function()
        best = min(best, time.perf_counter() - started)
    return best / number


def test_a_known_tailnet_peer_costs_less_than_parsing_its_address(
    state_dir: Path, tailscaled: StandInTailscaled
) -> None:
    tailscaled.add_peer(TAILNET_PEER)
    app = make_app(state_dir, tailscaled_socket=tailscaled.path)
    state = app.extensions["tailnet"]
    environ = {
        "REMOTE_ADDR": TAILNET_PEER,
        "HTTP_HOST": TAILNET_HOST,
        "REQUEST_METHOD": "GET",
        "SERVER_PORT": "5000",
    }
    verdict = state.gate.admit(environ)
    assert verdict.outcome is Outcome.AUTHENTICATE
    identified = state.identify(environ, verdict)
    assert identified.peer.tailscale is not None  # whois answered, and is now cached
    baseline = _best(lambda: parse_ip(TAILNET_PEER))
    cost = _best(lambda: state.identify(environ, verdict))
    # measured: 0.6 us against 3 us for the parse; it was 4.7 us when it parsed every time
    assert cost < 0.7 * baseline, f"identify {cost * 1e6:.2f} us, parse {baseline * 1e6:.2f} us"


@pytest.mark.parametrize(
    ("peer", "host", "relayed"),
    [
        pytest.param("127.0.0.1", "localhost:5000", True, id="ipv4-loopback"),
        pytest.param("127.8.9.10", "localhost:5000", True, id="other-127-address"),
        pytest.param("::ffff:127.0.0.1", "localhost:5000", True, id="mapped-loopback"),
        pytest.param(TAILNET_PEER, TAILNET_HOST, False, id="tailnet-peer"),
    ],
)
def test_with_the_bypass_off_a_forwarded_port_still_makes_loopback_relayed(
    state_dir: Path, tailscaled: StandInTailscaled, peer: str, host: str, relayed: bool
) -> None:
    """Bypass off: a loopback request on a port serve forwards is still a relayed one (never
    the plain loopback peer), whatever spelling of loopback the server gave."""
    tailscaled.serve_config = {"TCP": {"443": {"TCPForward": "127.0.0.1:80"}}}
    app = make_app(state_dir, tailscaled_socket=tailscaled.path, local_bypass=False)
    state = app.extensions["tailnet"]
    environ = {
        "REMOTE_ADDR": peer,
        "HTTP_HOST": host,
        "REQUEST_METHOD": "GET",
        "SERVER_PORT": "80",
    }
    verdict = state.identify(environ, state.gate.admit(environ))
    assert verdict.outcome is Outcome.AUTHENTICATE
    assert verdict.peer.via_proxy is relayed
    if not relayed:
        assert call(app.test_client(), peer=peer, host=host).status_code == 401
