"""``flask tailnet ...``: the click group registered through the ``flask.commands`` entry point.

Secrets go to stdout only when asked for (``token``, ``password --generate``, ``url``), and only
the secret itself, so ``$(...)`` works; everything else goes to stderr.
"""

from __future__ import annotations

import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo
from werkzeug.security import generate_password_hash

from .binds import BindRefused, binds_from_env, check_binds
from .machine import machine_addresses, tailnet_addresses
from .masking import mask_uri
from .pamauth import pam_status
from .passwords import _MAX_PRESENTED
from .secretfile import SecretFile, UnsafeSecretFile, directory_problem, ensure_private_dir
from .state import GuardState, guard_state
from .token import login_link

tailnet = AppGroup("tailnet", help="flask-tailnet: the guard's token, password and state.")

#: The longest password the login checks accept; a longer one could be set but never used.
MAX_PASSWORD_LENGTH = _MAX_PRESENTED


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
    """Print the bearer token, creating it on first use; nothing else goes to stdout."""
    token_file = _state().token_file
    with _file_errors(token_file):
        token = token_file.rotate() if rotate else token_file.ensure()
    click.echo(token.decode("ascii", "replace"))


@tailnet.command("password")
@click.option("--generate", is_flag=True, help="Write a random password and print it once.")
@click.option("--remove", is_flag=True, help="Delete the password file.")
def password_command(generate: bool, remove: bool) -> None:
    """Set the login password: prompt twice (no echo) and store a scrypt hash in the password
    file (mode 0600, replaced atomically). Only ``--generate`` prints to stdout: the password."""
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
        if generate:
            password = secrets.token_urlsafe(18)
        else:
            password = click.prompt(
                "New password", hide_input=True, confirmation_prompt=True, err=True
            )
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


def password_problem(password: str) -> str | None:
    """Why ``password`` could never log anyone in (the login checks refuse it), or ``None``."""
    if not password.strip():
        return "an empty password"
    if "\x00" in password:
        return "a password with a NUL character"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"a password longer than {MAX_PASSWORD_LENGTH} characters"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return "a password that is not valid text (check the terminal's encoding)"
    return None


def _say_method(state: GuardState) -> None:
    resolution = state.credentials.choice.resolve()
    click.echo(f"login method now: {resolution.method} ({resolution.why})", err=True)


@tailnet.command("status")
def status_command() -> None:
    """A readable report of the guard's configuration and state files; exits 1 when a file or
    the directory is unsafe, or when PAM would accept any password for a user of
    ``TAILNET_PAM_USERS`` (an account without a password under a ``nullok`` stack; the guard
    refuses it). Prints no secret."""
    state = _state()
    conf = state.settings
    resolution = state.credentials.choice.resolve()
    unsafe = False
    lines = [
        f"login method:     {resolution.method} ({resolution.why}; TAILNET_AUTH={conf.auth})",
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
    if state.credentials.pam is not None:
        for line in pam_status(state.credentials.pam):
            unsafe = unsafe or line.unsafe
            lines.append(f"{line.label + ':' if line.label else '':<17} {line.text}")
    click.echo("\n".join(lines))
    if unsafe:
        click.echo("something is UNSAFE: run the fix on each line marked UNSAFE", err=True)
        raise click.exceptions.Exit(1)


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
    default=5000,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The port the app listens on.",
)
@click.option("--scheme", default="http", show_default=True, type=click.Choice(["http", "https"]))
def url_command(port: int, scheme: str) -> None:
    """Print login links with ``?token=`` for localhost and this machine's tailnet addresses,
    one per line, creating the token on first use. Nothing else goes to stdout."""
    token_file = _state().token_file
    with _file_errors(token_file):
        token = token_file.ensure()
    found = tailnet_addresses(machine_addresses())
    for host in ["localhost", *found]:
        click.echo(login_link(scheme, host, port, token))
    if not found:
        click.echo("no tailnet address found on this machine: is Tailscale up?", err=True)
    click.echo("Anyone with one of these links is logged in: share them with care.", err=True)


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
        from .gunicorn import serve  # noqa: PLC0415 - gunicorn is an optional extra
    except ImportError as exc:
        if exc.name != "gunicorn" and not (exc.name or "").startswith("gunicorn."):
            raise
        raise click.ClickException(
            "gunicorn is not installed: pip install 'flask-tailnet[gunicorn]'"
        ) from None
    serve(info.load_app(), gunicorn_args, info.app_import_path)
