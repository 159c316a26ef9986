"""The failed-attempt budget of a real ``flask run``, attacked from real source addresses on the
loopback interface: an IPv6 host rotating through its /64 gets one budget, tailnet peers one each.
Needs root (``ip addr add``); skipped otherwise, and never skipped under CI."""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator

import pytest

from .conftest import addresses_on_lo, serving_example_app

pytestmark = pytest.mark.root

#: A LAN (ULA) /64 the server and the rotating host share, under TAILNET_NETWORK="local".
SERVER = "fd00:105:0:1::1"
ROTATING = [f"fd00:105:0:1::{n:x}" for n in range(0x10, 0x18)]
NEIGHBOUR = "fd00:105:0:2::10"  # another /64
PEER_A, PEER_B = "fd7a:115c:a1e0::105:a", "fd7a:115c:a1e0::105:b"


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    addresses = [SERVER, *ROTATING, NEIGHBOUR, PEER_A, PEER_B]
    state_dir = tmp_path_factory.mktemp("budget") / "state"
    env = {
        **os.environ,
        "FLASK_TAILNET_STATE_DIR": str(state_dir),
        "FLASK_TAILNET_NETWORK": "local",
    }
    with (
        addresses_on_lo([f"{address}/128" for address in addresses]),
        serving_example_app(SERVER, env, state_dir.parent / "server.log") as served,
    ):
        yield served


def guess(port: int, source: str) -> int:
    """One wrong bearer token from ``source``; the status."""
    conn = http.client.HTTPConnection(SERVER, port, timeout=10, source_address=(source, 0))
    try:
        conn.request(
            "GET",
            "/api/whoami",
            headers={"Host": f"[{SERVER}]:{port}", "Authorization": "Bearer wrong"},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_a_host_rotating_through_its_64_gets_one_budget(port: int) -> None:
    assert [guess(port, source) for source in ROTATING] == [401] * 5 + [429] * 3
    assert guess(port, NEIGHBOUR) == 401, "another /64 keeps its own budget"


def test_tailnet_peers_are_counted_per_address(port: int) -> None:
    assert [guess(port, PEER_A) for _ in range(6)] == [401] * 5 + [429]
    assert guess(port, PEER_B) == 401, "a tailnet node has one address, and its own budget"
