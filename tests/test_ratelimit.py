"""The failed-attempt budget: spent before the check, refunded on success, shared through a real
Redis between real processes, and closed when its storage fails."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from limits import RateLimitItem

from flask_tailnet.ratelimit import ALLOWED, AttemptBudget, Spent

from .conftest import TAILNET_HOST, TAILNET_PEER, make_app

REPO = Path(__file__).resolve().parent.parent
CLIENT = "100.64.0.7"


# ---- a real redis-server -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pings(address: tuple[str, int] | Path) -> bool:
    family = socket.AF_UNIX if isinstance(address, Path) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(address) if isinstance(address, Path) else address)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _redis_server(directory: Path, *listen: str, answers: Callable[[], bool]) -> Iterator[None]:
    """A ``redis-server`` of our own listening where ``listen`` says (never a system one), that
    ``answers``; stopped afterwards. Skips when redis-server is not installed."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (as root, tests/run.sh installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    in_memory_only = ("--save", "", "--appendonly", "no", "--dir", str(directory))
    proc = subprocess.Popen(
        [server, *listen, *in_memory_only, "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server {' '.join(listen)} did not start (exit {proc.poll()})")
            time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_redis(directory: Path, port: int | None = None) -> Iterator[str]:
    """A redis-server on 127.0.0.1 and a free port, answering PING; yields its URL."""
    port = _free_port() if port is None else port
    listen = ("--port", str(port), "--bind", "127.0.0.1")
    with _redis_server(directory, *listen, answers=lambda: _pings(("127.0.0.1", port))):
        yield f"redis://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def storage_uri(request: pytest.FixtureRequest) -> str:
    """Each behaviour test runs on both storages."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


def budget(
    storage_uri: str = "memory://", limits: str = "5 per minute; 30 per hour"
) -> AttemptBudget:
    """A budget in a namespace of its own, so that tests on the shared Redis never meet."""
    return AttemptBudget(limits, storage_uri, namespace=f"test-{uuid.uuid4().hex}")


def spend(spender: AttemptBudget, key: str, times: int) -> list[bool]:
    return [spender.spend(key).allowed for _ in range(times)]


# ---- the budget ----------------------------------------------------------------------------------


def test_default_budget_allows_five_a_minute(storage_uri: str) -> None:
    spender = budget(storage_uri)
    assert spend(spender, CLIENT, 5) == [True] * 5
    refused = spender.spend(CLIENT)
    assert refused.allowed is False
    assert 1 <= refused.retry_after <= 60
    assert 1 <= spender.retry_after(CLIENT) <= 60


def test_allowed_attempt_says_no_wait(storage_uri: str) -> None:
    spender = budget(storage_uri)
    assert spender.spend(CLIENT) == ALLOWED == Spent(allowed=True, retry_after=0)
    assert spender.retry_after(CLIENT) == 0


def test_refund_clears_the_budget(storage_uri: str) -> None:
    spender = budget(storage_uri)
    assert spend(spender, CLIENT, 6)[-1] is False
    spender.refund(CLIENT)
    assert spender.retry_after(CLIENT) == 0
    assert spend(spender, CLIENT, 6) == [True] * 5 + [False]


def test_refund_of_an_unknown_key_is_harmless(storage_uri: str) -> None:
    spender = budget(storage_uri)
    spender.refund("100.64.9.9")
    assert spender.spend("100.64.9.9").allowed is True


KEYS = [
    pytest.param(("100.64.0.7", "100.64.0.8"), id="two-ipv4"),
    pytest.param(("fd7a:115c:a1e0::7", "fd7a:115c:a1e0::8"), id="two-ipv6-with-colons"),
    pytest.param(("100.64.0.7", "100.64.0.7/5/1/minute"), id="key-that-mimics-a-limits-suffix"),
    pytest.param(("a", "a/"), id="trailing-slash"),
    pytest.param(("", " "), id="empty-and-blank"),
    pytest.param(("%2F", "/"), id="escape-that-mimics-an-escaped-slash"),
    pytest.param(("\u00e9", "e\u0301"), id="unicode-normal-forms"),
]


@pytest.mark.parametrize("keys", KEYS)
def test_keys_are_independent(storage_uri: str, keys: tuple[str, str]) -> None:
    spender = budget(storage_uri)
    first, second = keys
    assert spend(spender, first, 6) == [True] * 5 + [False]
    assert spend(spender, second, 5) == [True] * 5


def test_a_key_that_cannot_be_encoded_is_refused_not_raised() -> None:
    spender = budget()
    assert spender.spend("\ud800").allowed is False
    assert spender.retry_after("\ud800") >= 1
    spender.refund("\ud800")


def test_two_memory_budgets_are_independent() -> None:
    one, two = AttemptBudget(), AttemptBudget()
    assert spend(one, CLIENT, 6) == [True] * 5 + [False]
    assert spend(two, CLIENT, 5) == [True] * 5


def test_one_namespace_on_one_redis_is_one_budget(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    one = AttemptBudget(storage_uri=redis_url, namespace=namespace)
    two = AttemptBudget(storage_uri=redis_url, namespace=namespace)
    assert spend(one, CLIENT, 3) + spend(two, CLIENT, 3) == [True] * 5 + [False]
    two.refund(CLIENT)
    assert one.spend(CLIENT).allowed is True


NAMESPACE_CLASHES = [
    pytest.param(("app", "app2"), ("k", "k"), id="different-apps"),
    pytest.param(("x/a", "x"), ("b", "a/b"), id="slash-moved-between-namespace-and-key"),
    pytest.param(("x", "x/b"), ("b/c", "c"), id="slash-moved-the-other-way"),
]


@pytest.mark.parametrize(("namespaces", "keys"), NAMESPACE_CLASHES)
def test_namespaces_on_one_redis_never_share(
    redis_url: str, namespaces: tuple[str, str], keys: tuple[str, str]
) -> None:
    run = uuid.uuid4().hex
    one = AttemptBudget("1 per minute", redis_url, namespace=f"{run}{namespaces[0]}")
    two = AttemptBudget("1 per minute", redis_url, namespace=f"{run}{namespaces[1]}")
    assert one.spend(keys[0]).allowed is True
    assert two.spend(keys[1]).allowed is True


def test_every_limit_holds(storage_uri: str) -> None:
    spender = budget(storage_uri, "5 per minute; 2 per hour")
    assert spend(spender, CLIENT, 3) == [True, True, False]
    assert 60 < spender.retry_after(CLIENT) <= 3600


def test_a_repeated_limit_counts_once(storage_uri: str) -> None:
    spender = budget(storage_uri, "1 per minute; 1/minute")
    assert spend(spender, CLIENT, 2) == [True, False]


def test_retry_after_is_honest_and_refusals_record_nothing(storage_uri: str) -> None:
    spender = budget(storage_uri, "1 per second")
    assert spender.spend(CLIENT).allowed is True
    for _ in range(20):  # knocking while refused must not push the wait further out
        assert spender.spend(CLIENT) == Spent(allowed=False, retry_after=1)
    time.sleep(1.05)
    assert spender.spend(CLIENT).allowed is True


def test_an_expired_window_is_not_nonsense(
    storage_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``memory://`` keeps expired attempts until its next write and reports the window of an
    empty list from the oldest of them, long past: no wait, and no storage failure."""
    spender = budget(storage_uri, "2 per second")
    assert spend(spender, CLIENT, 2) == [True, True]
    time.sleep(2.5)  # more than the window and the second the check allows for clocks
    with caplog.at_level(logging.WARNING, logger="flask_tailnet"):
        assert spender.retry_after(CLIENT) == 0
        assert spender.spend(CLIENT) == ALLOWED
    assert caplog.text == ""


def test_a_short_refusal_does_not_eat_the_long_budget(storage_uri: str) -> None:
    spender = budget(storage_uri, "2 per second; 3 per hour")
    assert spend(spender, CLIENT, 2) == [True, True]
    assert spend(spender, CLIENT, 10) == [False] * 10
    time.sleep(1.05)
    assert spend(spender, CLIENT, 2) == [True, False]
    assert spender.retry_after(CLIENT) > 3000


# ---- hit before check: parallel guesses ----------------------------------------------------------


@pytest.mark.parametrize("guessers", [16, 64])
def test_parallel_guesses_never_exceed_the_limit(storage_uri: str, guessers: int) -> None:
    spender = budget(storage_uri)
    start = threading.Barrier(guessers)
    allowed: list[bool] = []
    lock = threading.Lock()

    def guess() -> None:
        start.wait()
        result = spender.spend(CLIENT).allowed
        with lock:
            allowed.append(result)

    threads = [threading.Thread(target=guess) for _ in range(guessers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == guessers
    assert allowed.count(True) == 5


# ---- real processes ------------------------------------------------------------------------------

_SPEND = """
import json, sys
from flask_tailnet.ratelimit import AttemptBudget
uri, namespace, key, times = sys.argv[1:]
budget = AttemptBudget(storage_uri=uri, namespace=namespace)
print(json.dumps([budget.spend(key).allowed for _ in range(int(times))]))
"""


def spend_in_process(uri: str, namespace: str, times: int) -> list[bool]:
    """``times`` spends by CLIENT in a new Python process, as a gunicorn worker would."""
    result = subprocess.run(
        [sys.executable, "-c", _SPEND, uri, namespace, CLIENT, str(times)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=REPO,
    )
    allowed: list[bool] = json.loads(result.stdout)
    return allowed


def test_processes_sharing_redis_share_one_budget(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    assert spend_in_process(redis_url, namespace, 3) == [True] * 3
    assert spend_in_process(redis_url, namespace, 2) == [True] * 2
    assert spend_in_process(redis_url, namespace, 1) == [False]
    assert AttemptBudget(storage_uri=redis_url, namespace=namespace).spend(CLIENT).allowed is False


def test_processes_with_memory_each_have_their_own_budget() -> None:
    assert spend_in_process("memory://", "app", 6) == [True] * 5 + [False]
    assert spend_in_process("memory://", "app", 6) == [True] * 5 + [False]


# ---- fail closed ---------------------------------------------------------------------------------


def _error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_redis_down_refuses_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    spender = AttemptBudget(storage_uri=f"redis://:hunter2@127.0.0.1:{_free_port()}")
    with caplog.at_level(logging.WARNING, logger="flask_tailnet"):
        for _ in range(20):
            assert spender.spend(CLIENT) == Spent(allowed=False, retry_after=60)
            assert spender.retry_after(CLIENT) == 60
            spender.refund(CLIENT)
    errors = _error_lines(caplog)
    assert len(errors) == 1, "logged once in a while, not per request"
    assert "ConnectionError" in errors[0]
    assert "127.0.0.1" in errors[0]
    assert "hunter2" not in caplog.text


#: Storages that fail (a closed loopback port, a socket that is not there), with a password in
#: each place a URI can hold one; ``{port}`` is a closed port.
FAILING_WITH_A_PASSWORD = [
    pytest.param("redis://127.0.0.1:{port}/0?password=hunter2", id="query-password"),
    pytest.param("redis://127.0.0.1:{port}/0?db=0&password=hunt%65r2", id="query-encoded"),
    pytest.param("redis://:hunter2@127.0.0.1:{port}", id="userinfo-password"),
    pytest.param("redis://hunter2:hunter2@127.0.0.1:{port}", id="userinfo-user-and-password"),
    pytest.param("redis://u:hunt@er2@127.0.0.1:{port}", id="at-sign-in-password"),
    pytest.param("redis+unix:///nonexistent/{port}.sock?password=hunter2", id="unix-socket"),
]


@pytest.mark.parametrize("uri", FAILING_WITH_A_PASSWORD)
def test_a_failing_storage_never_logs_its_password(
    uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    spender = AttemptBudget(storage_uri=uri.format(port=_free_port()))
    with caplog.at_level(logging.DEBUG, logger="flask_tailnet"):
        assert spender.spend(CLIENT).allowed is False
        assert spender.retry_after(CLIENT) == 60
        spender.refund(CLIENT)
    errors = _error_lines(caplog)
    assert len(errors) == 1
    assert "***" in errors[0]
    for spelling in ("hunter2", "hunt%65r2", "hunt@er2", "er2@"):
        assert spelling not in caplog.text


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("redis://127.0.0.1:{port}/0?password=wrong-hunter2", id="query-password"),
        pytest.param("redis://:wrong-hunter2@127.0.0.1:{port}/0", id="userinfo-password"),
        pytest.param("redis://admin:wrong-hunter2@127.0.0.1:{port}/0", id="user-and-password"),
    ],
)
def test_a_real_redis_refusing_the_password_never_logs_it(
    tmp_path: Path, uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    listen = ("--port", str(port), "--bind", "127.0.0.1", "--requirepass", "right-password")
    with _redis_server(tmp_path, *listen, answers=lambda: _answers_at_all(port)):
        spender = AttemptBudget(storage_uri=uri.format(port=port))
        with caplog.at_level(logging.DEBUG, logger="flask_tailnet"):
            assert spender.spend(CLIENT).allowed is False
    [error] = _error_lines(caplog)
    assert "AuthenticationError" in error or "ResponseError" in error
    assert "wrong-hunter2" not in caplog.text
    assert "***" in error


def _answers_at_all(port: int) -> bool:
    """True once something on ``port`` answers a PING, even with an error (NOAUTH)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16)[:1] in (b"+", b"-")
    except OSError:
        return False


def test_redis_that_hangs_refuses_within_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete, but nothing ever answers
        spender = AttemptBudget(storage_uri=f"redis://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        assert spender.spend(CLIENT).allowed is False
        assert time.monotonic() - started < 10  # the 2-second socket timeout, once


def test_redis_back_after_an_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()
    spender = AttemptBudget("5 per minute", f"redis://127.0.0.1:{port}", namespace="outage")
    with caplog.at_level(logging.WARNING, logger="flask_tailnet"):
        assert spender.spend(CLIENT).allowed is False
        with running_redis(tmp_path / "redis", port):
            assert spend(spender, CLIENT, 6) == [True] * 5 + [False]
    assert len(_error_lines(caplog)) == 1
    assert "answers again" in caplog.text


# ---- a Redis-protocol server that answers +OK to everything --------------------------------------


def _commands(buffer: bytearray) -> int:
    """Take every complete RESP command (an array of bulk strings, or an inline line) off the
    front of ``buffer``; return how many there were."""
    taken = 0
    while buffer:
        if buffer[:1] != b"*":
            line = buffer.find(b"\r\n")
            if line < 0:
                return taken
            del buffer[: line + 2]
            taken += 1
            continue
        end = buffer.find(b"\r\n")
        if end < 0:
            return taken
        position, complete = end + 2, True
        for _ in range(int(buffer[1:end])):
            header_end = buffer.find(b"\r\n", position)
            if header_end < 0:
                complete = False
                break
            position = header_end + 2 + int(buffer[position + 1 : header_end]) + 2
            if position > len(buffer):
                complete = False
                break
        if not complete:
            return taken
        del buffer[:position]
        taken += 1
    return taken


@contextlib.contextmanager
def ok_to_everything(answer: bytes = b"+OK\r\n") -> Iterator[int]:
    """A server on a free loopback port that speaks RESP and answers ``answer`` (``+OK``) to
    every command (PING, EVALSHA, SCRIPT LOAD, DEL alike); yields its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    commands: list[int] = []

    def serve(conn: socket.socket) -> None:
        buffer = bytearray()
        with conn:
            conn.settimeout(0.2)
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                count = _commands(buffer)
                commands.append(count)
                conn.sendall(answer * count)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
    assert sum(commands) > 0, "the budget never asked the fake server anything"


def test_a_server_that_answers_ok_to_everything_refuses_every_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with ok_to_everything() as port, caplog.at_level(logging.WARNING, logger="flask_tailnet"):
        spender = AttemptBudget(storage_uri=f"redis://127.0.0.1:{port}/0?password=hunter2")
        for _ in range(20):
            assert spender.spend(CLIENT) == Spent(allowed=False, retry_after=60)
            assert spender.retry_after(CLIENT) == 60
            spender.refund(CLIENT)
    errors = _error_lines(caplog)
    assert len(errors) == 1, "logged once in a while, not per request"
    assert "NonsenseAnswer" in errors[0]
    assert "answers again" not in caplog.text
    assert f"redis://127.0.0.1:{port}/0?password=***" in errors[0]
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"+OK\r\n", id="ok"),
        pytest.param(b"+PONG\r\n", id="pong"),
        pytest.param(b":1\r\n", id="one"),
        pytest.param(b":0\r\n", id="zero"),
        pytest.param(b"$-1\r\n", id="nil"),
        pytest.param(b"*0\r\n", id="empty-array"),
        pytest.param(b"*2\r\n:1\r\n:1\r\n", id="a-window-from-1970"),
        pytest.param(b"$2\r\nOK\r\n", id="bulk-ok"),
        pytest.param(b"-ERR unknown command\r\n", id="error"),
    ],
)
def test_a_server_with_one_answer_to_everything_never_allows(
    answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with ok_to_everything(answer) as port, caplog.at_level(logging.ERROR, logger="flask_tailnet"):
        spender = AttemptBudget(storage_uri=f"redis://127.0.0.1:{port}")
        for _ in range(7):
            assert spender.spend(CLIENT) == Spent(allowed=False, retry_after=60)
    assert len(_error_lines(caplog)) == 1, "the operator is told, once"


def test_a_login_against_an_ok_to_everything_server_gets_429(tmp_path: Path) -> None:
    with ok_to_everything() as port:
        app = make_app(
            tmp_path / "state", auth="token", ratelimit_storage_uri=f"redis://127.0.0.1:{port}"
        )
        token = app.extensions["tailnet"].token_file.ensure().decode()
        client = app.test_client()
        statuses = [
            client.get(
                "/",
                base_url=f"http://{TAILNET_HOST}",
                environ_base={"REMOTE_ADDR": TAILNET_PEER},
                headers={"Authorization": f"Bearer {guess}"},
            ).status_code
            for guess in [f"guess-{n}" for n in range(8)] + [token]
        ]
    assert statuses == [429] * 9, "never unlimited, and the right token is not looked at either"


def test_a_refusal_raced_by_a_refund_is_tried_again_not_called_nonsense(
    storage_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused attempt whose window then shows room (a success cleared the count in between)
    is tried once more; it is neither refused for nothing nor logged as a storage failure."""
    spender = budget(storage_uri)
    limiter = spender._limiter
    real_hit, refusals = limiter.hit, [False]

    def raced(*args: Any, **kwargs: Any) -> bool:
        return refusals.pop() if refusals else real_hit(*args, **kwargs)

    with caplog.at_level(logging.WARNING, logger="flask_tailnet"):
        limiter.hit = raced  # type: ignore[method-assign]
        assert spender.spend(CLIENT) == ALLOWED
    assert caplog.text == ""


#: Window reports no working storage gives: (attempts left, reset time relative to now).
NONSENSE_WINDOWS = [
    pytest.param(-70, 0.0, id="more-attempts-than-the-limit-holds"),
    pytest.param(6, 30.0, id="more-room-than-the-limit"),
    pytest.param(True, 30.0, id="a-bool-for-a-count"),
    pytest.param("5", 30.0, id="text-for-a-count"),
    pytest.param(2.5, 30.0, id="a-fraction-of-an-attempt"),
    pytest.param(3, -3600.0, id="a-window-that-ended-long-ago"),
    pytest.param(3, 10.0**12, id="a-window-far-in-the-future"),
    pytest.param(3, float("nan"), id="not-a-time"),
    pytest.param(3, float("inf"), id="infinite-time"),
    pytest.param(3, None, id="no-time"),
]


@pytest.mark.parametrize(("remaining", "reset_in"), NONSENSE_WINDOWS)
def test_nonsense_windows_are_storage_failures(
    remaining: object, reset_in: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from limits.strategies import MovingWindowRateLimiter  # noqa: PLC0415
    from limits.util import WindowStats  # noqa: PLC0415

    def nonsense(self: object, item: object, *identifiers: str) -> WindowStats:
        reset = None if reset_in is None else time.time() + reset_in
        return WindowStats(reset, remaining)  # type: ignore[arg-type]

    spender = budget()
    monkeypatch.setattr(MovingWindowRateLimiter, "get_window_stats", nonsense)
    assert spender.spend(CLIENT) == Spent(allowed=False, retry_after=60)
    assert spender.retry_after(CLIENT) == 60


def test_a_storage_that_forgets_every_attempt_never_allows(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A storage that takes every attempt (``:1`` to the acquire script) and then reports an
    empty window (``*0`` to the window script), as one that drops what it is told to keep does:
    each answer is plausible on its own, but a window without the attempt just counted in it is
    not. It allowed every attempt (40 of 40 against 5 per minute)."""
    from limits.strategies import MovingWindowRateLimiter  # noqa: PLC0415
    from limits.util import WindowStats  # noqa: PLC0415

    def forgetful(self: object, item: RateLimitItem, *identifiers: str) -> WindowStats:
        return WindowStats(time.time(), item.amount)

    spender = budget()
    monkeypatch.setattr(MovingWindowRateLimiter, "get_window_stats", forgetful)
    with caplog.at_level(logging.ERROR, logger="flask_tailnet"):
        assert [spender.spend(CLIENT).allowed for _ in range(8)] == [False] * 8
    assert "NonsenseAnswer" in caplog.text


# ---- configuration -------------------------------------------------------------------------------

BAD_LIMITS = [
    pytest.param("", "cannot be parsed", id="empty"),
    pytest.param("5", "cannot be parsed", id="no-period"),
    pytest.param("five per minute", "cannot be parsed", id="words"),
    pytest.param("5 per fortnight", "cannot be parsed", id="unknown-period"),
    pytest.param("5 per minute;", "cannot be parsed", id="trailing-separator"),
    pytest.param("-1 per minute", "cannot be parsed", id="negative"),
    pytest.param("0 per minute", "allow no attempt", id="zero-locks-everyone-out"),
    pytest.param("5 per minute; 0 per hour", "allow no attempt", id="one-zero-among-others"),
    pytest.param(None, "cannot be parsed", id="not-a-string"),
]


@pytest.mark.parametrize(("limits", "message"), BAD_LIMITS)
def test_bad_limits_raise_a_helpful_error(limits: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        AttemptBudget(limits)  # type: ignore[arg-type]
    assert "5 per minute; 30 per hour" in str(error.value)


BAD_URIS = [
    pytest.param("", "not supported", id="empty"),
    pytest.param("localhost:6379", "not supported", id="no-scheme"),
    pytest.param("memcached://127.0.0.1:11211", "not supported", id="memcached"),
    pytest.param("mongodb://127.0.0.1", "not supported", id="mongodb"),
    pytest.param("async+redis://127.0.0.1", "not supported", id="async-storage"),
    pytest.param("http://127.0.0.1:6379", "not supported", id="http"),
    pytest.param("redis://127.0.0.1:port", "cannot be used", id="port-not-a-number"),
    pytest.param("redis://127.0.0.1?socket_timeout=soon", "cannot be used", id="bad-query"),
    pytest.param("redis+cluster://127.0.0.1:1", "cannot be used", id="cluster-unreachable"),
]


@pytest.mark.parametrize(("uri", "message"), BAD_URIS)
def test_bad_storage_uris_raise_a_helpful_error(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        AttemptBudget(storage_uri=uri)
    assert "redis://host:port" in str(error.value) or "cannot be used" in str(error.value)


@pytest.mark.parametrize(
    "uri",
    [
        "redis://:hunter2@127.0.0.1:port",
        "redis://user:hunter2@127.0.0.1:port",
        "redis://user:hun%74er2@127.0.0.1:port",
        "memcached://user:hunter2@127.0.0.1",
        "redis://user:hunter2@127.0.0.1?socket_timeout=soon",
        "user:hunter2@127.0.0.1",
        "redis+cluster://:hunter2@127.0.0.1:1",
    ],
)
def test_error_messages_never_show_the_password(uri: str) -> None:
    with pytest.raises(ValueError, match=r"\*\*\*@127\.0\.0\.1") as error:
        AttemptBudget(storage_uri=uri)
    assert "hunter2" not in str(error.value)
    assert "hun%74er2" not in str(error.value)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("redis://user:hunter?2@127.0.0.1:6379", id="question-mark"),
        pytest.param("redis://user:hunter/2@127.0.0.1:6379", id="slash"),
        pytest.param("redis://user:hunter#2@127.0.0.1:6379", id="hash"),
        pytest.param("rediss://:hunter?2@127.0.0.1:6379/0", id="tls"),
        pytest.param("redis://:hunter?x@127.0.0.1:6379", id="cut-after-the-password"),
        pytest.param("redis+sentinel://u:hunter?2@127.0.0.1:1,127.0.0.2:2/m", id="sentinel"),
    ],
)
def test_a_password_cut_by_an_unescaped_delimiter_never_shows(uri: str) -> None:
    """A URL parser ends the host at the first ``/``, ``?`` or ``#``, so from such a password
    the Redis client reports a piece as the port; the message says the URI cannot be used,
    without the piece."""
    with pytest.raises(ValueError, match="cannot be used") as error:
        AttemptBudget(storage_uri=uri)
    assert "hunter" not in str(error.value)


@pytest.mark.parametrize("namespace", ["", None])
def test_namespace_must_be_given(namespace: object) -> None:
    with pytest.raises(ValueError, match="namespace"):
        AttemptBudget(namespace=namespace)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "uri",
    ["memory://", "redis://127.0.0.1:1", "rediss://127.0.0.1:1", "redis+unix:///tmp/none.sock"],
)
def test_supported_storages_open_without_contacting_the_server(uri: str) -> None:
    AttemptBudget(storage_uri=uri)


def test_redis_over_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    listen = ("--port", "0", "--unixsocket", str(sock))
    with _redis_server(tmp_path, *listen, answers=lambda: _pings(sock)):
        spender = AttemptBudget("2 per minute", f"redis+unix://{sock}", namespace="unix")
        assert spend(spender, CLIENT, 3) == [True, True, False]
