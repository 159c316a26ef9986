"""``flask_tailnet.testing.TailnetClient``: a test client that is a tailnet peer with a real
credential, going through the real guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_tailnet import TailnetGuard, current_peer
from flask_tailnet.testing import DEFAULT_PEER, TailnetClient

from .conftest import PASSWORD, TAILNET_PEER, PamUser

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def make(state_dir: Path, **settings: Any) -> Flask:
    app = Flask("tested")
    app.config["TESTING"] = True
    TailnetGuard(app, state_dir=str(state_dir), **settings)
    app.test_client_class = TailnetClient

    @app.route("/", methods=["GET", "POST"])
    def index() -> dict[str, Any]:
        peer = current_peer
        return {"address": peer.address, "method": peer.method, "user": peer.user}

    return app


@pytest.fixture
def password_app(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", PASSWORD)
    return make(state_dir, auth="password", password_env="TAILNET_TEST_PASSWORD")


def who(client: Any, **kw: Any) -> tuple[int, Any]:
    response = client.get("/", **kw)
    return response.status_code, response.json


def test_token(state_dir: Path) -> None:
    client = make(state_dir).test_client(peer=TAILNET_PEER, method="token")
    assert who(client) == (200, {"address": TAILNET_PEER, "method": "token", "user": None})


def test_the_defaults_are_a_tailnet_peer_with_the_token(state_dir: Path) -> None:
    assert who(make(state_dir).test_client()) == (
        200,
        {"address": DEFAULT_PEER, "method": "token", "user": None},
    )


@pytest.mark.parametrize("auth", ["token", "password"])
def test_session_as_the_login_page_would_issue_it(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, auth: str
) -> None:
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", PASSWORD)
    app = make(state_dir, auth=auth, password_env="TAILNET_TEST_PASSWORD")
    client = app.test_client(peer=TAILNET_PEER, method="session")
    assert who(client) == (200, {"address": TAILNET_PEER, "method": "session", "user": None})
    assert client.post("/_tailnet/logout").status_code == 303
    assert who(client)[0] == 401


def test_password_session_ends_when_the_password_changes(
    password_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = password_app.test_client(method="session")
    assert who(client)[0] == 200
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", "another password entirely")
    assert who(client)[0] == 401


def test_password(password_app: Flask) -> None:
    client = password_app.test_client(method="password", password=PASSWORD)
    assert who(client) == (200, {"address": DEFAULT_PEER, "method": "password", "user": None})
    assert who(password_app.test_client(method="password", password="wrong"))[0] == 401


@pytest.mark.root
def test_pam(state_dir: Path, pam_user: PamUser) -> None:
    app = make(state_dir, auth="pam", pam_service=pam_user.service, pam_users=[pam_user.username])
    basic = app.test_client(method="pam", user=pam_user.username, password=pam_user.password)
    assert who(basic)[1]["method"] == "pam"
    assert who(basic)[1]["user"] == pam_user.username
    session = app.test_client(method="session", user=pam_user.username)
    assert who(session)[1] == {
        "address": DEFAULT_PEER,
        "method": "session",
        "user": pam_user.username,
    }
    with pytest.raises(ValueError, match="TAILNET_PAM_USERS"):
        app.test_client(method="session", user="root")
    token_session = app.test_client(method="session")
    assert who(token_session)[1] == {"address": DEFAULT_PEER, "method": "session", "user": None}


def test_loopback_and_none(state_dir: Path) -> None:
    app = make(state_dir)
    assert who(app.test_client(peer="127.0.0.1", method="loopback"))[1]["method"] == "loopback"
    assert who(app.test_client(peer="::1", method="loopback"))[1]["address"] == "::1"
    anonymous = app.test_client(method="none")
    assert who(anonymous)[0] == 401
    assert anonymous.get("/", headers=HTML).status_code == 303


# ---- it goes through the real guard ------------------------------------------------------------


def test_a_rotated_token_is_refused(state_dir: Path) -> None:
    app = make(state_dir)
    token, session = app.test_client(method="token"), app.test_client(method="session")
    app.extensions["tailnet"].token_file.rotate()
    assert who(token)[0] == 401
    assert who(session)[0] == 401


def test_a_peer_outside_the_policy_is_refused_with_a_valid_token(state_dir: Path) -> None:
    assert who(make(state_dir).test_client(peer="8.8.8.8", method="token"))[0] == 403
    assert who(make(state_dir, network="local").test_client(peer="192.168.1.5"))[0] == 200


def test_cross_site_post_on_the_session_is_refused(state_dir: Path) -> None:
    client = make(state_dir).test_client(method="session")
    assert client.post("/", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/").status_code == 200


def test_a_requests_own_authorization_wins(state_dir: Path) -> None:
    client = make(state_dir).test_client(method="token")
    assert who(client, headers={"Authorization": "Bearer wrong"})[0] == 401


# ---- what it refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"peer": "not-an-ip"}, "IP address", id="peer-not-an-ip"),
        pytest.param({"peer": ""}, "IP address", id="empty-peer"),
        pytest.param({"method": "magic"}, "unknown method", id="unknown-method"),
        pytest.param({"method": "loopback"}, "loopback peer", id="loopback-from-a-remote-peer"),
        pytest.param({"method": "password"}, "password=", id="password-without-password"),
        pytest.param({"method": "pam", "password": "x"}, "user=", id="pam-without-user"),
        pytest.param({"method": "session", "user": "alice"}, "PAM logins", id="user-without-pam"),
    ],
)
def test_refused_arguments(state_dir: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(state_dir, auth="token").test_client(**kwargs)


def test_an_app_without_the_guard() -> None:
    app = Flask("plain")
    app.test_client_class = TailnetClient
    with pytest.raises(RuntimeError, match="TailnetGuard"):
        app.test_client(method="token")


def test_no_session_while_the_session_key_is_unusable(state_dir: Path) -> None:
    app = make(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = state_dir / "session_key"
    key.write_bytes(b"short")
    key.chmod(0o600)
    with pytest.raises(RuntimeError, match="no session can be issued"):
        app.test_client(method="session")


@pytest.mark.parametrize(
    ("settings", "user", "reason"),
    [
        pytest.param(
            {"auth": "password", "password_env": "UNSET_TAILNET_X"},
            None,
            "TAILNET_AUTH is 'password', but no password is set",
            id="password-missing",
        ),
        pytest.param(
            {"auth": "pam", "pam_service": "no-such-service-x", "pam_users": ["alice"]},
            "alice",
            "TAILNET_AUTH is 'pam', but PAM cannot be used",
            id="pam-unusable",
        ),
    ],
)
def test_a_forced_method_that_logs_nobody_in(
    state_dir: Path, settings: dict[str, Any], user: str | None, reason: str
) -> None:
    """The app loads (the CLI must run to fix it): a session for that method cannot be had, and
    says why; Basic with it is refused as a real client's would be; the token still works."""
    app = make(state_dir, **settings)
    with pytest.raises(RuntimeError, match=f"no session can be issued.*{reason}"):
        app.test_client(method="session", user=user)
    assert who(app.test_client(method="password", password="anything"))[0] == 401
    assert who(app.test_client(method="pam", user="alice", password="anything"))[0] == 401
    assert who(app.test_client(method="token"))[1]["method"] == "token"
    if user is not None:  # PAM: the form takes the token in every mode
        assert who(app.test_client(method="session"))[1]["method"] == "session"


def test_session_cookie_for_an_app_with_a_server_name(state_dir: Path) -> None:
    app = make(state_dir, allowed_hosts=["app.example"])
    app.config["SERVER_NAME"] = "app.example:5000"
    client = app.test_client(method="session")
    assert who(client)[1] == {"address": DEFAULT_PEER, "method": "session", "user": None}
