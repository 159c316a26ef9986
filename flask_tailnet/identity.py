"""Who a tailnet peer is, as tailscaled's whois tells it, and the gates that narrow access by it.

:func:`parse_whois` turns the JSON of ``GET /localapi/v0/whois`` (tailscaled's
``apitype.WhoIsResponse``) into an immutable :class:`TailscaleIdentity`, and refuses
(``ValueError``) anything that is not that shape or that is bigger than any real answer, so a cache
of identities stays small. :class:`IdentityRule` holds ``TAILNET_ALLOWED_USERS``,
``TAILNET_ALLOWED_TAGS`` and ``TAILNET_REQUIRED_CAPABILITY`` and says whether an identity passes
them. Both are pure: no I/O, nothing of Flask.

The ``Tailscale-User-*`` headers that ``tailscale serve`` sets are never a source of identity here;
:func:`decode_header_value` only shows such a value (RFC 2047) to a person.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

#: The ``UserProfile.LoginName`` tailscaled reports for every tagged node (which has no user).
TAGGED_DEVICES = "tagged-devices"

#: Bounds on what :func:`parse_whois` accepts. Real answers are far smaller (a login is an e-mail
#: address, a node has two addresses and a few tags); anything bigger is refused, not trimmed, so a
#: cached identity never holds more than a few tens of kilobytes.
MAX_LOGIN = 256
MAX_DISPLAY_NAME = 1024
MAX_NODE_NAME = 254  # an FQDN with its trailing dot
MAX_NODE_ID = 128
MAX_ADDRESSES = 16
MAX_TAGS = 64
MAX_TAG = 256
MAX_CAPABILITIES = 64
MAX_CAPABILITY_NAME = 256
MAX_CAPABILITY_VALUES = 64
#: Every JSON value of the ``CapMap`` counts 1, and a string its length, against this budget.
MAX_CAPABILITY_SIZE = 64 * 1024
MAX_CAPABILITY_DEPTH = 16
#: :func:`decode_header_value` leaves longer values as they are.
MAX_HEADER_VALUE = 4096

# tailcfg.CheckTag: "tag:", a letter, then ASCII letters, digits and dashes.
_TAG = re.compile(r"tag:[A-Za-z][A-Za-z0-9-]*")
# tailscale's validAppCap ({domain}/{name}, FQDN label characters, slashes in the name), in ASCII;
# tailscale's own peer capabilities are also written with an https:// scheme.
_CAPABILITY = re.compile(r"(?:https://)?(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+/[A-Za-z0-9-/]+")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
#: Characters of a JSON list pasted as one string: never in a login name.
_JSON_PUNCTUATION = frozenset('"[]')  # not "'": o'brien@example.com is a login
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _empty_capabilities() -> Mapping[str, tuple[Any, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TailscaleIdentity:
    """A tailnet peer as tailscaled knows it. Immutable and hashable: it can be cached and shared.

    ``capabilities`` maps each app capability granted to the peer (the ``CapMap`` of whois, from
    the grants of the tailnet policy file) to its JSON values, one per matching grant, deep-frozen:
    a JSON array is a ``tuple`` and a JSON object a read-only mapping, so no view can change a
    cached identity (``json.dumps`` needs ``dict(...)`` of an object).
    """

    login: str | None  #: ``UserProfile.LoginName``; ``None`` for a tagged node
    display_name: str
    node: str  #: the MagicDNS name, without its trailing dot
    node_id: str  #: ``Node.StableID``
    tags: tuple[str, ...] = ()
    capabilities: Mapping[str, tuple[Any, ...]] = field(default_factory=_empty_capabilities)
    addresses: tuple[str, ...] = ()  #: the node's tailnet IPs, canonical, without prefix length

    def __post_init__(self) -> None:
        # Also for records built by hand (tests, other modules): lists become tuples and the
        # capabilities a read-only deep copy, so the record is immutable however it was made.
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "addresses", tuple(self.addresses))
        capabilities = {
            str(name): _freeze(list(values or ()), [1 << 62], 0)
            for name, values in self.capabilities.items()
        }
        object.__setattr__(self, "capabilities", MappingProxyType(capabilities))

    def __hash__(self) -> int:
        return hash((self.node_id, self.login, self.tags, self.addresses))

    def as_json(self) -> dict[str, Any]:
        """A plain copy that ``json.dumps`` and ``flask.jsonify`` take (the record itself holds
        read-only mappings, which they refuse): tuples as lists, mappings as dicts."""
        return {
            "login": self.login,
            "display_name": self.display_name,
            "node": self.node,
            "node_id": self.node_id,
            "tags": list(self.tags),
            "capabilities": _thaw(self.capabilities),
            "addresses": list(self.addresses),
        }


def _thaw(value: object) -> Any:
    """A frozen JSON value as plain lists and dicts."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(item) for item in value]
    return value


def parse_whois(document: object) -> TailscaleIdentity:
    """The identity in a whois answer (the decoded JSON object).

    Raises ``ValueError`` for any shape that is not tailscaled's ``WhoIsResponse``: not an
    object, no ``Node`` or ``UserProfile`` object, a ``StableID``, ``Name`` or ``LoginName`` that
    is missing, empty or not text, an address that is not an IP (or an IP with its host prefix
    length), a tag that is not ``tag:name``, a ``CapMap`` that is not an object of lists, a login
    with spaces or control characters, a display name with control characters, and anything over
    the ``MAX_*`` bounds. ``CapMap`` ``null`` or absent means no capabilities; ``Tags`` absent
    means none. A tagged node has no login (tailscaled says ``tagged-devices``): its identity is
    its tags, never the user who tagged it.
    """
    if not isinstance(document, dict):
        raise ValueError("whois answer is not a JSON object")
    node, profile = document.get("Node"), document.get("UserProfile")
    if not isinstance(node, dict) or not isinstance(profile, dict):
        raise ValueError("whois answer has no Node or no UserProfile object")
    node_id = _text(node, "StableID", MAX_NODE_ID)
    if not node_id.isascii() or not node_id.isprintable() or " " in node_id:
        raise ValueError("whois Node.StableID is not printable ASCII")
    name = _text(node, "Name", MAX_NODE_NAME)
    name = name.removesuffix(".")
    if not name or not name.isprintable() or " " in name or name.endswith("."):
        raise ValueError("whois Node.Name is not a DNS name")
    tags = tuple(_tag(t) for t in _list(node, "Tags", MAX_TAGS))
    addresses = tuple(_address(a) for a in _list(node, "Addresses", MAX_ADDRESSES))
    if not addresses:  # whois finds nodes by address: a node without one is not its answer
        raise ValueError("whois Node has no Addresses")
    login_name = _text(profile, "LoginName", MAX_LOGIN)
    if not login_name.isprintable() or any(c.isspace() for c in login_name):
        raise ValueError("whois UserProfile.LoginName has spaces or control characters")
    login = None if tags or login_name == TAGGED_DEVICES else login_name
    display_name = _text(profile, "DisplayName", MAX_DISPLAY_NAME, empty=True)
    if any(unicodedata.category(c) == "Cc" for c in display_name):
        raise ValueError("whois UserProfile.DisplayName has control characters")
    return TailscaleIdentity(
        login=login,
        display_name=display_name,
        node=name,
        node_id=node_id,
        tags=tags,
        capabilities=_capabilities(document.get("CapMap")),
        addresses=addresses,
    )


def _text(obj: dict[Any, Any], key: str, limit: int, *, empty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or (not value and not empty):
        raise ValueError(f"whois {key} is missing or not text")
    if len(value) > limit:
        raise ValueError(f"whois {key} is longer than {limit} characters")
    return value


def _list(obj: dict[Any, Any], key: str, limit: int) -> list[Any]:
    value = obj.get(key)
    if value is None:  # Go writes a nil slice as null, or leaves it out (omitempty)
        return []
    if not isinstance(value, list):
        raise ValueError(f"whois Node.{key} is not a list")
    if len(value) > limit:
        raise ValueError(f"whois Node.{key} has more than {limit} entries")
    return value


def _tag(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TAG or _TAG.fullmatch(value) is None:
        raise ValueError("whois Node.Tags holds something that is not tag:name")
    return value


def _address(value: object) -> str:
    """``100.101.102.103/32`` -> ``100.101.102.103``: an IP with its host prefix length (as Go
    writes a netip.Prefix), or a bare IP; a network or a scoped IPv6 address is refused."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("whois Node.Addresses holds something that is not an address")
    text, _, bits = value.partition("/")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("whois Node.Addresses holds something that is not an address") from None
    if (bits and bits != str(ip.max_prefixlen)) or getattr(ip, "scope_id", None):
        raise ValueError("whois Node.Addresses holds a network, not a node's address")
    return ip.compressed


def _capabilities(value: object) -> Mapping[str, tuple[Any, ...]]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise ValueError("whois CapMap is not an object")
    if len(value) > MAX_CAPABILITIES:
        raise ValueError(f"whois CapMap has more than {MAX_CAPABILITIES} capabilities")
    budget = [MAX_CAPABILITY_SIZE]
    frozen: dict[str, tuple[Any, ...]] = {}
    for name, listed in value.items():
        if not isinstance(name, str) or not name or len(name) > MAX_CAPABILITY_NAME:
            raise ValueError("whois CapMap has a capability name that is empty or too long")
        if not name.isprintable() or " " in name:
            raise ValueError("whois CapMap has a capability name with spaces or control characters")
        values = [] if listed is None else listed  # Go writes a nil slice as null
        if not isinstance(values, list) or len(values) > MAX_CAPABILITY_VALUES:
            raise ValueError("whois CapMap values are not a list, or too many")
        frozen[name] = _freeze(values, budget, 0)
    return MappingProxyType(frozen)


def _freeze(value: object, budget: list[int], depth: int) -> Any:
    """A read-only copy of a JSON value (arrays as tuples, objects as read-only mappings), charged
    against ``budget``; ``ValueError`` for what is not JSON, too deep, or over the budget."""
    if depth > MAX_CAPABILITY_DEPTH:
        raise ValueError("whois CapMap value nests too deep")
    budget[0] -= len(value) + 1 if isinstance(value, str) else 1
    if budget[0] < 0:
        raise ValueError("whois CapMap is too large")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("whois CapMap holds a number that is not finite")
        return value
    if isinstance(value, list | tuple):
        return tuple(_freeze(v, budget, depth + 1) for v in value)
    if isinstance(value, Mapping):
        items: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("whois CapMap holds an object with a key that is not text")
            budget[0] -= len(key)
            items[key] = _freeze(item, budget, depth + 1)
        return MappingProxyType(items)
    raise ValueError("whois CapMap holds something that is not JSON")


def fold_login(text: str) -> str:
    """ASCII letters lower-cased, nothing else: ``str.casefold`` makes the Kelvin sign a ``k``
    and the long s an ``s``, so a look-alike login would match a listed one."""
    return text.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class IdentityRule:
    """``TAILNET_ALLOWED_USERS``, ``_ALLOWED_TAGS`` and ``_REQUIRED_CAPABILITY``, parsed."""

    users: frozenset[str]  #: login names, ASCII letters lower-cased
    domains: frozenset[str]  #: from ``*@example.com``, lower-cased
    tags: frozenset[str]  #: ``tag:name``, exact
    capability: str | None  #: a capability name, exact

    @classmethod
    def parse(
        cls,
        users: Iterable[str] = (),
        tags: Iterable[str] = (),
        capability: str | None = None,
    ) -> IdentityRule:
        """The rule for these entries; ``ValueError`` (saying which entry and what to write) for a
        tag that is not ``tag:name``, a user entry that is a tag, ``tagged-devices``, has spaces,
        has no ``@`` or holds ``"``, ``[`` or ``]`` (a JSON list given as one string): such an
        entry matches no login; a wildcard other than ``*@domain`` (``*``, ``*@``, ``*@*``,
        ``*alice@example.com``), a domain of one label (``*@github`` would admit every GitHub
        account shared into the tailnet), and a capability that is not ``domain/name``."""
        if isinstance(users, str) or isinstance(tags, str):
            raise ValueError("users and tags are lists of entries, not one string")
        logins: set[str] = set()
        domains: set[str] = set()
        for entry in users:
            kind, value = _user_entry(entry)
            (domains if kind == "domain" else logins).add(value)
        tag_set: set[str] = set()
        for tag in tags:
            if not isinstance(tag, str) or len(tag) > MAX_TAG or _TAG.fullmatch(tag) is None:
                raise ValueError(
                    f"tag {tag!r} is not tag:name (a letter, then letters, digits, dashes)"
                )
            tag_set.add(tag)
        if capability is not None and (
            not isinstance(capability, str)
            or len(capability) > MAX_CAPABILITY_NAME
            or _CAPABILITY.fullmatch(capability) is None
        ):
            raise ValueError(
                f"capability {capability!r} is not domain/name, such as example.com/cap/myapp"
            )
        return cls(frozenset(logins), frozenset(domains), frozenset(tag_set), capability)

    @property
    def restricts(self) -> bool:
        """Whether any of the three is set (then a peer without an identity never passes)."""
        return bool(self.users or self.domains or self.tags or self.capability is not None)

    def admits(self, identity: TailscaleIdentity | None) -> bool:
        """Whether ``identity`` passes: it matches the users or the tags (either list, when both are
        set; any identity when neither is), and holds the required capability when one is set.

        Refused: ``None`` whenever the rule restricts anything; a tagged node by a user entry (its
        identity is its tags); a login that only looks like a listed one (another case is the same
        login; another domain, a subdomain, a look-alike letter or a second ``@`` is not).
        """
        if identity is None:
            return not self.restricts
        if (self.users or self.domains or self.tags) and not (
            self._user_matches(identity) or not self.tags.isdisjoint(identity.tags)
        ):
            return False
        return self.capability is None or self.capability in identity.capabilities

    def _user_matches(self, identity: TailscaleIdentity) -> bool:
        login = identity.login
        if login is None or identity.tags:
            return False
        folded = fold_login(login)
        if folded in self.users:
            return True
        local, at, domain = folded.rpartition("@")
        return bool(at and local and "@" not in local and domain in self.domains)


#: The rule that restricts nothing.


def _user_entry(entry: object) -> tuple[Literal["login", "domain"], str]:
    """One ``users`` entry: ``("login", folded login)`` or ``("domain", folded domain)`` for
    ``*@domain``; ``ValueError`` saying what to write for an entry that matches no login."""
    if not isinstance(entry, str) or not entry or len(entry) > MAX_LOGIN:
        raise ValueError(f"user {entry!r} is not a login name")
    if entry.startswith("tag:"):
        raise ValueError(f"user {entry!r} is a tag: list it in the allowed tags instead")
    if not entry.isprintable() or any(c.isspace() for c in entry):
        raise ValueError(f"user {entry!r} has spaces or control characters")
    if fold_login(entry) == TAGGED_DEVICES:
        raise ValueError(
            f"user {entry!r} is what tailscaled calls every tagged node; list tags instead"
        )
    if any(c in _JSON_PUNCTUATION for c in entry):
        raise ValueError(
            f"user {entry!r} holds quotes or brackets: give a list of login names, or "
            "one string of them separated by commas (alice@example.com, bob@example.com)"
        )
    if "*" in entry:
        star, at, domain = entry.partition("@")
        domain = fold_login(domain)
        if star != "*" or not at or _DOMAIN.fullmatch(domain) is None:
            raise ValueError(f"user {entry!r}: a wildcard entry is *@domain, such as *@example.com")
        return "domain", domain
    if "@" not in entry:
        raise ValueError(
            f"user {entry!r} is not a Tailscale login name, which is always user@domain "
            "(alice@example.com, alice@github); `flask tailnet whois ADDRESS` shows a peer's"
        )
    return "login", fold_login(entry)


OPEN = IdentityRule.parse()


_ENCODED_WORD = re.compile(r"=\?([A-Za-z0-9_-]{1,40})\?([QqBb])\?([!->@-~]*)\?=")
_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})


def decode_header_value(value: str) -> str:
    """A header value such as ``Tailscale-User-Name`` for display: RFC 2047 encoded words
    (``=?utf-8?q?...?=``, ``=?utf-8?b?...?=``) decoded, blanks between two encoded words dropped.

    Never raises. Returned unchanged: a value over :data:`MAX_HEADER_VALUE` characters, one with
    an encoded word in another charset or that does not decode (bad base64, bad ``=XX``, not
    UTF-8), and one that would decode to control characters (a newline smuggled into a log line).
    """
    if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE or "=?" not in value:
        return value
    parts: list[str] = []
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[position : match.start()]
        # RFC 2047 6.2: blanks between two adjacent encoded words are not shown.
        if not (position > 0 and not between.strip(" \t")):
            parts.append(between)
        decoded = _decode_word(match.group(1), match.group(2), match.group(3))
        if decoded is None:
            return value
        parts.append(decoded)
        position = match.end()
    parts.append(value[position:])
    result = "".join(parts)
    if any(unicodedata.category(c) == "Cc" for c in result if c != "\t"):
        return value
    return result


def _decode_word(charset: str, encoding: str, text: str) -> str | None:
    if charset.lower() not in _CHARSETS:
        return None
    try:
        raw = base64.b64decode(text, validate=True) if encoding in "Bb" else _q_decode(text)
        return raw.decode("utf-8")
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        return None


def _q_decode(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "_":
            out.append(0x20)
        elif char == "=":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                raise ValueError("bad =XX in an encoded word")
            out.append(int(pair, 16))
            i += 2
        else:
            out.append(ord(char))
        i += 1
    return bytes(out)
