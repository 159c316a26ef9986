"""The identity of a tailnet peer (whois answers) and the gates that narrow remote access by it."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, jsonify
from hypothesis import given
from hypothesis import strategies as st

from flask_tailnet.identity import (
    MAX_CAPABILITIES,
    MAX_LOGIN,
    MAX_TAGS,
    OPEN,
    IdentityRule,
    TailscaleIdentity,
    decode_header_value,
    parse_whois,
)


def whois(
    *,
    login: str = "alice@example.com",
    tags: list[str] | None = None,
    cap_map: Any = ...,
    name: str = "laptop.tail1a2b3.ts.net.",
    **node: Any,
) -> dict[str, Any]:
    """A whois answer as tailscaled writes it (the example of tailscale.md, field for field)."""
    answer: dict[str, Any] = {
        "Node": {
            "ID": 7212345678901234,
            "StableID": "nXyZ12abCD11CNTRL",
            "Name": name,
            "User": 2345678901234567,
            "Key": "nodekey:" + "ab" * 32,
            "Addresses": ["100.101.102.103/32", "fd7a:115c:a1e0::6601:6667/128"],
            "AllowedIPs": ["100.101.102.103/32", "fd7a:115c:a1e0::6601:6667/128"],
            "ComputedName": "laptop",
            "Online": True,
            **node,
        },
        "UserProfile": {
            "ID": 2345678901234567,
            "LoginName": login,
            "DisplayName": "Alice Example",
            "ProfilePicURL": "https://example.com/alice.jpg",
        },
        "CapMap": {"example.com/cap/webapp": [{"role": "admin"}]},
    }
    if tags is not None:
        answer["Node"]["Tags"] = tags
    if cap_map is not ...:
        answer["CapMap"] = cap_map
    return answer


USER = whois()
TAGGED = whois(login="tagged-devices", tags=["tag:server", "tag:prod"], cap_map=None)
TAGGED["UserProfile"]["DisplayName"] = "tagged-devices"
# A node that another tailnet shared into this one: its own MagicDNS name, its owner's login.
SHARED_IN = whois(login="mallory@gmail.com", name="box.other-tailnet.ts.net.", Sharer=99)
SELF = whois(login="owner@example.com", name="thisnode.tail1a2b3.ts.net.")
NO_CAPMAP = whois()
del NO_CAPMAP["CapMap"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(
            USER,
            TailscaleIdentity(
                login="alice@example.com",
                display_name="Alice Example",
                node="laptop.tail1a2b3.ts.net",
                node_id="nXyZ12abCD11CNTRL",
                tags=(),
                capabilities={"example.com/cap/webapp": ({"role": "admin"},)},
                addresses=("100.101.102.103", "fd7a:115c:a1e0::6601:6667"),
            ),
            id="user-node",
        ),
        pytest.param(
            TAGGED,
            TailscaleIdentity(
                login=None,
                display_name="tagged-devices",
                node="laptop.tail1a2b3.ts.net",
                node_id="nXyZ12abCD11CNTRL",
                tags=("tag:server", "tag:prod"),
                addresses=("100.101.102.103", "fd7a:115c:a1e0::6601:6667"),
            ),
            id="tagged-node-has-no-login",
        ),
        pytest.param(
            SHARED_IN,
            TailscaleIdentity(
                login="mallory@gmail.com",
                display_name="Alice Example",
                node="box.other-tailnet.ts.net",
                node_id="nXyZ12abCD11CNTRL",
                capabilities={"example.com/cap/webapp": ({"role": "admin"},)},
                addresses=("100.101.102.103", "fd7a:115c:a1e0::6601:6667"),
            ),
            id="shared-in-node",
        ),
        pytest.param(
            SELF,
            TailscaleIdentity(
                login="owner@example.com",
                display_name="Alice Example",
                node="thisnode.tail1a2b3.ts.net",
                node_id="nXyZ12abCD11CNTRL",
                capabilities={"example.com/cap/webapp": ({"role": "admin"},)},
                addresses=("100.101.102.103", "fd7a:115c:a1e0::6601:6667"),
            ),
            id="self",
        ),
    ],
)
def test_parse_whois_real_answers(answer: dict[str, Any], expected: TailscaleIdentity) -> None:
    # the answer as it crosses the socket: tab-indented JSON
    identity = parse_whois(json.loads(json.dumps(answer, indent="\t")))
    assert identity == expected
    assert hash(identity) == hash(expected)


@pytest.mark.parametrize(
    ("cap_map", "expected"),
    [
        pytest.param(None, {}, id="capmap-null"),
        pytest.param({}, {}, id="capmap-empty"),
        pytest.param({"example.com/cap/x": None}, {"example.com/cap/x": ()}, id="cap-no-values"),
        pytest.param({"example.com/cap/x": []}, {"example.com/cap/x": ()}, id="cap-empty-list"),
        pytest.param(
            {"example.com/cap/x": [{"role": "admin"}, {"role": "viewer", "n": [1, 2.5, True]}]},
            {"example.com/cap/x": ({"role": "admin"}, {"role": "viewer", "n": (1, 2.5, True)})},
            id="two-grants",
        ),
        pytest.param(
            {"tailscale.com/cap/golink": [{"admin": True}], "https://tailscale.com/cap/x": []},
            {"tailscale.com/cap/golink": ({"admin": True},), "https://tailscale.com/cap/x": ()},
            id="tailscale-capabilities",
        ),
    ],
)
def test_parse_whois_capabilities(cap_map: Any, expected: dict[str, Any]) -> None:
    assert dict(parse_whois(whois(cap_map=cap_map)).capabilities) == expected


def test_capmap_absent_is_empty() -> None:
    assert dict(parse_whois(NO_CAPMAP).capabilities) == {}


def test_identity_is_immutable_and_a_view_cannot_change_a_cached_one() -> None:
    answer = whois(cap_map={"example.com/cap/x": [{"roles": ["admin"]}]})
    identity = parse_whois(answer)
    answer["CapMap"]["example.com/cap/x"][0]["roles"].append("root")  # the parsed JSON is a copy
    value = identity.capabilities["example.com/cap/x"][0]
    with pytest.raises(TypeError):
        identity.capabilities["example.com/cap/y"] = ()  # type: ignore[index]
    with pytest.raises(TypeError):
        value["roles"] = ("root",)
    with pytest.raises(AttributeError):
        value["roles"].append("root")
    with pytest.raises(AttributeError):
        identity.login = "root@example.com"  # type: ignore[misc]
    assert identity.capabilities["example.com/cap/x"] == ({"roles": ("admin",)},)
    assert json.loads(json.dumps(dict(value), default=list)) == {"roles": ["admin"]}


def test_identity_built_by_hand_is_frozen_too() -> None:
    roles = {"role": ["admin"]}
    identity = TailscaleIdentity(
        login="a@example.com",
        display_name="A",
        node="a.ts.net",
        node_id="n1",
        tags=["tag:x"],  # type: ignore[arg-type]
        capabilities={"example.com/cap/x": [roles]},  # type: ignore[dict-item]
    )
    roles["role"].append("root")
    assert identity.tags == ("tag:x",)
    assert identity.capabilities["example.com/cap/x"] == ({"role": ("admin",)},)
    assert {identity: 1}[identity] == 1


def test_hash_ignores_display_name_and_capabilities_eq_does_not() -> None:
    one = parse_whois(whois())
    other = parse_whois(whois(cap_map=None))
    assert hash(one) == hash(other)
    assert one != other


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("100.101.102.103/32", "100.101.102.103", id="v4-prefix"),
        pytest.param("fd7a:115c:a1e0:0::6601:6667/128", "fd7a:115c:a1e0::6601:6667", id="v6-canon"),
        pytest.param("100.101.102.103", "100.101.102.103", id="bare-v4"),
    ],
)
def test_addresses_lose_their_prefix_length(address: str, expected: str) -> None:
    assert parse_whois(whois(Addresses=[address])).addresses == (expected,)


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(answer: dict[str, Any]) -> None:
        target = answer
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


_DELETE = object()
NODE, PROFILE = "Node", "UserProfile"
MALFORMED = [
    pytest.param(lambda a: a.clear(), id="empty-object"),
    pytest.param(_set((NODE,), _DELETE), id="no-node"),
    pytest.param(_set((NODE,), None), id="node-null"),
    pytest.param(_set((PROFILE,), _DELETE), id="no-userprofile"),
    pytest.param(_set((PROFILE,), []), id="userprofile-a-list"),
    pytest.param(_set((NODE, "StableID"), _DELETE), id="no-stableid"),
    pytest.param(_set((NODE, "StableID"), ""), id="stableid-empty"),
    pytest.param(_set((NODE, "StableID"), 12345), id="stableid-a-number"),
    pytest.param(_set((NODE, "StableID"), "n1\nX-Admin: 1"), id="stableid-newline"),
    pytest.param(_set((NODE, "Name"), _DELETE), id="no-name"),
    pytest.param(_set((NODE, "Name"), "."), id="name-only-a-dot"),
    pytest.param(_set((NODE, "Name"), "a..ts.net.."), id="name-two-trailing-dots"),
    pytest.param(_set((NODE, "Name"), "a b.ts.net."), id="name-with-space"),
    pytest.param(_set((NODE, "Name"), "x" * 300), id="name-too-long"),
    pytest.param(_set((NODE, "Addresses"), "100.64.0.1/32"), id="addresses-a-string"),
    pytest.param(_set((NODE, "Addresses"), ["laptop"]), id="address-a-name"),
    pytest.param(_set((NODE, "Addresses"), [100]), id="address-a-number"),
    pytest.param(_set((NODE, "Addresses"), ["100.64.0.0/10"]), id="address-a-network"),
    pytest.param(_set((NODE, "Addresses"), ["100.64.0.1/33"]), id="address-bad-prefix"),
    pytest.param(_set((NODE, "Addresses"), ["fe80::1%eth0/128"]), id="address-scoped"),
    pytest.param(_set((NODE, "Addresses"), ["100.64.0.1/32"] * 17), id="too-many-addresses"),
    pytest.param(_set((NODE, "Tags"), "tag:server"), id="tags-a-string"),
    pytest.param(_set((NODE, "Tags"), ["server"]), id="tag-without-prefix"),
    pytest.param(_set((NODE, "Tags"), ["tag:"]), id="tag-empty-name"),
    pytest.param(_set((NODE, "Tags"), ["tag:1abc"]), id="tag-starts-with-digit"),
    pytest.param(_set((NODE, "Tags"), ["tag:a b"]), id="tag-with-space"),
    pytest.param(_set((NODE, "Tags"), ["tag:\u0430dmin"]), id="tag-cyrillic"),
    pytest.param(
        _set((NODE, "Tags"), [f"tag:t{i}" for i in range(MAX_TAGS + 1)]), id="too-many-tags"
    ),
    pytest.param(_set((PROFILE, "LoginName"), _DELETE), id="no-login"),
    pytest.param(_set((PROFILE, "LoginName"), ""), id="login-empty"),
    pytest.param(_set((PROFILE, "LoginName"), None), id="login-null"),
    pytest.param(_set((PROFILE, "LoginName"), "a" * MAX_LOGIN + "@x.com"), id="login-too-long"),
    pytest.param(_set((PROFILE, "LoginName"), "alice@example.com\nroot"), id="login-newline"),
    pytest.param(_set((PROFILE, "LoginName"), "alice @example.com"), id="login-space"),
    pytest.param(_set((PROFILE, "DisplayName"), 7), id="display-name-a-number"),
    pytest.param(_set((PROFILE, "DisplayName"), "Alice\r\nSet-Cookie: x"), id="display-name-crlf"),
    pytest.param(_set((PROFILE, "DisplayName"), "A" * 2000), id="display-name-too-long"),
    pytest.param(_set(("CapMap",), []), id="capmap-a-list"),
    pytest.param(_set(("CapMap",), {"example.com/cap/x": {"a": 1}}), id="cap-values-an-object"),
    pytest.param(_set(("CapMap",), {"": []}), id="cap-name-empty"),
    pytest.param(_set(("CapMap",), {"a b/c": []}), id="cap-name-with-space"),
    pytest.param(
        _set(("CapMap",), {f"example.com/cap/{i}": [] for i in range(MAX_CAPABILITIES + 1)}),
        id="too-many-capabilities",
    ),
    pytest.param(_set(("CapMap",), {"example.com/cap/x": [{}] * 65}), id="too-many-values"),
    pytest.param(_set(("CapMap",), {"example.com/cap/x": ["x" * 70000]}), id="capmap-too-big"),
    pytest.param(
        _set(("CapMap",), {"example.com/cap/x": [json.loads("[" * 40 + "]" * 40)]}),
        id="capmap-too-deep",
    ),
    pytest.param(_set(("CapMap",), {"example.com/cap/x": [float("nan")]}), id="capmap-nan"),
]


@pytest.mark.parametrize("change", MALFORMED)
def test_parse_whois_refuses_what_is_not_a_whois_answer(
    change: Callable[[dict[str, Any]], None],
) -> None:
    answer = copy.deepcopy(USER)
    change(answer)
    with pytest.raises(ValueError, match="whois"):
        parse_whois(answer)


@pytest.mark.parametrize(
    "document",
    [None, [], "{}", 42, b"{}", [USER]],
    ids=["null", "list", "string", "number", "bytes", "list-of-answer"],
)
def test_parse_whois_refuses_non_objects(document: object) -> None:
    with pytest.raises(ValueError, match="whois"):
        parse_whois(document)


def test_a_tagged_node_is_never_its_owner() -> None:
    """Headscale and older control servers may report the user who tagged the node."""
    identity = parse_whois(whois(login="alice@example.com", tags=["tag:ci"]))
    assert identity.login is None
    assert not IdentityRule.parse(users=["alice@example.com"]).admits(identity)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=30,
)
WHOIS_KEYS = st.sampled_from(
    [
        "Node",
        "UserProfile",
        "CapMap",
        "StableID",
        "Name",
        "Addresses",
        "Tags",
        "LoginName",
        "DisplayName",
    ]
)
WHOIS_LIKE = st.recursive(
    JSON,
    lambda inner: st.dictionaries(WHOIS_KEYS | st.text(max_size=5), inner, max_size=6),
    max_leaves=40,
)


@given(WHOIS_LIKE)
def test_parse_whois_raises_only_value_error(document: object) -> None:
    try:
        identity = parse_whois(document)
    except ValueError:
        return
    hash(identity)


@given(
    st.fixed_dictionaries(
        {
            "Tags": st.none() | st.lists(st.text(max_size=8), max_size=3),
            "Addresses": st.none() | st.lists(st.text(max_size=20), max_size=3),
            "LoginName": st.text(max_size=30),
            "CapMap": st.none() | st.dictionaries(st.text(max_size=20), JSON, max_size=3),
        }
    )
)
def test_parse_whois_mutated_answer_raises_only_value_error(fields: dict[str, Any]) -> None:
    answer = copy.deepcopy(USER)
    answer["Node"]["Tags"] = fields["Tags"]
    answer["Node"]["Addresses"] = fields["Addresses"]
    answer["UserProfile"]["LoginName"] = fields["LoginName"]
    answer["CapMap"] = fields["CapMap"]
    with contextlib.suppress(ValueError):
        parse_whois(answer)


# ---------------------------------------------------------------- the gates


def identity(
    login: str | None = "alice@example.com", tags: tuple[str, ...] = (), caps: Any = None
) -> TailscaleIdentity:
    return TailscaleIdentity(
        login=login,
        display_name="x",
        node="n.ts.net",
        node_id="n1",
        tags=tags,
        capabilities=caps or {},
    )


ALICE = identity()
SERVER = identity(None, ("tag:server",))
CI = identity(None, ("tag:ci",))
ADMIN = identity(caps={"example.com/cap/app": [{"role": "admin"}]})
SERVER_WITH_CAP = identity(None, ("tag:server",), {"example.com/cap/app": []})

GATES = [
    # (users, tags, capability, identity, admitted)
    pytest.param((), (), None, ALICE, True, id="open-admits-anyone"),
    pytest.param((), (), None, None, True, id="open-admits-no-identity"),
    pytest.param(["alice@example.com"], (), None, ALICE, True, id="listed-user"),
    pytest.param(["ALICE@EXAMPLE.COM"], (), None, ALICE, True, id="entry-other-case"),
    pytest.param(
        ["alice@example.com"], (), None, identity("ALICE@Example.COM"), True, id="login-other-case"
    ),
    pytest.param(["alice@example.com"], (), None, None, False, id="no-identity-refused"),
    pytest.param(
        ["alice@example.com"], (), None, identity("bob@example.com"), False, id="other-user"
    ),
    pytest.param(
        ["alice@example.com"],
        (),
        None,
        identity("alice@example.com.evil"),
        False,
        id="suffix-domain",
    ),
    pytest.param(
        ["alice@example.com"], (), None, identity("alice@example.co"), False, id="prefix-domain"
    ),
    pytest.param(
        ["alice@example.com"], (), None, identity("xalice@example.com"), False, id="prefix-local"
    ),
    pytest.param(
        ["alice@example.com"], (), None, identity("\u0430lice@example.com"), False, id="cyrillic-a"
    ),
    pytest.param(
        ["alice@example.com"],
        (),
        None,
        identity("alice@examp\u217ce.com"),
        False,
        id="roman-numeral-l",
    ),
    pytest.param(
        ["kate@example.com"], (), None, identity("\u212aate@example.com"), False, id="kelvin-sign-k"
    ),
    pytest.param(
        ["sally@example.com"], (), None, identity("\u017fally@example.com"), False, id="long-s"
    ),
    pytest.param(
        ["strasse@example.com"], (), None, identity("stra\u00dfe@example.com"), False, id="sharp-s"
    ),
    pytest.param(
        ["alice@example.com"], (), None, identity("\uff41lice@example.com"), False, id="fullwidth-a"
    ),
    pytest.param(
        ["alice@example.com"], (), None, identity(None, ("tag:server",)), False, id="tagged-node"
    ),
    pytest.param(
        ["alice@example.com"],
        (),
        None,
        identity("alice@example.com", ("tag:server",)),
        False,
        id="tagged-node-with-owner-login",
    ),
    pytest.param(["*@example.com"], (), None, ALICE, True, id="domain"),
    pytest.param(
        ["*@EXAMPLE.com"], (), None, identity("bob@Example.Com"), True, id="domain-other-case"
    ),
    pytest.param(
        ["*@example.com"], (), None, identity("evil@sub.example.com"), False, id="subdomain"
    ),
    pytest.param(
        ["*@example.com"],
        (),
        None,
        identity("evil@example.com.attacker"),
        False,
        id="domain-suffix",
    ),
    pytest.param(
        ["*@example.com"], (), None, identity("evil@badexample.com"), False, id="domain-prefix"
    ),
    pytest.param(
        ["*@example.com"],
        (),
        None,
        identity("evil@example.com@attacker.com"),
        False,
        id="two-at-attacker",
    ),
    pytest.param(
        ["*@example.com"],
        (),
        None,
        identity("evil@attacker.com@example.com"),
        False,
        id="two-at-listed",
    ),
    pytest.param(
        ["*@example.com"], (), None, identity("@example.com"), False, id="empty-local-part"
    ),
    pytest.param(["*@example.com"], (), None, identity("example.com"), False, id="no-at"),
    pytest.param(["*@example.com"], (), None, SERVER, False, id="domain-never-tagged"),
    pytest.param(
        ["*@example.com"], (), None, identity("mallory@gmail.com"), False, id="shared-in-owner"
    ),
    pytest.param((), ["tag:server"], None, SERVER, True, id="listed-tag"),
    pytest.param((), ["tag:server"], None, CI, False, id="other-tag"),
    pytest.param(
        (), ["tag:server"], None, identity(None, ("tag:Server",)), False, id="tag-other-case"
    ),
    pytest.param(
        (), ["tag:server"], None, identity(None, ("tag:server-2",)), False, id="tag-prefix"
    ),
    pytest.param((), ["tag:server"], None, ALICE, False, id="user-not-tag"),
    pytest.param((), ["tag:server"], None, None, False, id="tag-no-identity"),
    pytest.param(
        (), ["tag:server"], None, identity(None, ("tag:ci", "tag:server")), True, id="one-of-tags"
    ),
    pytest.param(["alice@example.com"], ["tag:server"], None, ALICE, True, id="both-lists-user"),
    pytest.param(["alice@example.com"], ["tag:server"], None, SERVER, True, id="both-lists-tag"),
    pytest.param(["alice@example.com"], ["tag:server"], None, CI, False, id="both-lists-neither"),
    pytest.param((), (), "example.com/cap/app", ADMIN, True, id="capability-held"),
    pytest.param((), (), "example.com/cap/app", ALICE, False, id="capability-missing"),
    pytest.param((), (), "example.com/cap/app", None, False, id="capability-no-identity"),
    pytest.param((), (), "example.com/cap/APP", ADMIN, False, id="capability-other-case"),
    pytest.param((), (), "example.com/cap/ap", ADMIN, False, id="capability-prefix"),
    pytest.param(
        ["alice@example.com"], (), "example.com/cap/app", ADMIN, True, id="user-and-capability"
    ),
    pytest.param(
        ["alice@example.com"], (), "example.com/cap/app", ALICE, False, id="user-without-capability"
    ),
    pytest.param(
        ["bob@example.com"], (), "example.com/cap/app", ADMIN, False, id="capability-wrong-user"
    ),
    pytest.param(
        (), ["tag:server"], "example.com/cap/app", SERVER_WITH_CAP, True, id="tag-and-capability"
    ),
    pytest.param(
        (), ["tag:server"], "example.com/cap/app", SERVER, False, id="tag-without-capability"
    ),
]


@pytest.mark.parametrize(("users", "tags", "capability", "peer", "admitted"), GATES)
def test_gates(
    users: list[str],
    tags: list[str],
    capability: str | None,
    peer: TailscaleIdentity | None,
    admitted: bool,
) -> None:
    rule = IdentityRule.parse(users, tags, capability)
    assert rule.admits(peer) is admitted
    assert rule.restricts is bool(users or tags or capability)


def test_gates_on_parsed_answers() -> None:
    rule = IdentityRule.parse(users=["*@example.com"])
    assert rule.admits(parse_whois(USER))
    assert not rule.admits(parse_whois(SHARED_IN))
    assert not rule.admits(parse_whois(TAGGED))
    assert IdentityRule.parse(tags=["tag:prod"]).admits(parse_whois(TAGGED))


def test_open_restricts_nothing() -> None:
    assert not OPEN.restricts
    assert OPEN.admits(None)
    assert IdentityRule.parse([], [], None) == OPEN


@pytest.mark.parametrize(
    ("users", "tags", "capability", "message"),
    [
        pytest.param(["*"], (), None, "wildcard", id="star-alone"),
        pytest.param(["*@"], (), None, "wildcard", id="star-at-nothing"),
        pytest.param(["*@*"], (), None, "wildcard", id="star-at-star"),
        pytest.param(["*@*.example.com"], (), None, "wildcard", id="star-subdomains"),
        pytest.param(["*alice@example.com"], (), None, "wildcard", id="star-in-local-part"),
        pytest.param(["*@github"], (), None, "wildcard", id="single-label-domain"),
        pytest.param(["*@.example.com"], (), None, "wildcard", id="domain-leading-dot"),
        pytest.param(["*@example.com."], (), None, "wildcard", id="domain-trailing-dot"),
        pytest.param(["tag:server"], (), None, "is a tag", id="tag-in-users"),
        pytest.param(["tagged-devices"], (), None, "tagged node", id="tagged-devices-in-users"),
        pytest.param(["Tagged-Devices"], (), None, "tagged node", id="tagged-devices-other-case"),
        pytest.param(["alice @example.com"], (), None, "spaces", id="user-with-space"),
        pytest.param([""], (), None, "not a login", id="user-empty"),
        pytest.param((), ["server"], None, "tag:name", id="tag-no-prefix"),
        pytest.param((), ["tag:"], None, "tag:name", id="tag-empty"),
        pytest.param((), ["tag:*"], None, "tag:name", id="tag-wildcard"),
        pytest.param((), ["alice@example.com"], None, "tag:name", id="user-in-tags"),
        pytest.param((), ["tag:serv\u0435r"], None, "tag:name", id="tag-cyrillic"),
        pytest.param((), (), "app", "domain/name", id="capability-no-domain"),
        pytest.param((), (), "example.com", "domain/name", id="capability-no-path"),
        pytest.param((), (), "example.com/", "domain/name", id="capability-empty-path"),
        pytest.param((), (), "example.com/cap x", "domain/name", id="capability-space"),
        pytest.param((), (), "", "domain/name", id="capability-empty"),
        pytest.param((), (), "*", "domain/name", id="capability-wildcard"),
    ],
)
def test_rule_refuses_malformed_entries(
    users: list[str], tags: list[str], capability: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        IdentityRule.parse(users, tags, capability)


def test_rule_refuses_one_string_for_a_list() -> None:
    """A string is iterable: "alice@example.com" would become the logins "a", "l", "i"..."""
    with pytest.raises(ValueError, match="lists"):
        IdentityRule.parse("alice@example.com")
    with pytest.raises(ValueError, match="lists"):
        IdentityRule.parse(tags="tag:ci")


def test_rule_folds_entries() -> None:
    rule = IdentityRule.parse(
        ["Alice@Example.COM", "*@Example.Org"], ["tag:web"], "example.com/cap/a"
    )
    assert rule.users == {"alice@example.com"}
    assert rule.domains == {"example.org"}
    assert rule.tags == {"tag:web"}


# ---------------------------------------------------------------- RFC 2047, for display


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param("Alice Example", "Alice Example", id="plain"),
        pytest.param("=?utf-8?q?Zo=C3=AB_Example?=", "Zoë Example", id="q-encoded"),
        pytest.param("=?UTF-8?Q?Zo=c3=ab?=", "Zoë", id="q-upper-charset-lower-hex"),
        pytest.param("=?utf-8?b?WsO2ZQ==?=", "Zöe", id="b-encoded"),
        pytest.param("=?utf-8?q?Zo=C3=AB?= =?utf-8?q?_Example?=", "Zoë Example", id="two-words"),
        pytest.param("Dr =?utf-8?q?Zo=C3=AB?= X", "Dr Zoë X", id="word-in-text"),
        pytest.param("=?utf-8?q?=E6=97=A5=E6=9C=AC?=", "日本", id="cjk"),
        pytest.param("=?iso-8859-1?q?Zo=EB?=", "=?iso-8859-1?q?Zo=EB?=", id="other-charset-as-is"),
        pytest.param("=?utf-8?q?Zo=C3?=", "=?utf-8?q?Zo=C3?=", id="truncated-utf8-as-is"),
        pytest.param("=?utf-8?q?bad=ZZ?=", "=?utf-8?q?bad=ZZ?=", id="bad-hex-as-is"),
        pytest.param("=?utf-8?q?end=?=", "=?utf-8?q?end=?=", id="dangling-equals-as-is"),
        pytest.param("=?utf-8?b?!!!?=", "=?utf-8?b?!!!?=", id="bad-base64-as-is"),
        pytest.param("=?utf-8?x?abc?=", "=?utf-8?x?abc?=", id="unknown-encoding-as-is"),
        pytest.param(
            "=?utf-8?q?a=0D=0ASet-Cookie:_x?=", "=?utf-8?q?a=0D=0ASet-Cookie:_x?=", id="crlf-as-is"
        ),
        pytest.param("=?utf-8?q?a=00b?=", "=?utf-8?q?a=00b?=", id="nul-as-is"),
        pytest.param("=?utf-8?b?G1szMW0=?=", "=?utf-8?b?G1szMW0=?=", id="terminal-escape-as-is"),
        pytest.param("=?utf-8?q?", "=?utf-8?q?", id="unterminated"),
        pytest.param(
            "=?utf-8?q?ok?= =?latin1?q?x?=",
            "=?utf-8?q?ok?= =?latin1?q?x?=",
            id="one-bad-word-all-as-is",
        ),
        pytest.param(
            "=?utf-8?q?" + "a" * 5000 + "?=", "=?utf-8?q?" + "a" * 5000 + "?=", id="too-long-as-is"
        ),
    ],
)
def test_decode_header_value(value: str, shown: str) -> None:
    assert decode_header_value(value) == shown


@given(st.text(max_size=200))
def test_decode_header_value_never_raises(value: str) -> None:
    assert isinstance(decode_header_value(value), str)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["utf-8", "UTF-8", "latin1", "x"]),
            st.sampled_from("qQbBx"),
            st.text(alphabet="=_AZaz09+/!~?", max_size=12),
        ),
        max_size=4,
    ),
    st.sampled_from(["", " ", "\t", "x"]),
)
def test_decode_header_value_encoded_words_never_raise(
    words: list[tuple[str, str, str]], between: str
) -> None:
    value = between.join(f"=?{c}?{e}?{t}?=" for c, e, t in words)
    shown = decode_header_value(value)
    assert "\n" not in shown or "\n" in value


def test_an_identity_has_a_json_copy_flask_can_send() -> None:
    """``jsonify(current_peer.tailscale.capabilities)`` fails (read-only mappings); ``as_json``
    is the plain copy, and changing it changes nothing in the record."""
    identity = parse_whois(
        {
            "Node": {
                "StableID": "nAbc",
                "Name": "laptop.tail1a2b3.ts.net.",
                "Addresses": ["100.64.1.2/32"],
                "Tags": ["tag:web"],
            },
            "UserProfile": {"LoginName": "tagged-devices", "DisplayName": "tagged devices"},
            "CapMap": {"example.com/cap/app": [{"role": "admin", "paths": ["/a", "/b"]}]},
        }
    )
    plain = identity.as_json()
    assert json.loads(json.dumps(plain)) == plain
    assert plain["capabilities"] == {
        "example.com/cap/app": [{"role": "admin", "paths": ["/a", "/b"]}]
    }
    with Flask(__name__).app_context():
        assert jsonify(plain).get_json()["tags"] == ["tag:web"]
    plain["capabilities"]["example.com/cap/app"][0]["role"] = "root"
    assert identity.capabilities["example.com/cap/app"][0]["role"] == "admin"
