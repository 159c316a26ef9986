"""The start-up line: once per process (at ``init_app``), what the guard found of tailscaled, at a
level that says whether something is wrong, and no secret in it."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from flask_tailnet import tailscaled as tailscaled_module
from flask_tailnet import tailscaled_watch

from .conftest import call, make_app
from .gunicorn_helpers import free_port, gunicorn_env, running
from .tailscaled_stand_in import VERSION, StandInTailscaled

_PID = re.compile(r"\] \[(\d+)\] \[INFO\] ")


@pytest.fixture(autouse=True)
def no_host_tailscaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the tailscaled a test names is seen (nothing planted in /tmp or /run counts)."""
    monkeypatch.setattr(tailscaled_module, "SOCKET_PATHS", (str(tmp_path / "none.sock"),))
    monkeypatch.setattr(tailscaled_watch, "CONTAINER_SOCKET", str(tmp_path / "container.sock"))


def startup_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "flask_tailnet" and "tailscaled" in r.getMessage()
    ]


def start(caplog: pytest.LogCaptureFixture, state_dir: Path, **settings: Any) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="flask_tailnet"):
        make_app(state_dir, auth="token", **settings)
    [line] = startup_lines(caplog)
    return line


def test_without_tailscaled_it_says_so_at_info(
    caplog: pytest.LogCaptureFixture, state_dir: Path
) -> None:
    assert start(caplog, state_dir) == (
        logging.INFO,
        "flask-tailnet: tailscaled: not found on this host (loopback requests are local)",
    )


def test_tun_mode(
    caplog: pytest.LogCaptureFixture, state_dir: Path, tailscaled: StandInTailscaled
) -> None:
    assert start(caplog, state_dir, tailscaled_socket=tailscaled.path) == (
        logging.INFO,
        f"flask-tailnet: tailscaled: {VERSION} at {tailscaled.path}, TUN; "
        "loopback: local (tailscaled relays nothing to it)",
    )


def test_userspace_mode_with_a_funnel_forward(
    caplog: pytest.LogCaptureFixture, state_dir: Path, tailscaled: StandInTailscaled
) -> None:
    tailscaled.status["TUN"] = False
    tailscaled.serve_config = {
        "TCP": {"443": {"TCPForward": "127.0.0.1:5000", "ProxyProtocol": 2}},
        "AllowFunnel": {"server.tail1a2b3.ts.net:443": True},
    }
    level, text = start(caplog, state_dir, tailscaled_socket=tailscaled.path)
    assert level == logging.INFO  # the guard covers all of it: nothing is wrong
    assert text == (
        f"flask-tailnet: tailscaled: {VERSION} at {tailscaled.path}, userspace networking; "
        "loopback: relayed connections are told apart by whois of 127.0.0.1:REMOTE_PORT; only "
        "the others are local; tailscale serve: forwards raw TCP to port 5000: not local there; "
        "tailscale funnel: ON for the TCP forward to port 5000 (public): refused there (403) "
        "unless TAILNET_NETWORK is 'any'"
    )


@pytest.mark.parametrize(
    ("fail", "problem"),
    [
        pytest.param(("/localapi/v0/status", 500), "answered status with 500", id="status-500"),
        pytest.param(("/localapi/v0/serve-config", 503), "503", id="serve-config-503"),
        pytest.param(("/localapi/v0/serve-config", 403), "403", id="serve-config-403"),
    ],
)
def test_an_unreadable_tailscaled_is_a_warning(
    caplog: pytest.LogCaptureFixture,
    state_dir: Path,
    tailscaled: StandInTailscaled,
    fail: tuple[str, int],
    problem: str,
) -> None:
    path, status = fail
    tailscaled.fail_paths[path] = (status, "no")
    level, text = start(caplog, state_dir, tailscaled_socket=tailscaled.path)
    assert level == logging.WARNING
    assert text.startswith(
        f"flask-tailnet: tailscaled: NOT READABLE: tailscaled at {tailscaled.path}"
    )
    assert problem in text
    assert text.endswith(
        "; loopback: NOT LOCAL: every loopback request must authenticate until it answers"
    )


def test_required_identity_without_tailscaled_is_an_error(
    caplog: pytest.LogCaptureFixture, state_dir: Path
) -> None:
    assert start(caplog, state_dir, identity="required") == (
        logging.ERROR,
        "flask-tailnet: tailscaled: not found on this host (loopback requests are local); "
        "TAILNET_IDENTITY is 'required': every remote peer is refused until tailscaled answers",
    )


def test_logged_once_per_process_not_per_request(
    caplog: pytest.LogCaptureFixture, state_dir: Path, tailscaled: StandInTailscaled
) -> None:
    """At init_app only: requests, snapshot refreshes and a second init_app with the same
    settings add no line."""
    tailscaled.status["TUN"] = False
    with caplog.at_level(logging.DEBUG, logger="flask_tailnet"):
        app = make_app(state_dir, tailscaled_socket=tailscaled.path)
        app.extensions["tailnet"].identify.watch.refresh()
        guard = app.extensions["tailnet"]
        assert guard is not None
        client = app.test_client()
        for _ in range(3):
            call(client, peer="127.0.0.1")
            call(client, peer="100.64.0.7", host="100.64.0.1:5000")
        from flask_tailnet import TailnetGuard  # noqa: PLC0415 - the second guard of this test

        TailnetGuard(app, tailscaled_socket=tailscaled.path, state_dir=str(state_dir))
    assert len(startup_lines(caplog)) == 1


def test_no_secret_in_the_line(
    caplog: pytest.LogCaptureFixture,
    state_dir: Path,
    tailscaled: StandInTailscaled,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Neither the app's secrets nor the configuration's appear in it (tailscaled is never sent
    one, so its error text, of which 80 printable characters are shown, cannot hold one)."""
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", "hunter2-correct-horse")
    first = make_app(state_dir, auth="password", password_env="TAILNET_TEST_PASSWORD")
    token = first.extensions["tailnet"].token_file.ensure().decode()
    key = first.extensions["tailnet"].sessions.key_file.ensure().decode()
    tailscaled.fail_paths["/localapi/v0/serve-config"] = (500, "internal error")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="flask_tailnet"):
        make_app(
            state_dir,
            auth="password",
            password_env="TAILNET_TEST_PASSWORD",
            tailscaled_socket=tailscaled.path,
            ratelimit_storage_uri="redis://user:s3cretpass@127.0.0.1:6399/0",
        )
    text = caplog.text
    assert "NOT READABLE" in text
    for secret in (token, key, "hunter2", "s3cretpass"):
        assert secret not in text


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # the master loads the app for its bind check, then each worker loads it again
        pytest.param([], "master and every worker", id="no-preload"),
        pytest.param(["--preload"], "the master only", id="preload"),
    ],
)
def test_under_gunicorn_the_line_is_in_the_error_log_once_per_process(
    tmp_path: Path, tailscaled: StandInTailscaled, extra: list[str], expected: str
) -> None:
    """With flask_tailnet.gunicorn's logger, the info line reaches gunicorn's error log (Python
    alone shows warnings only), once in each process that loads the app."""
    tailscaled.status["TUN"] = False
    port = free_port()
    env = gunicorn_env(tmp_path / "state", FLASK_TAILNET_TAILSCALED_SOCKET=tailscaled.path)
    with running(
        [("127.0.0.1", port)],
        state_dir=tmp_path / "state",
        stderr_path=tmp_path / "gunicorn.log",
        extra=extra,
        env=env,
    ) as server:
        expected_pids = {server.pid} if "--preload" in extra else {server.pid, *server.workers()}
        # a worker loads the app after gunicorn logs its boot: wait for its line (bounded)
        deadline = time.monotonic() + 30
        while True:
            log = server.stderr()
            lines = [line for line in log.splitlines() if "flask-tailnet: tailscaled: " in line]
            pids = [int(match[1]) for match in map(_PID.search, lines) if match is not None]
            if set(pids) >= expected_pids or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # and let a second line from any process show itself
        log = server.stderr()
    lines = [line for line in log.splitlines() if "flask-tailnet: tailscaled: " in line]
    pids = [int(match[1]) for match in map(_PID.search, lines) if match is not None]
    assert len(pids) == len(lines), log  # every line in gunicorn's format, at INFO
    assert all("userspace networking" in line for line in lines), log
    assert sorted(pids) == sorted(expected_pids), f"{expected}: {log}"
