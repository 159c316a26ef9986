"""Who a tailnet peer is, as tailscaled's whois names it.

Minimal form (the record and its strict parser) so the LocalAPI client stands alone; the gates live
here too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: The login tailscaled reports for a node that is owned by its tags, not by a person.
TAGGED_DEVICES = "tagged-devices"


@dataclass(frozen=True, slots=True)
class TailscaleIdentity:
    """A peer as tailscaled names it. Immutable; ``capabilities`` is a read-only mapping."""

    login: str | None  # UserProfile.LoginName; None for a tagged node ("tagged-devices")
    display_name: str
    node: str  # MagicDNS name without the trailing dot
    node_id: str  # Node.StableID
    tags: tuple[str, ...]
    capabilities: Mapping[str, tuple[Any, ...]]
    addresses: tuple[str, ...]  # the node's tailnet IPs, canonical, no prefix length

    def __hash__(self) -> int:
        return hash((self.node_id, self.login, self.tags, self.addresses))


def parse_whois(document: object) -> TailscaleIdentity:
    """The identity in a decoded ``/localapi/v0/whois`` answer (apitype.WhoIsResponse).

    Refuses (ValueError) anything that is not that shape: a non-object, ``Node`` or ``UserProfile``
    missing or not objects, a ``StableID``/``Name``/``LoginName``/``DisplayName`` that is not a
    string (or an empty ``StableID``/``LoginName``), addresses that are not a non-empty list of IP
    prefixes, tags that are not ``tag:`` strings, a ``CapMap`` that is not an object of lists.
    ``CapMap`` null or absent: no capabilities. The node's own ``Node.CapMap`` (node attributes) is
    never read as app capabilities.
    """
    if not isinstance(document, dict):
        raise ValueError("whois answer is not a JSON object")
    node = document.get("Node")
    profile = document.get("UserProfile")
    if not isinstance(node, dict) or not isinstance(profile, dict):
        raise ValueError("whois answer lacks a Node or UserProfile object")
    node_id = _string(node, "StableID")
    name = _string(node, "Name")
    login = _string(profile, "LoginName")
    display_name = _string(profile, "DisplayName")
    if not node_id or not login:
        raise ValueError("whois answer has an empty StableID or LoginName")
    tags = _tags(node.get("Tags"))
    return TailscaleIdentity(
        login=None if tags or login == TAGGED_DEVICES else login,
        display_name=display_name,
        node=name.removesuffix("."),
        node_id=node_id,
        tags=tags,
        capabilities=_capabilities(document.get("CapMap")),
        addresses=_addresses(node.get("Addresses")),
    )


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"whois answer: {key} is not a string")
    return value


def _tags(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(tag, str) and tag.startswith("tag:") and len(tag) > 4 for tag in value
    ):
        raise ValueError("whois answer: Tags is not a list of tag:name strings")
    return tuple(value)


def _addresses(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("whois answer: Addresses is not a non-empty list")
    addresses = []
    for prefix in value:
        if not isinstance(prefix, str):
            raise ValueError("whois answer: an address is not a string")
        try:
            addresses.append(str(ipaddress.ip_interface(prefix).ip))
        except ValueError:
            raise ValueError("whois answer: an address does not parse") from None
    return tuple(addresses)


def _capabilities(value: object) -> Mapping[str, tuple[Any, ...]]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise ValueError("whois answer: CapMap is not an object")
    capabilities: dict[str, tuple[Any, ...]] = {}
    for name, values in value.items():
        if values is not None and not isinstance(values, list):
            raise ValueError("whois answer: a CapMap entry is not a list")
        capabilities[name] = tuple(values or ())
    return MappingProxyType(capabilities)
