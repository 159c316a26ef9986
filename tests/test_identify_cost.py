"""The identity step on a known tailnet peer's request parses nothing and asks tailscaled
nothing (it used to parse the address on every request: 11 points of a bare Flask request, see
benchmarks/bench_wsgi.py, where its cost is measured), and still tells a loopback peer from a
tailnet one when the loopback bypass is off."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from flask_tailnet import addresses
from flask_tailnet import identify as identify_module
from flask_tailnet.gate import Outcome

from .conftest import TAILNET_HOST, TAILNET_PEER, call, make_app
from .tailscaled_stand_in import StandInTailscaled


def test_a_known_tailnet_peer_is_neither_parsed_nor_asked_again(
    state_dir: Path, tailscaled: StandInTailscaled, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted, not timed: after the first request, the step on a known peer's request makes no
    call to the address parser (``parse_ip`` or ``ipaddress``) and no whois."""
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
    asked = len(tailscaled.whois_calls)
    parsed: list[Any] = []
    real_parse, real_address = addresses.parse_ip, ipaddress.ip_address

    def counting_parse(value: object) -> Any:
        parsed.append(value)
        return real_parse(value)

    def counting_address(value: Any) -> Any:
        parsed.append(value)
        return real_address(value)

    monkeypatch.setattr(identify_module, "parse_ip", counting_parse)
    monkeypatch.setattr(ipaddress, "ip_address", counting_address)
    for _ in range(50):
        assert state.identify(environ, verdict) == identified
    assert parsed == []
    assert len(tailscaled.whois_calls) == asked


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
