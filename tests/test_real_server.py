"""The example app under a real WSGI server, bound to a tailnet-range address on the loopback
interface. Needs root (``ip addr add``); skipped otherwise, and never skipped under CI."""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import addresses_on_lo, example_cli, serving_example_app

ROOT = Path(__file__).resolve().parent.parent
SERVER_V4, CLIENT_V4 = "100.64.0.10", "100.64.0.11"
SERVER_V6, CLIENT_V6 = "fd7a:115c:a1e0::10", "fd7a:115c:a1e0::11"
ADDRESSES = [f"{SERVER_V4}/32", f"{CLIENT_V4}/32", f"{SERVER_V6}/128", f"{CLIENT_V6}/128"]

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def tailnet_addresses() -> Iterator[None]:
    with addresses_on_lo(ADDRESSES):
        yield


@dataclass
class Server:
    host: str
    port: int
    state_dir: Path

    def request(
        self,
        source: str,
        path: str = "/api/whoami",
        headers: dict[str, str] | None = None,
        host_header: str | None = None,
    ) -> tuple[int, dict[str, object] | str]:
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=10, source_address=(source, 0)
        )
        try:
            conn.putrequest("GET", path, skip_host=True)
            netloc = f"[{self.host}]" if ":" in self.host else self.host
            conn.putheader("Host", host_header or f"{netloc}:{self.port}")
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            body = response.read().decode()
            if response.getheader("Content-Type", "").startswith("application/json"):
                return response.status, json.loads(body)
            return response.status, body
        finally:
            conn.close()

    def cli(self, *args: str) -> str:
        return example_cli({**os.environ, "FLASK_TAILNET_STATE_DIR": str(self.state_dir)}, *args)


def _serve(host: str, state_dir: Path) -> Iterator[Server]:
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(state_dir)}
    with serving_example_app(host, env, state_dir.parent / "server.log") as port:
        yield Server(host, port, state_dir)


@pytest.fixture(scope="module")
def server_v4(
    tailnet_addresses: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _serve(SERVER_V4, tmp_path_factory.mktemp("v4") / "state")


@pytest.fixture(scope="module")
def server_v6(
    tailnet_addresses: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _serve(SERVER_V6, tmp_path_factory.mktemp("v6") / "state")


def test_tailnet_peer_needs_the_token(server_v4: Server) -> None:
    status, body = server_v4.request(CLIENT_V4)
    assert status == 401
    token = server_v4.cli("token")
    status, body = server_v4.request(CLIENT_V4, headers={"Authorization": f"Bearer {token}"})
    assert (status, body) == (
        200,
        {"address": CLIENT_V4, "method": "token", "user": None, "local": False},
    )


def test_loopback_peer_needs_nothing(server_v4: Server) -> None:
    status, body = server_v4.request("127.0.0.1")
    assert (status, body) == (
        200,
        {"address": "127.0.0.1", "method": "loopback", "user": None, "local": True},
    )


def test_spoofed_forwarded_for_gets_no_bypass(server_v4: Server) -> None:
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        value = "for=127.0.0.1" if header == "Forwarded" else "127.0.0.1"
        status, _ = server_v4.request(CLIENT_V4, headers={header: value})
        assert status == 401, header


def test_proxy_headers_on_loopback_are_not_local(server_v4: Server) -> None:
    status, _ = server_v4.request("127.0.0.1", headers={"X-Forwarded-For": CLIENT_V4})
    assert status == 401


def test_rebinding_host_refused_even_on_loopback(server_v4: Server) -> None:
    status, _ = server_v4.request("127.0.0.1", host_header=f"evil.example:{server_v4.port}")
    assert status == 403


def test_exempt_health_check(server_v4: Server) -> None:
    assert server_v4.request(CLIENT_V4, "/healthz") == (200, "ok")


def test_rotation_reaches_the_running_server(server_v4: Server) -> None:
    old = server_v4.cli("token")
    assert server_v4.request(CLIENT_V4, headers={"Authorization": f"Bearer {old}"})[0] == 200
    new = server_v4.cli("token", "--rotate")
    assert server_v4.request(CLIENT_V4, headers={"Authorization": f"Bearer {old}"})[0] == 401
    assert server_v4.request(CLIENT_V4, headers={"Authorization": f"Bearer {new}"})[0] == 200


def test_ipv6_tailnet_peer(server_v6: Server) -> None:
    assert server_v6.request(CLIENT_V6)[0] == 401
    token = server_v6.cli("token")
    status, body = server_v6.request(CLIENT_V6, headers={"Authorization": f"Bearer {token}"})
    assert (status, body) == (
        200,
        {"address": CLIENT_V6, "method": "token", "user": None, "local": False},
    )
    status, body = server_v6.request("::1")
    assert (status, body) == (
        200,
        {"address": "::1", "method": "loopback", "user": None, "local": True},
    )


def test_the_development_servers_request_log_never_holds_a_token_link(server_v4: Server) -> None:
    """``flask run`` logs every request line, query string included (pitfall 9): the guard
    redacts ``token`` values in werkzeug's log."""
    token = server_v4.cli("token")
    status, _ = server_v4.request(CLIENT_V4, path=f"/api/whoami?token={token}")
    assert status == 303
    log = server_v4.state_dir.parent / "server.log"
    deadline = time.monotonic() + 10
    while "token=[redacted]" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "token=[redacted]" in log.read_text()
    assert token not in log.read_text()
