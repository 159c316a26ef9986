"""Real gunicorn processes for the tests: start one, wait until it serves, stop it, clean up.

Every process is started in its own session (process group), so teardown kills the master and
its workers together even when a test fails; every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from .conftest import addresses_on_lo

__all__ = ["addresses_on_lo"]  # re-exported: the gunicorn tests import it from here

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = [sys.executable, "-m", "gunicorn"]
CONFIG = ["-c", "python:flask_tailnet.gunicorn"]
EXAMPLE_APP = "example_app:create_app()"
#: Seconds a server may take to boot all its workers.
START_TIMEOUT = 60.0
#: Seconds a server may take to stop after SIGTERM or SIGINT.
STOP_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted (loopback interface only)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        return probe.connect_ex((host, port)) == 0


def listening_ports() -> set[int]:
    """The TCP ports in LISTEN state on this machine, read from /proc (no traffic)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's workers of a master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # The command name may hold spaces and parentheses: the ppid follows the last ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Gunicorn:
    """A running gunicorn master started by :func:`start_gunicorn`."""

    proc: subprocess.Popen[bytes]
    stderr_path: Path
    binds: list[tuple[str, int]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` to the master and return its exit status (fails after ``timeout``)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            pytest.fail(f"gunicorn did not stop within {timeout} s of signal {sig}")

    def kill(self) -> None:
        kill_group(self.proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s whole process group (its own session) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def wait_until_serving(server: Gunicorn, workers: int, timeout: float = START_TIMEOUT) -> None:
    """Wait until every bind accepts connections and ``workers`` workers have booted; fail (with
    gunicorn's stderr) when the master exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    pending = list(server.binds)
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.proc.returncode}:\n{server.stderr()}")
        pending = [(host, port) for host, port in pending if not accepts(host, port, 0.5)]
        booted = len(re.findall(r"Booting worker with pid", server.stderr()))
        if not pending and booted >= workers and len(server.workers()) >= workers:
            return
        if time.monotonic() > deadline:
            kill_group(server.proc)
            pytest.fail(
                f"gunicorn not serving after {timeout} s ({booted} workers booted, "
                f"waiting for {pending}):\n{server.stderr()}"
            )
        time.sleep(0.1)


def gunicorn_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for the example app with its state in ``state_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_TAILNET_", "TAILNET_"))}
    env.pop("GUNICORN_CMD_ARGS", None)
    env.pop("PORT", None)
    return {**env, "FLASK_TAILNET_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1", **extra}


#: What the server's stderr (and stdout) is: a file, a pipe, or a terminal (a pty).
StderrKind = Literal["file", "pipe", "pty"]


def start_gunicorn(
    args: Sequence[str],
    *,
    env: dict[str, str],
    stderr_path: Path,
    binds: Sequence[tuple[str, int]] = (),
    command: Sequence[str] | None = None,
    stderr: StderrKind = "file",
    pass_fds: Sequence[int] = (),
) -> Gunicorn:
    """Start ``gunicorn ARGS`` (or ``command ARGS``) in its own session from the repository root,
    stderr (and stdout) to ``stderr_path``: directly (``"file"``), or copied there by a thread
    from a pipe or from the terminal side of a pty, which the server then sees as its stderr.
    ``pass_fds`` stay open, with their numbers, in the server. The caller must stop it: prefer
    :func:`running`."""
    if shutil.which("ip") is None and any(":" in host for host, _ in binds):
        pytest.skip("the `ip` command (iproute2) is not installed")
    if stderr == "file":
        with stderr_path.open("wb") as log:
            proc = _popen(args, env=env, command=command, output=log.fileno(), pass_fds=pass_fds)
        return Gunicorn(proc, stderr_path, list(binds))
    read, write = pty.openpty() if stderr == "pty" else os.pipe()
    try:
        proc = _popen(args, env=env, command=command, output=write, pass_fds=pass_fds)
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)  # the server holds the only writer: the copy ends when it exits
    stderr_path.write_bytes(b"")
    threading.Thread(target=_copy, args=(read, stderr_path), daemon=True).start()
    return Gunicorn(proc, stderr_path, list(binds))


def _popen(
    args: Sequence[str],
    *,
    env: dict[str, str],
    command: Sequence[str] | None,
    output: int,
    pass_fds: Sequence[int],
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*(GUNICORN if command is None else command), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )


def _copy(read: int, path: Path) -> None:
    """Append what comes out of ``read`` to ``path`` (a pty's ``\r\n`` as ``\n``) until the
    writers are gone (end of file, or EIO from a pty)."""
    try:
        with path.open("ab", buffering=0) as log:
            while True:
                try:
                    chunk = os.read(read, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                log.write(chunk.replace(b"\r\n", b"\n"))
    finally:
        os.close(read)


@contextlib.contextmanager
def running(
    binds: Sequence[tuple[str, int]],
    *,
    state_dir: Path,
    stderr_path: Path,
    workers: int = 2,
    worker_class: str = "sync",
    app: str = EXAMPLE_APP,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    command: Sequence[str] | None = None,
    timeout: float = START_TIMEOUT,
    stderr: StderrKind = "file",
) -> Iterator[Gunicorn]:
    """The example app under ``gunicorn -c python:flask_tailnet.gunicorn`` on ``binds``, once it
    serves with all ``workers``; killed (process group) afterwards, even on failure. With
    ``command`` (e.g. ``flask --app example_app tailnet serve``), that runs instead of gunicorn
    and ``app`` and the config are not added. ``stderr`` as for :func:`start_gunicorn`."""
    args = [
        *([] if command is not None else CONFIG),
        *(arg for host, port in binds for arg in ("-b", netloc(host, port))),
        "-w",
        str(workers),
        "-k",
        worker_class,
        "--graceful-timeout",
        "5",
        # gunicorn 27's control socket is one path per user: parallel servers would share it.
        "--no-control-socket",
        *extra,
        *([] if command is not None else [app]),
    ]
    server = start_gunicorn(
        args,
        env=env if env is not None else gunicorn_env(state_dir),
        stderr_path=stderr_path,
        binds=binds,
        command=command,
        stderr=stderr,
    )
    try:
        wait_until_serving(server, workers, timeout)
        yield server
    finally:
        kill_group(server.proc)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: str


def request(
    host: str,
    port: int,
    path: str = "/api/whoami",
    *,
    source: str | None = None,
    headers: dict[str, str] | None = None,
    host_header: str | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One GET to ``host:port`` from ``source`` (the client socket's address)."""
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=None if source is None else (source, 0)
    )
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host_header or netloc(host, port))
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()
