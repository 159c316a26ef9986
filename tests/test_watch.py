"""The state directory's watch: every change is seen by the next read, in every process, and the
session shortcut built on it ends as soon as the session would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_tailnet import watch
from flask_tailnet.credentials import SessionCookie
from flask_tailnet.secretfile import SecretFile
from flask_tailnet.sessions import SessionCodec

from .conftest import TAILNET_HOST, TAILNET_PEER, make_app

pytestmark = pytest.mark.skipif(not watch.AVAILABLE, reason="inotify is Linux only")


def _armed(secret: SecretFile) -> bytes:
    """Read twice, so that the watch is armed and the value cached."""
    value = secret.read()
    assert secret.read() == value
    assert value is not None
    assert secret.watch.armed
    return value


def _elsewhere(code: str, path: Path) -> None:
    """Run ``code`` with ``path`` bound to ``p`` in another process: a change the reading
    process did not make itself."""
    subprocess.run(
        [sys.executable, "-c", f"import os, pathlib; p = pathlib.Path({str(path)!r}); {code}"],
        check=True,
        timeout=30,
    )


CHANGES: list[Any] = [
    pytest.param(
        "t = p.with_name('staged'); t.write_bytes(b'renamed-token\\n'); t.chmod(0o600); "
        "os.replace(t, p)",
        b"renamed-token",
        id="replaced-by-rename",
    ),
    pytest.param(
        "f = open(p, 'wb'); f.write(b'edited-in-place-tok\\n'); f.close()",
        b"edited-in-place-tok",
        id="edited-in-place",
    ),
    pytest.param("p.chmod(0o644)", None, id="file-opened-to-others"),
    pytest.param("p.parent.chmod(0o755)", None, id="directory-opened-to-others"),
    pytest.param("p.unlink()", None, id="deleted"),
    pytest.param("p.unlink(); p.symlink_to('/etc/hostname')", None, id="replaced-by-a-symlink"),
]


@pytest.mark.parametrize(("change", "after"), CHANGES)
def test_a_change_by_another_process_is_seen_by_the_next_read(
    state_dir: Path, change: str, after: bytes | None
) -> None:
    secret = SecretFile(state_dir, "token")
    secret.ensure()
    _armed(secret)
    _elsewhere(change, secret.path)
    assert secret.read() == after


def test_a_file_created_while_watched_is_seen(state_dir: Path) -> None:
    token = SecretFile(state_dir, "token")
    token.ensure()
    password = SecretFile(state_dir, "password")
    assert password.read() is None
    assert password.read() is None
    assert password.watch.armed
    _elsewhere("p.write_bytes(b'new-password\\n'); p.chmod(0o600)", password.path)
    assert password.read() == b"new-password"


def test_a_directory_moved_away_and_replaced_is_followed(state_dir: Path, tmp_path: Path) -> None:
    secret = SecretFile(state_dir, "token")
    old = secret.ensure()
    _armed(secret)
    state_dir.rename(tmp_path / "moved")
    new = SecretFile(state_dir, "other").ensure()  # makes a new, private state_dir
    _elsewhere("p.write_bytes(b'token-in-the-new-directory\\n'); p.chmod(0o600)", secret.path)
    assert new
    assert secret.read() == b"token-in-the-new-directory" != old


def test_a_forked_child_watches_for_itself(state_dir: Path) -> None:
    secret = SecretFile(state_dir, "token")
    secret.ensure()
    _armed(secret)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            report = b"armed-after-fork" if secret.watch.armed else b"disarmed"
            if secret.read() and secret.watch.armed:
                report += b",re-armed"
            os.write(write_end, report)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    assert report == b"disarmed,re-armed"
    # The child's own watch took no event from the parent's queue.
    rotated = SecretFile(state_dir, "token").rotate()
    assert secret.read() == rotated


def test_without_events_a_file_is_still_looked_at_every_second(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a directory watch cannot see (a change through another hard link, a parent renamed)
    is seen by the periodic look."""
    secret = SecretFile(state_dir, "token")
    old = secret.ensure()
    outside = state_dir.parent / "outside"
    os.link(secret.path, outside)
    _armed(secret)
    with open(outside, "wb") as handle:  # same inode; no event in the state directory
        handle.write(b"changed-via-another-name\n")
    assert secret.read() == old  # no event: the cached value, for up to a second
    import flask_tailnet.secretfile as secretfile  # noqa: PLC0415

    later = secretfile._monotonic() + watch.RECHECK_SECONDS + 0.01
    monkeypatch.setattr(secretfile, "_monotonic", lambda: later)
    assert secret.read() == b"changed-via-another-name"


# ---- the session shortcut ------------------------------------------------------------------


def _session_client(app: Flask, cookie: str) -> Callable[..., int]:
    client = app.test_client(use_cookies=False)  # the Cookie header exactly as given

    def get(method: str = "GET", headers: dict[str, str] | None = None) -> int:
        response = client.open(
            "/",
            method=method,
            base_url=f"http://{TAILNET_HOST}",
            environ_base={"REMOTE_ADDR": TAILNET_PEER},
            headers={"Cookie": f"tailnet_session={cookie}", **(headers or {})},
        )
        return response.status_code

    return get


def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = SessionCodec.open

    def counting(self: SessionCodec, cookie: str | None, current: Any) -> Any:
        opened.append(cookie or "")
        return real(self, cookie, current)

    monkeypatch.setattr(SessionCodec, "open", counting)
    return opened


def _token_session(app: Flask) -> tuple[str, Any]:
    state = app.extensions["tailnet"]
    token = state.token_file.ensure()
    cookie = state.sessions.issue(user=None, method="token", credential=token)
    assert cookie is not None
    return cookie, state


def test_a_verified_session_is_served_from_the_shortcut_until_the_token_rotates(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(state_dir)
    cookie, _ = _token_session(app)
    get = _session_client(app, cookie)
    opened = _count_opens(monkeypatch)
    assert [get(), get(), get(), get()] == [200] * 4
    assert len(opened) < 4  # verified, then served from the shortcut
    _elsewhere("pass", state_dir)  # nothing changed: still the shortcut
    before = len(opened)
    assert get() == 200
    assert len(opened) == before
    _elsewhere(
        "from flask_tailnet.secretfile import SecretFile; SecretFile(p, 'token').rotate()",
        state_dir,
    )
    assert get() == 401


def test_the_shortcut_ends_with_a_new_session_key(state_dir: Path) -> None:
    app = make_app(state_dir)
    cookie, state = _token_session(app)
    get = _session_client(app, cookie)
    assert [get(), get()] == [200, 200]
    state.sessions.key_file.rotate()
    assert get() == 401


def test_the_shortcut_ends_with_the_sessions_lifetime(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(state_dir, session_lifetime=60)
    cookie, state = _token_session(app)
    get = _session_client(app, cookie)
    assert [get(), get()] == [200, 200]
    now = state.sessions._now()
    monkeypatch.setattr(state.sessions, "_now", lambda: now + 61)
    assert get() == 401


def test_the_shortcut_still_refuses_a_cross_site_post(state_dir: Path) -> None:
    app = make_app(state_dir)
    cookie, _ = _token_session(app)
    get = _session_client(app, cookie)
    assert [get(), get()] == [200, 200]
    assert get("POST", {"Sec-Fetch-Site": "cross-site"}) == 403
    assert get("POST", {"Origin": f"http://{TAILNET_HOST}"}) == 200


def test_a_session_made_with_the_password_variable_is_verified_every_time(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", "first password")
    app = make_app(state_dir, auth="password", password_env="TAILNET_TEST_PASSWORD")
    state = app.extensions["tailnet"]
    cookie = state.sessions.issue(user=None, method="password", credential=b"first password")
    assert cookie is not None
    get = _session_client(app, cookie)
    opened = _count_opens(monkeypatch)
    assert [get(), get(), get()] == [200] * 3
    assert len(opened) == 3
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", "second password")  # no event in the directory
    assert get() == 401


def test_the_shortcut_is_bounded(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flask_tailnet.credentials as credentials  # noqa: PLC0415

    monkeypatch.setattr(credentials, "_MEMO_LIMIT", 2)
    app = make_app(state_dir)
    cookie, _ = _token_session(app)
    step = next(s.__self__ for s in app.extensions["tailnet"].steps if "Session" in repr(s))
    assert isinstance(step, SessionCookie)
    for extra in range(5):
        get = _session_client(app, f"{cookie}; other={extra}")
        assert get() == 200
        assert len(step._memo) <= 2


def test_threads_reading_while_the_file_rotates_and_the_watch_is_rearmed(
    state_dir: Path,
) -> None:
    """gthread workers: many threads poll, drain and re-arm one watch at once; none raises, and
    after the last rotation every thread reads the last token."""
    import threading  # noqa: PLC0415

    secret = SecretFile(state_dir, "token")
    secret.ensure()
    _armed(secret)
    stop = threading.Event()
    errors: list[BaseException] = []
    last_seen: dict[int, bytes | None] = {}

    def reader(index: int) -> None:
        try:
            while not stop.is_set():
                last_seen[index] = secret.read()
        except BaseException as exc:
            errors.append(exc)

    def disarmer() -> None:
        while not stop.is_set():
            secret.watch.disarm()
            stop.wait(0.002)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=disarmer))
    for thread in threads:
        thread.start()
    try:
        writer = SecretFile(state_dir, "token")
        for _ in range(150):
            final = writer.rotate()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert errors == []
    assert secret.read() == final
    for index in range(6):
        assert last_seen[index] is not None
