"""Every ``TAILNET_*`` setting: its default, its meaning and its validation.

This module is the one place that names the settings; docs/settings.md has the same list as a table.
Settings are read once, at ``init_app``, into a frozen :class:`Settings`. A bad value raises
:class:`ConfigurationError` then, never at the first request.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .addresses import Network, parse_networks
from .hosts import HostRule, parse_host_rule

PolicyName = Literal["tailnet", "local", "any"]

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

DEFAULTS: Mapping[str, Any] = {
    NETWORK: "tailnet",
    ALLOWLIST: (),
    ALLOWED_HOSTS: (),
    TRUSTED_PROXIES: (),
    LOCAL_BYPASS: True,
    STATE_DIR: None,
    REALM: None,
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

    return Settings(
        network=network,
        allowlist=_networks(ALLOWLIST, get(ALLOWLIST)),
        allowed_hosts=tuple(_host_rule(h) for h in _entries(ALLOWED_HOSTS, get(ALLOWED_HOSTS))),
        trusted_proxies=_networks(TRUSTED_PROXIES, get(TRUSTED_PROXIES)),
        local_bypass=local_bypass,
        state_dir=Path(os.path.abspath(state_dir)),
        realm=realm,
    )


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
