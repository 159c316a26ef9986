"""``flask tailnet url``: login links for localhost and this machine's tailnet addresses, on the
port a server of the app uses (found, or said to be assumed)."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_tailnet import cli as cli_module
from flask_tailnet.cli import tailnet
from flask_tailnet.machine import listening_ports_in

from .cli_helpers import (
    flask_cli,
)
from .conftest import TAILNET_PEER, addresses_on_lo, call, make_app, serving_example_app


@pytest.fixture(autouse=True)
def nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    """What listens on this machine is not up to the tests (other servers run beside them): in
    process, nothing does unless a test says so; the port variables are unset."""
    monkeypatch.setattr(cli_module, "listening_ports", set)
    for name in ("PORT", "FLASK_RUN_PORT", "TAILNET_BIND"):
        monkeypatch.delenv(name, raising=False)


def fake_addresses(monkeypatch: pytest.MonkeyPatch, addresses: list[str]) -> None:
    monkeypatch.setattr(cli_module, "machine_addresses", lambda: addresses)


def test_url_lists_localhost_and_tailnet_addresses(
    runner: FlaskCliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(
        monkeypatch,
        [
            "127.0.0.1",
            "::1",
            "192.168.1.4",
            "100.101.102.103",
            "100.115.92.7",
            "fe80::1",
            "fd7a:115c:a1e0::7",
        ],
    )
    assert not state_dir.exists()
    result = runner.invoke(tailnet, ["url", "--port", "8080"])
    assert result.exit_code == 0
    token = (state_dir / "token").read_text().strip()  # created on first use
    assert result.stdout.splitlines() == [
        f"http://localhost:8080/?token={token}",
        f"http://100.101.102.103:8080/?token={token}",
        f"http://[fd7a:115c:a1e0::7]:8080/?token={token}",
    ]
    assert result.stderr == "Anyone with one of these links is logged in: share them with care.\n"


def test_url_defaults_and_https(
    runner: FlaskCliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(monkeypatch, ["100.64.0.1"])
    token = runner.invoke(tailnet, ["token"]).stdout.strip()
    plain = runner.invoke(tailnet, ["url"])
    assert plain.stdout.splitlines() == [
        f"http://localhost:5000/?token={token}",
        f"http://100.64.0.1:5000/?token={token}",
    ]
    https = runner.invoke(tailnet, ["url", "--scheme", "https", "--port", "443"])
    assert https.stdout.splitlines()[1] == f"https://100.64.0.1:443/?token={token}"


def test_url_without_a_tailnet_address_says_so(
    runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(monkeypatch, ["127.0.0.1", "10.0.0.2"])
    result = runner.invoke(tailnet, ["url"])
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith("http://localhost:5000/?token=")
    assert "no tailnet address found" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--port", "0"], id="port-zero"),
        pytest.param(["--port", "65536"], id="port-too-high"),
        pytest.param(["--port", "80; rm -rf /"], id="port-not-a-number"),
        pytest.param(["--scheme", "javascript"], id="scheme-not-http"),
    ],
)
def test_url_refuses_bad_options(runner: FlaskCliRunner, args: list[str]) -> None:
    result = runner.invoke(tailnet, ["url", *args])
    assert result.exit_code == 2
    assert result.stdout == ""


def test_url_with_an_unsafe_token_prints_no_link(
    runner: FlaskCliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(monkeypatch, ["100.64.0.1"])
    runner.invoke(tailnet, ["token"])
    os.chmod(state_dir / "token", 0o644)
    result = runner.invoke(tailnet, ["url"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"chmod 600 {state_dir / 'token'}" in result.stderr


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="generated"),
        pytest.param("a+b/c=d&e#f?g%h" + "x" * 28, id="hand-written-with-url-characters"),
    ],
)
def test_url_logs_a_tailnet_browser_in(
    app: Flask,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
) -> None:
    if token is not None:
        state_dir.mkdir(mode=0o700)
        (state_dir / "token").write_text(token + "\n")
        os.chmod(state_dir / "token", 0o600)
    fake_addresses(monkeypatch, ["100.64.0.1"])
    result = app.test_cli_runner().invoke(tailnet, ["url"])
    link = urlsplit(result.stdout.splitlines()[1])
    client = app.test_client()
    response = call(client, f"{link.path}?{link.query}", peer=TAILNET_PEER, host=link.netloc)
    assert response.status_code == 303
    assert "tailnet_session=" in response.headers["Set-Cookie"]
    after = call(client, "/", peer=TAILNET_PEER, host=link.netloc)
    assert after.status_code == 200
    assert after.json["method"] == "session"


# ---- which port: the one configured, else the one a server listens on, else said assumed -----


@pytest.mark.parametrize(
    ("bind", "env", "listening", "port", "how"),
    [
        pytest.param(
            [], {"TAILNET_BIND": "127.0.0.1:9001 100.64.0.1:9001"}, {8000}, 9001,
            "the port of the environment's TAILNET_BIND", id="environment-bind-wins",
        ),
        pytest.param(
            ["127.0.0.1:9002"], {}, {8000}, 9002, "the port of the app's TAILNET_BIND",
            id="app-bind",
        ),
        pytest.param(
            ["127.0.0.1:9003", "100.64.0.1:9004"], {}, {8000}, 8000,
            "this user listens on it here, the default port of flask tailnet serve",
            id="binds-on-two-ports-say-nothing",
        ),
        pytest.param(
            [], {"TAILNET_BIND": "unix:/run/app.sock"}, {5000}, 5000,
            "this user listens on it here, the default port of flask run", id="unix-bind-no-port",
        ),
        pytest.param(
            [], {}, {8000, 22}, 8000,
            "this user listens on it here, the default port of flask tailnet serve",
            id="serve-listening",
        ),
        pytest.param(
            [], {}, {5000}, 5000, "this user listens on it here, the default port of flask run",
            id="flask-run-listening",
        ),
        pytest.param(
            [], {"PORT": "9100"}, {9100, 8000}, 9100,
            "this user listens on it here, the default port of flask tailnet serve",
            id="serve-on-dollar-port",
        ),
        pytest.param(
            [], {"FLASK_RUN_PORT": "9200"}, {9200, 5000}, 9200,
            "this user listens on it here, the default port of flask run",
            id="flask-run-on-its-variable",
        ),
        pytest.param(
            [], {}, {8000, 5000}, 5000,
            "assumed, the port of flask run (this user listens on both of 8000 or 5000 here)",
            id="both-listening-is-ambiguous",
        ),
        pytest.param(
            [], {}, set(), 5000,
            "assumed, the port of flask run (this user listens on neither of 8000 or 5000 here)",
            id="nothing-listening",
        ),
        pytest.param(
            [], {"PORT": "http", "FLASK_RUN_PORT": "x"}, {8000}, 8000,
            "this user listens on it here, the default port of flask tailnet serve",
            id="junk-port-variables-are-ignored",
        ),
        pytest.param(
            [], {"PORT": "0", "FLASK_RUN_PORT": "70000"}, set(), 5000,
            "assumed, the port of flask run (this user listens on neither of 8000 or 5000 here)",
            id="out-of-range-port-variables-are-ignored",
        ),
    ],
)  # fmt: skip
def test_url_finds_the_port_or_says_what_it_assumed(
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    bind: list[str],
    env: dict[str, str],
    listening: set[int],
    port: int,
    how: str,
) -> None:
    fake_addresses(monkeypatch, ["100.64.0.1"])
    monkeypatch.setattr(cli_module, "listening_ports", lambda: set(listening))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = make_app(state_dir, bind=bind) if bind else make_app(state_dir)
    result = app.test_cli_runner().invoke(tailnet, ["url"])
    assert result.exit_code == 0, result.output
    assert [urlsplit(u).port for u in result.stdout.splitlines()] == [port, port]
    assert f"port {port}: {how}; pass --port if the app listens elsewhere" in result.stderr


def test_url_with_a_port_says_nothing_about_it(
    runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_addresses(monkeypatch, ["100.64.0.1"])
    monkeypatch.setattr(cli_module, "listening_ports", lambda: {8000})
    result = runner.invoke(tailnet, ["url", "--port", "5000"])
    assert urlsplit(result.stdout.splitlines()[0]).port == 5000
    assert "pass --port" not in result.stderr


def proc_line(local: str, state: str, uid: int) -> str:
    """One socket of a /proc/net/tcp or tcp6 table, as Linux writes it."""
    remote = "0" * local.index(":") + ":0000"
    return (
        f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid:>5}        0 "
        "4242 1 0000000000000000 100 0 0 10 0"
    )


HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
)
ME, OTHER = 1000, 1001


@pytest.mark.parametrize(
    ("lines", "ports"),
    [
        pytest.param([proc_line("0100007F:1F40", "0A", ME)], {8000}, id="tcp4-loopback-listener"),
        pytest.param(
            [proc_line("00000000000000000000000001000000:1388", "0A", ME)], {5000}, id="tcp6-::1"
        ),
        pytest.param(
            [proc_line("00000000000000000000000000000000:20FB", "0A", ME)], {8443}, id="tcp6-any"
        ),
        pytest.param([proc_line("0100007F:1F40", "0A", OTHER)], set(), id="another-users-listener"),
        pytest.param(
            [proc_line("0100007F:2328", "01", ME)], set(), id="a-connection-not-a-listener"
        ),
        pytest.param([], set(), id="header-only"),
        pytest.param(
            [" 0: 0100007F:ZZZZ 00000000:0000 0A 0 0 0 1000", " 1: junk"], set(), id="junk"
        ),
    ],
)
def test_listening_ports_in_a_proc_table(lines: list[str], ports: set[int]) -> None:
    assert listening_ports_in("\n".join([HEADER, *lines]) + "\n", ME) == ports


def test_a_proc_table_without_its_header_line() -> None:
    assert listening_ports_in(proc_line("0100007F:1F40", "0A", ME), ME) == set()
    assert listening_ports_in("", ME) == set()


# ---- real addresses on the loopback interface (root) ------------------------------------------

URL_V4, URL_V6 = "100.64.110.20", "fd7a:115c:a1e0::6e:20"  # addresses no other test uses


@pytest.fixture(scope="module")
def tailnet_addresses_on_lo() -> Iterator[None]:
    with addresses_on_lo([f"{URL_V4}/32", f"{URL_V6}/128"]):
        yield


def tailscale_stand_in(bin_dir: Path, *addresses: str) -> str:
    """A PATH whose ``tailscale`` prints ``addresses`` as ``tailscale ip`` does (the real CLI is
    not installed here), followed by the real PATH. Addresses on ``lo`` are not on tailscale0,
    so without it ``flask tailnet url`` would find no tailnet address."""
    bin_dir.mkdir()
    stand_in = bin_dir / "tailscale"
    stand_in.write_text("#!/bin/sh\n" + "".join(f"echo {a}\n" for a in addresses))
    stand_in.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.root
def test_url_link_logs_in_to_a_real_server(tailnet_addresses_on_lo: None, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(state_dir)}
    path = tailscale_stand_in(tmp_path / "bin", URL_V4, URL_V6)
    with serving_example_app(URL_V4, env, tmp_path / "server.log") as port:
        printed = flask_cli("tailnet", "url", "--port", str(port), state_dir=state_dir, path=path)
        assert printed.returncode == 0, printed.stderr
        [link] = [u for u in printed.stdout.splitlines() if f"//{URL_V4}:" in u]
        assert f"http://[{URL_V6}]:{port}/?token=" in printed.stdout
        parts = urlsplit(link)
        conn = http.client.HTTPConnection(URL_V4, port, timeout=10, source_address=(URL_V4, 0))
        try:
            conn.request("GET", f"{parts.path}?{parts.query}", headers={"Host": parts.netloc})
            response = conn.getresponse()
            response.read()
            assert response.status == 303
            cookie = response.getheader("Set-Cookie", "").split(";", 1)[0]
            assert cookie.startswith("tailnet_session=")
            conn.request("GET", "/api/whoami", headers={"Host": parts.netloc, "Cookie": cookie})
            whoami = conn.getresponse()
            assert whoami.status == 200
            body = json.loads(whoami.read())
            assert (body["address"], body["method"]) == (URL_V4, "session")
        finally:
            conn.close()


@pytest.mark.root
def test_url_finds_the_port_of_a_running_server(
    tailnet_addresses_on_lo: None, tmp_path: Path
) -> None:
    """Without --port, the links name the port a real `flask run` listens on (its variable says
    which), not 5000, and stderr says how the port was found."""
    state_dir = tmp_path / "state"
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(state_dir)}
    path = tailscale_stand_in(tmp_path / "bin", URL_V4)
    with socket.socket() as probe:  # a port nothing listens on, for gunicorn's $PORT
        probe.bind(("127.0.0.1", 0))
        unused = str(probe.getsockname()[1])
    with serving_example_app(URL_V4, env, tmp_path / "server.log") as port:
        printed = flask_cli(
            "tailnet",
            "url",
            state_dir=state_dir,
            path=path,
            env={"FLASK_RUN_PORT": str(port), "PORT": unused},
        )
    assert printed.returncode == 0, printed.stderr
    assert [urlsplit(u).port for u in printed.stdout.splitlines()] == [port, port]
    assert f"port {port}: this user listens on it here, the default port of flask run" in (
        printed.stderr
    )
