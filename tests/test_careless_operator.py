"""A hurried operator's configurations: the start-up line and ``flask tailnet status`` must say
what requests really get (a line that says "authenticate" while every request gets 403 sends the
operator after a token that cannot help)."""

from __future__ import annotations

import http.client
import logging
import os
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from flask_tailnet import ConfigurationError, tailscaled_watch
from flask_tailnet import tailscaled as tailscaled_module
from flask_tailnet.cli import tailnet

from .cli_helpers import status_value
from .conftest import addresses_on_lo, call, make_app
from .gunicorn_helpers import free_port, gunicorn_env, running
from .tailscaled_relay import relaying
from .tailscaled_stand_in import StandInTailscaled, running_tailscaled, trusted_directory


@pytest.fixture(autouse=True)
def no_host_tailscaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the tailscaled a test names is seen (nothing planted in /tmp or /run counts)."""
    monkeypatch.setattr(tailscaled_module, "SOCKET_PATHS", (str(tmp_path / "none.sock"),))
    monkeypatch.setattr(tailscaled_watch, "CONTAINER_SOCKET", str(tmp_path / "container.sock"))


GATES = {
    "a-user-gate": {"allowed_users": "alice@example.com"},
    "a-tag-gate": {"allowed_tags": "tag:web"},
    "a-capability-gate": {"required_capability": "example.com/cap/app"},
    "identity-required": {"identity": "required"},
}


def _socket_is_a_directory(tmp_path: Path, tailscaled: StandInTailscaled) -> dict[str, Any]:
    return {"tailscaled_socket": str(tmp_path)}


def _socket_is_a_regular_file(tmp_path: Path, tailscaled: StandInTailscaled) -> dict[str, Any]:
    path = tmp_path / "tailscaled.sock"
    path.write_text("")
    return {"tailscaled_socket": str(path)}


def _socket_typo(tmp_path: Path, tailscaled: StandInTailscaled) -> dict[str, Any]:
    return {"tailscaled_socket": str(tmp_path / "tailscaled.sokc")}


def _tailscaled_answers_500(tmp_path: Path, tailscaled: StandInTailscaled) -> dict[str, Any]:
    tailscaled.fail_with = (500, "boom")
    return {"tailscaled_socket": tailscaled.path}


UNREADABLE = {
    "socket-named-is-a-directory": _socket_is_a_directory,
    "socket-named-is-a-regular-file": _socket_is_a_regular_file,
    "socket-named-with-a-typo": _socket_typo,
    "tailscaled-answers-500": _tailscaled_answers_500,
}


@pytest.mark.parametrize("setup", UNREADABLE.values(), ids=UNREADABLE.keys())
@pytest.mark.parametrize("gate", GATES.values(), ids=GATES.keys())
def test_with_a_gate_an_unreadable_tailscaled_is_said_to_refuse_loopback_not_to_ask(
    caplog: pytest.LogCaptureFixture,
    state_dir: Path,
    tmp_path: Path,
    tailscaled: StandInTailscaled,
    setup: Any,
    gate: dict[str, Any],
) -> None:
    settings = {**setup(tmp_path, tailscaled), **gate}
    with caplog.at_level(logging.DEBUG, logger="flask_tailnet"):
        app = make_app(state_dir, auth="token", **settings)
    line = " ".join(r.getMessage() for r in caplog.records if "loopback" in r.getMessage())
    the_token = app.extensions["tailnet"].token_file.ensure().decode()
    answer = call(app.test_client(), headers={"Authorization": f"Bearer {the_token}"})
    assert answer.status_code == 403  # what loopback requests really get, even with the token
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 1
    said = status_value(result.stdout, "loopback")
    for text in (line, said, result.stderr):
        assert "must authenticate" not in text, text
        assert "refused" in text, text


# ---- TAILNET_USERSPACE=False against a tailscaled that says it runs in userspace mode ----------

NODE = "100.64.108.1"
ALICE = "100.64.108.7"


@pytest.mark.root
def test_userspace_false_cannot_make_a_userspace_tailscaleds_relays_local(tmp_path: Path) -> None:
    """An operator who sets ``TAILNET_USERSPACE=False`` ("I don't use userspace networking") on a
    node whose tailscaled says ``TUN: false`` would have every tailnet peer served as local: the
    setting cannot say more than tailscaled does. The start-up line must not say TUN either."""
    with ExitStack() as stack:
        stack.enter_context(addresses_on_lo([f"{NODE}/32", f"{ALICE}/32"]))
        stand_in = stack.enter_context(running_tailscaled(stack.enter_context(trusted_directory())))
        stand_in.status["TUN"] = False
        stand_in.add_peer(ALICE, login="alice@example.com")
        port = free_port()
        log = tmp_path / "gunicorn.log"
        env = gunicorn_env(
            tmp_path / "state",
            FLASK_TAILNET_TAILSCALED_SOCKET=stand_in.path,
            FLASK_TAILNET_USERSPACE="false",  # JSON false, as an env var gives it
        )
        stack.enter_context(
            running(
                [("127.0.0.1", port)],
                state_dir=tmp_path,
                stderr_path=log,
                workers=1,
                app="tests.relayed_app:create_app()",
                env=env,
            )
        )
        relay = stack.enter_context(relaying([NODE], port, stand_in))
        conn = http.client.HTTPConnection(
            NODE, relay.port(socket.AF_INET), timeout=15, source_address=(ALICE, 0)
        )
        try:
            conn.request("GET", "/", headers={"Host": f"{NODE}:{port}"})
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        started = log.read_text()
    assert answer.status in (401, 303), (answer.status, body)  # the peer, never local
    [line] = [x for x in started.splitlines() if "flask-tailnet: tailscaled:" in x][:1]
    assert ", TUN" not in line, line
    assert "userspace" in line, line


# ---- a gate set where no tailscaled answers: every remote peer is refused, say so -------------

NO_TAILSCALED = {
    "no-socket-on-this-host": lambda tmp_path: {},
    "named-socket-typo": lambda tmp_path: {"tailscaled_socket": str(tmp_path / "tailscaled.sokc")},
}


@pytest.mark.parametrize("where", NO_TAILSCALED.values(), ids=NO_TAILSCALED.keys())
@pytest.mark.parametrize(
    "gate", [g for k, g in GATES.items() if k != "identity-required"], ids=list(GATES)[:3]
)
def test_a_gate_without_tailscaled_is_reported_as_refusing_every_remote_peer(
    caplog: pytest.LogCaptureFixture,
    state_dir: Path,
    tmp_path: Path,
    where: Any,
    gate: dict[str, Any],
) -> None:
    """A gate needs an identity, and without tailscaled nobody has one: every remote peer gets
    403, whatever credential it presents. The start-up line (an error) and ``status`` (exit 1)
    must say so, as they do for ``TAILNET_IDENTITY="required"``."""
    with caplog.at_level(logging.DEBUG, logger="flask_tailnet"):
        app = make_app(state_dir, auth="token", **where(tmp_path), **gate)
    the_token = app.extensions["tailnet"].token_file.ensure().decode()
    answer = call(
        app.test_client(),
        peer="100.64.108.7",
        host="100.64.108.1",
        headers={"Authorization": f"Bearer {the_token}"},
    )
    assert answer.status_code == 403  # what a remote peer really gets
    started = [r for r in caplog.records if "tailscaled" in r.getMessage()]
    assert started[0].levelno == logging.ERROR, started[0].getMessage()
    assert "every remote peer is refused" in started[0].getMessage()
    result = app.test_cli_runner().invoke(tailnet, ["status"])
    assert result.exit_code == 1, result.stdout
    assert "every remote peer is refused" in result.stdout + result.stderr


# ---- TAILNET_ALLOWED_USERS entries that can never match a login -------------------------------

NEVER_A_LOGIN = {
    "json-list-as-one-string": '["alice@example.com"]',
    "json-list-of-two-as-one-string": '["alice@example.com", "bob@example.com"]',
    "quoted-login": '"alice@example.com"',
    "bare-user-name": "alice",
    "display-name": "Alice",
}


@pytest.mark.parametrize("value", NEVER_A_LOGIN.values(), ids=NEVER_A_LOGIN.keys())
def test_an_allowed_user_that_can_never_match_a_login_is_refused_at_start(
    state_dir: Path, value: str
) -> None:
    """Tailscale login names are ``user@domain`` (``alice@github`` too). An entry with no ``@``,
    or JSON punctuation from a list pasted as one string, matches nobody: the app would start
    and answer 403 to every remote peer, with the gates line showing the mistake only to someone
    who reads it closely. It is refused at start, saying what to write."""
    with pytest.raises(ConfigurationError, match="TAILNET_ALLOWED_USERS") as raised:
        make_app(state_dir, auth="token", allowed_users=value)
    assert "@" in str(raised.value)


def test_an_apostrophe_in_a_login_is_still_a_login(state_dir: Path) -> None:
    app = make_app(state_dir, auth="token", allowed_users="o'brien@example.com, alice@github")
    assert app.extensions["tailnet"].settings.identity_rule.users == {
        "o'brien@example.com",
        "alice@github",
    }


# ---- a TCP forward (and Funnel) to the app's port: what loopback requests there get -----------

FORWARD = {"TCP": {"443": {"TCPForward": "127.0.0.1:5000"}}}
FUNNEL = {**FORWARD, "AllowFunnel": {"node.tail1a2b3.ts.net:443": True}}
FORWARDED_CASES = {
    "forward-no-gate": (FORWARD, {}, 200),
    "forward-with-a-user-gate": (FORWARD, {"allowed_users": "alice@example.com"}, 403),
    "forward-identity-required": (FORWARD, {"identity": "required"}, 403),
    "funnel-tailnet-policy": (FUNNEL, {}, 403),
    "funnel-network-any": (FUNNEL, {"network": "any"}, 200),
}


@pytest.mark.parametrize(
    ("config", "settings", "status"), FORWARDED_CASES.values(), ids=FORWARDED_CASES.keys()
)
def test_the_forward_lines_say_when_requests_there_are_refused(
    caplog: pytest.LogCaptureFixture,
    state_dir: Path,
    tailscaled: StandInTailscaled,
    config: dict[str, Any],
    settings: dict[str, Any],
    status: int,
) -> None:
    """A loopback request with the token on a port serve forwards raw TCP to: 200 as a proxied
    peer, or 403 (a gate or "required": nobody can be named; Funnel: public clients) whatever
    it presents. The start-up line and ``status`` must say "refused" exactly when it is."""
    tailscaled.serve_config = config
    with caplog.at_level(logging.DEBUG, logger="flask_tailnet"):
        app = make_app(state_dir, auth="token", tailscaled_socket=tailscaled.path, **settings)
    line = " ".join(r.getMessage() for r in caplog.records if "tailscaled" in r.getMessage())
    the_token = app.extensions["tailnet"].token_file.ensure().decode()
    answer = app.test_client().get(
        "/",
        headers={"Authorization": f"Bearer {the_token}"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
        environ_overrides={"HTTP_HOST": "localhost:5000", "SERVER_PORT": "5000"},
    )
    assert answer.status_code == status
    shown = app.test_cli_runner().invoke(tailnet, ["status"]).stdout
    for said in (line.split("; "), shown.splitlines()):  # the start-up line, then status
        about_the_port = [x for x in said if "port 5000" in x and "tailscale" in x]
        assert about_the_port
        assert any("refused" in x for x in about_the_port) is (status == 403), about_the_port


# ---- a userspace tailscaled whose (unnamed) socket file disappears ----------------------------


@pytest.mark.parametrize("named", [False, True], ids=["found-at-a-usual-path", "named"])
def test_a_userspace_tailscaleds_socket_that_disappears_leaves_loopback_not_local(
    monkeypatch: pytest.MonkeyPatch, named: bool
) -> None:
    """tailscaled in userspace mode relays every tailnet connection to 127.0.0.1; when its socket
    file goes (``rm`` of /run/tailscale, a cleanup of the directory) it may still be relaying,
    and no whois can tell its connections apart. A socket found at a usual path must be treated
    as a named one is: not local until it is back (it was: served as local)."""
    with trusted_directory() as directory, running_tailscaled(directory) as stand_in:
        stand_in.status["TUN"] = False
        monkeypatch.setattr(tailscaled_module, "SOCKET_PATHS", (stand_in.path,))
        watch = tailscaled_watch.TailscaledWatch(stand_in.path if named else None, "auto")
        assert watch.current().userspace
        os.unlink(stand_in.path)  # tailscaled still runs (and relays): its socket file is gone
        gone = watch.refresh()
    assert not gone.loopback_clear
    assert gone.unknown
    said = tailscaled_watch.describe(gone)
    assert said[0].startswith("tailscaled: NOT READABLE"), said
    assert "NOT LOCAL" in said[1], said
