"""flask_tailnet.gunicorn: the redaction tables, the settings it gives gunicorn, and the example
app under real gunicorn processes (workers, refusals, the access log, the login URL, shutdown).

Parts that add addresses to the loopback interface are marked ``root`` and skip without root
(never under CI). Test addresses: 100.64.0.40-.49 and fd7a:115c:a1e0::40-::49.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from flask import Flask
from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.config import Config
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_tailnet import gunicorn as tg
from flask_tailnet.addresses import is_tailnet, parse_ip
from flask_tailnet.binds import parse_bind
from flask_tailnet.gunicorn_binds import MachineAddresses, fill_in
from flask_tailnet.gunicorn_hooks import find_guard_states
from flask_tailnet.gunicorn_links import login_urls
from flask_tailnet.machine import interface_addresses

from .conftest import make_app
from .gunicorn_helpers import (
    CONFIG,
    EXAMPLE_APP,
    GUNICORN,
    Gunicorn,
    accepts,
    addresses_on_lo,
    alive,
    free_port,
    gunicorn_env,
    listening_ports,
    request,
    running,
    start_gunicorn,
    wait_until_serving,
)

SERVER_V4, CLIENT_V4 = "100.64.0.40", "100.64.0.41"
SERVER_V6, CLIENT_V6 = "fd7a:115c:a1e0::40", "fd7a:115c:a1e0::41"
TAILNET_CIDRS = [f"{SERVER_V4}/32", f"{CLIENT_V4}/32", f"{SERVER_V6}/128", f"{CLIENT_V6}/128"]
#: A documentation-range address (TEST-NET-1) added to lo: neither loopback, tailnet nor LAN.
OTHER_V4 = "192.0.2.45"
SECRET = "s3cr3t-T0ken_value"
R = tg.REDACTED


# ---- redaction tables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"token={SECRET}", f"token={R}", id="bare-query"),
        pytest.param(f"/?token={SECRET}", f"/?token={R}", id="uri"),
        pytest.param(
            f"GET /a?x=1&token={SECRET}&y=2 HTTP/1.1",
            f"GET /a?x=1&token={R}&y=2 HTTP/1.1",
            id="request-line-middle",
        ),
        pytest.param(f"/?TOKEN={SECRET}", f"/?TOKEN={R}", id="upper-case-name"),
        pytest.param(f"/?%74oken={SECRET}", f"/?%74oken={R}", id="percent-encoded-name"),
        pytest.param(f"/?%2574oken={SECRET}", f"/?%2574oken={R}", id="double-encoded-name"),
        pytest.param(f"/?token+={SECRET}", f"/?token+={R}", id="plus-space-in-name"),
        pytest.param(f"/?token={SECRET}=x", f"/?token={R}", id="value-with-equals"),
        pytest.param(f"/?token={SECRET}#frag", f"/?token={R}#frag", id="fragment-after"),
        pytest.param(f"/?token={SECRET}&token={SECRET}", f"/?token={R}&token={R}", id="repeated"),
        pytest.param(f"/?a=1&amp;token={SECRET}", f"/?a=1&amp;token={R}", id="html-escaped-amp"),
        pytest.param(
            f'"http://h/?token={SECRET}" "curl"', f'"http://h/?token={R}" "curl"', id="quoted"
        ),
        pytest.param(
            f"Invalid HTTP request line: 'GET /?token={SECRET} HTTP/1.1 x'",
            f"Invalid HTTP request line: 'GET /?token={R} HTTP/1.1 x'",
            id="error-message",
        ),
        pytest.param("/?token=", f"/?token={R}", id="empty-value"),
        pytest.param("/?xtoken=1&tokens=2", "/?xtoken=1&tokens=2", id="other-names-kept"),
        pytest.param("/static/app.js", "/static/app.js", id="no-query"),
        pytest.param(f"/p/token={SECRET}", f"/p/token={R}", id="in-a-path-segment"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert tg.redact_text(text) == expected
    assert tg.redact_text(expected) == expected  # idempotent


ATOMS: dict[str, Any] = {
    "h": "100.64.0.41",
    "r": f"GET /?token={SECRET} HTTP/1.1",
    "q": f"token={SECRET}",
    "U": "/",
    "f": f"http://h/?token={SECRET}",
    "s": "200",
    "B": 512,
    "{authorization}i": f"Bearer {SECRET}",
    "{proxy-authorization}i": f"Basic {SECRET}",
    "{cookie}i": f"tailnet_session={SECRET}",
    "{referer}i": f"http://h/?token={SECRET}",
    "{user-agent}i": "curl/8",
    "{set-cookie}o": f"tailnet_session={SECRET}; HttpOnly",
    "{location}o": "/",
    "{http_authorization}e": f"Bearer {SECRET}",
    "{http_cookie}e": f"tailnet_session={SECRET}",
    "{http_proxy_authorization}e": f"Basic {SECRET}",
    "{raw_uri}e": f"/?token={SECRET}",
    "{query_string}e": f"token={SECRET}",
    "{request_uri}e": f"/?token={SECRET}",
    "{wsgi.version}e": (1, 0),
}


def test_redact_atoms_hides_every_secret_and_keeps_the_rest() -> None:
    redacted = tg.redact_atoms(ATOMS)
    assert SECRET not in json.dumps(redacted, default=str)
    assert set(redacted) == set(ATOMS)
    for header in (
        "{authorization}i",
        "{proxy-authorization}i",
        "{cookie}i",
        "{set-cookie}o",
        "{http_authorization}e",
        "{http_cookie}e",
        "{http_proxy_authorization}e",
    ):
        assert redacted[header] == R, header
    assert redacted["r"] == f"GET /?token={R} HTTP/1.1"
    assert redacted["f"] == f"http://h/?token={R}"
    for kept in ("h", "U", "s", "B", "{user-agent}i", "{location}o", "{wsgi.version}e"):
        assert redacted[kept] == ATOMS[kept], kept


def test_filter_redacts_message_arguments_and_traceback() -> None:
    try:
        raise ValueError(f"bad /?token={SECRET}")
    except ValueError:
        record = logging.LogRecord(
            "gunicorn.error",
            logging.ERROR,
            __file__,
            1,
            "Error handling request %s",
            (f"/?token={SECRET}",),
            sys.exc_info(),
        )
    assert tg.RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert SECRET not in formatted
    assert f"Error handling request /?token={R}" in formatted
    assert f"ValueError: bad /?token={R}" in formatted


# ---- the settings gunicorn reads -----------------------------------------------------------


def test_module_sets_only_these_gunicorn_settings() -> None:
    """gunicorn applies every module name that is a setting: none may be one by accident."""
    settings = set(Config().settings)
    assert {name for name in vars(tg) if name in settings} == {
        "bind",
        "logger_class",
        "on_starting",
        "when_ready",
        "on_reload",
    }
    assert tg.logger_class is tg.RedactingLogger


def test_command_line_settings_take_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    argv = ["gunicorn", "-c", "python:flask_tailnet.gunicorn", "-b", "127.0.0.1:9001"]
    argv += ["-b", "[::1]:9001", "-w", "3", "-k", "gthread", "--access-logfile", "/tmp/x.log"]
    monkeypatch.setattr(sys, "argv", [*argv, "example_app:create_app()"])
    cfg = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg
    assert cfg.bind == ["127.0.0.1:9001", "[::1]:9001"]
    assert (cfg.workers, cfg.worker_class_str, cfg.accesslog) == (3, "gthread", "/tmp/x.log")
    assert cfg.logger_class is tg.RedactingLogger
    assert cfg.on_starting is tg.on_starting
    assert cfg.when_ready is tg.when_ready


def test_default_bind_is_loopback_plus_tailnet() -> None:
    """The binds gunicorn gets when nothing chose them, filled in at start (not at import)."""

    def default(addresses: list[str], environ: dict[str, str]) -> list[str]:
        cfg = Config()
        cfg.set("bind", tg.bind)
        found = MachineAddresses(find=lambda: addresses, can_listen=lambda address: True)
        fill_in(cfg, [], environ, found)
        return list(cfg.bind)

    tailnet = ["100.64.0.42", "fd7a:115c:a1e0::42"]
    assert default(tailnet, {}) == [
        "127.0.0.1:8000",
        "100.64.0.42:8000",
        "[fd7a:115c:a1e0::42]:8000",
    ]
    assert default([], {}) == ["127.0.0.1:8000"]
    assert default([], {"PORT": "9002"}) == ["127.0.0.1:9002"]
    assert default(tailnet, {"TAILNET_BIND": "100.64.0.42:9003 unix:/run/app.sock"}) == [
        "100.64.0.42:9003",
        "unix:/run/app.sock",
    ]


# ---- finding the guard behind gunicorn's callable ------------------------------------------


def test_find_guard_states_through_wrappers(tmp_path: Path) -> None:
    app = make_app(tmp_path / "a")
    other = make_app(tmp_path / "b")
    state, other_state = app.extensions["tailnet"], other.extensions["tailnet"]
    assert find_guard_states(app) == [state]
    assert find_guard_states(app.wsgi_app) == [state]
    assert find_guard_states(ProxyFix(app)) == [state]
    assert find_guard_states(ProxyFix(ProxyFix(app.wsgi_app))) == [state]
    both = find_guard_states(DispatcherMiddleware(app, {"/other": other}))
    assert both == [state, other_state]
    assert find_guard_states(Flask("bare")) == []
    assert find_guard_states(lambda environ, start_response: []) == []


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        pytest.param(["127.0.0.1:8000"], ["http://127.0.0.1:8000/?token=t%2Fk"], id="loopback"),
        pytest.param(
            ["[fd7a:115c:a1e0::42]:80"], ["http://[fd7a:115c:a1e0::42]:80/?token=t%2Fk"], id="v6"
        ),
        pytest.param(["localhost:81"], ["http://localhost:81/?token=t%2Fk"], id="localhost"),
        pytest.param(
            ["0.0.0.0:82"],
            ["http://127.0.0.1:82/?token=t%2Fk", "http://100.64.0.42:82/?token=t%2Fk"],
            id="wildcard-stands-for-loopback-and-tailnet",
        ),
        pytest.param(["unix:/run/app.sock", "fd://3"], [], id="no-url-for-sockets"),
    ],
)
def test_login_urls(specs: list[str], expected: list[str]) -> None:
    binds = [parse_bind(spec) for spec in specs]
    assert login_urls(binds, b"t/k", ["100.64.0.42"]) == expected


# ---- real gunicorn ---------------------------------------------------------------------------


def _token(state_dir: Path) -> str:
    return (state_dir / "token").read_text().strip()


@pytest.fixture(scope="module")
def tailnet_lo() -> Iterator[None]:
    with addresses_on_lo(TAILNET_CIDRS):
        yield


@pytest.mark.root
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_four_workers_on_loopback_and_tailnet(
    worker_class: str, tailnet_lo: None, tmp_path: Path
) -> None:
    port = free_port("127.0.0.1")
    binds = [("127.0.0.1", port), (SERVER_V4, port), (SERVER_V6, port)]
    state_dir = tmp_path / "state"
    extra = ["--threads", "4"] if worker_class == "gthread" else []
    with running(
        binds,
        state_dir=state_dir,
        stderr_path=tmp_path / "gunicorn.log",
        workers=4,
        worker_class=worker_class,
        extra=extra,
    ) as server:
        assert len(server.workers()) == 4
        token = _token(state_dir)
        bearer = {"Authorization": f"Bearer {token}"}
        for _ in range(6):  # enough connections to meet several workers
            for host, client in ((SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)):
                assert request(host, port, source=client).status == 401
                reply = request(host, port, source=client, headers=bearer)
                assert reply.status == 200, reply.body
                assert json.loads(reply.body)["address"] == client
                assert json.loads(reply.body)["method"] == "token"
                spoofed = request(
                    host, port, source=client, headers={"X-Forwarded-For": "127.0.0.1"}
                )
                assert spoofed.status == 401
            reply = request("127.0.0.1", port, source="127.0.0.1")
            assert reply.status == 200
            assert json.loads(reply.body)["method"] == "loopback"
        assert server.proc.poll() is None


def _assert_refused(spec: str, probe: tuple[str, int], tmp_path: Path, connect: bool) -> None:
    """gunicorn with ``-b spec`` exits non-zero with the refusal, and ``probe`` never accepts."""
    state_dir = tmp_path / "state"
    server = start_gunicorn(
        [*tg_args(), "-b", spec, "-w", "2", "example_app:create_app()"],
        env=gunicorn_env(state_dir),
        stderr_path=tmp_path / "gunicorn.log",
    )
    host, port = probe
    try:
        deadline = time.monotonic() + 60
        while server.proc.poll() is None:
            assert port not in listening_ports(), server.stderr()
            if connect:
                assert not accepts(host, port, 0.2), server.stderr()
            assert time.monotonic() < deadline, f"still running:\n{server.stderr()}"
            time.sleep(0.02)
        assert server.proc.returncode != 0
        stderr = server.stderr()
        assert "refusing to bind" in stderr, stderr
        assert "Listening at" not in stderr
        assert "Booting worker" not in stderr
        assert port not in listening_ports()
        if connect:
            assert not accepts(host, port, 0.5)
    finally:
        server.kill()


def tg_args() -> list[str]:
    return ["-c", "python:flask_tailnet.gunicorn", "--no-control-socket"]


@pytest.mark.parametrize(
    ("template", "probe_host"),
    [
        pytest.param("0.0.0.0:{port}", "127.0.0.1", id="ipv4-wildcard"),
        pytest.param("[::]:{port}", "::1", id="ipv6-wildcard"),
        pytest.param("[::ffff:0.0.0.0]:{port}", "127.0.0.1", id="mapped-wildcard"),
    ],
)
def test_wildcard_binds_are_refused(template: str, probe_host: str, tmp_path: Path) -> None:
    port = free_port(probe_host)
    _assert_refused(template.format(port=port), (probe_host, port), tmp_path, connect=True)


@pytest.mark.root
def test_an_address_neither_loopback_nor_tailnet_is_refused(tmp_path: Path) -> None:
    with addresses_on_lo([f"{OTHER_V4}/32"]):
        port = free_port(OTHER_V4)
        _assert_refused(f"{OTHER_V4}:{port}", (OTHER_V4, port), tmp_path, connect=True)


SERVE = [sys.executable, "-m", "flask", "--app", "example_app", "tailnet", "serve"]
#: A LAN address added to lo for the inherited-socket test: refused under TAILNET_NETWORK="tailnet".
LAN_V4 = "192.168.103.7"
#: A documentation address (TEST-NET-1) of this test's own: refused under every policy.
DOC_V4 = "192.0.2.103"


def _usr2_child(sock: socket.socket, tmp_path: Path, name: str, network: str) -> Gunicorn:
    """gunicorn started as a master re-executed by SIGUSR2 is: ``GUNICORN_PID`` set and the
    listening socket ``sock`` inherited through ``GUNICORN_FD``, while ``-b`` names another
    (accepted) address that it then never binds."""
    env = gunicorn_env(
        tmp_path / "state",
        GUNICORN_PID=str(os.getpid()),
        GUNICORN_FD=str(sock.fileno()),
        FLASK_TAILNET_NETWORK=network,
    )
    return start_gunicorn(
        [*tg_args(), "-b", f"127.0.0.1:{free_port()}", "-w", "1", EXAMPLE_APP],
        env=env,
        stderr_path=tmp_path / f"{name}.log",
        pass_fds=[sock.fileno()],
    )


@pytest.mark.root
@pytest.mark.parametrize(
    ("address", "network"),
    [
        pytest.param(LAN_V4, "tailnet", id="lan-address-under-tailnet"),
        pytest.param(DOC_V4, "any", id="documentation-address-under-any"),
    ],
)
def test_a_socket_inherited_through_GUNICORN_FD_is_checked(
    address: str, network: str, tmp_path: Path
) -> None:
    with addresses_on_lo([f"{address}/32"]), socket.socket() as sock:
        sock.bind((address, 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = _usr2_child(sock, tmp_path, "refused", network)
        try:
            assert server.proc.wait(timeout=60) == 1, server.stderr()
        finally:
            server.kill()
        stderr = server.stderr()
        assert f"refusing to bind 'fd://{sock.fileno()}' (listening on {address})" in stderr
        assert "Booting worker" not in stderr
        # The socket still listens (this test holds it), but no one answers on it.
        with pytest.raises(OSError):
            request(address, port, "/healthz", timeout=2)


def test_a_loopback_socket_inherited_through_GUNICORN_FD_is_served(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = _usr2_child(sock, tmp_path, "accepted", "tailnet")
        try:
            server.binds = [("127.0.0.1", port)]
            wait_until_serving(server, 1)
            assert request("127.0.0.1", port, "/healthz").status == 200
            assert f"Listening at: http://127.0.0.1:{port}" in server.stderr()
        finally:
            server.kill()


@pytest.mark.parametrize(
    ("how", "command"),
    [
        pytest.param("-b", None, id="gunicorn-b"),
        pytest.param("TAILNET_BIND", None, id="gunicorn-TAILNET_BIND-env"),
        pytest.param("FLASK_TAILNET_BIND", None, id="gunicorn-app-config-from-env"),
        pytest.param("-b", SERVE, id="serve-b"),
    ],
)
def test_a_unix_socket_bind_is_refused_at_start(
    how: str, command: list[str] | None, tmp_path: Path
) -> None:
    """A Unix socket peer has no address: every request through it was refused (403), even with
    the token. The start is refused instead, with the fix, and the socket is never created."""
    path = tmp_path / "app.sock"
    spec = f"unix:{path}"
    args = ["--no-control-socket", "-w", "1", *(["-b", spec] if how == "-b" else [])]
    env = gunicorn_env(tmp_path / "state", **({} if how == "-b" else {how: spec}))
    server = start_gunicorn(
        [*args, *([] if command else [*CONFIG, EXAMPLE_APP])],
        env=env,
        stderr_path=tmp_path / "gunicorn.log",
        command=command,
    )
    try:
        status = server.proc.wait(timeout=60)
    finally:
        server.kill()
    stderr = server.stderr()
    assert status != 0, stderr
    assert f"refusing to bind {spec!r}: a Unix socket peer has no address" in stderr
    assert "list 127.0.0.1 in TAILNET_TRUSTED_PROXIES" in stderr
    assert "Booting worker" not in stderr
    assert not path.exists()


def _uwsgi_request(port: int, variables: dict[str, str]) -> bytes:
    """What gunicorn answers to one uwsgi packet (as nginx's ``uwsgi_pass`` sends it)."""
    body = b"".join(
        len(part).to_bytes(2, "little") + part
        for name, value in variables.items()
        for part in (name.encode(), value.encode())
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\0" + len(body).to_bytes(2, "little") + b"\0" + body)
        return b"".join(iter(lambda: sock.recv(65536), b""))


@pytest.mark.parametrize("command", [None, SERVE], ids=["gunicorn", "serve"])
def test_the_uwsgi_protocol_is_refused_at_start(command: list[str] | None, tmp_path: Path) -> None:
    """With ``--protocol uwsgi`` every request comes through the front server on loopback, which
    names the client only in the packet's ``REMOTE_ADDR`` (gunicorn drops it) and sends no proxy
    header with nginx's stock ``uwsgi_params``: each tailnet peer got the loopback bypass (200,
    method ``loopback``) and no budget. The start is refused instead, with the fix."""
    port = free_port()
    args = ["--no-control-socket", "-w", "1", "--protocol", "uwsgi", "-b", f"127.0.0.1:{port}"]
    server = start_gunicorn(
        [*args, *([] if command else [*CONFIG, EXAMPLE_APP])],
        env=gunicorn_env(tmp_path / "state"),
        stderr_path=tmp_path / "gunicorn.log",
        command=command,
    )
    try:
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and not accepts("127.0.0.1", port):
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.1)
        if server.proc.poll() is None:  # it serves: show what a tailnet peer gets through nginx
            time.sleep(1)  # the worker boots
            answer = _uwsgi_request(
                port,
                {
                    "REQUEST_METHOD": "GET",
                    "PATH_INFO": "/api/whoami",
                    "REQUEST_URI": "/api/whoami",
                    "QUERY_STRING": "",
                    "SERVER_PROTOCOL": "HTTP/1.1",
                    "REMOTE_ADDR": "100.64.106.2",
                    "HTTP_HOST": "localhost",
                },
            )
            pytest.fail(f"served under --protocol uwsgi: {answer!r}")
    finally:
        server.kill()
    stderr = server.stderr()
    assert server.proc.returncode != 0, stderr
    assert "refusing to serve: --protocol uwsgi cannot be guarded" in stderr
    assert "list 127.0.0.1 in TAILNET_TRUSTED_PROXIES" in stderr
    assert "Booting worker" not in stderr


@pytest.mark.parametrize(
    "allowed",
    [
        pytest.param("*", id="any-sender"),
        pytest.param("127.0.0.1,100.64.0.0/10", id="a-tailnet-range"),
        pytest.param("192.168.0.0/16", id="a-lan-range"),
    ],
)
def test_a_proxy_protocol_from_others_than_loopback_is_refused_at_start(
    allowed: str, tmp_path: Path
) -> None:
    """With ``--proxy-protocol``, the sender of a PROXY header picks ``REMOTE_ADDR``: a tailnet
    peer allowed to send one claimed ``PROXY TCP4 127.0.0.1 ...`` and got the loopback bypass
    (200, method ``loopback``, no credential). Only loopback senders may be allowed."""
    port = free_port()
    args = ["--no-control-socket", "-w", "1", "-b", f"127.0.0.1:{port}"]
    args += ["--proxy-protocol", "v1", "--proxy-allow-from", allowed]
    server = start_gunicorn(
        [*args, *CONFIG, EXAMPLE_APP],
        env=gunicorn_env(tmp_path / "state"),
        stderr_path=tmp_path / "gunicorn.log",
    )
    try:
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and not accepts("127.0.0.1", port):
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.1)
        assert server.proc.poll() is not None, f"served with --proxy-allow-from {allowed}"
    finally:
        server.kill()
    stderr = server.stderr()
    assert server.proc.returncode != 0, stderr
    assert "refusing to serve: --proxy-protocol" in stderr
    assert "Booting worker" not in stderr


def test_this_machines_own_address_is_refused(tmp_path: Path) -> None:
    """An address of a real interface (``ip -j addr``), checked without any traffic to it: only
    the LISTEN table is read. Without one, a documentation address added to lo stands in."""
    address = _machine_address()
    if address is not None:
        port = free_port("127.0.0.1")
        spec = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        _assert_refused(spec, (address, port), tmp_path, connect=False)
        return
    with addresses_on_lo(["198.51.100.45/32"]):
        port = free_port("198.51.100.45")
        _assert_refused(f"198.51.100.45:{port}", ("198.51.100.45", port), tmp_path, connect=True)


def _machine_address() -> str | None:
    try:
        shown = subprocess.run(
            ["ip", "-j", "addr"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for entry in json.loads(shown or "[]"):
        if entry.get("ifname") == "lo":
            continue
        for address in interface_addresses(json.dumps([entry])):
            ip = parse_ip(address)
            if (
                ip is not None
                and not ip.is_loopback
                and not ip.is_link_local
                and not is_tailnet(ip)
            ):
                return str(ip)
    return None


ACCESS_FORMAT = " ".join(
    [
        '%(h)s "%(r)s" %(s)s q=%(q)s f="%(f)s"',
        "auth=%({authorization}i)s cookie=%({cookie}i)s setcookie=%({set-cookie}o)s",
        "ref=%({referer}i)s raw=%({raw_uri}e)s qs=%({query_string}e)s",
        "eauth=%({http_authorization}e)s ecookie=%({http_cookie}e)s",
    ]
)


GUNICORN_HINT = "flask --app 'example_app:create_app()' tailnet url --port {port}"
SERVE_HINT = "flask --app example_app tailnet url --port {port}"


@pytest.mark.parametrize(
    ("stderr", "command", "extra", "printed"),
    [
        # Standard error is where a log keeps it: never the token, a hint instead.
        pytest.param(
            "file", None, ["--capture-output", "--error-logfile", "{log}"], False,
            id="capture-output-error-logfile",
        ),
        pytest.param(
            "pty", None, ["--capture-output", "--error-logfile", "{log}"], False,
            id="capture-output-from-a-terminal-still-to-the-file",
        ),
        pytest.param("pipe", None, ["--error-logfile", "{log}"], False, id="stderr-a-pipe"),
        pytest.param("file", None, [], False, id="stderr-a-file-as-under-nohup"),
        pytest.param("pipe", SERVE, [], False, id="serve-stderr-a-pipe-as-journal-or-container"),
        pytest.param(
            "file", SERVE, ["--capture-output", "--error-logfile", "{log}"], False,
            id="serve-capture-output-error-logfile",
        ),
        # A terminal: printed, once per URL, and still never in the error log file.
        pytest.param("pty", None, ["--error-logfile", "{log}"], True, id="stderr-a-terminal"),
        pytest.param("pty", SERVE, [], True, id="serve-stderr-a-terminal"),
    ],
)  # fmt: skip
def test_login_links_are_printed_to_a_terminal_only(
    stderr: Literal["file", "pipe", "pty"],
    command: list[str] | None,
    extra: list[str],
    printed: bool,
    tmp_path: Path,
) -> None:
    port = free_port("127.0.0.1")
    state_dir = tmp_path / "state"
    error_log = tmp_path / "error.log"
    args = ["-b", f"127.0.0.1:{port}", "-w", "1", "--no-control-socket"]
    args += [arg.format(log=error_log) for arg in extra]
    server = start_gunicorn(
        [*args, *([] if command else [*CONFIG, EXAMPLE_APP])],
        env=gunicorn_env(state_dir),
        stderr_path=tmp_path / "stderr.log",
        command=command,
        stderr=stderr,
    )
    try:
        # gunicorn's own lines may go to the error log: wait for an answer, not for them.
        deadline = time.monotonic() + 60
        while not accepts("127.0.0.1", port, 0.5) or _status(port) != 200:
            assert server.proc.poll() is None, server.stderr()
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.1)
        token = _token(state_dir)
        assert server.stop() == 0
    finally:
        server.kill()
    seen = server.stderr() + (error_log.read_text() if error_log.exists() else "")
    link = f"http://127.0.0.1:{port}/?token={token}"
    hint = (SERVE_HINT if command else GUNICORN_HINT).format(port=port)
    if printed:
        assert server.stderr().count(link) == 1, seen
        assert hint not in seen
    else:
        assert token not in seen, seen
        assert seen.count(hint) == 1, seen
        assert "not a terminal" in seen
    if error_log.exists():
        assert token not in error_log.read_text()


#: gunicorn as a container's main process (``docker run -t``, compose ``tty: true``): PID 1 of
#: its own PID namespace, on a terminal that the container runtime's log records.
IN_A_NEW_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]


@pytest.mark.root
@pytest.mark.parametrize(
    "wrapper",
    [
        pytest.param([], id="gunicorn-is-pid-1"),
        pytest.param(["sh", "-c", '"$@"; true', "sh"], id="under-an-init-that-is-pid-1"),
    ],
)
def test_login_links_are_not_printed_to_a_containers_terminal(
    wrapper: list[str], tmp_path: Path
) -> None:
    """The terminal of a container's first process is kept by the container runtime
    (``docker logs``): the links went there. A hint instead, as for a file or a pipe."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a new PID namespace needs root and unshare (util-linux)")
    port = free_port("127.0.0.1")
    state_dir = tmp_path / "state"
    server = start_gunicorn(
        ["-b", f"127.0.0.1:{port}", "-w", "1", "--no-control-socket", *CONFIG, EXAMPLE_APP],
        env=gunicorn_env(state_dir),
        stderr_path=tmp_path / "stderr.log",
        command=[*IN_A_NEW_PID_NAMESPACE, *wrapper, *GUNICORN],
        stderr="pty",
    )
    try:
        deadline = time.monotonic() + 60
        while not accepts("127.0.0.1", port, 0.5) or _status(port) != 200:
            assert server.proc.poll() is None, server.stderr()
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.1)
        token = _token(state_dir)
    finally:
        server.kill()
    seen = server.stderr()
    assert token not in seen, seen
    assert seen.count(GUNICORN_HINT.format(port=port)) == 1, seen


def _status(port: int) -> int | None:
    try:
        return request("127.0.0.1", port, "/healthz", timeout=5).status
    except OSError:
        return None


@pytest.mark.parametrize(
    "log_format", [pytest.param(None, id="default-format"), pytest.param(ACCESS_FORMAT, id="all")]
)
def test_access_log_never_holds_a_secret(log_format: str | None, tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    access_log = tmp_path / "access.log"
    state_dir = tmp_path / "state"
    extra = ["--access-logfile", str(access_log)]
    extra += [] if log_format is None else ["--access-logformat", log_format]
    with running(
        [("127.0.0.1", port)],
        state_dir=state_dir,
        stderr_path=tmp_path / "gunicorn.log",
        extra=extra,
        # No loopback bypass, so that the token link answers with a real session cookie.
        env=gunicorn_env(state_dir, FLASK_TAILNET_LOCAL_BYPASS="false"),
    ) as server:
        token = _token(state_dir)
        link = request("127.0.0.1", port, f"/?token={token}")
        assert link.status == 303, link.body
        session = link.headers["set-cookie"].split(";", 1)[0]
        secrets_sent = [token, session.split("=", 1)[1], "Basic-password-value"]
        assert request("127.0.0.1", port, headers={"Cookie": session}).status == 200
        request(
            "127.0.0.1",
            port,
            f"/api/whoami?a=1&token={token}",
            headers={
                "Authorization": f"Bearer {token}",
                "Cookie": session,
                "Referer": f"http://127.0.0.1:{port}/?token={token}",
            },
        )
        request(
            "127.0.0.1",
            port,
            "/api/whoami",
            headers={"Authorization": "Basic Basic-password-value", "Cookie": session},
        )
        _invalid_request_line(port, token)
        deadline = time.monotonic() + 10
        while access_log.read_text().count("\n") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        logged = access_log.read_text()
        stderr = server.stderr()
    assert logged.count("\n") >= 3, logged
    for secret in secrets_sent:
        assert secret not in logged
    assert f"token={R}" in logged
    if log_format is not None:
        assert f"auth={R}" in logged
        assert f"cookie={R}" in logged
        assert f"setcookie={R}" in logged
    # The error log (gunicorn's stderr, a file) never holds the token: not even the login links.
    assert token not in stderr, stderr
    assert "Invalid request from ip=127.0.0.1" in stderr


def _invalid_request_line(port: int, token: str) -> None:
    """A request line gunicorn refuses and logs as an error, with the token in it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET /?token={token} HTTP/1.1 junk\r\nHost: localhost\r\n\r\n".encode())
        conn.settimeout(10)
        while conn.recv(4096):
            pass


def test_login_url_printed_once_on_stderr_not_in_access_log(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    access_log = tmp_path / "access.log"
    state_dir = tmp_path / "state"
    assert not state_dir.exists()
    with running(
        [("127.0.0.1", port), ("::1", port)],
        state_dir=state_dir,
        stderr_path=tmp_path / "gunicorn.log",
        workers=2,
        extra=["--access-logfile", str(access_log)],
        stderr="pty",  # a terminal: the only place the links are printed
    ) as server:
        token = _token(state_dir)
        assert request("127.0.0.1", port, "/healthz").status == 200
        stderr = server.stderr()
        logged = access_log.read_text()
    quoted = token  # the token alphabet is URL-safe: quoting leaves it as it is
    lines = [line for line in stderr.splitlines() if token in line]
    assert lines == [
        f"    http://127.0.0.1:{port}/?token={quoted}",
        f"    http://[::1]:{port}/?token={quoted}",
    ]
    assert stderr.count("to log in from another tailnet device") == 1
    assert token not in logged
    # The state was made by the master before any worker booted.
    assert stderr.index("to log in") < stderr.index("Booting worker")
    assert (state_dir / "session_key").stat().st_mode & 0o777 == 0o600
    assert state_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_master_and_workers(sig: signal.Signals, tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    with running(
        [("127.0.0.1", port)],
        state_dir=tmp_path / "state",
        stderr_path=tmp_path / "gunicorn.log",
        workers=4,
    ) as server:
        workers = server.workers()
        assert len(workers) == 4
        assert request("127.0.0.1", port, "/healthz").status == 200
        assert server.stop(sig, timeout=30) == 0, server.stderr()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers)
        assert not accepts("127.0.0.1", port, 0.5)


def test_app_without_the_guard_is_refused(tmp_path: Path) -> None:
    module = tmp_path / "bare_app.py"
    module.write_text("from flask import Flask\napp = Flask('bare')\n")
    port = free_port("127.0.0.1")
    env = gunicorn_env(tmp_path / "state", PYTHONPATH=str(tmp_path))
    server: Gunicorn = start_gunicorn(
        [*tg_args(), "-b", f"127.0.0.1:{port}", "bare_app:app"],
        env=env,
        stderr_path=tmp_path / "gunicorn.log",
    )
    try:
        assert server.proc.wait(timeout=60) != 0
        assert "does not use flask-tailnet" in server.stderr()
        assert port not in listening_ports()
    finally:
        server.kill()
