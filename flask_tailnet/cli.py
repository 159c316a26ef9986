"""``flask tailnet ...``: the click group registered through the ``flask.commands`` entry point.

Secrets go to stdout only when asked for (``token``, ``password --generate``, ``url``), and only
the secret itself, so ``$(...)`` works; everything else goes to stderr. The commands' docstrings
are their ``--help`` text, so they are plain text, not reStructuredText.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import stat
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo
from werkzeug.security import generate_password_hash

from .addresses import is_loopback, is_tailnet, parse_ip
from .binds import (
    BindRefused,
    binds_from_env,
    check_binds,
    default_port,
    single_port,
)
from .credentials import LoginCredentials
from .identity import TailscaleIdentity
from .machine import listening_ports, machine_addresses, tailnet_addresses
from .masking import mask_uri
from .pamauth import pam_status
from .passwords import MAX_PASSWORD_LENGTH, password_problem
from .secretfile import SecretFile, UnsafeSecretFile, directory_problem, ensure_private_dir
from .settings import DEFAULT_PORT, FLASK_RUN_PORT, Settings
from .state import GuardState, guard_state
from .tailscaled import LocalAPIError
from .tailscaled_watch import describe
from .token import login_link

tailnet = AppGroup("tailnet", help="flask-tailnet: the guard's token, password and state.")


def _state() -> GuardState:
    state = guard_state(current_app)
    if state is None:
        raise click.ClickException(
            f"the app {current_app.name!r} does not use flask-tailnet; "
            "add `TailnetGuard(app)` (or `guard.init_app(app)`) to its factory"
        )
    return state


@contextmanager
def _file_errors(secret_file: SecretFile) -> Iterator[None]:
    """Turn an unsafe or unwritable secret file into a CLI error that says what to do."""
    try:
        yield
    except UnsafeSecretFile as exc:
        raise click.ClickException(f"refusing {exc}") from None
    except OSError as exc:
        name = exc.filename2 or exc.filename  # a rename's target, not our temporary file
        where = "" if name in (None, str(secret_file.path)) else f" ({name})"
        raise click.ClickException(
            f"cannot write {secret_file.path}: {exc.strerror}{where}; "
            "fix that path or set TAILNET_STATE_DIR to a directory this user can create"
        ) from None


@tailnet.command("token")
@click.option("--rotate", is_flag=True, help="Replace the token; running servers use the new one.")
def token_command(rotate: bool) -> None:
    """Print the bearer token, creating it on first use. Nothing else goes to stdout."""
    token_file = _state().token_file
    with _file_errors(token_file):
        token = token_file.rotate() if rotate else token_file.ensure()
    click.echo(token.decode("ascii", "replace"))


@tailnet.command("password")
@click.option("--generate", is_flag=True, help="Write a random password and print it once.")
@click.option("--remove", is_flag=True, help="Delete the password file.")
def password_command(generate: bool, remove: bool) -> None:
    """Set the login password and store a scrypt hash of it in the password file (mode 0600,
    replaced atomically).

    On a terminal it prompts twice, without echo. Otherwise it reads one line from standard
    input (for scripts). Only --generate prints to stdout: the password."""
    state = _state()
    password_file = state.credentials.passwords.file
    if generate and remove:
        raise click.UsageError("--generate and --remove exclude each other")
    with _file_errors(password_file):
        if remove:
            # An absent directory holds no password: do not create it just to say so.
            existed = not _missing(password_file.directory) and password_file.remove()
            click.echo(
                f"removed {password_file.path}" if existed else f"{password_file.path} was absent",
                err=True,
            )
            _say_method(state)
            return
        # Before the prompt, so that nobody types a password twice for a directory we refuse.
        ensure_private_dir(password_file.directory)
        unused = _why_the_login_page_ignores_the_file(state.credentials)
        if unused is not None:
            click.echo(f"note: the login page will not ask for this password: {unused}", err=True)
        if generate:
            password = secrets.token_urlsafe(18)
        else:
            password = _new_password()
            problem = password_problem(password)
            if problem is not None:
                raise click.ClickException(f"refusing {problem}; nothing was written")
        old_problem = password_file.problem()
        password_file.write(generate_password_hash(password, "scrypt").encode("ascii"))
    if old_problem not in (None, "missing"):
        click.echo(f"replaced {password_file.path}, unusable as it was (unsafe or empty)", err=True)
    click.echo(f"wrote a scrypt hash to {password_file.path} (mode 0600)", err=True)
    _say_method(state)
    if generate:
        click.echo(password)


def _new_password() -> str:
    """The new password: prompted twice without echo on a terminal, else the first line of
    standard input without its line ending (a script's ``echo "$PW" |``), never echoed."""
    if stdin_is_a_terminal():
        password: str = click.prompt(
            "New password", hide_input=True, confirmation_prompt=True, err=True
        )
        return password
    try:  # bounded: a longer line is refused as too long, not read whole
        line = sys.stdin.readline(MAX_PASSWORD_LENGTH + 3)
    except UnicodeDecodeError:
        raise click.ClickException(
            "refusing a password that is not valid text; nothing was written"
        ) from None
    if not line:
        raise click.ClickException(
            "no password on standard input (it is not a terminal, so one line is read from "
            "it); nothing was written"
        )
    return line.removesuffix("\n").removesuffix("\r")


def stdin_is_a_terminal() -> bool:
    """Whether standard input is a terminal (a person at a prompt, not a script)."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached
        return False


def _why_the_login_page_ignores_the_file(credentials: LoginCredentials) -> str | None:
    """Why a password written to the file now would not be what the login page asks for (PAM or
    the token is in force, or the password variable wins over the file), or ``None``."""
    resolution = credentials.choice.resolve()
    switch = 'set TAILNET_AUTH="password" to log in with it'
    if resolution.method == "pam":
        return (
            f"it asks for a user name and system password ({resolution.why}; "
            f"TAILNET_AUTH={credentials.choice.mode}); {switch}"
        )
    if credentials.choice.mode == "token":
        return f"it asks for the token (TAILNET_AUTH is 'token'); {switch}"
    if credentials.passwords.from_env():
        return (
            f"the variable {credentials.passwords.env_name} is set here, and a server with it "
            "uses its password instead of the file's"
        )
    return None


def _say_method(state: GuardState) -> None:
    resolution = state.credentials.choice.resolve()
    click.echo(f"login method now: {resolution.method} ({resolution.why})", err=True)


@tailnet.command("status")
def status_command() -> None:
    """Report the guard's configuration and state files. Prints no secret.

    Exits 1 when a file or the state directory is unsafe; when PAM would accept any password
    for a user of TAILNET_PAM_USERS (an account without a password under a nullok stack; the
    guard refuses it); when the login method that TAILNET_AUTH forces logs nobody in on
    this machine (PAM unusable, no password set); when the loopback bypass is on and
    tailscaled may be relaying to loopback but cannot be read (every loopback request must
    then authenticate); and when TAILNET_IDENTITY is "required" or a gate is set and
    tailscaled does not answer (every remote peer is then refused)."""
    state = _state()
    conf = state.settings
    resolution = state.credentials.choice.resolve()
    unusable = state.credentials.choice.unusable()
    unsafe = False
    lines = [
        f"login method:     {resolution.method} ({resolution.why}; TAILNET_AUTH={conf.auth})",
        *([f"                  UNUSABLE, nobody logs in with it: {unusable}"] if unusable else []),
        "bearer token:     accepted in every mode",
        f"state directory:  {conf.state_dir}",
    ]
    if _missing(conf.state_dir):
        lines.append("                  missing (created on first need, mode 0700)")
    else:
        problem = directory_problem(conf.state_dir)
        unsafe = unsafe or problem is not None
        lines.append(f"                  {_mode_and_owner(conf.state_dir)}, {_verdict(problem)}")
    files = (
        ("token", state.token_file),
        ("session_key", state.sessions.key_file),
        ("password", state.credentials.passwords.file),
    )
    for label, secret_file in files:
        issue = secret_file.problem()
        if issue == "missing":
            lines.append(f"  {label + ':':<15} missing")
            continue
        unsafe = unsafe or issue is not None
        lines.append(f"  {label + ':':<15} {_mode_and_owner(secret_file.path)}, {_verdict(issue)}")
    lines += [
        f"network policy:   {conf.network}"
        + (f", allowlist {', '.join(map(str, conf.allowlist))}" if conf.allowlist else ""),
        "allowed hosts:    localhost, IP literals in the policy"
        + "".join(f", {'.' if r.subdomains else ''}{r.name}" for r in conf.allowed_hosts),
        "trusted proxies:  " + (", ".join(map(str, conf.trusted_proxies)) or "none"),
        f"loopback bypass:  {'on' if conf.local_bypass else 'off'}",
        f"login limits:     {conf.login_limits} per client address",
        f"limit storage:    {mask_uri(conf.ratelimit_storage_uri)}"
        + (" (counts per process)" if conf.ratelimit_storage_uri.startswith("memory") else ""),
        f"sessions:         cookie {conf.cookie_name}, {int(conf.session_lifetime)} s",
        f"login page:       {conf.login_prefix}/login",
        "gunicorn binds:   " + _gunicorn_binds(conf.bind, conf.allow_wildcard_bind, conf.network),
    ]
    snapshot = state.identify.watch.refresh()
    needs_identity = conf.needs_identity
    found_lines = describe(
        snapshot, needs_identity=needs_identity, funnel_served=conf.network == "any"
    )
    for found in found_lines:  # "tailscaled: ...", "loopback: ...": a label each
        label, _, text = found.partition(": ")
        lines.append(f"{label + ':':<17} {text}")
    lines.append(f"identity:         {_identity_summary(conf)}")
    relay_unknown = conf.local_bypass and snapshot.unknown
    identity_missing = conf.identity_needed_by is not None and not snapshot.reachable
    if identity_missing:
        lines.append(
            f"                  UNUSABLE, every remote peer is refused: {conf.identity_needed_by} "
            "but tailscaled does not answer"
        )
    if state.credentials.pam is not None:
        for line in pam_status(state.credentials.pam):
            unsafe = unsafe or line.unsafe
            lines.append(f"{line.label + ':' if line.label else '':<17} {line.text}")
    click.echo("\n".join(lines))
    problems: list[tuple[object, str]] = [
        (unusable, "the login method logs nobody in: see the line marked UNUSABLE"),
        (unsafe, "something is UNSAFE: run the fix on each line marked UNSAFE"),
        (
            relay_unknown,
            "the guard cannot tell loopback requests that tailscaled relayed from local ones: "
            + (
                "every loopback request is refused (403), a gate or 'required' identity needing "
                "an identity nobody can give"
                if needs_identity
                else "every loopback request must authenticate"
            )
            + " (see the tailscaled lines)",
        ),
        (identity_missing, "no remote peer gets in: see the identity line marked UNUSABLE"),
    ]
    for shown, message in problems:
        if shown:
            click.echo(message, err=True)
    if any(shown for shown, _ in problems):
        raise click.exceptions.Exit(1)


def _identity_summary(conf: Settings) -> str:
    rule = conf.identity_rule
    gates = [
        *(f"user {u}" for u in sorted(rule.users)),
        *(f"user *@{d}" for d in sorted(rule.domains)),
        *(f"tag {t}" for t in sorted(rule.tags)),
        *([f"capability {rule.capability}"] if rule.capability else []),
    ]
    return (
        f"{conf.identity} (TAILNET_IDENTITY); gates: {', '.join(gates) or 'none'}; "
        f"Tailscale login: {'on' if conf.tailscale_login else 'off'}"
    )


@tailnet.command("whois")
@click.argument("address")
def whois_command(address: str) -> None:
    """Print what tailscaled says of ADDRESS (IP or IP:PORT, [IPv6]:PORT), as the guard would
    use it: the peer's login, node, tags and capabilities, and whether this app's gates admit it.

    Exits 1 when ADDRESS is not a peer or tailscaled does not answer; 2 when ADDRESS does not
    parse."""
    state = _state()
    ip, port = _address_and_port(address)
    snapshot = state.identify.watch.refresh()
    if snapshot.api is None or not snapshot.reachable:
        why = snapshot.problem or (
            "no tailscaled socket found here; set TAILNET_TAILSCALED_SOCKET if it is elsewhere"
        )
        raise click.ClickException(f"tailscaled does not answer: {why}")
    try:
        identity = snapshot.api.whois(ip, port)
    except LocalAPIError as exc:
        raise click.ClickException(f"whois failed: {exc}") from None
    if identity is None:
        click.echo(f"{address}: not a peer (tailscaled: no match)")
        raise click.exceptions.Exit(1)
    itself = bool(snapshot.self_addresses.intersection(identity.addresses))
    lines = [
        f"login:         {identity.login if identity.login is not None else '(tagged node)'}",
        f"display name:  {_shown(identity.display_name)}",
        f"node:          {identity.node} ({identity.node_id})" + (" = this node" if itself else ""),
        f"addresses:     {', '.join(identity.addresses)}",
        f"tags:          {', '.join(identity.tags) or 'none'}",
        "capabilities:  "
        + (
            json.dumps(dict(identity.capabilities), sort_keys=True, default=_json_value)
            if identity.capabilities
            else "none"
        ),
        f"this app:      {_whois_verdict(state, ip, identity, itself=itself)}",
    ]
    click.echo("\n".join(lines))


def _whois_verdict(state: GuardState, ip: str, identity: TailscaleIdentity, *, itself: bool) -> str:
    """What the guard does with a request from the peer whois named, in the order it decides:
    this node itself (local with the loopback bypass), the network policy, the gates, then
    Tailscale login or the credential cascade. A loopback ``IP:PORT`` that tailscaled relayed is
    judged by the peer's own tailnet address, as the guard judges it."""
    conf = state.settings
    if itself:
        if conf.local_bypass:
            return "local (a process on this node, served as loopback is)"
        return "a process on this node; the loopback bypass is off: must present a credential"
    address = parse_ip(ip)
    if is_loopback(address):  # a connection tailscaled relayed: the peer's own address counts
        address = next((a for a in map(parse_ip, identity.addresses) if is_tailnet(a)), None)
    if not state.identify.policy.admits(address):
        return f"REFUSED by the network policy (403; TAILNET_NETWORK={conf.network})"
    if conf.identity == "off":
        return "must present a credential (TAILNET_IDENTITY is off: the guard does not ask)"
    if not conf.identity_rule.admits(identity):
        return "REFUSED by the gates (403)"
    if conf.tailscale_login:
        return f"admitted by Tailscale login as {identity.login or identity.node}"
    return "admitted by the gates; must present a credential (Tailscale login is off)"


def _shown(text: str) -> str:
    """``text`` as is when every character prints; else escaped (a display name is chosen by its
    user, who may be in another tailnet: a right-to-left override would reorder the line)."""
    return text if text.isprintable() else ascii(text)


def _json_value(value: object) -> object:
    """What json.dumps cannot write itself: the read-only mappings of capability values."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


_NOT_AN_ADDRESS = "{!r} is not IP, IP:PORT or [IPv6]:PORT"


def _address_and_port(text: str) -> tuple[str, int | None]:
    """``IP``, ``IPv4:PORT``, ``[IPv6]`` or ``[IPv6]:PORT``; a click error for anything else
    (brackets around IPv4, as Go's netip refuses them, and a port that is not 1 to 65535 in ASCII
    digits included)."""
    host, port = text, None
    bracketed = text.startswith("[")
    if bracketed:
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")) or ":" not in host:
            raise click.BadParameter(_NOT_AN_ADDRESS.format(text), param_hint="ADDRESS")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    ip = parse_ip(host)
    if ip is None or (
        port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536)
    ):
        raise click.BadParameter(_NOT_AN_ADDRESS.format(text), param_hint="ADDRESS")
    return str(ip), None if port is None else int(port)


def _gunicorn_binds(app_binds: tuple[str, ...], app_allows_wildcard: bool, network: str) -> str:
    """Where ``flask_tailnet.gunicorn`` would listen, as the master decides it: the environment's
    ``TAILNET_BIND`` first, then the app's, then the default (gunicorn's own ``-b`` wins over all,
    and is not known here)."""
    try:
        env_binds, env_allows_wildcard = binds_from_env(os.environ)
    except BindRefused as exc:
        return f"unusable environment ({exc}); the server would refuse to start"
    if env_binds:
        where = ", ".join(env_binds) + " (TAILNET_BIND in the environment)"
        try:  # the app's own binds were checked by init_app; the environment's only at start
            check_binds(
                [spec for spec in env_binds if not spec.startswith("fd://")],
                network=network,
                allow_wildcard=env_allows_wildcard or app_allows_wildcard,
            )
        except BindRefused as exc:
            first = str(exc).splitlines()[0]
            return f"{where}; the server would refuse to start ({first})"
    else:
        where = ", ".join(app_binds) or "loopback and this machine's tailnet addresses (default)"
    if env_allows_wildcard or app_allows_wildcard:
        where += ", wildcard allowed"
    return where


def _verdict(problem: str | None) -> str:
    return "safe" if problem is None else f"UNSAFE: {problem}"


def _missing(path: Path) -> bool:
    """True only when ``path`` is not there (a path that cannot be examined is not missing)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _mode_and_owner(path: Path) -> str:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    kind = "symbolic link, " if stat.S_ISLNK(st.st_mode) else ""
    return f"{kind}mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}"


@tailnet.command("url")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="The port the app listens on. Default: the port of TAILNET_BIND; else the port a "
    "server of this user listens on here, that of flask tailnet serve ($PORT or 8000) or of "
    "flask run ($FLASK_RUN_PORT or 5000); else 5000. What it chose is said on stderr.",
)
@click.option("--scheme", default="http", show_default=True, type=click.Choice(["http", "https"]))
def url_command(port: int | None, scheme: str) -> None:
    """Print login links (with ?token=) for localhost and this machine's tailnet addresses,
    one per line, creating the token on first use. Nothing else goes to stdout."""
    state = _state()
    token_file = state.token_file
    with _file_errors(token_file):
        token = token_file.ensure()
    if port is None:
        port, how = url_port(state.settings)
        click.echo(f"port {port}: {how}; pass --port if the app listens elsewhere", err=True)
    found = tailnet_addresses(machine_addresses())
    for host in ["localhost", *found]:
        click.echo(login_link(scheme, host, port, token))
    if not found:
        click.echo("no tailnet address found on this machine: is Tailscale up?", err=True)
    click.echo("Anyone with one of these links is logged in: share them with care.", err=True)


def url_port(conf: Settings) -> tuple[int, str]:
    """The port a server of this app most likely listens on, and how it was found: the one port
    of ``TAILNET_BIND`` (the environment's, else the app's); else the one of the two default
    ports (``flask tailnet serve``'s, ``flask run``'s) that this user listens on here (run it as
    the server's user); else ``flask run``'s, assumed. Nothing is connected to."""
    try:
        env_binds, _ = binds_from_env(os.environ)
    except BindRefused:
        env_binds = None
    configured = single_port(env_binds or conf.bind)
    if configured is not None:
        where = "the environment's" if env_binds else "the app's"
        return configured, f"the port of {where} TAILNET_BIND"
    try:
        serve = default_port(os.environ)
    except BindRefused:
        serve = DEFAULT_PORT
    try:
        run = int(os.environ.get("FLASK_RUN_PORT", FLASK_RUN_PORT))
    except ValueError:
        run = FLASK_RUN_PORT
    defaults = {  # a variable that is not a port counts as unset
        "flask tailnet serve": serve if 0 < serve < 65536 else DEFAULT_PORT,
        "flask run": run if 0 < run < 65536 else FLASK_RUN_PORT,
    }
    listening = listening_ports()
    found = {port: name for name, port in defaults.items() if port in listening}
    if len(found) == 1:
        [(port, name)] = found.items()
        return port, f"this user listens on it here, the default port of {name}"
    ports = " or ".join(str(port) for port in dict.fromkeys(defaults.values()))
    listen = "this user listens on both" if found else "this user listens on neither"
    return defaults["flask run"], f"assumed, the port of flask run ({listen} of {ports} here)"


@tailnet.command(
    "serve",
    with_appcontext=False,  # a worker forked inside the CLI's app context would share its ``g``
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def serve_command(info: ScriptInfo, gunicorn_args: tuple[str, ...]) -> None:
    """Serve the app under gunicorn with flask_tailnet.gunicorn's defaults: loopback and this
    machine's tailnet addresses, every bind checked first. Options go to gunicorn (-b, -w, -k,
    --threads, --access-logfile; see gunicorn --help)."""
    try:
        from .gunicorn_serve import serve  # noqa: PLC0415 - gunicorn is an optional extra
    except ImportError as exc:
        if exc.name != "gunicorn" and not (exc.name or "").startswith("gunicorn."):
            raise
        raise click.ClickException(
            "gunicorn is not installed: pip install 'flask-tailnet[gunicorn]'"
        ) from None
    serve(info.load_app(), gunicorn_args, info.app_import_path)
