"""What the guard knows of tailscaled between two reads (tailscaled_watch.py): which states leave
loopback requests local, against the stand-in tailscaled started and stopped for real."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from flask_tailnet.tailscaled_watch import TailscaledWatch, describe

from .tailscaled_stand_in import running_tailscaled, trusted_directory


def refusing(path: str) -> socket.socket:
    """A socket file nobody listens on (a stopped tailscaled's leftover): connect() is refused."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    return sock


@pytest.mark.parametrize(
    ("tun", "clear_after", "unknown_after"),
    [
        pytest.param(True, True, False, id="tun-mode-stopped-relays-nothing"),
        pytest.param(False, False, True, id="userspace-mode-stopped-is-unknown"),
    ],
)
def test_a_stopped_tailscaled(tun: bool, clear_after: bool, unknown_after: bool) -> None:
    """Once stopped (its socket refuses connections), a TUN-mode tailscaled relays nothing; a
    userspace one that was seen running leaves loopback requests needing whois, which no longer
    answers: unknown, and said so."""
    with trusted_directory() as directory:
        with running_tailscaled(directory) as stand_in:
            stand_in.status["TUN"] = tun
            path = stand_in.path
            watch = TailscaledWatch(path, "auto")
            running = watch.current()
            assert running.reachable
            assert running.userspace is (not tun)
        leftover = refusing(path)
        try:
            stopped = watch.refresh()
        finally:
            leftover.close()
    assert not stopped.reachable
    assert stopped.loopback_clear is clear_after
    assert stopped.unknown is unknown_after
    lines = describe(stopped)
    assert lines[0].startswith("tailscaled: NOT READABLE")
    assert ("NOT LOCAL" in lines[1]) is unknown_after


def test_no_tailscaled_anywhere_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watch_module = __import__("flask_tailnet.tailscaled_watch", fromlist=["x"])
    tailscaled_module = __import__("flask_tailnet.tailscaled", fromlist=["x"])
    monkeypatch.setattr(tailscaled_module, "SOCKET_PATHS", (str(tmp_path / "none.sock"),))
    monkeypatch.setattr(watch_module, "CONTAINER_SOCKET", str(tmp_path / "container.sock"))
    snapshot = TailscaledWatch(None, "auto").current()
    assert snapshot.loopback_clear
    assert not snapshot.unknown
    assert describe(snapshot) == [
        "tailscaled: not found on this host (loopback requests are local)"
    ]
