from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from flask_tailnet import TailnetGuard, current_peer
from flask_tailnet.pamauth import pam_problem

from .tailscaled_stand_in import StandInTailscaled, running_tailscaled, trusted_directory

TAILNET_PEER = "100.64.0.7"
TAILNET_HOST = "100.64.0.1:5000"


def make_app(state_dir: Path, **settings: Any) -> Flask:
    """A small guarded app: ``/`` echoes the peer, ``/healthz`` is exempt, ``/post`` takes POST."""
    app = Flask("guarded")
    app.config["TESTING"] = True
    app.config["TAILNET_STATE_DIR"] = str(state_dir)
    guard = TailnetGuard(app, **settings)

    @app.route("/", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def index() -> dict[str, Any]:
        return {
            "address": current_peer.address,
            "method": current_peer.method,
            "local": current_peer.local,
            "via_proxy": current_peer.via_proxy,
        }

    @app.get("/healthz")
    @guard.exempt
    def health() -> str:
        return "ok"

    return app


@pytest.fixture
def tailscaled() -> Iterator[StandInTailscaled]:
    """A running stand-in tailscaled, its socket in a fresh directory of this user's (mode 0700)."""
    with trusted_directory() as directory, running_tailscaled(directory) as stand_in:
        yield stand_in


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def app_factory(state_dir: Path) -> Callable[..., Flask]:
    def factory(**settings: Any) -> Flask:
        return make_app(state_dir, **settings)

    return factory


@pytest.fixture
def app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory()


PASSWORD = "correct horse battery staple"


@pytest.fixture
def password_app(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """An app whose people log in with PASSWORD, from the variable TAILNET_TEST_PASSWORD."""
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", PASSWORD)
    return make_app(state_dir, auth="password", password_env="TAILNET_TEST_PASSWORD")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def token(app: Flask) -> str:
    """Log in the test way: the real token, created as the CLI would."""
    value: bytes = app.extensions["tailnet"].token_file.ensure()
    return value.decode()


def call(
    client: FlaskClient,
    path: str = "/",
    *,
    peer: str = "127.0.0.1",
    host: str = "localhost",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Any:
    """One request through the real app from socket peer ``peer`` with Host ``host``."""
    return client.open(
        path,
        method=method,
        headers=headers or {},
        environ_base={"REMOTE_ADDR": peer},
        environ_overrides={"HTTP_HOST": host},
    )


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=10)


@contextmanager
def addresses_on_lo(cidrs: Sequence[str]) -> Iterator[None]:
    """Add ``cidrs`` to the loopback interface (IPv6 with ``nodad``) and remove those this added,
    even on failure; an address already there is left as it was. Skips without root or ``ip``."""
    if os.geteuid() != 0:
        pytest.skip("adding addresses to the loopback interface needs root")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    added: list[str] = []
    try:
        for cidr in cidrs:
            result = _ip("addr", "add", cidr, "dev", "lo", *(["nodad"] if ":" in cidr else []))
            if result.returncode == 0:
                added.append(cidr)
            elif not any(text in result.stderr for text in ("File exists", "already assigned")):
                pytest.fail(f"ip addr add {cidr} dev lo: {result.stderr.strip()}")
        yield
    finally:
        for cidr in added:
            _ip("addr", "del", cidr, "dev", "lo")


# ---- the example app under a real server ---------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def example_cli(env: dict[str, str], *args: str) -> str:
    """``flask --app example_app tailnet <args>`` as a real process with ``env``: its stdout,
    stripped. A failure raises (``check=True``)."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app", "tailnet", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@contextmanager
def serving_example_app(
    host: str, env: dict[str, str], log_path: Path, app: str = "example_app"
) -> Iterator[int]:
    """Run ``flask --app example_app run`` (or another ``app``) on ``host`` and a free port; yield
    the port once it accepts connections; stop the server afterwards, even on failure."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])
    command = [sys.executable, "-m", "flask", "--app", app, "run"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*command, "--host", host, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    if probe.connect_ex((host, port)) == 0:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the example app did not start: {log_path.read_text()}")
                time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- CI: nothing may skip -----------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(
                f"CI=true: {skipped} test(s) skipped; under CI none may skip", red=True
            )


@pytest.fixture(autouse=True)
def _no_leftover_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLASK_TAILNET_"):
            monkeypatch.delenv(key)


# ---- PAM: a real throwaway system user and PAM service (needs root) -----------------------


@dataclass(frozen=True, slots=True)
class PamUser:
    """A real system user with a known password, and a PAM service that checks it with pam_unix."""

    username: str
    password: str
    service: str


#: pam_unix alone. ``nodelay`` is for tests only: it drops pam_unix's ~2 s delay after a failure.
PAM_TEST_SERVICE = """\
# flask-tailnet tests; removed when the test session ends
auth     required pam_unix.so nodelay
account  required pam_unix.so
"""


def _system_tool(name: str) -> str:
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if path is None:
        pytest.skip(f"pam_user needs {name} (Debian package passwd)")
    return path


def _run(args: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} exited with {done.returncode}: {done.stderr.strip()}")


@pytest.fixture(scope="session")
def pam_user() -> Iterator[PamUser]:
    """A system user ``tailnettest<hex>`` with a random password and a PAM service
    ``flask-tailnet-test-<hex>`` for it; both are removed afterwards, even on failure.

    The server in tests runs as root, so ``TAILNET_PAM_USERS`` must name this user explicitly.
    """
    with throwaway_pam_user(secrets.token_urlsafe(24), PAM_TEST_SERVICE) as user:
        yield user


#: Debian's ``common-auth``: pam_unix with ``nullok``, which accepts any password for an account
#: whose password field is empty. ``nodelay`` as above.
PAM_NULLOK_SERVICE = """\
# flask-tailnet tests; removed when the test session ends
auth     [success=1 default=ignore] pam_unix.so nullok nodelay
auth     requisite pam_deny.so
auth     required pam_permit.so
account  required pam_unix.so
"""


@pytest.fixture(scope="session")
def passwordless_user() -> Iterator[PamUser]:
    """A system user whose password field is empty (``passwd -d``), ``password`` ``""``, and a
    PAM service with ``pam_unix.so nullok`` (Debian's ``common-auth``) for it; both removed
    afterwards. Through that service, PAM alone accepts any password for this user."""
    with throwaway_pam_user(None, PAM_NULLOK_SERVICE) as user:
        yield user


@contextmanager
def pam_service_file(name: str, text: str) -> Iterator[str]:
    """A PAM service file ``/etc/pam.d/<name>`` with ``text``, removed afterwards."""
    path = Path("/etc/pam.d", name)
    try:
        path.write_text(text)
        yield name
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def throwaway_pam_user(password: str | None, service_text: str) -> Iterator[PamUser]:
    """A system user with ``password`` (``None``: an empty password field) and a PAM service
    file with ``service_text``; both removed afterwards, even on failure. Needs root."""
    if os.geteuid() != 0:
        pytest.skip("pam_user needs root: it adds a system user and a file in /etc/pam.d")
    useradd, chpasswd, passwd, userdel = map(
        _system_tool, ("useradd", "chpasswd", "passwd", "userdel")
    )
    if not os.path.isdir("/etc/pam.d"):
        pytest.skip("pam_user needs an /etc/pam.d directory")
    suffix = secrets.token_hex(4)
    user = PamUser(
        username=f"tailnettest{suffix}",
        password=password or "",
        service=f"flask-tailnet-test-{suffix}",
    )
    created = False
    try:
        _run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user.username]
        )
        created = True
        if password is None:
            _run([passwd, "--delete", user.username])
        else:
            _run([chpasswd], stdin=f"{user.username}:{password}\n")
        with pam_service_file(user.service, service_text):
            problem = pam_problem(user.service)
            if problem is not None:
                pytest.skip(f"PAM is not usable here: {problem}")
            yield user
    finally:
        if created:
            _run([userdel, user.username])
