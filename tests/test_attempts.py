"""The budget in front of every credential check, and the remembered-success shortcut."""

from __future__ import annotations

import pytest

from flask_tailnet.attempts import Attempts, Limited
from flask_tailnet.peer import Peer, logged_in
from flask_tailnet.ratelimit import AttemptBudget

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
    assert attempts.check(CLIENT, b"pw", lambda p: marker, admit) == admit()
    assert budget.spent == 1
    for _ in range(10):
        assert attempts.check(CLIENT, b"pw", lambda p: marker, lambda: None) == admit()
    assert budget.spent == 1


def test_a_changed_credential_is_checked_again(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    attempts.check(CLIENT, b"pw", lambda p: b"one", admit)
    assert attempts.check(CLIENT, b"pw", lambda p: b"two", lambda: None) is None
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
    attempts.check(CLIENT, b"pw", lambda p: b"m", admit)
    assert attempts.check(client, presented, lambda p: b"m", lambda: None) is None
    assert budget.spent == 2


def test_remembering_expires(budget: CountingBudget) -> None:
    attempts = Attempts(budget, remember=0.0)
    attempts.check(CLIENT, b"pw", lambda p: b"m", admit)
    assert attempts.check(CLIENT, b"pw", lambda p: b"m", lambda: None) is None


def test_nothing_is_remembered_without_a_marker(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    attempts.check(CLIENT, b"pw", None, admit)
    attempts.check(CLIENT, b"pw", lambda p: None, admit)
    assert attempts.check(CLIENT, b"pw", lambda p: None, lambda: None) is None
    assert budget.spent == 3


def test_over_budget_is_limited_before_verify(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    for _ in range(5):
        assert attempts.check(CLIENT, b"bad", None, lambda: None) is None
    called: list[int] = []

    def verify() -> Peer | None:
        called.append(1)
        return admit()

    result = attempts.check(CLIENT, b"pw", None, verify)
    assert isinstance(result, Limited)
    assert result.retry_after >= 1
    assert called == []


def test_loopback_is_never_limited(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    local = Peer("127.0.0.1", "none")
    for _ in range(20):
        assert attempts.check(local, b"bad", None, lambda: None) is None
    assert budget.spent == 0


def test_token_shortcut_forgets_a_client_that_fails(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    token = b"the-token"
    assert isinstance(attempts.check_token(CLIENT, token, token), Peer)
    assert budget.spent == 1
    assert isinstance(attempts.check_token(CLIENT, token, token), Peer)
    assert budget.spent == 1
    assert attempts.check_token(CLIENT, b"guess", token) is None
    assert budget.spent == 2
    assert isinstance(attempts.check_token(CLIENT, token, token), Peer)
    assert budget.spent == 3  # forgotten after the failure: spent first again
    rotated = b"the-token-2"
    assert attempts.check_token(CLIENT, token, rotated) is None


def test_a_failing_client_gets_nothing_from_memory(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    assert attempts.check(CLIENT, b"pw", lambda p: b"m", admit) == admit()
    assert attempts.check(CLIENT, b"guess", lambda p: b"m", lambda: None) is None
    spent = budget.spent
    # The remembered credential is checked again, under the budget, until a success.
    assert attempts.remembered(CLIENT, b"pw", lambda p: b"m")[0] is None
    assert attempts.check(CLIENT, b"pw", lambda p: b"m", admit) == admit()
    assert budget.spent == spent + 1
    assert attempts.remembered(CLIENT, b"pw", lambda p: b"m")[0] == admit()


def test_a_limited_client_cannot_test_guesses_against_memory(budget: CountingBudget) -> None:
    attempts = Attempts(budget)
    attempts.check(CLIENT, b"right", lambda p: b"m", admit)
    for _ in range(5):
        attempts.check(CLIENT, b"wrong", lambda p: b"m", lambda: None)
    assert isinstance(attempts.check(CLIENT, b"right", lambda p: b"m", admit), Limited)
