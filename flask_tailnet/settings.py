"""Every ``TAILNET_*`` setting: its default, its meaning and its validation.

This module is the one place that names the settings; docs/settings.md has the same list as a table.
Settings are read once, at ``init_app``, into a frozen :class:`Settings`. A bad value raises
:class:`ConfigurationError` then, never at the first request.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from .addresses import Network, parse_networks
from .hosts import HostRule, parse_host_rule
from .identity import OPEN, IdentityRule

PolicyName = Literal["tailnet", "local", "any"]
AuthName = Literal["auto", "pam", "password", "token"]
IdentityName = Literal["auto", "required", "off"]

#: Which socket peers may be served at all: ``"tailnet"`` (Tailscale's ranges and loopback),
#: ``"local"`` (also RFC 1918, fc00::/7 and link-local) or ``"any"``.
NETWORK = "TAILNET_NETWORK"
#: IPs and CIDRs that remote peers must also belong to. It narrows the policy and never widens it;
#: empty means no further narrowing. Loopback peers are not affected.
ALLOWLIST = "TAILNET_ALLOWLIST"
#: Host names the Host header may carry, besides ``localhost`` and IP literals inside the policy.
#: Exact and case-insensitive; an entry that starts with a dot matches every subdomain.
ALLOWED_HOSTS = "TAILNET_ALLOWED_HOSTS"
#: IPs and CIDRs of proxies whose ``X-Forwarded-For`` and ``Tailscale-*`` headers are believed.
TRUSTED_PROXIES = "TAILNET_TRUSTED_PROXIES"
#: Serve loopback socket peers that carry no proxy header without a credential.
LOCAL_BYPASS = "TAILNET_LOCAL_BYPASS"
#: Directory of the secret files (mode 0700). Default: ``<app.instance_path>/tailnet``.
STATE_DIR = "TAILNET_STATE_DIR"
#: The realm named in ``WWW-Authenticate``. Default: the app's name.
REALM = "TAILNET_REALM"
#: How remote people log in: ``"auto"`` (PAM, else the password variable, else the password file,
#: else the token), or exactly one of ``"pam"``, ``"password"``, ``"token"``. The bearer token works
#: in every mode.
AUTH = "TAILNET_AUTH"
#: The PAM service that checks system passwords.
PAM_SERVICE = "TAILNET_PAM_SERVICE"
#: Users who may log in with PAM. Default: the user the server runs as.
PAM_USERS = "TAILNET_PAM_USERS"
#: The environment variable that holds the login password.
PASSWORD_ENV = "TAILNET_PASSWORD_ENV"  # noqa: S105 - a setting's name
#: Where the login page and logout live.
LOGIN_PREFIX = "TAILNET_LOGIN_PREFIX"
#: The name of the session cookie.
COOKIE_NAME = "TAILNET_COOKIE_NAME"
#: How long a browser session lasts, in seconds (or a ``timedelta``); enforced on the server.
SESSION_LIFETIME = "TAILNET_SESSION_LIFETIME"
#: Failed attempts allowed per client address, in the ``limits`` notation.
LOGIN_LIMITS = "TAILNET_LOGIN_LIMITS"
#: Where failed attempts are counted: ``memory://`` (per process) or ``redis://host:port`` (shared
#: by every worker and host that uses it).
RATELIMIT_STORAGE_URI = "TAILNET_RATELIMIT_STORAGE_URI"

#: Where ``flask_tailnet.gunicorn`` (and ``flask tailnet serve``) listen: gunicorn bind specs
#: (``HOST:PORT``, ``[IPV6]:PORT``, ``fd://N``). Empty means loopback plus this machine's tailnet
#: addresses; gunicorn's ``--bind`` overrides both. Every bind is checked before any worker starts
#: (wildcard, public and, unless the network is ``"local"``, LAN addresses are refused); here the
#: spelling is checked, and ``unix:PATH`` refused. The same name works as an environment variable.
BIND = "TAILNET_BIND"
#: Let a bind on the wildcard address (``0.0.0.0``, ``[::]``) pass the bind check: only for a
#: container whose published port is bound to a tailnet address (``-p 100.x.y.z:8000:8000``).
ALLOW_WILDCARD_BIND = "TAILNET_ALLOW_WILDCARD_BIND"

#: Whether to ask tailscaled who a peer is: ``"auto"`` (when its socket is found and trusted),
#: ``"required"`` (a tailnet peer whose identity cannot be established is refused, 403) or
#: ``"off"``.
IDENTITY = "TAILNET_IDENTITY"
#: The absolute path of tailscaled's LocalAPI socket. Default: the first of
#: ``/var/run/tailscale/tailscaled.sock`` and ``/run/tailscale/tailscaled.sock`` that exists.
TAILSCALED_SOCKET = "TAILNET_TAILSCALED_SOCKET"
#: Tailscale login names (case-insensitive) and ``*@domain`` entries; a remote peer must be one of
#: them (or carry one of the allowed tags). A user entry never matches a tagged node.
ALLOWED_USERS = "TAILNET_ALLOWED_USERS"
#: ACL tags (``tag:name``); a remote peer must carry one of them (or be one of the allowed users).
ALLOWED_TAGS = "TAILNET_ALLOWED_TAGS"
#: An app capability (``example.com/cap/myapp``) a remote peer must be granted in the tailnet
#: policy.
REQUIRED_CAPABILITY = "TAILNET_REQUIRED_CAPABILITY"
#: Admit a peer whose Tailscale identity passes the three gates above without a credential. Needs at
#: least one of them set.
TAILSCALE_LOGIN = "TAILNET_TAILSCALE_LOGIN"
#: Whether tailscaled runs in userspace-networking mode (and so dials the app from 127.0.0.1):
#: ``"auto"`` (ask tailscaled), ``True`` or ``False``. ``False`` never overrules a tailscaled that
#: says it runs in userspace mode (that would serve every relayed peer as local).
USERSPACE = "TAILNET_USERSPACE"

#: gunicorn's port, for a bind spec without one and for the default binds (``$PORT`` overrides it
#: there, as gunicorn reads it).
DEFAULT_PORT = 8000
#: The port ``flask run`` listens on without ``--port`` or ``$FLASK_RUN_PORT`` (Flask's default),
#: which ``flask tailnet url`` assumes when it finds nothing better.
FLASK_RUN_PORT = 5000

DEFAULTS: Mapping[str, Any] = {
    NETWORK: "tailnet",
    ALLOWLIST: (),
    ALLOWED_HOSTS: (),
    TRUSTED_PROXIES: (),
    LOCAL_BYPASS: True,
    STATE_DIR: None,
    REALM: None,
    AUTH: "auto",
    PAM_SERVICE: "login",
    PAM_USERS: None,
    PASSWORD_ENV: "TAILNET_PASSWORD",
    LOGIN_PREFIX: "/_tailnet",
    COOKIE_NAME: "tailnet_session",
    SESSION_LIFETIME: 12 * 3600,
    LOGIN_LIMITS: "5 per minute; 30 per hour",
    RATELIMIT_STORAGE_URI: "memory://",
    BIND: (),
    ALLOW_WILDCARD_BIND: False,
    IDENTITY: "auto",
    TAILSCALED_SOCKET: None,
    ALLOWED_USERS: (),
    ALLOWED_TAGS: (),
    REQUIRED_CAPABILITY: None,
    TAILSCALE_LOGIN: False,
    USERSPACE: "auto",
}


class ConfigurationError(ValueError):
    """A ``TAILNET_*`` setting has a value that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated settings of one app."""

    network: PolicyName
    allowlist: tuple[Network, ...]
    allowed_hosts: tuple[HostRule, ...]
    trusted_proxies: tuple[Network, ...]
    local_bypass: bool
    state_dir: Path
    realm: str
    auth: AuthName
    pam_service: str
    pam_users: tuple[str, ...] | None
    password_env: str
    login_prefix: str
    cookie_name: str
    session_lifetime: float
    login_limits: str
    ratelimit_storage_uri: str
    bind: tuple[str, ...]
    allow_wildcard_bind: bool
    # Defaults, so that a Settings built field by field (tests, other tools) stays valid.
    identity: IdentityName = "auto"
    tailscaled_socket: str | None = None
    identity_rule: IdentityRule = OPEN
    tailscale_login: bool = False
    userspace: Literal["auto"] | bool = "auto"

    @property
    def needs_identity(self) -> bool:
        """Whether a remote peer nobody can name is refused (403) rather than asked for a
        credential: a gate is set, or ``TAILNET_IDENTITY`` is ``"required"``."""
        return self.identity_needed_by is not None

    @property
    def identity_needed_by(self) -> str | None:
        """Which setting refuses a peer without a Tailscale identity, for messages; ``None``
        when none does."""
        if self.identity == "required":
            return f"{IDENTITY} is 'required'"
        if self.identity_rule.restricts:
            gates = f"{ALLOWED_USERS}, {ALLOWED_TAGS} or {REQUIRED_CAPABILITY}"
            return f"a gate needs an identity ({gates})"
        return None


def load(config: Mapping[str, Any], *, instance_path: str, app_name: str) -> Settings:
    """Validate the ``TAILNET_*`` keys of ``config``; a bad one raises :class:`ConfigurationError`.

    Unknown ``TAILNET_*`` keys are refused too, so that a typo cannot silently leave a default on.
    """
    unknown = sorted(k for k in config if k.startswith("TAILNET_") and k not in DEFAULTS)
    if unknown:
        raise ConfigurationError(
            f"unknown setting {', '.join(unknown)}; the settings are: {', '.join(DEFAULTS)}"
        )

    def get(key: str) -> Any:
        return config.get(key, DEFAULTS[key])

    network = get(NETWORK)
    if network not in ("tailnet", "local", "any"):
        raise ConfigurationError(
            f"{NETWORK} is {network!r}; use 'tailnet' (the default), 'local' or 'any'"
        )
    local_bypass = get(LOCAL_BYPASS)
    if not isinstance(local_bypass, bool):
        raise ConfigurationError(f"{LOCAL_BYPASS} must be True or False, not {local_bypass!r}")
    state_dir = get(STATE_DIR)
    if state_dir is None:
        state_dir = os.path.join(instance_path, "tailnet")
    elif not isinstance(state_dir, str | os.PathLike) or not os.fspath(state_dir):
        raise ConfigurationError(f"{STATE_DIR} must be a path, not {state_dir!r}")
    realm = get(REALM) or app_name
    if not isinstance(realm, str) or not realm.isprintable() or '"' in realm or "\\" in realm:
        raise ConfigurationError(f"{REALM} must be printable text without quotes, not {realm!r}")
    if max(realm, default=" ") > "\xff":  # a header is latin-1: every 401 would fail to send
        raise ConfigurationError(
            f"{REALM} goes into the WWW-Authenticate header, which is latin-1 text: {realm!r} "
            "is not (set TAILNET_REALM to a name without such characters)"
        )

    auth = get(AUTH)
    if auth not in ("auto", "pam", "password", "token"):
        raise ConfigurationError(
            f"{AUTH} is {auth!r}; use 'auto' (the default), 'pam', 'password' or 'token'"
        )
    pam_users = get(PAM_USERS)
    allow_wildcard_bind = get(ALLOW_WILDCARD_BIND)
    if not isinstance(allow_wildcard_bind, bool):
        raise ConfigurationError(
            f"{ALLOW_WILDCARD_BIND} must be True or False, not {allow_wildcard_bind!r}"
        )
    return Settings(
        network=network,
        allowlist=_networks(ALLOWLIST, get(ALLOWLIST)),
        allowed_hosts=tuple(_host_rule(h) for h in _entries(ALLOWED_HOSTS, get(ALLOWED_HOSTS))),
        trusted_proxies=_networks(TRUSTED_PROXIES, get(TRUSTED_PROXIES)),
        local_bypass=local_bypass,
        state_dir=Path(os.path.abspath(state_dir)),
        realm=realm,
        auth=auth,
        pam_service=_name(PAM_SERVICE, get(PAM_SERVICE), _PAM_SERVICE),
        pam_users=None if pam_users is None else _entries(PAM_USERS, pam_users),
        password_env=_name(PASSWORD_ENV, get(PASSWORD_ENV), _ENV_NAME),
        login_prefix=_name(LOGIN_PREFIX, get(LOGIN_PREFIX), _PREFIX).rstrip("/"),
        cookie_name=_name(COOKIE_NAME, get(COOKIE_NAME), _COOKIE),
        session_lifetime=_seconds(SESSION_LIFETIME, get(SESSION_LIFETIME)),
        login_limits=_text(LOGIN_LIMITS, get(LOGIN_LIMITS)),
        ratelimit_storage_uri=_text(RATELIMIT_STORAGE_URI, get(RATELIMIT_STORAGE_URI)),
        bind=_binds(get(BIND)),
        allow_wildcard_bind=allow_wildcard_bind,
        **_identity_settings(get),
    )


def _identity_settings(get: Callable[[str], Any]) -> dict[str, Any]:
    """The settings of Tailscale identity, checked together: gates that could never pass (identity
    off) and a Tailscale login that no gate narrows are refused."""
    identity = get(IDENTITY)
    if identity not in ("auto", "required", "off"):
        raise ConfigurationError(
            f"{IDENTITY} is {identity!r}; use 'auto' (the default), 'required' or 'off'"
        )
    socket = get(TAILSCALED_SOCKET)
    if socket is not None:
        if not isinstance(socket, str | os.PathLike) or not os.fspath(socket):
            raise ConfigurationError(f"{TAILSCALED_SOCKET} must be a path, not {socket!r}")
        socket = os.fspath(socket)
        if not isinstance(socket, str) or not os.path.isabs(socket) or "\0" in socket:
            raise ConfigurationError(
                f"{TAILSCALED_SOCKET} is {socket!r}; give the socket's absolute path, such as "
                "/var/run/tailscale/tailscaled.sock (or /tmp/tailscaled.sock in the official "
                "container)"
            )
    users = _entries(ALLOWED_USERS, get(ALLOWED_USERS))
    tags = _entries(ALLOWED_TAGS, get(ALLOWED_TAGS))
    capability = get(REQUIRED_CAPABILITY)
    for key, arguments in (
        (ALLOWED_USERS, {"users": users}),
        (ALLOWED_TAGS, {"tags": tags}),
        (REQUIRED_CAPABILITY, {"capability": capability}),
    ):
        try:
            IdentityRule.parse(**arguments)
        except ValueError as exc:
            raise ConfigurationError(f"{key}: {exc}") from None
    rule = IdentityRule.parse(users, tags, capability)
    tailscale_login = get(TAILSCALE_LOGIN)
    if not isinstance(tailscale_login, bool):
        raise ConfigurationError(
            f"{TAILSCALE_LOGIN} must be True or False, not {tailscale_login!r}"
        )
    if tailscale_login and not rule.restricts:
        raise ConfigurationError(
            f"{TAILSCALE_LOGIN} lets peers in without a credential, so it needs a gate: set "
            f"{ALLOWED_USERS}, {ALLOWED_TAGS} or {REQUIRED_CAPABILITY}. Without one, every node "
            "that can reach the app would be let in, a node shared into your tailnet too, and "
            "that node is someone else's"
        )
    if identity == "off" and (rule.restricts or tailscale_login):
        raise ConfigurationError(
            f"{IDENTITY} is 'off', so no peer has a Tailscale identity and "
            f"{ALLOWED_USERS}, {ALLOWED_TAGS}, {REQUIRED_CAPABILITY} and {TAILSCALE_LOGIN} "
            f"could never pass: set {IDENTITY} to 'auto' or 'required', or remove them"
        )
    userspace = get(USERSPACE)
    if userspace != "auto" and not isinstance(userspace, bool):
        raise ConfigurationError(
            f"{USERSPACE} is {userspace!r}; use 'auto' (the default: ask tailscaled), True or False"
        )
    return {
        "identity": identity,
        "tailscaled_socket": socket,
        "identity_rule": rule,
        "tailscale_login": tailscale_login,
        "userspace": userspace,
    }


_PAM_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+/?")
_COOKIE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _name(key: str, value: Any, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise ConfigurationError(f"{key} is {value!r}; it must match {pattern.pattern}")
    return value


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 60 <= value <= 31 * 86400
    ):
        raise ConfigurationError(
            f"{key} is {value!r}; give seconds (or a timedelta) between 60 and 31 days"
        )
    return float(value)


def _text(key: str, value: Any) -> str:
    """A text setting; its meaning is checked where it is used (the rate limiter, at init_app)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{key} must be a non-empty string")
    return value


def _entries(key: str, value: Any) -> tuple[str, ...]:
    """A list setting given as an iterable of strings, or as one comma/space separated string."""
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise ConfigurationError(f"{key} must be a list of strings, not {value!r}")


def _networks(key: str, value: Any) -> tuple[Network, ...]:
    entries = _entries(key, value)
    try:
        return parse_networks(entries)
    except ValueError as exc:
        raise ConfigurationError(
            f"{key}: {exc}; give IP addresses or CIDRs such as 100.64.0.0/10"
        ) from None


def _binds(value: Any) -> tuple[str, ...]:
    """The spelling of each bind spec, and no Unix socket (never servable, see
    :func:`flask_tailnet.binds.unix_problem`); whether an address may be bound is decided in the
    gunicorn master, which knows the network policy of every app it serves."""
    # Imported here: binds.py takes these settings' names and DEFAULT_PORT from this module.
    from .binds import BindRefused, bind_specs, parse_bind, unix_problem  # noqa: PLC0415

    try:
        specs = bind_specs(value)
        for spec in specs:
            if parse_bind(spec).kind == "unix":
                raise BindRefused(unix_problem(spec))
    except BindRefused as exc:
        raise ConfigurationError(f"{BIND}: {exc}") from None
    return tuple(specs)


def _host_rule(entry: str) -> HostRule:
    try:
        ipaddress.ip_address(entry.strip("[]"))
    except ValueError:
        pass
    else:
        raise ConfigurationError(
            f"{ALLOWED_HOSTS}: {entry!r} is an IP address; IP literals are judged by "
            f"{NETWORK}, list only names here"
        )
    try:
        return parse_host_rule(entry)
    except ValueError as exc:
        raise ConfigurationError(f"{ALLOWED_HOSTS}: {exc}") from None
