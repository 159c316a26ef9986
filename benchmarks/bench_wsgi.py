"""In-process cost of one request through flask-tailnet, compared with bare Flask and references.

Run by hand from the repository root (it is a report, not a test)::

    python benchmarks/bench_wsgi.py            # full run, about a minute
    python benchmarks/bench_wsgi.py --quick    # smoke run, a few seconds
    python benchmarks/bench_wsgi.py --check    # exit 1 if a goal fails

Each request is one WSGI call, ``app(environ, start_response)``, whose iterable is consumed and
closed, with a copy of a prebuilt environ, to a view returning ``"hello"``. No server, no socket:
the figures are the in-process cost of routing plus whatever guard the variant installs.

The run is made of rounds. A round times a batch of requests to every variant, in an order that
rotates from round to round, and divides each variant's time per request by bare Flask's in that
same round, so a slow phase of the machine scales both sides of the ratio. A variant's figure is
the median of its per-round ratios. Garbage collection runs between batches, never inside one.

Importing this module has no side effects; everything happens in :func:`main`.
"""

from __future__ import annotations

import argparse
import base64
import functools
import gc
import hmac
import io
import logging
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flask
import tailscaled_rows
from flask import Flask

from flask_tailnet import TailnetGuard

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

#: Makes one request's environ from the prebuilt one.
Fresh = Callable[["WSGIEnvironment"], "WSGIEnvironment"]

LOOPBACK_ADDR = "127.0.0.1"
LOOPBACK_HOST = "localhost:5000"
#: A tailnet peer calling the app on its tailnet address.
TAILNET_ADDR = "100.64.0.7"
TAILNET_HOST = "100.64.0.1:5000"

BARE = "bare Flask"
TN_LOOPBACK = "flask-tailnet, loopback"
TN_TOKEN = "flask-tailnet, token"
TG_LOOPBACK = "tailnet-guard, loopback+token"
TG_TOKEN = "tailnet-guard, token"
HTTPAUTH_TOKEN = "Flask-HTTPAuth, token"
TN_SESSION = "flask-tailnet, session cookie"
TN_BASIC = "flask-tailnet, Basic password"
TN_PEER_IDENTITY = "flask-tailnet, token + identity (cached)"
TN_TS_LOGIN = "flask-tailnet, Tailscale login (cached)"
TN_TUN_LOOPBACK = "flask-tailnet, loopback, TUN tailscaled"
TN_US_SAME = "flask-tailnet, loopback, userspace, one connection"
TN_US_NEW = "flask-tailnet, loopback, userspace, new connections"
#: The password of the Basic variant, set in the environment variable the guard reads.
BASIC_PASSWORD_ENV = "BENCH_TAILNET_PASSWORD"
BASIC_PASSWORD = "correct horse battery staple"

#: The goals: flask-tailnet's ratio to bare Flask must not exceed these.
LOOPBACK_LIMIT = 1.03
TOKEN_LIMIT = 1.08
SESSION_LIMIT = 1.12
BASIC_LIMIT = 1.15
IDENTITY_TOKEN_LIMIT = 1.10
TAILSCALE_LOGIN_LIMIT = 1.06
TUN_LOOPBACK_LIMIT = 1.03
#: Uncached whois calls timed (each one LocalAPI round trip to the stand-in).
WHOIS_CALLS = 300
QUICK_WHOIS_CALLS = 50

DEFAULT_ROUNDS = 40
DEFAULT_BATCH = 2000
QUICK_ROUNDS = 10
QUICK_BATCH = 300


# --- WSGI plumbing ----------------------------------------------------------------------------


def make_environ(
    remote_addr: str, host: str, authorization: str | None = None, cookie: str | None = None
) -> WSGIEnvironment:
    """A GET / environ as a WSGI server would build it for an HTTP/1.1 request."""
    server_name, _, server_port = host.rpartition(":")
    environ: WSGIEnvironment = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": "54321",
        "HTTP_HOST": host,
        "HTTP_USER_AGENT": "bench_wsgi/1",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        # A GET without a body: nothing ever reads it, so one empty stream can be shared.
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    return environ


def _write(data: bytes) -> None:
    """The ``write`` callable returned by :func:`_start_response`; unused by Flask."""


def _start_response(
    status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
) -> Callable[[bytes], object]:
    return _write


def call_once(app: WSGIApplication, environ: WSGIEnvironment) -> tuple[str, bytes]:
    """One request, outside the timed loop: the status line and the body."""
    seen: list[str] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        seen.append(status)
        return _write

    result = app(dict(environ), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (seen[-1] if seen else "<no status>"), body


def time_batch(
    app: WSGIApplication, environ: WSGIEnvironment, n: int, fresh: Fresh | None = None
) -> float:
    """Seconds per request over ``n`` requests, with the garbage collector paused. Each request
    gets ``fresh(environ)`` when given (a new connection object per request), else a copy."""
    copy = environ.copy if fresh is None else functools.partial(fresh, environ)
    start_response = _start_response
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(n):
            result: Iterable[bytes] = app(copy(), start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    return elapsed / n


# --- the apps ---------------------------------------------------------------------------------


def hello() -> str:
    return "hello"


def hello_app(name: str) -> Flask:
    """A Flask app with one view, ``GET /`` returning ``"hello"``."""
    app = Flask(name)
    app.add_url_rule("/", "hello", hello)
    return app


@dataclass(frozen=True)
class Variant:
    name: str
    app: WSGIApplication
    environ: WSGIEnvironment
    note: str = ""
    #: Builds each request's environ from ``environ`` (default: a copy of it).
    fresh: Fresh | None = None


@dataclass
class Setup:
    """The variants that could be built, and why the others could not."""

    variants: list[Variant] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: The TUN-mode stand-in, for the uncached whois figure.
    tailscaled: Any = None


def tailnet_variants(state_dir: Path) -> tuple[list[Variant], str]:
    """flask-tailnet on its loopback path and its bearer-token path; returns the token too."""
    app = hello_app("bench_tailnet")
    TailnetGuard(app, state_dir=state_dir)
    token = app.extensions["tailnet"].token_file.ensure().decode()
    codec = app.extensions["tailnet"].sessions
    cookie = codec.issue(user=None, method="token", credential=token.encode())
    os.environ[BASIC_PASSWORD_ENV] = BASIC_PASSWORD
    basic_app = hello_app("bench_tailnet_basic")
    TailnetGuard(
        basic_app, state_dir=state_dir / "basic", auth="password", password_env=BASIC_PASSWORD_ENV
    )
    basic = base64.b64encode(f"me:{BASIC_PASSWORD}".encode()).decode()
    return [
        Variant(
            TN_SESSION,
            app,
            make_environ(TAILNET_ADDR, TAILNET_HOST, cookie=f"tailnet_session={cookie}"),
            f"{TAILNET_ADDR}, Cookie: tailnet_session (made with the token)",
        ),
        Variant(
            TN_BASIC,
            basic_app,
            make_environ(TAILNET_ADDR, TAILNET_HOST, f"Basic {basic}"),
            f"{TAILNET_ADDR}, Authorization: Basic, password from {BASIC_PASSWORD_ENV}",
        ),
        Variant(
            TN_LOOPBACK,
            app,
            make_environ(LOOPBACK_ADDR, LOOPBACK_HOST),
            "127.0.0.1, no credential (loopback bypass)",
        ),
        Variant(
            TN_TOKEN,
            app,
            make_environ(TAILNET_ADDR, TAILNET_HOST, f"Bearer {token}"),
            f"{TAILNET_ADDR}, Authorization: Bearer",
        ),
    ], token


def tailnet_guard_variants(token: str) -> list[Variant]:
    """PyPI tailnet-guard's ``evaluate_peer`` in a ``before_request`` hook, as its docs suggest.

    tailnet-guard has no loopback bypass: every peer, loopback included, must present the
    token. Its loopback row is therefore a loopback peer *with* a valid token."""
    from tailnet_guard import (  # noqa: PLC0415 - optional, from the bench extra
        GuardOutcome,
        PeerRequest,
        evaluate_peer,
    )

    app = hello_app("bench_tailnet_guard")

    def guard() -> None:
        scheme, _, credential = flask.request.headers.get("Authorization", "").partition(" ")
        presented = credential.strip() if scheme.lower() == "bearer" else ""
        peer = PeerRequest(remote_addr=flask.request.remote_addr or "", token=presented)
        if evaluate_peer(peer, expected_token=token) is not GuardOutcome.ALLOW:
            flask.abort(403)

    app.before_request(guard)
    return [
        Variant(
            TG_LOOPBACK,
            app,
            make_environ(LOOPBACK_ADDR, LOOPBACK_HOST, f"Bearer {token}"),
            "127.0.0.1 with a valid token (it has no bypass)",
        ),
        Variant(
            TG_TOKEN,
            app,
            make_environ(TAILNET_ADDR, TAILNET_HOST, f"Bearer {token}"),
            f"{TAILNET_ADDR}, Authorization: Bearer",
        ),
    ]


def httpauth_variants(token: str) -> list[Variant]:
    """Flask-HTTPAuth's ``HTTPTokenAuth(scheme="Bearer")`` on a ``@auth.login_required`` view."""
    from flask_httpauth import HTTPTokenAuth  # noqa: PLC0415 - optional, from the bench extra

    expected = token.encode()
    auth = HTTPTokenAuth(scheme="Bearer")

    def verify_token(presented: str) -> str | None:
        ok = hmac.compare_digest(presented.encode("utf-8", "replace"), expected)
        return "peer" if ok else None

    auth.verify_token(verify_token)
    app = Flask("bench_httpauth")
    app.add_url_rule("/", "hello", auth.login_required(hello))
    return [
        Variant(
            HTTPAUTH_TOKEN,
            app,
            make_environ(TAILNET_ADDR, TAILNET_HOST, f"Bearer {token}"),
            f"{TAILNET_ADDR}, Authorization: Bearer",
        )
    ]


def tailscaled_variants(
    state_dir: Path,
    tun: tailscaled_rows.StandInTailscaled,
    userspace: tailscaled_rows.StandInTailscaled,
    connections: list[socket.socket] | None,
) -> list[Variant]:
    """flask-tailnet asking a stand-in tailscaled: a tailnet peer with the token and its identity
    cached; the same peer admitted by Tailscale login; loopback with a TUN-mode tailscaled
    (nothing to ask); loopback with a userspace-mode one, on one connection and on new ones
    (when ``connections`` could be made)."""
    for stand_in in (tun, userspace):
        tailscaled_rows.add_peer(stand_in, TAILNET_ADDR)
    app = hello_app("bench_tailnet_identity")
    TailnetGuard(app, state_dir=state_dir / "identity", tailscaled_socket=tun.path)
    token = app.extensions["tailnet"].token_file.ensure().decode()
    login_app = hello_app("bench_tailnet_login")
    TailnetGuard(
        login_app,
        state_dir=state_dir / "login",
        tailscaled_socket=tun.path,
        tailscale_login=True,
        allowed_users=[tailscaled_rows.PEER_LOGIN],
    )
    variants = [
        Variant(
            TN_PEER_IDENTITY,
            app,
            make_environ(TAILNET_ADDR, TAILNET_HOST, f"Bearer {token}"),
            f"{TAILNET_ADDR}, Authorization: Bearer; whois answer cached (10 s)",
        ),
        Variant(
            TN_TS_LOGIN,
            login_app,
            make_environ(TAILNET_ADDR, TAILNET_HOST),
            f"{TAILNET_ADDR}, no credential; TAILNET_ALLOWED_USERS admits its login",
        ),
        Variant(
            TN_TUN_LOOPBACK,
            app,
            make_environ(LOOPBACK_ADDR, LOOPBACK_HOST),
            "127.0.0.1, no credential; tailscaled in TUN mode, nothing forwarded",
        ),
    ]
    if connections is None:
        return variants
    userspace_app = hello_app("bench_tailnet_userspace")
    TailnetGuard(userspace_app, state_dir=state_dir / "userspace", tailscaled_socket=userspace.path)
    loopback = make_environ(LOOPBACK_ADDR, LOOPBACK_HOST)
    return [
        *variants,
        Variant(
            TN_US_SAME,
            userspace_app,
            tailscaled_rows.on_connection(loopback, connections[0]),
            "127.0.0.1 on one live connection another user made (answer kept per connection)",
        ),
        Variant(
            TN_US_NEW,
            userspace_app,
            tailscaled_rows.on_connection(loopback, connections[0]),
            f"127.0.0.1, each request a connection not seen before ({len(connections)} live "
            "ones in turn): one kernel lookup of its owner",
            fresh=tailscaled_rows.new_connections(connections),
        ),
    ]


def build(state_dir: Path, stack: ExitStack) -> Setup:
    """The variants; the stand-in tailscaleds and the connections stay up until ``stack``
    closes."""
    setup = Setup()
    connections: list[socket.socket] | None
    try:  # first: it forks, so no thread may run yet
        connections = stack.enter_context(tailscaled_rows.other_user_connections())
    except (PermissionError, OSError, RuntimeError) as exc:
        connections = None
        setup.skipped.append(f"the userspace-mode rows are skipped: {exc}")
    setup.variants.append(
        Variant(BARE, hello_app("bench_bare"), make_environ(LOOPBACK_ADDR, LOOPBACK_HOST))
    )
    tailnet, token = tailnet_variants(state_dir)
    setup.variants.extend(tailnet)
    tun, userspace = stack.enter_context(tailscaled_rows.stand_ins())
    setup.tailscaled = tun
    setup.variants.extend(tailscaled_variants(state_dir, tun, userspace, connections))
    for label, builder in (
        ("tailnet-guard", tailnet_guard_variants),
        ("Flask-HTTPAuth", httpauth_variants),
    ):
        try:
            setup.variants.extend(builder(token))
        except ImportError as exc:
            setup.skipped.append(
                f"{label} is not importable ({exc}); its reference rows are skipped. "
                "Install them with: pip install -e '.[bench]'"
            )
    return setup


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    ratios: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def micros(self) -> float:
        return statistics.median(self.seconds) * 1e6

    @property
    def spread(self) -> tuple[float, float]:
        """The interquartile range of the per-round ratios."""
        if len(self.ratios) < 2:
            return self.ratio, self.ratio
        q = statistics.quantiles(self.ratios, n=4)
        return q[0], q[2]


def check_variants(variants: Sequence[Variant]) -> None:
    """Every variant must actually serve the view; a refusal would be fast and meaningless."""
    for variant in variants:
        status, body = call_once(variant.app, variant.environ)
        if not status.startswith("200") or body != b"hello":
            raise SystemExit(
                f"bench_wsgi: {variant.name!r} answered {status!r} {body[:200]!r}, "
                "not 200 'hello'; the benchmark would be meaningless"
            )


def measure(
    variants: Sequence[Variant],
    rounds: int,
    batch: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Result]:
    """Warm every variant up, then time ``rounds`` rounds of ``batch`` requests per variant.

    A variant that builds each request's environ (``fresh``: a new connection per request, hence
    a kernel lookup) is timed apart afterwards, in rounds of its own beside bare Flask: mixed
    into the same rounds, its socket and allocation churn slowed every other variant (the token
    and session rows by 10 to 20 points in one run)."""
    for variant in variants:
        time_batch(variant.app, variant.environ, max(batch // 4, 50), variant.fresh)
    shared = [v for v in variants if v.fresh is None]
    results = _rounds(shared, rounds, batch, progress)
    bare = next(v for v in variants if v.name == BARE)
    for variant in variants:
        if variant.fresh is not None:
            results[variant.name] = _rounds([bare, variant], rounds, batch)[variant.name]
    return {v.name: results[v.name] for v in variants}


def _rounds(
    variants: Sequence[Variant],
    rounds: int,
    batch: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Result]:
    """``rounds`` rounds of ``batch`` requests per variant, in an order that changes."""
    results = {v.name: Result(v.name) for v in variants}
    count = len(variants)
    for index in range(rounds):
        shift = index % count
        order = [*variants[shift:], *variants[:shift]]
        if index % (2 * count) >= count:
            order.reverse()  # vary the neighbours too, not only the positions
        timings = {v.name: time_batch(v.app, v.environ, batch, v.fresh) for v in order}
        bare = timings[BARE]
        for name, seconds in timings.items():
            results[name].seconds.append(seconds)
            results[name].ratios.append(seconds / bare)
        if progress is not None:
            progress(index + 1)
    return results


# --- reporting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    status: str  # "PASS", "FAIL" or "SKIP"
    detail: str


def evaluate_goals(results: dict[str, Result]) -> list[Goal]:
    goals: list[Goal] = []
    loopback = results[TN_LOOPBACK].ratio
    token = results[TN_TOKEN].ratio
    for text, value, limit in (
        (f"loopback <= {LOOPBACK_LIMIT:.2f}x bare", loopback, LOOPBACK_LIMIT),
        (f"token <= {TOKEN_LIMIT:.2f}x bare", token, TOKEN_LIMIT),
        (f"session <= {SESSION_LIMIT:.2f}x bare", results[TN_SESSION].ratio, SESSION_LIMIT),
        (f"Basic password <= {BASIC_LIMIT:.2f}x bare", results[TN_BASIC].ratio, BASIC_LIMIT),
        (
            f"token + identity <= {IDENTITY_TOKEN_LIMIT:.2f}x bare",
            results[TN_PEER_IDENTITY].ratio,
            IDENTITY_TOKEN_LIMIT,
        ),
        (
            f"Tailscale login <= {TAILSCALE_LOGIN_LIMIT:.2f}x bare",
            results[TN_TS_LOGIN].ratio,
            TAILSCALE_LOGIN_LIMIT,
        ),
        (
            f"loopback, TUN tailscaled <= {TUN_LOOPBACK_LIMIT:.2f}x bare",
            results[TN_TUN_LOOPBACK].ratio,
            TUN_LOOPBACK_LIMIT,
        ),
    ):
        ok = value <= limit
        margin = (value - limit) * 100
        detail = f"{value:.3f}x ({margin:+.1f} points against the limit)"
        goals.append(Goal(text, "PASS" if ok else "FAIL", detail))
    for label, name, value, references in (
        ("loopback", TN_LOOPBACK, loopback, (TG_LOOPBACK, HTTPAUTH_TOKEN)),
        ("token", TN_TOKEN, token, (TG_TOKEN, HTTPAUTH_TOKEN)),
    ):
        present = [r for r in references if r in results]
        text = f"{label} below " + " and ".join(references)
        if not present:
            goals.append(Goal(text, "SKIP", "no reference could be measured"))
            continue
        beaten_by = [r for r in present if not value < results[r].ratio]
        ok = not beaten_by
        detail = ", ".join(f"{results[r].ratio:.3f}x for {r}" for r in present)
        detail = f"{value:.3f}x for {name} vs {detail}"
        if len(present) < len(references):
            detail += " (a reference is missing)"
        elif not ok:
            detail += f" (not below {' nor '.join(beaten_by)})"
        goals.append(Goal(text, "PASS" if ok else "FAIL", detail))
    return goals


def report(
    variants: Sequence[Variant],
    results: dict[str, Result],
    goals: Sequence[Goal],
    rounds: int,
    batch: int,
) -> str:
    width = max(len(v.name) for v in variants)
    lines = [
        f"{'variant':<{width}}  {'ratio':>7}  {'IQR of ratio':>13}  {'us/req':>7}  path",
        f"{'-' * width}  {'-' * 7}  {'-' * 13}  {'-' * 7}  {'-' * 4}",
    ]
    for variant in variants:
        result = results[variant.name]
        low, high = result.spread
        lines.append(
            f"{variant.name:<{width}}  {result.ratio:>6.3f}x  {low:>6.3f}-{high:<6.3f}"
            f"  {result.micros:>7.1f}  {variant.note or 'same environ as loopback'}"
        )
    lines.append("")
    lines.append(
        f"ratio: median over {rounds} rounds of (variant / bare Flask in the same round); "
        f"us/req: median over rounds, {batch} requests per batch"
    )
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
        description="Time one in-process WSGI request through flask-tailnet against bare Flask "
        "and reference guards, and report the goals."
    )
    parser.add_argument("--rounds", type=int, help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument(
        "--batch", type=int, help=f"requests per variant per round (default {DEFAULT_BATCH})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_ROUNDS} rounds of {QUICK_BATCH} unless given explicitly",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal fails")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.batch is None:
        args.batch = QUICK_BATCH if args.quick else DEFAULT_BATCH
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds: int = args.rounds
    batch: int = args.batch
    # The success paths log nothing; an error would still surface as a failed sanity check.
    logging.getLogger("flask_tailnet").setLevel(logging.CRITICAL)
    state_dir = Path(tempfile.mkdtemp(prefix="bench-tailnet-"))
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, state_dir, ignore_errors=True)
        setup = build(state_dir, stack)
        variants = setup.variants
        check_variants(variants)
        print(
            f"Python {platform.python_version()} ({platform.python_implementation()}) on "
            f"{platform.machine()}; Flask {_version('flask')}, Werkzeug {_version('werkzeug')}, "
            f"flask-tailnet {_version('flask-tailnet')}, tailnet-guard "
            f"{_version('tailnet-guard')}, Flask-HTTPAuth {_version('flask-httpauth')}"
        )
        for note in setup.skipped:
            print(f"note: {note}")
        print(f"{len(variants)} variants, {rounds} rounds x {batch} requests each ...", flush=True)

        def progress(done: int) -> None:
            if sys.stderr.isatty():
                print(f"\r  round {done}/{rounds}", end="", file=sys.stderr, flush=True)

        gc.collect()
        gc.freeze()  # the apps and modules are long-lived: keep them out of every collection
        try:
            results = measure(variants, rounds, batch, progress)
        finally:
            gc.unfreeze()
        if sys.stderr.isatty():
            print(file=sys.stderr)
        calls = QUICK_WHOIS_CALLS if args.quick else WHOIS_CALLS
        whois = tailscaled_rows.whois_microseconds(setup.tailscaled, TAILNET_ADDR, calls)
    goals = evaluate_goals(results)
    print()
    print(report(variants, results, goals, rounds, batch))
    print(
        f"\nuncached whois: {whois:.0f} us (median of {calls} LocalAPI calls to the stand-in "
        "tailscaled, a Python thread of this process; paid once per peer address every 10 s)"
    )
    print(f"\nwall time: {time.perf_counter() - started:.1f} s")
    failed = any(g.status == "FAIL" for g in goals)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
