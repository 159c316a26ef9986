"""Throughput of the example app under real gunicorn processes, with the guard and without it.

Run by hand from the repository root (it is a report, not a test); root is needed for the token
path from a tailnet address, and wrk (Debian package ``wrk``) for the load::

    python benchmarks/bench_gunicorn.py            # full run, about 3 minutes
    python benchmarks/bench_gunicorn.py --quick    # smoke run, about 30 seconds
    python benchmarks/bench_gunicorn.py --check    # exit 1 if a goal fails

Two gunicorn servers run side by side, started once each with the same worker count and worker
class: the guarded one serves ``example_app.create_app()``, the bare one the same routes and views
with no guard (``benchmarks/gunicorn_apps.py``). wrk loads ``GET /api/whoami`` on two paths:

* loopback: the client on 127.0.0.1, no credential (the guard's loopback bypass);
* token: the client on a tailnet address with ``Authorization: Bearer <token>`` (the bare server
  gets the same header). As root, 100.64.0.60/32 is added to ``lo`` for the run, both servers also
  bind it, and wrk connects to it; the kernel picks the source address, and the server's answer
  shows which one it saw. Without root (or with ``--token-from-loopback``) a third server, guarded
  with ``TAILNET_LOCAL_BYPASS=False``, makes loopback clients show the token instead; the report
  says which.

The run is made of rounds. In each round, each path gets one burst against each server, in an
order that alternates from round to round, so a slow phase of the machine falls on both sides. A
path's figure is the median of its per-round ratios (guarded / bare requests per second).

Traffic goes only to loopback and the address this script adds; every burst is bounded in time,
and the servers, the address and the temporary state directory are removed at the end.

Importing this module has no side effects; everything happens in :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOOPBACK = "127.0.0.1"
#: Added to ``lo`` for the token path (as root); both servers bind it too.
SERVER_TAILNET = "100.64.0.60"
TAILNET_NET = ipaddress.ip_network("100.64.0.0/10")

GUARDED_APP = "benchmarks.gunicorn_apps:guarded()"
BARE_APP = "benchmarks.gunicorn_apps:bare()"
#: The gunicorn config module of flask-tailnet, used for the guarded side when it exists.
CONFIG_MODULE = "flask_tailnet.gunicorn"
ENDPOINT = "/api/whoami"

#: The goal: guarded throughput at least this fraction of the bare one, on each path.
GOAL = 0.97

#: wrk's shortest run is one second; short bursts keep the two sides of a ratio close in time.
DEFAULT_ROUNDS = 36
DEFAULT_BURST = 1
QUICK_ROUNDS = 6
QUICK_BURST = 1
WARMUP_BURST = 1
DEFAULT_WORKERS = 2
DEFAULT_CONNECTIONS = 8
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,}")
_TOKEN_PARAM_RE = re.compile(r"(token=)[^\s&#]+")


# --- wrk --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """What one wrk run reported."""

    requests: int
    seconds: float
    socket_errors: int
    bad_status: int
    #: CPU seconds the server's processes used during the burst (None without /proc).
    cpu: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)\b", re.MULTILINE)
_SOCKET_RE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_STATUS_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(output: str) -> Burst:
    """The counts in wrk's report; a report without a request count raises ``ValueError``."""
    match = _REQUESTS_RE.search(output)
    if match is None:
        raise ValueError("wrk printed no request count")
    requests, amount, unit = int(match[1]), float(match[2]), match[3]
    sockets = _SOCKET_RE.search(output)
    status = _STATUS_RE.search(output)
    return Burst(
        requests=requests,
        seconds=amount * _UNIT[unit],
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        bad_status=int(status[1]) if status else 0,
    )


@dataclass(frozen=True)
class Loader:
    """How wrk is run: the same for every burst."""

    wrk: str
    threads: int
    connections: int
    timeout: float = 5.0

    def describe(self, burst: int) -> str:
        return (
            f"wrk -t{self.threads} -c{self.connections} -d{burst}s --timeout {self.timeout:g}s; "
            "token path: -s <script setting Authorization: Bearer, file mode 0600>"
        )

    def run(self, url: str, seconds: int, script: Path | None) -> Burst:
        command = [
            self.wrk,
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{seconds}s",
            "--timeout",
            f"{self.timeout:g}s",
        ]
        if script is not None:
            # The header comes from a script, so the token is never on a command line.
            command += ["-s", str(script)]
        done = subprocess.run(
            [*command, url],
            capture_output=True,
            text=True,
            timeout=seconds + self.timeout + 15,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"bench_gunicorn: wrk exited {done.returncode}: {done.stderr[-500:]}")
        return parse_wrk(done.stdout)


def header_script(directory: Path, token: str) -> Path:
    """A wrk script that adds the bearer header to every request, readable by this user only."""
    if _TOKEN_RE.fullmatch(token) is None:
        raise SystemExit("bench_gunicorn: the token file holds an unexpected value")
    path = directory / "bearer.lua"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    return path


# --- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    """One gunicorn master and its workers, in a process group of their own."""

    name: str
    port: int
    binds: tuple[str, ...]
    command: list[str]
    log: Path
    #: Secrets to blank out of the log before it is shown (the master prints login URLs).
    secrets: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, workers: int) -> None:
        """Until every bind answers ``/healthz``; with sync workers, ``workers`` answers each."""
        deadline = time.monotonic() + START_TIMEOUT
        for host in self.binds:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise SystemExit(
                        f"bench_gunicorn: the {self.name} server exited "
                        f"{self.process.returncode}:\n{self.tail()}"
                    )
                try:
                    status, _ = get(host, self.port, "/healthz", {}, timeout=2)
                    if status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"bench_gunicorn: the {self.name} server did not answer on {host} "
                        f"within {START_TIMEOUT:g} s:\n{self.tail()}"
                    )
                time.sleep(0.2)
        # Every worker imports the app on its own: give the last ones time to finish booting.
        for _ in range(workers * 2):
            get(self.binds[0], self.port, "/healthz", {}, timeout=10)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    def cpu_seconds(self) -> float | None:
        """User and system CPU time of the master and its workers so far (None without /proc)."""
        if self.process is None:
            return None
        try:
            ticks = 0
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rpartition(")")[2].split()
                except OSError:
                    continue  # a process that just ended
                # After the command: state, ppid, ...; utime and stime are fields 14 and 15.
                pid = int(stat.parent.name)
                if pid == self.process.pid or int(fields[1]) == self.process.pid:
                    ticks += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return None
        return ticks / os.sysconf("SC_CLK_TCK")

    def tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return _TOKEN_PARAM_RE.sub(r"\1<redacted>", text)[-2000:]


def gunicorn_command(
    app: str, binds: Sequence[str], port: int, workers: int, worker_class: str, config: str | None
) -> list[str]:
    command = [sys.executable, "-m", "gunicorn"]
    if config is not None:
        command += ["-c", f"python:{config}"]
    command += ["-w", str(workers), "-k", worker_class, "--log-level", "warning"]
    for host in binds:
        command += ["-b", f"{host}:{port}"]
    return [*command, app]


def free_port(hosts: Sequence[str]) -> int:
    """A TCP port free on every one of ``hosts`` (closed again; gunicorn binds it next)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise SystemExit("bench_gunicorn: found no port free on " + ", ".join(hosts))


def get(
    host: str, port: int, path: str, headers: dict[str, str], timeout: float = 5
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def whoami(host: str, port: int, headers: dict[str, str]) -> tuple[int, dict[str, object], str]:
    """Status, JSON body and the source address this end used (picked by the kernel)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.connect()
        assert conn.sock is not None
        source = str(conn.sock.getsockname()[0])
        conn.request("GET", ENDPOINT, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        body = json.loads(raw) if response.status == 200 else {}
    except ValueError:
        body = {}
    return response.status, body if isinstance(body, dict) else {}, source


# --- tailnet address on lo --------------------------------------------------------------------


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=10)


@contextlib.contextmanager
def address_on_lo(address: str) -> Iterator[bool]:
    """``address``/32 on the loopback interface for the block; yields whether this added it."""
    cidr = f"{address}/32"
    added = _ip("addr", "add", cidr, "dev", "lo")
    if added.returncode != 0 and "File exists" not in added.stderr:
        raise SystemExit(f"bench_gunicorn: ip addr add {cidr} dev lo: {added.stderr.strip()}")
    try:
        yield added.returncode == 0
    finally:
        if added.returncode == 0:
            _ip("addr", "del", cidr, "dev", "lo")


TW_REUSE = Path("/proc/sys/net/ipv4/tcp_tw_reuse")


@contextlib.contextmanager
def time_wait_reuse() -> Iterator[str]:
    """``net.ipv4.tcp_tw_reuse=1`` for the block, the old value restored after; yields a note.

    gunicorn's sync workers close every connection, so each request is a new one, and its
    TIME_WAIT entry keeps the port pair for 60 s. The kernel's default (2) reuses them for
    loopback addresses only: to 100.64.0.60 the client runs out of ports after about 28,000
    requests and then waits in the kernel for each one, which makes that path measure port
    allocation, not the servers. Both sides of the path get the same setting."""
    try:
        old = TW_REUSE.read_text().strip()
    except OSError as exc:
        yield f"tcp_tw_reuse unreadable ({exc.strerror}): left as it is"
        return
    if old == "1":
        yield "net.ipv4.tcp_tw_reuse already 1"
        return
    try:
        TW_REUSE.write_text("1")
    except OSError as exc:
        yield f"net.ipv4.tcp_tw_reuse={old} (cannot set 1: {exc.strerror}); ports may run out"
        return
    try:
        yield f"net.ipv4.tcp_tw_reuse=1 for the run (was {old}, restored after)"
    finally:
        TW_REUSE.write_text(old)


# --- paths and measuring ----------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One server as one path reaches it."""

    server: Server
    host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.port}{ENDPOINT}"


@dataclass
class PathResult:
    name: str
    description: str
    guarded: Side
    bare: Side
    script: Path | None
    guarded_rps: list[float] = field(default_factory=list)
    bare_rps: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    socket_errors: int = 0
    bad_status: int = 0
    requests: int = 0
    #: Totals over the rounds: server CPU seconds and requests counted, per side.
    cpu: dict[str, float] = field(default_factory=lambda: {"guarded": 0.0, "bare": 0.0})
    counted: dict[str, int] = field(default_factory=lambda: {"guarded": 0, "bare": 0})
    cpu_known: bool = True
    cpu_ratios: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def cpu_per_request(self, side: str) -> float | None:
        """Server CPU microseconds per request over all the rounds."""
        if not self.cpu_known or not self.counted[side]:
            return None
        return self.cpu[side] / self.counted[side] * 1e6

    @property
    def cpu_ratio(self) -> float | None:
        """Median over rounds of bare CPU per request / guarded: the throughput ratio of a
        CPU-bound server, much less moved by other programs than the wall-clock ratio."""
        if not self.cpu_known or not self.cpu_ratios:
            return None
        return statistics.median(self.cpu_ratios)

    @property
    def spread(self) -> tuple[float, float]:
        """The interquartile range of the per-round ratios (min and max below 4 rounds)."""
        if len(self.ratios) < 4:
            return min(self.ratios), max(self.ratios)
        q = statistics.quantiles(self.ratios, n=4)
        return q[0], q[2]

    def record(self, guarded: Burst, bare: Burst) -> None:
        for burst in (guarded, bare):
            self.socket_errors += burst.socket_errors
            self.bad_status += burst.bad_status
            self.requests += burst.requests
        for side, burst in (("guarded", guarded), ("bare", bare)):
            if burst.cpu is None:
                self.cpu_known = False
            else:
                self.cpu[side] += burst.cpu
                self.counted[side] += burst.requests
        if guarded.cpu and bare.cpu and guarded.requests and bare.requests:
            per_guarded = guarded.cpu / guarded.requests
            self.cpu_ratios.append(bare.cpu / bare.requests / per_guarded)
        self.guarded_rps.append(guarded.rps)
        self.bare_rps.append(bare.rps)
        self.ratios.append(guarded.rps / bare.rps if bare.rps else 0.0)


def check_path(path: PathResult, headers: dict[str, str], expect_method: str) -> str:
    """Both sides answer the same 200 body; the guarded side let the request in by
    ``expect_method`` and, on the token path, refuses it without the token. Returns what the
    guarded server saw as the client address."""
    g_status, g_body, source = whoami(path.guarded.host, path.guarded.server.port, headers)
    b_status, b_body, _ = whoami(path.bare.host, path.bare.server.port, headers)
    if g_status != 200 or b_status != 200 or g_body != b_body:
        raise SystemExit(
            f"bench_gunicorn: {path.name} path: guarded answered {g_status} {g_body}, bare "
            f"{b_status} {b_body}; both must answer the same 200 body"
        )
    if g_body.get("method") != expect_method:
        raise SystemExit(
            f"bench_gunicorn: {path.name} path: the guard let the request in by "
            f"{g_body.get('method')!r}, not {expect_method!r}; the path is not the one meant"
        )
    if expect_method == "token":
        refused, _ = get(path.guarded.host, path.guarded.server.port, ENDPOINT, {})
        if refused != 401:
            raise SystemExit(
                f"bench_gunicorn: {path.name} path: without the token the guard answered "
                f"{refused}, not 401"
            )
    return f"{g_body.get('address')} (kernel-picked source {source})"


def measure(
    paths: Sequence[PathResult], loader: Loader, rounds: int, burst: int, quiet: bool
) -> None:
    for path in paths:  # warm up: imports, caches, the first connections
        for side in (path.guarded, path.bare):
            loader.run(side.url, WARMUP_BURST, path.script)

    def timed(side: Side, script: Path | None) -> Burst:
        before = side.server.cpu_seconds()
        done = loader.run(side.url, burst, script)
        after = side.server.cpu_seconds()
        cpu = None if before is None or after is None else after - before
        return replace(done, cpu=cpu)

    for index in range(rounds):
        ordered = paths if index % 2 == 0 else list(reversed(paths))
        for path in ordered:
            guarded_first = (index + paths.index(path)) % 2 == 0
            if guarded_first:
                g = timed(path.guarded, path.script)
                b = timed(path.bare, path.script)
            else:
                b = timed(path.bare, path.script)
                g = timed(path.guarded, path.script)
            path.record(g, b)
        if not quiet and sys.stderr.isatty():
            print(f"\r  round {index + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    if not quiet and sys.stderr.isatty():
        print(file=sys.stderr)


# --- reporting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    status: str  # "PASS" or "FAIL"
    detail: str


def evaluate_goals(paths: Sequence[PathResult]) -> list[Goal]:
    goals: list[Goal] = []
    for path in paths:
        ratio = path.ratio
        ok = ratio >= GOAL
        goals.append(
            Goal(
                f"{path.name}: guarded >= {GOAL:.2f}x bare throughput",
                "PASS" if ok else "FAIL",
                f"{ratio:.3f}x ({(ratio - GOAL) * 100:+.1f} points against the goal); "
                f"by server CPU per request: {_fmt(path.cpu_ratio, '.3f')}x",
            )
        )
        errors = path.socket_errors + path.bad_status
        goals.append(
            Goal(
                f"{path.name}: no errors under load",
                "PASS" if errors == 0 else "FAIL",
                f"{path.requests} requests, {path.socket_errors} socket errors, "
                f"{path.bad_status} responses >= 400",
            )
        )
    return goals


def _cv(values: Sequence[float]) -> float:
    """Coefficient of variation, in percent."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) / statistics.mean(values) * 100


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(paths: Sequence[PathResult], goals: Sequence[Goal], rounds: int) -> str:
    width = max(len(p.name) for p in paths)
    heads = [
        ("guarded req/s", 13),
        ("bare req/s", 10),
        ("ratio", 7),
        ("spread of ratio", 15),
        ("bare CV", 7),
        ("CPU us/req g", 12),
        ("CPU us/req b", 12),
        ("CPU ratio", 9),
    ]
    lines = [
        f"{'path':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in heads),
        f"{'-' * width}  " + "  ".join("-" * w for _, w in heads),
    ]
    for path in paths:
        low, high = path.spread
        cpu_ratio = path.cpu_ratio
        cells = [
            f"{statistics.median(path.guarded_rps):.0f}",
            f"{statistics.median(path.bare_rps):.0f}",
            f"{path.ratio:.3f}x",
            f"{low:.3f}-{high:.3f}",
            f"{_cv(path.bare_rps):.1f}%",
            _fmt(path.cpu_per_request("guarded"), ".0f"),
            _fmt(path.cpu_per_request("bare"), ".0f"),
            "n/a" if cpu_ratio is None else f"{cpu_ratio:.3f}x",
        ]
        lines.append(
            f"{path.name:<{width}}  "
            + "  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, heads, strict=True))
        )
    spread = "interquartile range" if rounds >= 4 else "min-max"
    lines += [
        "",
        f"req/s: median over {rounds} rounds; ratio: median of the per-round ratios "
        f"(guarded / bare); spread: their {spread}; bare CV: how much the bare side's req/s "
        "moved from round to round (the machine's noise). CPU us/req: user+system CPU of each "
        "server's master and workers over all its bursts, per request; CPU ratio: median of the "
        "per-round (bare / guarded CPU per request), the throughput ratio a CPU-bound server "
        "would show, less moved by other programs.",
    ]
    lines += [f"  {p.name}: {p.description}" for p in paths]
    lines.append("")
    goal_width = max(len(g.text) for g in goals)
    lines.extend(f"{g.status}  {g.text:<{goal_width}}  {g.detail}" for g in goals)
    return "\n".join(lines)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Requests per second of the example app under gunicorn, guarded and bare, "
        "on the loopback and token paths, and the goal."
    )
    parser.add_argument("--rounds", type=int, help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument(
        "--burst", type=int, help=f"whole seconds per burst (default {DEFAULT_BURST})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_ROUNDS} rounds of {QUICK_BURST} s bursts unless given",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal fails")
    parser.add_argument(
        "-w", "--workers", type=int, default=DEFAULT_WORKERS, help="gunicorn workers per server"
    )
    parser.add_argument(
        "-k", "--worker-class", default="sync", help="gunicorn worker class (default sync)"
    )
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS, help="wrk -c")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument(
        "--token-from-loopback",
        action="store_true",
        help="measure the token path from loopback with TAILNET_LOCAL_BYPASS=False, even as root",
    )
    parser.add_argument(
        "--no-config-module",
        action="store_true",
        help=f"start the guarded side without -c python:{CONFIG_MODULE} even if it exists",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.burst is None:
        args.burst = QUICK_BURST if args.quick else DEFAULT_BURST
    if args.rounds < 1 or args.burst <= 0 or args.workers < 1:
        parser.error("--rounds, --burst and --workers must be positive")
    if args.connections < args.threads or args.threads < 1:
        parser.error("wrk needs --threads >= 1 and --connections >= --threads")
    return args


def config_module() -> tuple[str | None, str]:
    """The config module for the guarded side if it imports, else ``None`` and why not."""
    if importlib.util.find_spec(CONFIG_MODULE) is None:
        return None, f"{CONFIG_MODULE} does not exist"
    done = subprocess.run(
        [sys.executable, "-c", f"import {CONFIG_MODULE}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"{CONFIG_MODULE} does not import: {last[:200]}"
    return CONFIG_MODULE, ""


def read_token(state_dir: Path, env: dict[str, str]) -> str:
    """The token, as ``flask tailnet token`` prints it (it creates the file the first time)."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app", "tailnet", "token"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        # stderr only: stdout would hold the token.
        raise SystemExit(f"bench_gunicorn: flask tailnet token failed: {done.stderr[-500:]}")
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds: int = args.rounds
    burst: int = args.burst
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench_gunicorn: wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    if importlib.util.find_spec("gunicorn") is None:
        print(
            "bench_gunicorn: gunicorn is not installed: pip install 'gunicorn>=23'", file=sys.stderr
        )
        return 2
    is_root = os.geteuid() == 0 and shutil.which("ip") is not None
    from_tailnet = is_root and not args.token_from_loopback
    config, config_note = (None, "--no-config-module") if args.no_config_module else config_module()
    loader = Loader(wrk, args.threads, args.connections)

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-gunicorn-"))
    servers: list[Server] = []
    load_before = os.getloadavg()
    try:
        state_dir = work / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_TAILNET_")}
        env["FLASK_TAILNET_STATE_DIR"] = str(state_dir)
        token = read_token(state_dir, env)
        script = header_script(work, token)
        bearer = {"Authorization": f"Bearer {token}"}

        with contextlib.ExitStack() as stack:
            note = ""
            if from_tailnet:
                added = stack.enter_context(address_on_lo(SERVER_TAILNET))
                if not added:
                    note = f" ({SERVER_TAILNET} was already on lo: left there)"
                note += "; " + stack.enter_context(time_wait_reuse())
                binds: tuple[str, ...] = (LOOPBACK, SERVER_TAILNET)
            else:
                binds = (LOOPBACK,)

            def stop_all() -> None:
                for each in servers:
                    each.stop()

            # Runs before the address is removed (and again, harmlessly, in the outer finally).
            stack.callback(stop_all)

            def server(name: str, app: str, cfg: str | None) -> Server:
                port = free_port(binds)
                command = gunicorn_command(app, binds, port, args.workers, args.worker_class, cfg)
                made = Server(name, port, binds, command, work / f"{name}.log", (token,))
                servers.append(made)
                return made

            guarded = server("guarded", GUARDED_APP, config)
            bare = server("bare", BARE_APP, None)
            guarded.start(env)
            bare.start(env)
            no_bypass: Server | None = None
            if not from_tailnet:
                no_bypass = server("guarded-no-bypass", GUARDED_APP, config)
                no_bypass.start({**env, "FLASK_TAILNET_LOCAL_BYPASS": "false"})
            for each in servers:
                each.wait_ready(args.workers)

            loopback = PathResult(
                "loopback",
                "127.0.0.1 -> 127.0.0.1, no credential (the guard's loopback bypass)",
                Side(guarded, LOOPBACK),
                Side(bare, LOOPBACK),
                None,
            )
            if from_tailnet:
                token_path = PathResult(
                    "token",
                    f"wrk -> {SERVER_TAILNET} (on lo{note}), Authorization: Bearer; "
                    "the guarded server saw the client as ",
                    Side(guarded, SERVER_TAILNET),
                    Side(bare, SERVER_TAILNET),
                    script,
                )
            else:
                assert no_bypass is not None
                why = "not root" if not is_root else "--token-from-loopback"
                token_path = PathResult(
                    "token",
                    f"({why}) 127.0.0.1 -> 127.0.0.1 with Authorization: Bearer, guarded with "
                    "TAILNET_LOCAL_BYPASS=False so the token is checked; the guarded server "
                    "saw the client as ",
                    Side(no_bypass, LOOPBACK),
                    Side(bare, LOOPBACK),
                    script,
                )
            loopback.description += "; seen as " + check_path(loopback, {}, "loopback")
            seen = check_path(token_path, bearer, "token")
            token_path.description += seen
            if from_tailnet:
                address = ipaddress.ip_address(seen.split(" ", 1)[0])
                if address not in TAILNET_NET:
                    raise SystemExit(
                        f"bench_gunicorn: the server saw the token path's client as {seen}, "
                        "not a tailnet address"
                    )
            paths = [loopback, token_path]

            cores = os.cpu_count()
            print(
                f"{platform.node()}: {cores} CPUs, load average {load_before[0]:.2f}; "
                f"Python {platform.python_version()}; gunicorn {_version('gunicorn')}, "
                f"Flask {_version('flask')}, flask-tailnet {_version('flask-tailnet')}, "
                f"{_version_line(wrk)}"
            )
            print(
                f"servers: {args.workers} {args.worker_class} workers each, started once, "
                f"side by side; guarded: {GUARDED_APP}"
                + (f" with -c python:{config}" if config else f" (no -c: {config_note})")
                + f"; bare: {BARE_APP}; endpoint GET {ENDPOINT}"
            )
            print(f"loader: {loader.describe(burst)}")
            total = rounds * len(paths) * 2 * burst
            print(
                f"{rounds} rounds x {len(paths)} paths x 2 sides x {burst} s bursts "
                f"(about {total:.0f} s of load) ...",
                flush=True,
            )
            measure(paths, loader, rounds, burst, quiet=False)
    finally:
        for each in servers:
            each.stop()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    goals = evaluate_goals(paths)
    print()
    print(report(paths, goals, rounds))
    print(
        f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(wrk and both servers share {os.cpu_count()} CPUs with whatever else runs)"
    )
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    failed = any(g.status == "FAIL" for g in goals)
    return 1 if args.check and failed else 0


def _version_line(wrk: str) -> str:
    done = subprocess.run(
        [wrk, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk (version unknown)"


if __name__ == "__main__":
    raise SystemExit(main())
