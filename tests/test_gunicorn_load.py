"""Real gunicorn processes and real secret files under stress: first start, rotation under load, and
``kill -9`` in the middle of a rotation.

- First start: 10 cold starts from a state directory that does not exist yet, 4 workers each; every
  worker accepts the one token that ``flask tailnet token`` prints, and the master created it
  before it forked a worker.
- Rotation under load: bounded load from tailnet addresses while ``flask tailnet token --rotate``
  runs every second; no 5xx, no connection error, a 401 only for a token already rotated away, and
  a reader process in a tight loop never sees the file empty or partial.
- Crash during rotation: a process rotating (or writing a large file) in a loop is SIGKILLed at
  random points, many times; the file is whole after each kill.

The gunicorn tests need root (addresses on the loopback interface) and skip without it, never under
CI. The crash tests need neither root nor gunicorn. Tokens never appear in a failure message:
server logs are redacted before they are shown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flask_tailnet.secretfile import SecretFile
from flask_tailnet.sessions import SESSION_KEY_FILE
from flask_tailnet.token import TOKEN_FILE

from .gunicorn_helpers import (
    ROOT,
    Gunicorn,
    addresses_on_lo,
    free_port,
    gunicorn_env,
    running,
)

SERVER_V4, CLIENT_V4 = "100.64.0.50", "100.64.0.51"
SERVER_V6, CLIENT_V6 = "fd7a:115c:a1e0::50", "fd7a:115c:a1e0::51"
ADDRESSES = [f"{SERVER_V4}/32", f"{CLIENT_V4}/32", f"{SERVER_V6}/128", f"{CLIENT_V6}/128"]

#: The example app plus ``/pid`` (which worker answered).
PID_APP = "tests.gunicorn_pid_app:create_app()"
WORKERS = 4
TOKEN_SHAPE = re.compile(rb"[A-Za-z0-9_-]{43}")
#: A token file as SecretFile writes it.
TOKEN_LINE = re.compile(rb"[A-Za-z0-9_-]{43}\n")

#: The load test sends a rotated-away token once per rotation and thread; the default budget
#: (5 failures a minute per client and process) would answer 429 long before the run ends.
LOAD_LIMITS = "100000 per minute"


@pytest.fixture(scope="module")
def tailnet_addresses() -> Iterator[None]:
    with addresses_on_lo(ADDRESSES):
        yield


# ---- helpers: redaction, the CLI, a gunicorn process -------------------------------------------


def _redacted(text: str, *known: bytes | str) -> str:
    """``text`` with every known secret and anything shaped like a token or credential masked."""
    for secret in known:
        value = secret.decode("ascii", "replace") if isinstance(secret, bytes) else secret
        if value:
            text = text.replace(value, "<token>")
    text = re.sub(r"(?i)(token=)[^&\s]+", r"\1<redacted>", text)
    text = re.sub(r"(?i)(authorization:\s*\w+\s+)\S+", r"\1<redacted>", text)
    return re.sub(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", "<token?>", text)


def _env(state_dir: Path, **extra: str) -> dict[str, str]:
    return gunicorn_env(state_dir, **extra)


def _cli(state_dir: Path, *args: str) -> bytes:
    """``flask --app example_app tailnet <args>`` as a real process; its stdout, stripped."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app", "tailnet", *args],
        cwd=ROOT,
        env=_env(state_dir),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        stderr = _redacted(result.stderr.decode(errors="replace"), result.stdout.strip())
        pytest.fail(f"flask tailnet {' '.join(args)} exited {result.returncode}: {stderr}")
    return result.stdout.strip()


@dataclass
class Server:
    """A running gunicorn (4 workers of the pid app) on ``hosts`` and one ``port``."""

    gunicorn: Gunicorn
    port: int
    state_dir: Path

    def log(self, *known: bytes) -> str:
        return _redacted(self.gunicorn.stderr(), *known)


@contextlib.contextmanager
def serving(
    hosts: tuple[str, ...],
    state_dir: Path,
    log_path: Path,
    *,
    worker_class: str = "sync",
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """``gunicorn -c python:flask_tailnet.gunicorn -w 4`` serving the pid app on ``hosts`` (one
    free port), once every worker has booted; the process group is killed afterwards."""
    port = free_port(hosts[0])
    with running(
        [(host, port) for host in hosts],
        state_dir=state_dir,
        stderr_path=log_path,
        workers=WORKERS,
        worker_class=worker_class,
        app=PID_APP,
        extra=extra,
        env=env,
    ) as gunicorn:
        yield Server(gunicorn, port, state_dir)


def _get(host: str, port: int, source: str, path: str, token: bytes | None) -> tuple[int, bytes]:
    """One request on a new connection from ``source``; (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))
    try:
        headers = {"Connection": "close"}
        if token is not None:
            headers["Authorization"] = "Bearer " + token.decode("ascii", "replace")
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---- 1. first start ------------------------------------------------------------------------------

COLD_STARTS = 10


@dataclass
class Start:
    prepared: bool = False
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    pids: set[int] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    requests: int = 0


def _reach_every_worker(server: Server, token: bytes, start: Start) -> None:
    """Requests with ``token`` from the tailnet client, 8 at a time, each holding its worker for
    50 ms so that the 4 sync workers all get some; until 4 workers answered (and at least 32
    requests were made), at most 400 requests or 15 s."""
    stop = threading.Event()
    deadline = time.monotonic() + 15
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, body = _get(SERVER_V4, server.port, CLIENT_V4, "/pid?hold=0.05", token)
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    start.requests += 1
                    start.errors[type(exc).__name__] += 1
                continue
            with lock:
                start.requests += 1
                start.statuses[status] += 1
                if status == 200:
                    answer = json.loads(body)
                    start.pids.add(int(answer["pid"]))
                    start.methods.add(str(answer["method"]))
                if (len(start.pids) >= WORKERS and start.requests >= 32) or start.requests >= 400:
                    stop.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


@pytest.mark.root
def test_first_start_every_worker_accepts_the_printed_token(
    tailnet_addresses: None, tmp_path: Path
) -> None:
    began = time.monotonic()
    starts: list[Start] = []
    for number in range(COLD_STARTS):
        state_dir = tmp_path / f"start{number}" / "state"
        state_dir.parent.mkdir()
        start = Start()
        starts.append(start)
        with serving((SERVER_V4,), state_dir, state_dir.parent / "gunicorn.log") as server:
            workers = server.gunicorn.workers()
            # Every worker has booted, but no request and no CLI has touched the state yet: only
            # the master can have made it.
            start.prepared = all(
                (state_dir / name).is_file() for name in (TOKEN_FILE, SESSION_KEY_FILE)
            )
            token = _cli(state_dir, "token")
            _reach_every_worker(server, token, start)
            on_disk = (state_dir / TOKEN_FILE).read_bytes()
            log = server.log(token)
        where = f"start {number}: {start} workers {sorted(workers)}; log:\n{log}"
        assert TOKEN_SHAPE.fullmatch(token), where
        assert on_disk == token + b"\n", f"the token changed during the start; {where}"
        assert not start.errors, where
        assert set(start.statuses) == {200}, where
        assert start.methods == {"token"}, where
        assert len(start.pids) == WORKERS, where
        assert start.pids <= set(workers), where
        assert _mode(state_dir) == 0o700, where
        assert _mode(state_dir / TOKEN_FILE) == 0o600, where
    assert all(start.prepared for start in starts), (
        "the token or the session key did not exist when the workers had been forked (the "
        f"master must prepare them): {[start.prepared for start in starts]}"
    )
    print(
        f"\nfirst start: {COLD_STARTS} cold starts, "
        f"{sum(s.requests for s in starts)} requests, all 200 from {WORKERS} workers each, "
        f"{time.monotonic() - began:.1f} s"
    )


# ---- 2. rotation under load ----------------------------------------------------------------------

LOAD_SECONDS = 20.0
ROTATE_EVERY = 1.0
LOAD_THREADS = 4  # half from the IPv4 client address, half from the IPv6 one

#: A separate process reading the token file in a tight loop (niced, so that it does not starve
#: the server it watches), until SIGTERM or its deadline; prints what it saw as JSON.
READER = r"""
import json, os, re, signal, sys, time
path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
shape = re.compile(rb"[A-Za-z0-9_-]{43}\n")
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
os.nice(10)
reads = missing = 0
bad = []
seen = {}
print("ready", flush=True)
while not stopping and time.monotonic() < deadline:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        missing += 1
        continue
    reads += 1
    if shape.fullmatch(data) is None:
        if len(bad) < 20:
            bad.append(len(data))
        else:
            bad[-1] = len(data)
    elif data not in seen:
        seen[data] = time.monotonic()
print(json.dumps({
    "reads": reads, "missing": missing, "bad_lengths": bad,
    "seen": [[value.decode().strip(), at] for value, at in seen.items()],
}), flush=True)
"""


@dataclass(slots=True)
class Sent:
    thread: int
    token: bytes
    read_at: float
    sent_at: float
    done_at: float
    status: int | None
    error: str | None


@dataclass(slots=True)
class Rotation:
    started: float
    ended: float
    value: bytes


def _load(server: Server, thread: int, end: float, sent: list[Sent]) -> None:
    """Requests on new connections until ``end`` (at most 100 000); the token is re-read from the
    file after each 401, as a client that was told its token is stale would."""
    host, source = (SERVER_V4, CLIENT_V4) if thread % 2 == 0 else (SERVER_V6, CLIENT_V6)
    # Niced (this thread only), so that the rotation command keeps to its schedule on a busy
    # machine instead of waiting for CPU behind the load it is meant to interrupt.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    token_path = server.state_dir / TOKEN_FILE
    token, read_at = token_path.read_bytes().strip(), time.monotonic()
    for _ in range(100_000):
        sent_at = time.monotonic()
        if sent_at >= end:
            return
        status: int | None = None
        error: str | None = None
        try:
            status, _ = _get(host, server.port, source, "/api/whoami", token)
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__
        sent.append(Sent(thread, token, read_at, sent_at, time.monotonic(), status, error))
        if status == 401:
            token, read_at = token_path.read_bytes().strip(), time.monotonic()


@pytest.mark.root
@pytest.mark.parametrize(
    ("worker_class", "extra"),
    [
        pytest.param("sync", (), id="sync"),
        pytest.param("gthread", ("--threads", "4"), id="gthread"),
        # The app (and its secret files) made in the master, then forked into every worker.
        pytest.param("sync", ("--preload",), id="sync-preload"),
    ],
)
def test_rotation_under_load(
    tailnet_addresses: None, tmp_path: Path, worker_class: str, extra: tuple[str, ...]
) -> None:
    state_dir = tmp_path / "state"
    first = _cli(state_dir, "token")
    env = _env(state_dir, FLASK_TAILNET_LOGIN_LIMITS=LOAD_LIMITS)
    sent: list[Sent] = []
    rotations: list[Rotation] = []
    with serving(
        (SERVER_V4, SERVER_V6),
        state_dir,
        tmp_path / "gunicorn.log",
        worker_class=worker_class,
        extra=extra,
        env=env,
    ) as server:
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(state_dir / TOKEN_FILE), str(LOAD_SECONDS + 60)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert _readline(reader) == b"ready\n"
            began = time.monotonic()
            end = began + LOAD_SECONDS
            threads = [
                threading.Thread(target=_load, args=(server, n, end, sent), daemon=True)
                for n in range(LOAD_THREADS)
            ]
            for thread in threads:
                thread.start()
            next_at = began + ROTATE_EVERY
            # The last rotation starts early enough to finish (and be seen) within the run.
            while next_at < end - 2.0:
                time.sleep(max(0.0, next_at - time.monotonic()))
                started = time.monotonic()
                value = _cli(state_dir, "token", "--rotate")
                rotations.append(Rotation(started, time.monotonic(), value))
                next_at = max(next_at + ROTATE_EVERY, time.monotonic())
            for thread in threads:
                thread.join(timeout=LOAD_SECONDS + 30)
            assert not any(thread.is_alive() for thread in threads), "the load did not stop"
        finally:
            reader.send_signal(signal.SIGTERM)
            try:
                out, err = reader.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                reader.kill()
                out, err = reader.communicate()
        values = [first, *(rotation.value for rotation in rotations)]
        log = server.log(*values)
    duration = time.monotonic() - began
    assert reader.returncode == 0, _redacted(err.decode(errors="replace"), *values)
    seen = json.loads(out)

    index = {value: n for n, value in enumerate(values)}
    assert len(index) == len(values), "a rotation printed a token seen before"
    assert all(TOKEN_SHAPE.fullmatch(value) for value in values)
    statuses = Counter(s.status for s in sent if s.error is None)
    errors = Counter(s.error for s in sent if s.error is not None)
    problems: list[str] = []
    if errors:
        problems.append(f"connection errors: {dict(errors)}")
    if set(statuses) - {200, 401}:
        problems.append(f"statuses other than 200 and 401: {dict(statuses)}")
    unknown = [s for s in sent if s.token not in index]
    if unknown:
        lengths = sorted({len(s.token) for s in unknown})
        problems.append(f"{len(unknown)} requests sent a token no rotation printed: {lengths}")
    current_refused = []
    stale_accepted = []
    for s in sent:
        n = index.get(s.token)
        if n is None or s.error is not None:
            continue
        # values[n] was replaced by rotations[n]: it may be refused only once that rotation had
        # begun, and must be refused once that rotation had ended before the request was sent.
        replaced = rotations[n] if n < len(rotations) else None
        if s.status == 401 and (replaced is None or replaced.started >= s.done_at):
            current_refused.append(s)
        if s.status == 200 and replaced is not None and replaced.ended < s.sent_at:
            stale_accepted.append(s)
    if current_refused:
        problems.append(f"{len(current_refused)} 401s for the token in force")
    if stale_accepted:
        problems.append(f"{len(stale_accepted)} 200s for a token rotated away before it was sent")
    refused_twice = Counter((s.thread, s.token) for s in sent if s.status == 401)
    if any(count > 1 for count in refused_twice.values()):
        problems.append(
            "a client got two 401s for one token (it did not re-read the file after the first, "
            "or the server refused the token in force)"
        )
    per_thread = Counter(thread for thread, _ in refused_twice)
    if len(rotations) < 5 or any(per_thread[n] < len(rotations) - 2 for n in range(LOAD_THREADS)):
        problems.append(f"{len(rotations)} rotations; 401s per client {dict(per_thread)}")
    if seen["missing"] or seen["bad_lengths"]:
        problems.append(
            f"the reader saw the file missing {seen['missing']} times, and "
            f"{len(seen['bad_lengths'])}+ empty or partial reads (lengths {seen['bad_lengths']})"
        )
    reader_values = {value.encode() for value, _ in seen["seen"]}
    if not reader_values <= set(values) or len(reader_values) < 2:
        problems.append(f"the reader saw {len(reader_values)} tokens, not all printed")
    summary = (
        f"{' '.join([worker_class, *extra])}: {len(sent)} requests in {duration:.1f} s, "
        f"statuses {dict(statuses)}, "
        f"errors {dict(errors)}, {len(rotations)} rotations "
        f"(CLI {min((r.ended - r.started for r in rotations), default=0):.2f}-"
        f"{max((r.ended - r.started for r in rotations), default=0):.2f} s), "
        f"reader {seen['reads']} reads, {len(reader_values)} tokens seen"
    )
    assert not problems, f"{summary}; " + "; ".join(problems) + f"\ngunicorn log:\n{log}"
    print(f"\nrotation under load, {summary}")


# ---- 3. crash during rotation --------------------------------------------------------------------

#: A single-threaded process that forks one writer per line read ("rotate" or "write A B"), prints
#: the writer's pid, and prints its wait status once the test has killed it. The writer rotates
#: (or rewrites) the file in a loop forever; it appends "new <token>" to the journal before it
#: writes a token and "done <token>" after ``rotate()`` returned. Forking from an interpreter
#: that has already imported flask_tailnet puts each writer to work within a millisecond.
ZYGOTE = r"""
import os, sys
from pathlib import Path
from flask_tailnet.secretfile import SecretFile, new_token
directory, journal = Path(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    words = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if words[0] == "rotate":
                def generate():
                    value = new_token()
                    os.write(fd, b"new " + value + b"\n")
                    return value
                token = SecretFile(directory, "token", generate)
                while True:
                    os.write(fd, b"done " + token.rotate() + b"\n")
            else:
                target = SecretFile(directory, "passwords")
                contents = [Path(words[1]).read_bytes(), Path(words[2]).read_bytes()]
                n = 0
                while True:
                    target.write(contents[n % 2])
                    n += 1
        finally:
            os._exit(3)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""

KILLS = 100  # per kind: rotate() and write()
TEMP_NAME = re.compile(r"\.(token|passwords)\.[0-9a-f]{16}\.tmp")


def _readline(proc: subprocess.Popen[bytes], timeout: float = 10) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"the child process did not answer within {timeout} s")
    return proc.stdout.readline()


@contextlib.contextmanager
def zygote(directory: Path, journal: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, str(directory), str(journal)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            bufsize=0,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _kill_writer(proc: subprocess.Popen[bytes], command: bytes, delay: float) -> None:
    """Start one writer, SIGKILL it after ``delay`` seconds, and make sure the kill is what ended
    it (not an error of its own)."""
    assert proc.stdin is not None
    proc.stdin.write(command + b"\n")
    pid = int(_readline(proc))
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    status = int(_readline(proc))
    assert os.WIFSIGNALED(status), f"the writer exited by itself (wait status {status})"
    assert os.WTERMSIG(status) == signal.SIGKILL, (
        f"the writer died of signal {os.WTERMSIG(status)}, not the SIGKILL it was sent"
    )


def _temp_files(directory: Path) -> list[Path]:
    strays = [path for path in directory.iterdir() if path.name.startswith(".")]
    for path in strays:
        assert TEMP_NAME.fullmatch(path.name), f"unexpected file {path.name}"
        assert _mode(path) == 0o600, f"{path.name} is not 0600"
    return strays


def _journal(path: Path) -> bytes:
    """The writers' journal; none yet when the first writer was killed before it wrote a line
    (a loaded machine may start it late)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _assert_whole(path: Path) -> bytes:
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode), path
    assert st.st_uid == os.geteuid(), path
    assert stat.S_IMODE(st.st_mode) == 0o600, f"{path} mode {stat.S_IMODE(st.st_mode):04o}"
    return path.read_bytes()


def test_kill_during_rotate_leaves_the_token_whole(tmp_path: Path) -> None:
    directory, journal = tmp_path / "state", tmp_path / "journal"
    token_file = SecretFile(directory, TOKEN_FILE)
    initial = token_file.ensure()
    rng = random.Random(4)
    landed: Counter[str] = Counter()
    began = time.monotonic()
    with zygote(directory, journal, tmp_path / "zygote.log") as proc:
        for kill in range(KILLS):
            _kill_writer(proc, b"rotate", rng.uniform(0, 0.02))
            data = _assert_whole(directory / TOKEN_FILE)
            value = data.strip()
            assert TOKEN_LINE.fullmatch(data), (
                f"kill {kill}: the token file is not one whole token ({len(data)} bytes)"
            )
            entries = [line.split() for line in _journal(journal).splitlines()]
            announced = [initial] + [v for kind, v in entries if kind == b"new"]
            finished = [initial] + [v for kind, v in entries if kind == b"done"]
            assert value in announced, f"kill {kill}: the file holds a token never generated"
            # Never older than the last rotation that returned.
            assert announced.index(value) >= announced.index(finished[-1]), f"kill {kill}"
            assert SecretFile(directory, TOKEN_FILE).read() == value, f"kill {kill}"
            landed["after a finished rotation" if value == finished[-1] else "mid-rotation"] += 1
        rotations = sum(1 for line in _journal(journal).splitlines() if line[:4] == b"done")
    strays = _temp_files(directory)
    # Each kill leaves at most one temporary file (the one it was writing); a crash never
    # leaves the token itself partial, which is what the assertions above hold.
    assert len(strays) <= KILLS
    print(
        f"\nkill -9 during rotate(): {KILLS} kills, {rotations} rotations completed, "
        f"{dict(landed)}, {len(strays)} temporary files left, {time.monotonic() - began:.1f} s"
    )


def _big(tag: bytes) -> bytes:
    """About 58 KB of password-file-like lines, under the 64 KB limit of a secret file."""
    return b"".join(
        b"user%04d:%s:" % (n, tag) + b"0123456789abcdef" * 3 + b"\n" for n in range(1000)
    )


def test_kill_during_write_leaves_a_large_file_whole(tmp_path: Path) -> None:
    directory, journal = tmp_path / "state", tmp_path / "journal"
    contents = [_big(b"A"), _big(b"B")]
    for name, content in zip(("a", "b"), contents, strict=True):
        (tmp_path / name).write_bytes(content)
    SecretFile(directory, "passwords").write(contents[0])
    whole = {content.strip() + b"\n" for content in contents}
    rng = random.Random(5)
    landed: Counter[bytes] = Counter()
    command = f"write {tmp_path / 'a'} {tmp_path / 'b'}".encode()
    began = time.monotonic()
    with zygote(directory, journal, tmp_path / "zygote.log") as proc:
        for kill in range(KILLS):
            _kill_writer(proc, command, rng.uniform(0, 0.03))
            data = _assert_whole(directory / "passwords")
            assert data in whole, f"kill {kill}: the file is partial ({len(data)} bytes)"
            assert SecretFile(directory, "passwords").read() == data.strip(), f"kill {kill}"
            landed[data[9:10]] += 1
    strays = _temp_files(directory)
    assert len(strays) <= KILLS
    print(
        f"\nkill -9 during write() of {len(contents[0])} bytes: {KILLS} kills, contents after "
        f"kills {dict(landed)}, {len(strays)} temporary files left, "
        f"{time.monotonic() - began:.1f} s"
    )


def test_kill_the_rotate_command(tmp_path: Path) -> None:
    """The real ``flask tailnet token --rotate``, SIGKILLed at random points of its run."""
    state_dir = tmp_path / "state"
    previous = _cli(state_dir, "token")
    began = time.monotonic()
    _cli(state_dir, "token", "--rotate")
    runtime = time.monotonic() - began
    rng = random.Random(6)
    kills = 10
    changed = 0
    for kill in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "example_app", "tailnet", "token", "--rotate"],
            cwd=ROOT,
            env=_env(state_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(runtime * 0.5, runtime * 1.1))
        proc.kill()
        proc.wait(timeout=10)
        data = _assert_whole(state_dir / TOKEN_FILE)
        assert TOKEN_LINE.fullmatch(data), f"kill {kill}: {len(data)} bytes"
        changed += data.strip() != previous
        previous = data.strip()
    assert _cli(state_dir, "token") == previous
    print(
        f"\nkill -9 of `flask tailnet token --rotate`: {kills} kills (a run takes "
        f"{runtime:.2f} s), {changed} after the new token was in place"
    )


def test_temporary_files_of_killed_writers_are_cleaned_up(tmp_path: Path) -> None:
    """A writer killed between creating its temporary file and renaming it leaves that file (a
    never-used secret) behind; repeated crashes accumulate them. The next rotation should remove
    those of dead writers (here, an hour old)."""
    directory, journal = tmp_path / "state", tmp_path / "journal"
    token_file = SecretFile(directory, TOKEN_FILE)
    token_file.ensure()
    rng = random.Random(7)
    with zygote(directory, journal, tmp_path / "zygote.log") as proc:
        for _ in range(200):
            _kill_writer(proc, b"rotate", rng.uniform(0, 0.02))
            if _temp_files(directory):
                break
    strays = _temp_files(directory)
    assert strays, "no kill landed between the temporary file's creation and its rename"
    an_hour_ago = time.time() - 3600
    for path in strays:
        os.utime(path, (an_hour_ago, an_hour_ago))
    token_file.rotate()
    assert _temp_files(directory) == []
