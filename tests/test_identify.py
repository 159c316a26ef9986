"""Who a remote peer is: the guard's identity step against a stand-in tailscaled.

Every request here goes through the real app (Flask's test client, ``REMOTE_ADDR`` set as a server
would) and the real LocalAPI client over the stand-in's unix socket; nothing of the client is
mocked. The rows read as what a peer tries; the expected answer is what the guard must do:
failures of tailscaled never admit and never raise, ``"required"`` refuses, ``"auto"`` falls back
to the credential cascade, and the gates refuse whoever they do not name (a valid token does not
help). The tests at the end run a real ``flask run`` with clients bound to tailnet addresses
added to ``lo``.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_tailnet import TailnetGuard, current_peer

from .conftest import PASSWORD, addresses_on_lo, call, make_app, serving_example_app
from .tailscaled_stand_in import StandInTailscaled, running_tailscaled, trusted_directory

# 100.64.42.x and fd7a:115c:a1e0::42:x are this file's: no other test uses them.
ME = "100.64.42.1"  #: this node's own tailnet address (status TailscaleIPs)
ME6 = "fd7a:115c:a1e0::42:1"
HOST = f"{ME}:5000"
ALICE = "100.64.42.10"  #: alice@example.com's laptop, granted CAP
TAGGED = "100.64.42.11"  #: a tagged node (tag:ci): no login
SHARED = "100.64.42.12"  #: a node shared into the tailnet by someone else's tailnet
STRANGER = "100.64.42.13"  #: a tailnet address tailscaled does not know (404)
BOB = "100.64.42.14"  #: bob@example.com, no capability
NON_ASCII = "100.64.42.15"  #: a login that is not ASCII
ALICE6 = "fd7a:115c:a1e0::42:10"
CAP = "example.com/cap/myapp"
TAGGED_NODE = "ci-runner.tail1a2b3.ts.net"
INTERNAL_ERROR = "internal error while deciding"


def _configure(stand_in: StandInTailscaled) -> None:
    stand_in.status["TailscaleIPs"] = [ME, ME6]
    stand_in.status["Self"]["TailscaleIPs"] = [ME, ME6]
    stand_in.add_peer(
        ALICE,
        login="alice@example.com",
        display_name="Alice Example",
        node="alice-laptop.tail1a2b3.ts.net",
        node_id="nAlice1CNTRL",
        cap_map={CAP: [{"role": "admin"}]},
        addresses=(ALICE, ALICE6),
    )
    stand_in.add_peer(TAGGED, tags=("tag:ci",), node=TAGGED_NODE, node_id="nTagged1CNTRL")
    stand_in.add_peer(
        SHARED,
        login="mallory@other.example",
        display_name="Mallory",
        node="mallory-pc.other-tailnet.ts.net",
        node_id="nShared1CNTRL",
        sharer=2345678900099999,
    )
    stand_in.add_peer(BOB, login="bob@example.com", node="bob.tail1a2b3.ts.net")


@pytest.fixture
def tailnet(tailscaled: StandInTailscaled) -> StandInTailscaled:
    """The stand-in tailscaled of a TUN-mode node at ME that knows ALICE, TAGGED, SHARED, BOB."""
    _configure(tailscaled)
    return tailscaled


def guarded(state_dir: Path, stand_in: StandInTailscaled | str, **settings: Any) -> Flask:
    """make_app's app against ``stand_in`` (or a socket path), with ``/who`` telling everything
    the guard established of the peer."""
    path = stand_in if isinstance(stand_in, str) else stand_in.path
    app = make_app(state_dir, TAILNET_TAILSCALED_SOCKET=path, **settings)

    @app.get("/who")
    def who() -> dict[str, Any]:
        identity = getattr(current_peer, "tailscale", None)
        return {
            "address": current_peer.address,
            "method": current_peer.method,
            "user": current_peer.user,
            "local": current_peer.local,
            "tailscale": None
            if identity is None
            else {
                "login": identity.login,
                "display_name": identity.display_name,
                "node": identity.node,
                "node_id": identity.node_id,
                "tags": list(identity.tags),
                "capabilities": sorted(identity.capabilities),
            },
        }

    return app


@pytest.fixture
def build(state_dir: Path, tailnet: StandInTailscaled) -> Callable[..., Flask]:
    def factory(**settings: Any) -> Flask:
        return guarded(state_dir, tailnet, **settings)

    return factory


def token_of(app: Flask) -> str:
    value: bytes = app.extensions["tailnet"].token_file.ensure()
    return value.decode()


def ask(
    client: FlaskClient,
    peer: str,
    *,
    token: str | None = None,
    path: str = "/who",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    environ: dict[str, Any] | None = None,
) -> Any:
    """One request from socket peer ``peer`` (Host: this node), with the bearer token if given."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return client.open(
        path,
        method=method,
        headers=sent,
        environ_base={"REMOTE_ADDR": peer, "REMOTE_PORT": "40000"},
        environ_overrides={"HTTP_HOST": HOST, **(environ or {})},
    )


def whois_asked(stand_in: StandInTailscaled) -> list[str]:
    """Every whois request the stand-in received, answered or failed."""
    return [path for path, _ in stand_in.requests if path.startswith("/localapi/v0/whois")]


def no_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if INTERNAL_ERROR in r.getMessage()]


# ---- 1. what tailscaled answers -> what the guard does ---------------------------------------

#: How tailscaled can fail to answer whois, set after the app started (its status was fine).
_RAW_200 = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}"


def _raw(body: str) -> bytes:
    return _RAW_200.format(len(body.encode()), body).encode()


def _break(stand_in: StandInTailscaled, how: str) -> None:
    if how == "403":
        stand_in.fail_with = (403, "invalid localapi request")
    elif how == "500":
        stand_in.fail_with = (500, "internal error")
    elif how == "404-page-not-found":  # a 404 that is not whois's "no match": not "not a peer"
        stand_in.fail_with = (404, "404 page not found")
    elif how == "timeout":
        stand_in.delay = 1.5  # the client's timeout is 1 s
    elif how == "garbage-json":
        stand_in.raw_answer = _raw("{not json")
    elif how == "wrong-shape-json":
        stand_in.raw_answer = _raw('{"Node": 1, "UserProfile": "alice@example.com"}')
    elif how == "huge-body":
        body = json.dumps({"Node": {}, "pad": "x" * (1 << 21)})
        stand_in.raw_answer = _raw(body)
    elif how == "truncated-body":
        stand_in.raw_answer = _RAW_200.format(1000, '{"Node":').encode()
    else:
        raise AssertionError(how)


FAILURES = [
    "403",
    "500",
    "404-page-not-found",
    "timeout",
    "garbage-json",
    "wrong-shape-json",
    "huge-body",
    "truncated-body",
]

#: (id, how the app is set, settings)
CONFIGS = [
    ("auto", {}),
    ("required", {"TAILNET_IDENTITY": "required"}),
    ("auto+users-gate", {"TAILNET_ALLOWED_USERS": ["alice@example.com"]}),
    (
        "required+users-gate",
        {"TAILNET_IDENTITY": "required", "TAILNET_ALLOWED_USERS": ["alice@example.com"]},
    ),
]


def _answer_rows() -> Iterator[Any]:
    """(peer, failure, settings, expected status with a valid token, expected login)."""
    for config, settings in CONFIGS:
        gated = "gate" in config
        required = config.startswith("required")
        yield pytest.param(
            ALICE, None, settings, 200, "alice@example.com", id=f"{config}:user-node-with-token"
        )
        yield pytest.param(
            TAGGED,
            None,
            settings,
            403 if gated else 200,
            None,
            id=f"{config}:tagged-node-{'not-a-user' if gated else 'with-token'}",
        )
        yield pytest.param(
            SHARED,
            None,
            settings,
            403 if gated else 200,
            "mallory@other.example",
            id=f"{config}:shared-in-node-{'not-listed' if gated else 'with-token'}",
        )
        yield pytest.param(
            STRANGER,
            None,
            settings,
            403 if gated or required else 200,
            None,
            id=f"{config}:whois-404-not-a-peer",
        )
        for failure in FAILURES:
            yield pytest.param(
                ALICE,
                failure,
                settings,
                403 if gated or required else 200,
                None,
                id=f"{config}:whois-{failure}-{'refused' if gated or required else 'cascade'}",
            )


@pytest.mark.parametrize(("peer", "failure", "settings", "status", "login"), list(_answer_rows()))
def test_whois_answer_decides_with_a_valid_token(
    build: Callable[..., Flask],
    tailnet: StandInTailscaled,
    caplog: pytest.LogCaptureFixture,
    peer: str,
    failure: str | None,
    settings: dict[str, Any],
    status: int,
    login: str | None,
) -> None:
    """A peer with the valid token: served as the token's, with whois's identity beside it, or
    refused; a tailscaled failure is never "not a peer" and never an identity."""
    app = build(**settings)
    token = token_of(app)
    if failure is not None:
        _break(tailnet, failure)
    response = ask(app.test_client(), peer, token=token)
    assert response.status_code == status, response.get_data(as_text=True)
    no_internal_error(caplog)
    if status != 200:
        return
    body = response.get_json()
    assert body["method"] == "token"
    assert body["local"] is False
    assert body["address"] == peer
    if failure is not None or peer == STRANGER:
        assert body["tailscale"] is None
    else:
        assert body["tailscale"]["login"] == login


def _no_credential_rows() -> Iterator[Any]:
    for config, settings in CONFIGS:
        # one timeout row is enough here: each costs the client's 1 s timeout
        for failure in [None, *(f for f in FAILURES if f != "timeout" or config == "auto")]:
            yield pytest.param(
                config, settings, failure, id=f"{config}:whois-{failure or 'answers'}-no-credential"
            )


@pytest.mark.parametrize(("config", "settings", "failure"), list(_no_credential_rows()))
def test_no_credential_is_never_admitted(
    build: Callable[..., Flask],
    tailnet: StandInTailscaled,
    caplog: pytest.LogCaptureFixture,
    config: str,
    settings: dict[str, Any],
    failure: str | None,
) -> None:
    """Without TAILNET_TAILSCALE_LOGIN, an identity is no credential: 401, or 403 where refused."""
    app = build(**settings)
    if failure is not None:
        _break(tailnet, failure)
    response = ask(app.test_client(), ALICE)
    refused = failure is not None and ("gate" in config or config.startswith("required"))
    assert response.status_code == (403 if refused else 401), response.get_data(as_text=True)
    no_internal_error(caplog)


def test_identity_fields_of_a_user_node(build: Callable[..., Flask]) -> None:
    app = build()
    body = ask(app.test_client(), ALICE, token=token_of(app)).get_json()
    assert body["tailscale"] == {
        "login": "alice@example.com",
        "display_name": "Alice Example",
        "node": "alice-laptop.tail1a2b3.ts.net",
        "node_id": "nAlice1CNTRL",
        "tags": [],
        "capabilities": [CAP],
    }


def test_identity_of_a_tagged_node_has_no_login(build: Callable[..., Flask]) -> None:
    app = build()
    body = ask(app.test_client(), TAGGED, token=token_of(app)).get_json()
    assert body["tailscale"]["login"] is None
    assert body["tailscale"]["tags"] == ["tag:ci"]
    assert body["tailscale"]["node"] == TAGGED_NODE


def test_ipv4_mapped_peer_is_asked_unmapped(
    build: Callable[..., Flask], tailnet: StandInTailscaled
) -> None:
    app = build()
    body = ask(app.test_client(), f"::ffff:{ALICE}", token=token_of(app)).get_json()
    assert body["tailscale"]["login"] == "alice@example.com"
    assert tailnet.whois_calls == [ALICE]


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="auto"),
        pytest.param({"TAILNET_IDENTITY": "required"}, id="required"),
        pytest.param({"TAILNET_ALLOWED_USERS": ["bob@example.com"]}, id="users-gate-not-me"),
        pytest.param(
            {"TAILNET_ALLOWED_TAGS": ["tag:prod"], "TAILNET_TAILSCALE_LOGIN": True},
            id="tags-gate-and-login",
        ),
    ],
)
@pytest.mark.parametrize("address", [ME, ME6], ids=["own-ipv4", "own-ipv6"])
def test_this_node_itself_is_local(
    build: Callable[..., Flask], tailnet: StandInTailscaled, settings: dict[str, Any], address: str
) -> None:
    """A local process connecting to the node's own tailnet address is local: no credential, no
    gate, no whois; a cross-site POST from it is refused as from loopback."""
    app = build(**settings)
    client = app.test_client()
    body = ask(client, address).get_json()
    assert body["method"] == "loopback"
    assert body["local"] is True
    assert tailnet.whois_calls == []
    assert ask(client, address, path="/", method="POST").status_code == 200
    cross_site = ask(
        client, address, path="/", method="POST", headers={"Origin": "https://evil.example"}
    )
    assert cross_site.status_code == 403
    fetch = ask(client, address, path="/", method="POST", headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch.status_code == 403


def test_own_address_claimed_by_a_proxy_header_is_not_local(build: Callable[..., Flask]) -> None:
    """A peer that names this node's address in X-Forwarded-For (not a trusted proxy) is not
    local: the header is ignored and the peer is who whois says."""
    app = build(TAILNET_ALLOWED_USERS=["bob@example.com"])
    response = ask(app.test_client(), ALICE, headers={"X-Forwarded-For": ME})
    assert response.status_code == 403


def test_identity_off_never_asks(build: Callable[..., Flask], tailnet: StandInTailscaled) -> None:
    app = build(TAILNET_IDENTITY="off")
    body = ask(app.test_client(), ALICE, token=token_of(app)).get_json()
    assert body["method"] == "token"
    assert body["tailscale"] is None
    assert tailnet.whois_calls == []


# ---- 2. the gates ---------------------------------------------------------------------------

#: (id, settings, peer as add_peer keywords, expected status with a valid token)
GATE_ROWS = [
    ("users-exact", {"TAILNET_ALLOWED_USERS": ["alice@example.com"]}, {}, 200),
    (
        "users-login-in-other-case",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"]},
        {"login": "Alice@Example.COM"},
        200,
    ),
    (
        "users-entry-in-other-case",
        {"TAILNET_ALLOWED_USERS": ["ALICE@example.com"]},
        {},
        200,
    ),
    (
        "users-other-login",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"]},
        {"login": "bob@example.com"},
        403,
    ),
    (
        "users-login-with-trailing-dot",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"]},
        {"login": "alice@example.com."},
        403,
    ),
    (
        "users-kelvin-sign-look-alike",
        {"TAILNET_ALLOWED_USERS": ["kate@example.com"]},
        {"login": "\u212aate@example.com"},
        403,
    ),
    (
        "users-cyrillic-a-look-alike",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"]},
        {"login": "\u0430lice@example.com"},
        403,
    ),
    (
        "users-listed-login-but-tagged-node",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"]},
        {"login": "alice@example.com", "tags": ("tag:ci",)},
        403,
    ),
    ("domain-member", {"TAILNET_ALLOWED_USERS": ["*@example.com"]}, {}, 200),
    ("domain-other-case", {"TAILNET_ALLOWED_USERS": ["*@EXAMPLE.com"]}, {}, 200),
    (
        "domain-look-alike-suffix",
        {"TAILNET_ALLOWED_USERS": ["*@example.com"]},
        {"login": "alice@evilexample.com"},
        403,
    ),
    (
        "domain-subdomain",
        {"TAILNET_ALLOWED_USERS": ["*@example.com"]},
        {"login": "alice@sub.example.com"},
        403,
    ),
    (
        "domain-as-prefix",
        {"TAILNET_ALLOWED_USERS": ["*@example.com"]},
        {"login": "alice@example.com.evil.net"},
        403,
    ),
    (
        "domain-second-at-sign",
        {"TAILNET_ALLOWED_USERS": ["*@example.com"]},
        {"login": "alice@evil.net@example.com"},
        403,
    ),
    (
        "domain-capital-I-for-l",
        {"TAILNET_ALLOWED_USERS": ["*@example.com"]},
        {"login": "alice@exampIe.com"},
        403,
    ),
    (
        "domain-never-a-tagged-node",
        {"TAILNET_ALLOWED_USERS": ["*@example.com"]},
        {"tags": ("tag:ci",)},
        403,
    ),
    (
        "domain-shared-in-from-other-tailnet",
        {"TAILNET_ALLOWED_USERS": ["*@example.com"]},
        {"login": "mallory@other.example", "sharer": 1},
        403,
    ),
    ("tags-listed", {"TAILNET_ALLOWED_TAGS": ["tag:ci"]}, {"tags": ("tag:ci",)}, 200),
    (
        "tags-one-of-several",
        {"TAILNET_ALLOWED_TAGS": ["tag:ci"]},
        {"tags": ("tag:web", "tag:ci")},
        200,
    ),
    ("tags-other-tag", {"TAILNET_ALLOWED_TAGS": ["tag:ci"]}, {"tags": ("tag:web",)}, 403),
    ("tags-other-case", {"TAILNET_ALLOWED_TAGS": ["tag:ci"]}, {"tags": ("tag:CI",)}, 403),
    ("tags-user-node", {"TAILNET_ALLOWED_TAGS": ["tag:ci"]}, {}, 403),
    ("capability-held", {"TAILNET_REQUIRED_CAPABILITY": CAP}, {"cap_map": {CAP: [{}]}}, 200),
    ("capability-missing", {"TAILNET_REQUIRED_CAPABILITY": CAP}, {"cap_map": None}, 403),
    (
        "capability-longer-name",
        {"TAILNET_REQUIRED_CAPABILITY": CAP},
        {"cap_map": {CAP + "-admin": [{}]}},
        403,
    ),
    (
        "capability-other-case",
        {"TAILNET_REQUIRED_CAPABILITY": CAP},
        {"cap_map": {CAP.upper(): [{}]}},
        403,
    ),
    (
        "capability-tagged-node-holds-it",
        {"TAILNET_REQUIRED_CAPABILITY": CAP},
        {"tags": ("tag:ci",), "cap_map": {CAP: [{}]}},
        200,
    ),
    (
        "both-lists-user-matches",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"], "TAILNET_ALLOWED_TAGS": ["tag:ci"]},
        {},
        200,
    ),
    (
        "both-lists-tag-matches",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"], "TAILNET_ALLOWED_TAGS": ["tag:ci"]},
        {"tags": ("tag:ci",)},
        200,
    ),
    (
        "both-lists-neither",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"], "TAILNET_ALLOWED_TAGS": ["tag:ci"]},
        {"login": "bob@example.com"},
        403,
    ),
    (
        "list-and-capability-both-held",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"], "TAILNET_REQUIRED_CAPABILITY": CAP},
        {"cap_map": {CAP: [{}]}},
        200,
    ),
    (
        "listed-but-no-capability",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"], "TAILNET_REQUIRED_CAPABILITY": CAP},
        {"cap_map": None},
        403,
    ),
    (
        "capability-but-not-listed",
        {"TAILNET_ALLOWED_USERS": ["alice@example.com"], "TAILNET_REQUIRED_CAPABILITY": CAP},
        {"login": "bob@example.com", "cap_map": {CAP: [{}]}},
        403,
    ),
]


@pytest.mark.parametrize(
    ("settings", "peer", "status"),
    [pytest.param(s, p, st, id=i) for i, s, p, st in GATE_ROWS],
)
def test_gates_with_a_valid_token(
    build: Callable[..., Flask],
    tailnet: StandInTailscaled,
    settings: dict[str, Any],
    peer: dict[str, Any],
    status: int,
) -> None:
    """The gates narrow who may use a credential at all: a valid token does not pass them."""
    keywords = {"login": "alice@example.com", "node": "probe.tail1a2b3.ts.net", **peer}
    tailnet.add_peer(ALICE, **keywords)
    app = build(**settings)
    response = ask(app.test_client(), ALICE, token=token_of(app))
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 200:
        assert response.get_json()["method"] == "token"


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"TAILNET_ALLOWED_USERS": ["*@example.com"]}, id="users"),
        pytest.param({"TAILNET_ALLOWED_TAGS": ["tag:ci"]}, id="tags"),
        pytest.param({"TAILNET_REQUIRED_CAPABILITY": CAP}, id="capability"),
    ],
)
@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(STRANGER, id="tailnet-address-whois-404"),
        pytest.param("192.168.1.20", id="lan-address-never-asked"),
    ],
)
def test_gate_refuses_a_peer_without_identity_even_with_token(
    build: Callable[..., Flask], settings: dict[str, Any], peer: str
) -> None:
    app = build(TAILNET_NETWORK="any", **settings)
    assert ask(app.test_client(), peer, token=token_of(app)).status_code == 403


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"TAILNET_ALLOWED_USERS": ["nobody@example.com"]}, id="users"),
        pytest.param({"TAILNET_ALLOWED_TAGS": ["tag:none"]}, id="tags"),
        pytest.param(
            {"TAILNET_REQUIRED_CAPABILITY": "example.com/cap/none", "TAILNET_IDENTITY": "required"},
            id="capability-required",
        ),
    ],
)
@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_gates_never_touch_truly_local_loopback(
    build: Callable[..., Flask],
    tailnet: StandInTailscaled,
    settings: dict[str, Any],
    loopback: str,
) -> None:
    client = build(**settings).test_client()
    response = call(client, "/", peer=loopback, host="localhost")
    assert response.status_code == 200
    assert response.get_json()["method"] == "loopback"
    assert tailnet.whois_calls == []


# ---- 3. TAILNET_TAILSCALE_LOGIN --------------------------------------------------------------

LOGIN_GATES = {
    "TAILNET_TAILSCALE_LOGIN": True,
    "TAILNET_ALLOWED_USERS": ["alice@example.com"],
    "TAILNET_ALLOWED_TAGS": ["tag:ci"],
}


@pytest.mark.parametrize(
    ("peer", "user"),
    [
        pytest.param(ALICE, "alice@example.com", id="listed-user-by-login"),
        pytest.param(ALICE6, "alice@example.com", id="listed-user-over-ipv6"),
        pytest.param(TAGGED, TAGGED_NODE, id="listed-tag-by-node-name"),
    ],
)
def test_tailscale_login_admits_without_credential(
    build: Callable[..., Flask], peer: str, user: str
) -> None:
    body = ask(build(**LOGIN_GATES).test_client(), peer).get_json()
    assert body["method"] == "tailscale"
    assert body["user"] == user
    assert body["local"] is False
    assert body["tailscale"] is not None
    assert body["tailscale"]["node"] in ("alice-laptop.tail1a2b3.ts.net", TAGGED_NODE)


@pytest.mark.parametrize(
    ("peer", "failure"),
    [
        pytest.param(BOB, None, id="unlisted-user-with-token"),
        pytest.param(SHARED, None, id="shared-in-node-with-token"),
        pytest.param(STRANGER, None, id="not-a-peer-with-token"),
        pytest.param(ALICE, "500", id="listed-user-but-tailscaled-500-with-token"),
        pytest.param(ALICE, "garbage-json", id="listed-user-but-garbage-whois-with-token"),
    ],
)
def test_tailscale_login_refuses_what_the_gates_do_not_admit(
    build: Callable[..., Flask], tailnet: StandInTailscaled, peer: str, failure: str | None
) -> None:
    """With gates set, a peer without an admitted identity is refused whatever credential it
    has: the cascade is not a way around the gates, also when tailscaled does not answer."""
    app = build(**LOGIN_GATES)
    if failure is not None:
        _break(tailnet, failure)
    assert ask(app.test_client(), peer, token=token_of(app)).status_code == 403


def test_cascade_serves_everyone_when_tailscaled_fails_and_no_gate_is_set(
    build: Callable[..., Flask], tailnet: StandInTailscaled
) -> None:
    app = build()
    _break(tailnet, "500")
    body = ask(app.test_client(), ALICE, token=token_of(app)).get_json()
    assert body["method"] == "token"
    assert body["tailscale"] is None


def test_tailscale_login_with_a_credential_too(build: Callable[..., Flask]) -> None:
    app = build(**LOGIN_GATES)
    body = ask(app.test_client(), ALICE, token=token_of(app)).get_json()
    assert body["method"] in ("tailscale", "token")
    assert body["tailscale"]["login"] == "alice@example.com"


# ---- 4. "required" with tailscaled started after the app -------------------------------------


def test_required_without_tailscaled_starts_refuses_then_recovers(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    watch = importlib.import_module("flask_tailnet.tailscaled_watch")
    identify = importlib.import_module("flask_tailnet.identify")
    monkeypatch.setattr(watch, "REFRESH_SECONDS", 0.2)
    monkeypatch.setattr(identify, "FAILURE_SECONDS", 0.2)
    caplog.set_level(logging.INFO, logger="flask_tailnet")
    with trusted_directory() as directory:
        path = os.path.join(directory, "tailscaled.sock")
        app = guarded(state_dir, path, TAILNET_IDENTITY="required")
        token = token_of(app)
        client = app.test_client()
        for peer in (ALICE, STRANGER, ALICE, TAGGED):
            assert ask(client, peer, token=token).status_code == 403
        # the named socket does not exist (yet): a tailscaled elsewhere may relay, so loopback is
        # not local until it appears (a typo must not serve relayed peers as local), and under
        # "required" a request nobody can name is refused, with a token too
        assert ask(client, "127.0.0.1").status_code == 403
        assert ask(client, "127.0.0.1", token=token).status_code == 403
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "required" in errors[0].getMessage()
        with running_tailscaled(directory) as stand_in:
            _configure(stand_in)
            deadline = time.monotonic() + 10 * (0.2 + 0.2) + 5
            while ask(client, ALICE, token=token).status_code != 200:
                assert time.monotonic() < deadline, "still refused after tailscaled started"
                time.sleep(0.05)
            body = ask(client, ALICE, token=token).get_json()
            assert body["tailscale"]["login"] == "alice@example.com"
            assert ask(client, STRANGER, token=token).status_code == 403
            assert ask(client, "127.0.0.1").get_json()["method"] == "loopback"
    no_internal_error(caplog)


# ---- 5. a trusted proxy ----------------------------------------------------------------------

PROXY = {"TAILNET_TRUSTED_PROXIES": ["127.0.0.1"]}


def via_proxy(client: FlaskClient, forwarded: str, **headers: str) -> Any:
    return ask(
        client,
        "127.0.0.1",
        headers={
            "X-Forwarded-For": forwarded,
            **{k.replace("_", "-"): v for k, v in headers.items()},
        },
    )


def test_trusted_proxy_client_identified_by_whois_of_forwarded_address(
    build: Callable[..., Flask], tailnet: StandInTailscaled
) -> None:
    app = build(**PROXY, **LOGIN_GATES)
    body = via_proxy(app.test_client(), ALICE).get_json()
    assert body["method"] == "tailscale"
    assert body["user"] == "alice@example.com"
    assert body["address"] == ALICE
    assert tailnet.whois_calls == [ALICE]


@pytest.mark.parametrize(
    ("forwarded", "login_header", "status"),
    [
        pytest.param(ALICE, "alice@example.com", 200, id="login-header-agrees"),
        pytest.param(ALICE, "ALICE@example.com", 200, id="login-header-agrees-other-case"),
        pytest.param(ALICE, "bob@example.com", 403, id="login-header-names-someone-else"),
        pytest.param(ALICE, "", 403, id="login-header-empty"),
        pytest.param(
            ALICE, "alice@example.com, bob@example.com", 403, id="login-header-two-values"
        ),
        pytest.param(TAGGED, "alice@example.com", 403, id="login-header-for-a-tagged-node"),
        pytest.param(TAGGED, "tagged-devices", 403, id="login-header-tagged-devices"),
        pytest.param(STRANGER, "alice@example.com", 403, id="login-header-whois-404"),
        pytest.param(
            NON_ASCII,
            "=?utf-8?q?kr=C5=ABmi=C5=86a@example.com?=",
            200,
            id="login-header-rfc2047-as-serve-encodes-non-ascii",
        ),
        pytest.param(
            NON_ASCII,
            "=?utf-8?q?alice@example.com?=",
            403,
            id="login-header-rfc2047-names-someone-else",
        ),
    ],
)
def test_trusted_proxy_login_header_must_agree_with_whois(
    build: Callable[..., Flask],
    tailnet: StandInTailscaled,
    forwarded: str,
    login_header: str,
    status: int,
) -> None:
    """serve sets Tailscale-User-Login (RFC 2047 for a non-ASCII login: Go's mime.QEncoding);
    one that does not name whois's login refuses the request, one that does changes nothing."""
    tailnet.add_peer(
        NON_ASCII, login="kr\u016bmi\u0146a@example.com", node="krumina.tail1a2b3.ts.net"
    )
    app = build(**PROXY)
    response = via_proxy(
        app.test_client(),
        forwarded,
        Authorization=f"Bearer {token_of(app)}",
        Tailscale_User_Login=login_header,
    )
    assert response.status_code == status, response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("sender", "headers"),
    [
        pytest.param(
            BOB,
            {"Tailscale-User-Login": "alice@example.com"},
            id="tailnet-peer-sends-login-header",
        ),
        pytest.param(
            BOB,
            {"X-Forwarded-For": ALICE, "Tailscale-User-Login": "alice@example.com"},
            id="tailnet-peer-sends-forwarded-for-and-login",
        ),
        pytest.param(
            STRANGER,
            {"Tailscale-User-Login": "alice@example.com", "Tailscale-User-Name": "Alice"},
            id="unknown-peer-sends-identity-headers",
        ),
        pytest.param(
            BOB,
            {"Tailscale-App-Capabilities": json.dumps({CAP: [{}]})},
            id="tailnet-peer-sends-capabilities-header",
        ),
    ],
)
def test_identity_headers_from_an_untrusted_sender_give_nothing(
    build: Callable[..., Flask], sender: str, headers: dict[str, str]
) -> None:
    app = build(
        **PROXY,
        TAILNET_TAILSCALE_LOGIN=True,
        TAILNET_ALLOWED_USERS=["alice@example.com"],
    )
    client = app.test_client()
    assert ask(client, sender, headers=headers).status_code == 403
    assert ask(client, sender, headers=headers, token=token_of(app)).status_code == 403


def test_capabilities_header_from_trusted_proxy_is_not_a_grant(
    build: Callable[..., Flask],
) -> None:
    app = build(**PROXY, TAILNET_REQUIRED_CAPABILITY=CAP)
    response = via_proxy(
        app.test_client(),
        BOB,
        Authorization=f"Bearer {token_of(app)}",
        Tailscale_App_Capabilities=json.dumps({CAP: [{}]}),
    )
    assert response.status_code == 403


def test_user_name_header_is_not_a_source(build: Callable[..., Flask]) -> None:
    """An RFC 2047 Tailscale-User-Name (what serve sends) changes nothing: the display name is
    whois's."""
    app = build(**PROXY)
    body = via_proxy(
        app.test_client(),
        ALICE,
        Authorization=f"Bearer {token_of(app)}",
        Tailscale_User_Login="alice@example.com",
        Tailscale_User_Name="=?utf-8?q?Mallory_the_Admin?=",
    ).get_json()
    assert body["tailscale"]["display_name"] == "Alice Example"


@pytest.mark.parametrize(
    "relay",
    [
        pytest.param("userspace", id="userspace-netstack-relayed-a-forged-forwarded-for"),
        pytest.param("tcp-forward", id="serve-tcp-forward-relayed-a-forged-forwarded-for"),
    ],
)
def test_forwarded_for_on_a_connection_tailscaled_relayed_is_not_believed(
    state_dir: Path, tailnet: StandInTailscaled, relay: str
) -> None:
    """127.0.0.1 is a trusted proxy (nginx, or serve's HTTP proxy), but tailscaled also dials the
    app from 127.0.0.1 for a raw TCP connection (userspace mode, or a serve TCP forward to this
    port): a tailnet peer then writes its own X-Forwarded-For. It must not become the peer it
    names."""
    if relay == "userspace":
        tailnet.status["TUN"] = False
        tailnet.register_tcp("127.0.0.1:40000", f"{BOB}:51234")
    else:
        tailnet.serve_config = {"TCP": {"443": {"TCPForward": "127.0.0.1:5000"}}}
    app = guarded(state_dir, tailnet, **PROXY, **LOGIN_GATES)
    response = ask(
        app.test_client(),
        "127.0.0.1",
        headers={"X-Forwarded-For": ALICE},
        environ={"SERVER_PORT": "5000", "SERVER_NAME": "127.0.0.1"},
    )
    assert response.status_code == 403, response.get_data(as_text=True)


# ---- 6. @guard.require -----------------------------------------------------------------------


def required_app(state_dir: Path, stand_in: StandInTailscaled, **settings: Any) -> Flask:
    app = guarded(state_dir, stand_in, **settings)
    guard = TailnetGuard  # the decorator is a static method

    @app.get("/admins")
    @guard.require(users=["alice@example.com"])
    def admins() -> str:
        return "admins"

    @app.get("/ci")
    @guard.require(tags=["tag:ci"])
    def ci() -> str:
        return "ci"

    @app.get("/either")
    @guard.require(users=["*@example.com"], tags=["tag:ci"])
    def either() -> str:
        return "either"

    @app.get("/granted")
    @guard.require(users=["*@example.com"], capability=CAP)
    def granted() -> str:
        return "granted"

    @app.errorhandler(403)
    def forbidden(error: Exception) -> tuple[str, int]:
        return "app's own 403 page", 403

    return app


REQUIRE_ROWS = [
    ("/admins", ALICE, 200, "listed-user"),
    ("/admins", BOB, 403, "unlisted-user"),
    ("/admins", TAGGED, 403, "tagged-node-on-users-view"),
    ("/admins", SHARED, 403, "shared-in-node"),
    ("/admins", STRANGER, 403, "no-identity-with-token"),
    ("/ci", TAGGED, 200, "listed-tag"),
    ("/ci", ALICE, 403, "user-on-tags-view"),
    ("/either", BOB, 200, "either-by-domain"),
    ("/either", TAGGED, 200, "either-by-tag"),
    ("/either", SHARED, 403, "either-neither"),
    ("/granted", ALICE, 200, "domain-and-capability"),
    ("/granted", BOB, 403, "domain-without-capability"),
    ("/granted", "127.0.0.1", 200, "truly-local-loopback"),
    ("/granted", ME, 200, "this-node-itself"),
]


@pytest.mark.parametrize(
    ("path", "peer", "status"), [pytest.param(p, a, s, id=i) for p, a, s, i in REQUIRE_ROWS]
)
def test_require_decorator(
    state_dir: Path, tailnet: StandInTailscaled, path: str, peer: str, status: int
) -> None:
    app = required_app(state_dir, tailnet)
    response = ask(app.test_client(), peer, token=token_of(app), path=path)
    assert response.status_code == status
    if status == 403:
        assert response.get_data(as_text=True) == "app's own 403 page"


def test_require_refuses_when_tailscaled_fails(state_dir: Path, tailnet: StandInTailscaled) -> None:
    app = required_app(state_dir, tailnet)
    _break(tailnet, "500")
    response = ask(app.test_client(), ALICE, token=token_of(app), path="/admins")
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({}, TypeError, id="nothing-given"),
        pytest.param({"users": "alice@example.com"}, TypeError, id="users-as-one-string"),
        pytest.param({"tags": "tag:ci"}, TypeError, id="tags-as-one-string"),
        pytest.param({"users": ["*"]}, ValueError, id="users-star-alone"),
        pytest.param({"users": ["*@"]}, ValueError, id="users-star-at"),
        pytest.param({"users": ["*@com"]}, ValueError, id="users-one-label-domain"),
        pytest.param({"users": ["tag:ci"]}, ValueError, id="tag-in-users"),
        pytest.param({"users": ["tagged-devices"]}, ValueError, id="users-tagged-devices"),
        pytest.param({"tags": ["ci"]}, ValueError, id="tag-without-prefix"),
        pytest.param({"capability": "myapp"}, ValueError, id="capability-not-domain-name"),
        pytest.param({"users": [], "tags": []}, TypeError, id="empty-lists"),
    ],
)
def test_require_refuses_bad_input_at_decoration(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        TailnetGuard.require(**kwargs)


def test_require_refuses_a_non_view() -> None:
    with pytest.raises(TypeError):
        TailnetGuard.require(users=["alice@example.com"])(Flask)


# ---- 7. the cache ----------------------------------------------------------------------------


def test_whois_asked_once_per_address_within_the_ttl(
    build: Callable[..., Flask], tailnet: StandInTailscaled
) -> None:
    app = build(**LOGIN_GATES)
    client = app.test_client()
    for _ in range(20):
        assert ask(client, ALICE).status_code == 200
        assert ask(client, STRANGER).status_code == 403
    assert sorted(tailnet.whois_calls) == [ALICE, STRANGER]


def test_revoked_grant_takes_effect_after_the_ttl(
    state_dir: Path, tailnet: StandInTailscaled, monkeypatch: pytest.MonkeyPatch
) -> None:
    identify = importlib.import_module("flask_tailnet.identify")
    monkeypatch.setattr(identify, "IDENTITY_SECONDS", 0.3)
    app = guarded(state_dir, tailnet, TAILNET_REQUIRED_CAPABILITY=CAP, TAILNET_TAILSCALE_LOGIN=True)
    client = app.test_client()
    assert ask(client, ALICE).status_code == 200
    tailnet.add_peer(ALICE, login="alice@example.com", cap_map=None, addresses=(ALICE, ALICE6))
    assert ask(client, ALICE).status_code == 200  # cached: within the TTL
    time.sleep(0.4)
    assert ask(client, ALICE).status_code == 403
    assert tailnet.whois_calls == [ALICE, ALICE]


@pytest.mark.parametrize(
    "credential", ["token", "password"], ids=["bearer-token", "basic-password"]
)
def test_revoked_grant_reaches_an_authenticated_peer_after_the_ttl(
    state_dir: Path,
    tailnet: StandInTailscaled,
    monkeypatch: pytest.MonkeyPatch,
    credential: str,
) -> None:
    """A peer that presents a credential keeps no stale identity either (a success is remembered
    per client, with the peer it made): a view under guard.require(capability=...) refuses it
    once the grant is gone, and the identity it sees is whois's latest."""
    identify = importlib.import_module("flask_tailnet.identify")
    monkeypatch.setattr(identify, "IDENTITY_SECONDS", 0.3)
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", PASSWORD)
    app = required_app(
        state_dir, tailnet, TAILNET_AUTH="password", TAILNET_PASSWORD_ENV="TAILNET_TEST_PASSWORD"
    )
    if credential == "token":
        headers = {"Authorization": f"Bearer {token_of(app)}"}
    else:
        pair = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        headers = {"Authorization": f"Basic {pair}"}
    client = app.test_client()
    assert ask(client, ALICE, headers=headers, path="/granted").status_code == 200
    tailnet.add_peer(ALICE, login="alice@example.com", cap_map=None, addresses=(ALICE, ALICE6))
    time.sleep(0.4)
    assert ask(client, ALICE, headers=headers, path="/granted").status_code == 403
    body = ask(client, ALICE, headers=headers).get_json()
    assert body["method"] == credential
    assert body["tailscale"]["capabilities"] == []


def test_failure_is_cached_no_longer_than_an_answer(
    state_dir: Path, tailnet: StandInTailscaled, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed whois is retried after FAILURE_SECONDS (not kept for IDENTITY_SECONDS), and within
    that time it is not asked again by every request."""
    identify = importlib.import_module("flask_tailnet.identify")
    assert identify.FAILURE_SECONDS <= identify.IDENTITY_SECONDS
    monkeypatch.setattr(identify, "IDENTITY_SECONDS", 60.0)
    monkeypatch.setattr(identify, "FAILURE_SECONDS", 0.3)
    app = guarded(state_dir, tailnet, **LOGIN_GATES)
    client = app.test_client()
    tailnet.fail_with = (500, "internal error")
    for _ in range(5):
        assert ask(client, ALICE).status_code == 403
    assert len(whois_asked(tailnet)) == 1
    tailnet.fail_with = None
    time.sleep(0.4)
    assert ask(client, ALICE).status_code == 200
    assert len(whois_asked(tailnet)) == 2


def test_cache_is_bounded_under_a_flood_of_addresses(
    state_dir: Path, tailnet: StandInTailscaled, monkeypatch: pytest.MonkeyPatch
) -> None:
    identify = importlib.import_module("flask_tailnet.identify")
    assert identify._CACHE_LIMIT == 4096
    monkeypatch.setattr(identify, "_CACHE_LIMIT", 50)
    app = guarded(state_dir, tailnet, **LOGIN_GATES)
    client = app.test_client()
    for n in range(300):
        assert ask(client, f"100.64.{43 + n // 200}.{n % 200}").status_code == 403
    known = app.extensions["tailnet"].identify._known
    assert len(known) <= 50
    assert ask(client, ALICE).status_code == 200  # still works after the flood


# ---- 8. the identity is immutable ------------------------------------------------------------


def test_a_view_cannot_change_the_cached_identity(
    build: Callable[..., Flask], tailnet: StandInTailscaled
) -> None:
    app = build(TAILNET_TAILSCALE_LOGIN=True, TAILNET_REQUIRED_CAPABILITY=CAP)
    attempts: list[str] = []

    @app.get("/tamper")
    def tamper() -> str:
        identity: Any = current_peer.tailscale
        peer: Any = current_peer
        assert identity is not None
        changes: list[tuple[str, Callable[[], object]]] = [
            ("login", lambda: setattr(identity, "login", "root@example.com")),
            ("tags", lambda: setattr(identity, "tags", ("tag:admin",))),
            ("tags-append", lambda: identity.tags.append("tag:admin")),
            ("capabilities-item", lambda: identity.capabilities.__setitem__("x.com/cap/y", ())),
            ("capability-value", lambda: identity.capabilities[CAP][0].__setitem__("role", "x")),
            ("capability-values", lambda: identity.capabilities[CAP].append({})),
            ("peer-user", lambda: setattr(peer._get_current_object(), "user", "root")),
            ("peer-identity", lambda: setattr(peer._get_current_object(), "tailscale", None)),
        ]
        for name, change in changes:
            try:
                change()
            except (AttributeError, TypeError, dataclasses.FrozenInstanceError):
                continue
            attempts.append(name)
        return "done"

    client = app.test_client()
    assert ask(client, ALICE, path="/tamper").get_data(as_text=True) == "done"
    assert attempts == []
    body = ask(client, ALICE).get_json()
    assert body["user"] == "alice@example.com"
    assert body["tailscale"]["login"] == "alice@example.com"
    assert body["tailscale"]["capabilities"] == [CAP]
    assert tailnet.whois_calls == [ALICE]


# ---- real server: flask run, clients bound to tailnet addresses on lo ------------------------


def _get(
    server: tuple[str, int],
    source: str,
    path: str,
    headers: dict[str, str],
    before: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """A GET on a fresh connection whose client end is bound to ``source``; ``before`` gets the
    client's port before it connects."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        if before is not None:
            before(int(sock.getsockname()[1]))
        sock.connect(server)
        lines = [f"GET {path} HTTP/1.1", f"Host: {server[0]}:{server[1]}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


_GET_SCRIPT = """
import json, socket, sys
server, source, path, headers = json.loads(sys.argv[1])
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(tuple(server))
    lines = [f"GET {path} HTTP/1.1", f"Host: {server[0]}:{server[1]}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\\r\\n".join(lines) + "\\r\\n\\r\\n").encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
head, _, body = data.partition(b"\\r\\n\\r\\n")
print(json.dumps([int(head.split()[1]), body.decode()]))
"""


def _get_elsewhere(
    server: tuple[str, int], source: str, path: str, headers: dict[str, str]
) -> tuple[int, str]:
    """:func:`_get` from another process (of the same user): a local client that tailscaled's
    process (the stand-in, in this one) does not hold."""
    done = subprocess.run(
        [sys.executable, "-c", _GET_SCRIPT, json.dumps([server, source, path, headers])],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    status, body = json.loads(done.stdout)
    return int(status), str(body)


@contextmanager
def flask_run(
    settings: dict[str, Any], tmp_path: Path, host: str = ME
) -> Iterator[tuple[str, int]]:
    """``flask run`` of tests/identify_probe_app.py on ``host`` with ``settings``; yields (host,
    port)."""
    env = {**os.environ, "IDENTIFY_PROBE_SETTINGS": json.dumps(settings)}
    log_path = tmp_path / "server.log"
    with serving_example_app(host, env, log_path, app="tests.identify_probe_app") as port:
        yield host, port


@pytest.mark.root
def test_real_server_identifies_peers_by_their_socket_address(tmp_path: Path) -> None:
    """``flask run`` on this node's tailnet address; clients on other tailnet addresses of lo: the
    identity is whois of the socket's peer, headers change nothing, this node itself is local."""
    with (
        addresses_on_lo([f"{ME}/32", f"{ALICE}/32", f"{STRANGER}/32", f"{BOB}/32"]),
        trusted_directory() as directory,
        running_tailscaled(directory) as stand_in,
    ):
        _configure(stand_in)
        settings = {
            "TAILNET_TAILSCALED_SOCKET": stand_in.path,
            "TAILNET_STATE_DIR": str(tmp_path / "state"),
            **LOGIN_GATES,
        }
        with flask_run(settings, tmp_path) as server:
            status, body = _get(server, ALICE, "/who", {})
            assert status == 200, body
            assert json.loads(body)["method"] == "tailscale"
            assert json.loads(body)["user"] == "alice@example.com"
            status, body = _get(server, ME, "/who", {})
            assert status == 200, body
            assert json.loads(body)["method"] == "loopback"
            forged = {"Tailscale-User-Login": "alice@example.com", "X-Forwarded-For": ALICE}
            assert _get(server, BOB, "/who", forged)[0] == 403
            assert _get(server, STRANGER, "/who", forged)[0] == 403
            assert _get(server, STRANGER, "/who", {})[0] == 403


@pytest.mark.root
def test_real_server_trusted_proxy_on_userspace_tailscaled(tmp_path: Path) -> None:
    """``flask run`` on 127.0.0.1 behind a trusted proxy at 127.0.0.1, tailscaled in userspace
    mode. A local proxy's X-Forwarded-For (another process) names the client; a connection
    netstack relayed (its client port registered with tailscaled) is the relayed peer, whatever
    X-Forwarded-For it wrote."""
    with trusted_directory() as directory, running_tailscaled(directory) as stand_in:
        _configure(stand_in)
        stand_in.status["TUN"] = False
        settings = {
            "TAILNET_TAILSCALED_SOCKET": stand_in.path,
            "TAILNET_STATE_DIR": str(tmp_path / "state"),
            **PROXY,
            **LOGIN_GATES,
        }

        def relayed_for(peer: str) -> Callable[[int], None]:
            return lambda port: stand_in.register_tcp(f"127.0.0.1:{port}", f"{peer}:41641")

        forged = {"X-Forwarded-For": ALICE}
        with flask_run(settings, tmp_path, host="127.0.0.1") as server:
            status, body = _get_elsewhere(server, "127.0.0.1", "/who", forged)
            assert status == 200, body
            assert json.loads(body)["user"] == "alice@example.com"
            status, body = _get(server, "127.0.0.1", "/who", forged, relayed_for(BOB))
            assert status == 403, body
            status, body = _get(server, "127.0.0.1", "/who", forged, relayed_for(TAGGED))
            assert status == 200, body
            assert json.loads(body)["user"] == TAGGED_NODE
            status, body = _get_elsewhere(server, "127.0.0.1", "/who", {})
            assert status == 200, body
            assert json.loads(body)["method"] == "loopback"
            # tailscaled's own process, unregistered: relayed for nobody it can name
            status, body = _get(server, "127.0.0.1", "/who", {})
            assert status == 403, body


# ---- this node's own identity is not a remote peer's ------------------------------------------


def _self_known(stand_in: StandInTailscaled, **keywords: Any) -> None:
    """tailscaled's whois of this node's own address answers with the node itself."""
    keywords = {"login": "owner@example.com", "node": "server.tail1a2b3.ts.net", **keywords}
    stand_in.add_peer(ME, addresses=(ME, ME6), **keywords)


@pytest.mark.parametrize(
    ("gate", "node"),
    [
        pytest.param({"TAILNET_ALLOWED_USERS": ["owner@example.com"]}, {}, id="node-owner-listed"),
        pytest.param(
            {"TAILNET_ALLOWED_TAGS": ["tag:server"]},
            {"tags": ("tag:server",)},
            id="node-tag-listed",
        ),
    ],
)
@pytest.mark.parametrize(
    ("sender", "headers", "proxies"),
    [
        pytest.param(ME, {}, {}, id="local-user-to-own-tailnet-address"),
        pytest.param(ME6, {}, {}, id="local-user-to-own-tailnet-ipv6"),
        pytest.param(
            "127.0.0.1", {"X-Forwarded-For": ME}, PROXY, id="local-user-through-serve-http"
        ),
    ],
)
def test_bypass_off_local_process_is_not_the_node_owner(
    state_dir: Path,
    tailnet: StandInTailscaled,
    gate: dict[str, Any],
    node: dict[str, Any],
    sender: str,
    headers: dict[str, str],
    proxies: dict[str, Any],
) -> None:
    """TAILNET_LOCAL_BYPASS off: local processes must present a credential. One that connects to
    this node's own tailnet address (directly, or through serve) is not admitted by Tailscale
    login as the node's owner or tag: whois of this node names the node, not the process."""
    _self_known(tailnet, **node)
    app = guarded(
        state_dir,
        tailnet,
        TAILNET_LOCAL_BYPASS=False,
        TAILNET_TAILSCALE_LOGIN=True,
        **gate,
        **proxies,
    )
    response = ask(app.test_client(), sender, headers=headers)
    assert response.status_code in (401, 403), response.get_data(as_text=True)


@pytest.mark.parametrize(
    "gate",
    [{}, {"TAILNET_ALLOWED_USERS": ["alice@example.com"]}],
    ids=["no-gate", "gate-set-like-loopback"],
)
@pytest.mark.parametrize("address", [ME, ME6], ids=["own-ipv4", "own-ipv6"])
def test_bypass_off_own_address_authenticates_like_loopback(
    build: Callable[..., Flask], tailnet: StandInTailscaled, address: str, gate: dict[str, Any]
) -> None:
    """With the bypass off, a local process on this node's own tailnet address presents a
    credential, as on loopback (the gates narrow remote peers, not local ones)."""
    _self_known(tailnet)
    app = build(TAILNET_LOCAL_BYPASS=False, **gate)
    client = app.test_client()
    assert ask(client, address).status_code == 401
    body = ask(client, address, token=token_of(app)).get_json()
    assert body["method"] == "token"
    assert body["local"] is False


# ---- Tailscale login is ambient authority: no cross-site request rides on it -----------------


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        pytest.param("POST", {"Origin": "https://evil.example"}, 403, id="cross-site-form-post"),
        pytest.param("POST", {"Origin": "null"}, 403, id="cross-site-post-origin-null"),
        pytest.param("DELETE", {"Sec-Fetch-Site": "cross-site"}, 403, id="cross-site-fetch-delete"),
        pytest.param(
            "GET",
            {"Upgrade": "websocket", "Connection": "Upgrade", "Origin": "https://evil.example"},
            403,
            id="cross-site-websocket-hijack",
        ),
        pytest.param("POST", {"Origin": f"http://{HOST}"}, 200, id="same-origin-post"),
        pytest.param("POST", {"Sec-Fetch-Site": "same-origin"}, 200, id="same-origin-fetch"),
        pytest.param("POST", {}, 200, id="script-post-without-origin"),
        pytest.param("GET", {"Origin": "https://evil.example"}, 200, id="cross-site-get-is-safe"),
    ],
)
@pytest.mark.parametrize("sender", ["direct", "trusted-proxy"])
def test_tailscale_login_refuses_cross_site_requests(
    build: Callable[..., Flask], method: str, headers: dict[str, str], status: int, sender: str
) -> None:
    """A browser on alice's laptop is admitted by who the laptop is, with no credential: a page
    from another site it visits must not make it POST to the app (as a cookie or the loopback
    bypass would not)."""
    app = build(**LOGIN_GATES, **PROXY)
    if sender == "direct":
        response = ask(app.test_client(), ALICE, path="/", method=method, headers=headers)
    else:
        response = ask(
            app.test_client(),
            "127.0.0.1",
            path="/",
            method=method,
            headers={"X-Forwarded-For": ALICE, **headers},
        )
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 200:
        assert response.get_json()["method"] == "tailscale"
