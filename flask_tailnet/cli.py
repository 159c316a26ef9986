"""``flask tailnet ...``: the click group registered through the ``flask.commands`` entry point.

Secrets go to stdout only when asked for (``token``, ``password --generate``, ``url``), and only
the secret itself, so ``$(...)`` works; everything else goes to stderr.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import click
from flask import current_app
from flask.cli import AppGroup
from werkzeug.security import generate_password_hash

from .addresses import is_tailnet, parse_ip
from .extension import GuardState, guard_state
from .secretfile import SecretFile, UnsafeSecretFile, directory_problem

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
        raise click.ClickException(
            f"cannot write {secret_file.path}: {exc.strerror}; check TAILNET_STATE_DIR"
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
    file (mode 0600, replaced atomically)."""
    password_file = _state().credentials.passwords.file
    if generate and remove:
        raise click.UsageError("--generate and --remove exclude each other")
    with _file_errors(password_file):
        if remove:
            existed = password_file.remove()
            click.echo(
                f"removed {password_file.path}" if existed else f"{password_file.path} was absent",
                err=True,
            )
            return
        if generate:
            password = secrets.token_urlsafe(18)
        else:
            password = click.prompt(
                "New password", hide_input=True, confirmation_prompt=True, err=True
            )
            if not password.strip() or "\x00" in password:
                raise click.ClickException("refusing an empty password")
        password_file.write(generate_password_hash(password, "scrypt").encode("ascii"))
    click.echo(f"wrote a scrypt hash to {password_file.path}", err=True)
    if generate:
        click.echo(password)


@tailnet.command("status")
def status_command() -> None:
    """A readable report of the guard's configuration and state files; exits 1 when something
    is unsafe. Prints no secret."""
    state = _state()
    conf = state.settings
    resolution = state.credentials.resolve()
    unsafe = False
    lines = [
        f"login method:     {resolution.method} ({resolution.why}; TAILNET_AUTH={conf.auth})",
        "bearer token:     accepted in every mode",
        f"state directory:  {conf.state_dir}",
    ]
    problem = directory_problem(conf.state_dir) if conf.state_dir.exists() else None
    if not conf.state_dir.exists():
        lines.append("                  missing (created on first need, mode 0700)")
    else:
        lines.append(f"                  {_mode_and_owner(conf.state_dir)}, {problem or 'safe'}")
        unsafe = unsafe or problem is not None
    files: Iterable[tuple[str, SecretFile]] = (
        ("token", state.token_file),
        ("session_key", state.sessions.key_file),
        ("password", state.credentials.passwords.file),
    )
    for label, secret_file in files:
        issue = secret_file.problem()
        if issue == "missing":
            lines.append(f"  {label + ':':<15} missing")
            continue
        verdict = "safe" if issue is None else f"UNSAFE: {issue}"
        unsafe = unsafe or issue is not None
        lines.append(f"  {label + ':':<15} {_mode_and_owner(secret_file.path)}, {verdict}")
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
    ]
    click.echo("\n".join(lines))
    if unsafe:
        raise click.exceptions.Exit(1)


@tailnet.command("url")
@click.option("--port", default=5000, show_default=True, help="The port the app listens on.")
@click.option("--scheme", default="http", show_default=True, type=click.Choice(["http", "https"]))
def url_command(port: int, scheme: str) -> None:
    """Print login links with ``?token=`` for localhost and this machine's tailnet addresses."""
    token = _state().token_file
    with _file_errors(token):
        value = token.ensure().decode("ascii", "replace")
    for host in ["localhost", *(_url_host(a) for a in tailnet_addresses(machine_addresses()))]:
        click.echo(f"{scheme}://{host}:{port}/?token={value}")
    click.echo("Anyone with one of these links is logged in: share them with care.", err=True)


def tailnet_addresses(candidates: Iterable[str]) -> list[str]:
    """The tailnet addresses among ``candidates``, in order, without duplicates."""
    found: list[str] = []
    for candidate in candidates:
        ip = parse_ip(candidate)
        if ip is not None and is_tailnet(ip) and str(ip) not in found:
            found.append(str(ip))
    return found


def machine_addresses() -> list[str]:
    """This machine's interface addresses (``ip -j addr``), else what ``tailscale ip`` prints."""
    found: list[str] = []
    ip_command, tailscale = shutil.which("ip"), shutil.which("tailscale")
    if ip_command:
        try:
            out = subprocess.run(  # noqa: S603 - a fixed command found on PATH
                [ip_command, "-j", "addr"], capture_output=True, text=True, timeout=5, check=True
            ).stdout
            for interface in json.loads(out):
                found += [a.get("local", "") for a in interface.get("addr_info", [])]
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    if not found and tailscale:
        try:
            out = subprocess.run(  # noqa: S603 - a fixed command found on PATH
                [tailscale, "ip"], capture_output=True, text=True, timeout=5, check=True
            ).stdout
            found = out.split()
        except (OSError, subprocess.SubprocessError):
            pass
    return found


def mask_uri(uri: str) -> str:
    """``uri`` with any userinfo (a password) replaced by ``***``."""
    return re.sub(r"(?<=://)[^/]*@", "***@", uri, count=1)


def _url_host(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address


def _mode_and_owner(path: os.PathLike[str] | str) -> str:
    st = os.lstat(path)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}"
