"""The budget in front of every credential check, and the remembered-success shortcut."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_tailnet.attempts import Attempts, Limited, unmetered
from flask_tailnet.peer import Peer, logged_in
from flask_tailnet.ratelimit import AttemptBudget, budget_key

from .conftest import TAILNET_HOST

CLIENT = Peer("100.64.0.7", "none")


class CountingBudget(AttemptBudget):
    def __init__(self) -> None:
        super().__init__("5 per minute", "memory://", namespace="test")
        self.spent = 0

    def spend(self, key: str):  # type: ignore[no-untyped-def]
        self.spent += 1
        return super().spend(key)


@pytest.fixture
def budget() -> CountingBudget:
    return CountingBudget()


def admit() -> Peer:
    return logged_in(CLIENT, "password")


def test_a_remembered_success_skips_the_budget(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    marker = b"stored"
    assert attempts.attempt(CLIENT, b"pw", lambda p: marker, admit) == admit()
    assert budget.spent == 1
    for _ in range(10):
        assert attempts.attempt(CLIENT, b"pw", lambda p: marker, lambda: None) == admit()
    assert budget.spent == 1


def test_a_changed_credential_is_checked_again(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    attempts.attempt(CLIENT, b"pw", lambda p: b"one", admit)
    assert attempts.attempt(CLIENT, b"pw", lambda p: b"two", lambda: None) is None
    assert budget.spent == 2


@pytest.mark.parametrize(
    ("client", "presented"),
    [
        pytest.param(Peer("100.64.0.8", "none"), b"pw", id="another-client"),
        pytest.param(
            Peer("100.64.0.7", "none", via_proxy=True), b"pw", id="same-address-via-proxy"
        ),
        pytest.param(CLIENT, b"other", id="another-credential"),
    ],
)
def test_only_the_same_client_and_credential_is_remembered(
    budget: CountingBudget, client: Peer, presented: bytes
) -> None:
    attempts = Attempts(budget)
    attempts.attempt(CLIENT, b"pw", lambda p: b"m", admit)
    assert attempts.attempt(client, presented, lambda p: b"m", lambda: None) is None
    assert budget.spent == 2


def test_remembering_expires(budget: CountingBudget) -> None:
    attempts = Attempts(budget, remember=0.0)
    attempts.attempt(CLIENT, b"pw", lambda p: b"m", admit)
    assert attempts.attempt(CLIENT, b"pw", lambda p: b"m", lambda: None) is None


def test_nothing_is_remembered_without_a_marker(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    attempts.attempt(CLIENT, b"pw", None, admit)
    attempts.attempt(CLIENT, b"pw", lambda p: None, admit)
    assert attempts.attempt(CLIENT, b"pw", lambda p: None, lambda: None) is None
    assert budget.spent == 3


def test_over_budget_is_limited_before_verify(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    for _ in range(5):
        assert attempts.attempt(CLIENT, b"bad", None, lambda: None) is None
    called: list[int] = []

    def verify() -> Peer | None:
        called.append(1)
        return admit()

    result = attempts.attempt(CLIENT, b"pw", None, verify)
    assert isinstance(result, Limited)
    assert result.retry_after >= 1
    assert called == []


def test_loopback_is_never_limited(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    local = Peer("127.0.0.1", "none")
    for _ in range(20):
        assert attempts.attempt(local, b"bad", None, lambda: None) is None
    assert budget.spent == 0


def test_token_shortcut_forgets_a_client_that_fails(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    token = b"the-token"
    assert isinstance(attempts.attempt_token(CLIENT, token, token), Peer)
    assert budget.spent == 1
    assert isinstance(attempts.attempt_token(CLIENT, token, token), Peer)
    assert budget.spent == 1
    assert attempts.attempt_token(CLIENT, b"guess", token) is None
    assert budget.spent == 2
    assert isinstance(attempts.attempt_token(CLIENT, token, token), Peer)
    assert budget.spent == 3  # forgotten after the failure: spent first again
    rotated = b"the-token-2"
    assert attempts.attempt_token(CLIENT, token, rotated) is None


def test_a_failing_client_gets_nothing_from_memory(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    assert attempts.attempt(CLIENT, b"pw", lambda p: b"m", admit) == admit()
    assert attempts.attempt(CLIENT, b"guess", lambda p: b"m", lambda: None) is None
    spent = budget.spent
    # The remembered credential is checked again, under the budget, until a success.
    assert attempts.remembered(CLIENT, b"pw", lambda p: b"m")[0] is None
    assert attempts.attempt(CLIENT, b"pw", lambda p: b"m", admit) == admit()
    assert budget.spent == spent + 1
    assert attempts.remembered(CLIENT, b"pw", lambda p: b"m")[0] == admit()


def test_a_limited_client_cannot_test_guesses_against_memory(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    attempts.attempt(CLIENT, b"right", lambda p: b"m", admit)
    for _ in range(5):
        attempts.attempt(CLIENT, b"wrong", lambda p: b"m", lambda: None)
    assert isinstance(attempts.attempt(CLIENT, b"right", lambda p: b"m", admit), Limited)


# ---- whose budget an attempt spends --------------------------------------------------------------

#: (peers that must share one budget, a peer that must keep its own, the policies that admit
#: them all).
ROTATIONS = [
    (
        "public-ipv6-rotating-through-its-64",
        [f"2001:db8:105:1::{n:x}" for n in range(1, 31)],
        "2001:db8:105:2::1",
        ("any",),
    ),
    (
        "privacy-addresses-across-the-whole-64",
        [f"2001:db8:105:1:{n:x}:{n:x}:{n:x}:{n:x}" for n in range(1, 31)],
        "2001:db8:105::1",
        ("any",),
    ),
    (
        "ula-rotating-through-its-64",
        [f"fd00:105:0:1::{n:x}" for n in range(1, 31)],
        "fd00:105:0:2::1",
        ("any", "local"),
    ),
    (
        "link-local-rotating",
        [f"fe80::105:{n:x}" for n in range(1, 31)],
        "100.64.105.9",
        ("any", "local"),
    ),
    (
        "ipv4-mapped-is-its-ipv4",
        ["100.64.105.1", "::ffff:100.64.105.1"] * 15,
        "100.64.105.2",
        ("any", "local"),
    ),
    (
        "tailnet-ipv6-peers-separate",
        ["fd7a:115c:a1e0::105:1"] * 30,
        "fd7a:115c:a1e0::105:2",
        ("any", "local"),
    ),
    (
        "tailnet-peers-in-one-64-separate",
        ["fd7a:115c:a1e0:105::1"] * 30,
        "fd7a:115c:a1e0:105::2",
        ("any", "local"),
    ),
]


@pytest.mark.parametrize(
    ("network", "rotating", "other"),
    [
        pytest.param(network, rotating, other, id=f"{name}-under-{network}")
        for name, rotating, other, networks in ROTATIONS
        for network in networks
    ],
)
def test_a_host_cannot_multiply_its_budget_by_rotating_addresses(
    app_factory: Callable[..., Flask], network: str, rotating: list[str], other: str
) -> None:
    client = app_factory(network=network, auth="token").test_client()
    statuses = [guess(client, peer) for peer in rotating]
    assert statuses == [401] * 5 + [429] * 25
    assert guess(client, other) == 401, "a neighbour outside the rotating host keeps its budget"


def guess(client: FlaskClient, peer: str) -> int:
    """A wrong bearer token from ``peer``; the status."""
    status: int = client.get(
        "/",
        base_url=f"http://{TAILNET_HOST}",
        environ_base={"REMOTE_ADDR": peer},
        headers={"Authorization": "Bearer wrong"},
    ).status_code
    return status


BUDGET_KEYS = [
    pytest.param("100.64.0.7", "100.64.0.7", id="ipv4"),
    pytest.param("::ffff:100.64.0.7", "100.64.0.7", id="ipv4-mapped"),
    pytest.param("fd7a:115c:a1e0::7", "fd7a:115c:a1e0::7", id="tailnet-ipv6"),
    pytest.param("fd7a:115c:a1e0:ab12::7", "fd7a:115c:a1e0:ab12::7", id="tailnet-ipv6-long"),
    pytest.param("FD7A:115C:A1E0::7", "fd7a:115c:a1e0::7", id="tailnet-ipv6-upper-case"),
    pytest.param("2001:db8:1:2::a", "2001:db8:1:2::/64", id="public-ipv6"),
    pytest.param("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64", id="last-of-the-64"),
    pytest.param("2001:db8:1:2::a%eth0", "2001:db8:1:2::/64", id="scoped"),
    pytest.param("2001:0db8:0001:0002:0:0:0:a", "2001:db8:1:2::/64", id="long-spelling"),
    pytest.param("fe80::1", "fe80::/64", id="link-local"),
    pytest.param("fd7a:115c:a1e1::7", "fd7a:115c:a1e1::/64", id="next-to-the-tailnet-range"),
    pytest.param("64:ff9b::808:808", "64:ff9b::/64", id="nat64"),
    pytest.param("2002:808:808:1::1", "8.8.8.8", id="6to4-counted-as-its-ipv4"),
    pytest.param("2002:808:808:ffff::9", "8.8.8.8", id="6to4-another-64-of-the-same-48"),
    pytest.param("2002:6440:7:1::1", "2002:6440:7:1::/64", id="6to4-of-a-tailnet-address"),
    pytest.param("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "8.8.8.8", id="teredo-as-its-ipv4"),
    pytest.param("127.0.0.1", "loopback", id="loopback"),
    pytest.param("127.0.0.2", "loopback", id="another-loopback-address-is-the-same-machine"),
    pytest.param("127.255.255.254", "loopback", id="last-of-127/8"),
    pytest.param("::1", "loopback", id="ipv6-loopback"),
    pytest.param("::ffff:127.0.0.9", "loopback", id="ipv4-mapped-loopback"),
    pytest.param(None, "unknown", id="missing"),
    pytest.param("", "unknown", id="empty"),
    pytest.param("not-an-address", "unknown", id="garbage"),
    pytest.param("[2001:db8::1]", "unknown", id="bracketed"),
]


@pytest.mark.parametrize(("address", "key"), BUDGET_KEYS)
def test_budget_key(address: str | None, key: str) -> None:
    assert budget_key(address) == key


# ---- who is never counted ------------------------------------------------------------------------


EXEMPT = [
    pytest.param("127.0.0.1", True, id="ipv4-loopback"),
    pytest.param("127.8.9.10", True, id="all-of-127/8"),
    pytest.param("::1", True, id="ipv6-loopback"),
    pytest.param("::ffff:127.0.0.1", True, id="ipv4-mapped-loopback"),
    pytest.param("100.64.0.7", False, id="tailnet-peer"),
    pytest.param("fd7a:115c:a1e0::7", False, id="tailnet-peer-ipv6"),
    pytest.param("::ffff:100.64.0.7", False, id="ipv4-mapped-peer"),
    pytest.param(None, False, id="missing-address"),
    pytest.param("", False, id="empty-address"),
    pytest.param("localhost", False, id="a-name-is-not-loopback"),
    pytest.param("[::1]", False, id="bracketed"),
    pytest.param("127.0.0.1:80", False, id="with-port"),
    pytest.param(" 127.0.0.1", False, id="leading-space"),
    pytest.param("127.1", False, id="legacy-short-form"),
    pytest.param("0x7f.0.0.1", False, id="legacy-hex-form"),
    pytest.param("0.0.0.0", False, id="unspecified"),
]


@pytest.mark.parametrize(("address", "expected"), EXEMPT)
def test_only_loopback_is_exempt(address: str | None, expected: bool) -> None:
    assert unmetered(address) is expected
