"""A hurried operator's configurations: the start-up line and ``flask tailnet status`` must say
what requests really get (a line that says "authenticate" while every request gets 403 sends the
operator after a token that cannot help)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from flask_tailnet import tailscaled as tailscaled_module
from flask_tailnet import tailscaled_watch
from flask_tailnet.cli import tailnet

from .cli_helpers import status_value
from .conftest import call, make_app
from .tailscaled_stand_in import StandInTailscaled


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
