"""The settings of Tailscale identity: validated at init_app, with messages that say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_tailnet import ConfigurationError, TailnetGuard
from flask_tailnet.identity import OPEN
from flask_tailnet.settings import load


def settings(**config: Any) -> Any:
    return load(config, instance_path="/srv/app/instance", app_name="app")


def test_defaults() -> None:
    conf = settings()
    assert conf.identity == "auto"
    assert conf.tailscaled_socket is None
    assert conf.identity_rule == OPEN
    assert conf.tailscale_login is False
    assert conf.userspace == "auto"


@pytest.mark.parametrize(
    ("config", "check"),
    [
        pytest.param({"TAILNET_IDENTITY": "required"}, ("identity", "required"), id="required"),
        pytest.param({"TAILNET_IDENTITY": "off"}, ("identity", "off"), id="off"),
        pytest.param(
            {"TAILNET_TAILSCALED_SOCKET": "/tmp/tailscaled.sock"},
            ("tailscaled_socket", "/tmp/tailscaled.sock"),
            id="socket-str",
        ),
        pytest.param(
            {"TAILNET_TAILSCALED_SOCKET": Path("/run/tailscale/tailscaled.sock")},
            ("tailscaled_socket", "/run/tailscale/tailscaled.sock"),
            id="socket-path",
        ),
        pytest.param({"TAILNET_USERSPACE": True}, ("userspace", True), id="userspace-true"),
        pytest.param({"TAILNET_USERSPACE": False}, ("userspace", False), id="userspace-false"),
        pytest.param(
            {"TAILNET_TAILSCALE_LOGIN": True, "TAILNET_ALLOWED_TAGS": "tag:ci"},
            ("tailscale_login", True),
            id="login-with-tag-gate",
        ),
        pytest.param(
            {"TAILNET_TAILSCALE_LOGIN": True, "TAILNET_REQUIRED_CAPABILITY": "example.com/cap/a"},
            ("tailscale_login", True),
            id="login-with-capability-gate",
        ),
    ],
)
def test_good_settings(config: dict[str, Any], check: tuple[str, Any]) -> None:
    field, value = check
    assert getattr(settings(**config), field) == value


def test_gate_lists_accept_strings_and_lists() -> None:
    conf = settings(
        TAILNET_ALLOWED_USERS="Alice@Example.com, *@example.org bob@example.com",
        TAILNET_ALLOWED_TAGS=["tag:ci", " tag:web "],
        TAILNET_REQUIRED_CAPABILITY="example.com/cap/app",
    )
    rule = conf.identity_rule
    assert rule.users == {"alice@example.com", "bob@example.com"}
    assert rule.domains == {"example.org"}
    assert rule.tags == {"tag:ci", "tag:web"}
    assert rule.capability == "example.com/cap/app"
    assert rule.restricts


BAD = [
    pytest.param({"TAILNET_IDENTITY": "on"}, "TAILNET_IDENTITY is 'on'; use", id="identity-on"),
    pytest.param({"TAILNET_IDENTITY": True}, "TAILNET_IDENTITY", id="identity-bool"),
    pytest.param(
        {"TAILNET_TAILSCALED_SOCKET": "tailscaled.sock"}, "absolute", id="socket-relative"
    ),
    pytest.param({"TAILNET_TAILSCALED_SOCKET": "~/ts.sock"}, "absolute", id="socket-tilde"),
    pytest.param({"TAILNET_TAILSCALED_SOCKET": ""}, "must be a path", id="socket-empty"),
    pytest.param({"TAILNET_TAILSCALED_SOCKET": 3}, "must be a path", id="socket-int"),
    pytest.param({"TAILNET_TAILSCALED_SOCKET": "/run/ts\0.sock"}, "absolute", id="socket-nul"),
    pytest.param(
        {"TAILNET_ALLOWED_USERS": "*"}, "TAILNET_ALLOWED_USERS: .*wildcard", id="users-star"
    ),
    pytest.param({"TAILNET_ALLOWED_USERS": ["*@github"]}, "TAILNET_ALLOWED_USERS", id="users-idp"),
    pytest.param(
        {"TAILNET_ALLOWED_USERS": "tag:ci"}, "ALLOWED_USERS: .*is a tag", id="tag-in-users"
    ),
    pytest.param({"TAILNET_ALLOWED_USERS": 5}, "TAILNET_ALLOWED_USERS", id="users-int"),
    pytest.param({"TAILNET_ALLOWED_TAGS": "ci"}, "TAILNET_ALLOWED_TAGS: .*tag:name", id="tag-bare"),
    pytest.param({"TAILNET_ALLOWED_TAGS": ["a@b.com"]}, "TAILNET_ALLOWED_TAGS", id="user-in-tags"),
    pytest.param({"TAILNET_REQUIRED_CAPABILITY": "admin"}, "REQUIRED_CAPABILITY", id="cap-bare"),
    pytest.param(
        {"TAILNET_REQUIRED_CAPABILITY": ["example.com/cap/a"]}, "REQUIRED_CAP", id="cap-list"
    ),
    pytest.param({"TAILNET_TAILSCALE_LOGIN": "yes"}, "True or False", id="login-string"),
    pytest.param({"TAILNET_TAILSCALE_LOGIN": 1}, "True or False", id="login-int"),
    pytest.param(
        {"TAILNET_TAILSCALE_LOGIN": True},
        "shared into your tailnet.*someone else's",
        id="login-no-gate",
    ),
    pytest.param(
        {"TAILNET_TAILSCALE_LOGIN": True, "TAILNET_ALLOWED_USERS": []},
        "needs a gate",
        id="login-empty-gate",
    ),
    pytest.param(
        {"TAILNET_IDENTITY": "off", "TAILNET_ALLOWED_USERS": "a@example.com"},
        "could never pass",
        id="off-with-users",
    ),
    pytest.param(
        {"TAILNET_IDENTITY": "off", "TAILNET_REQUIRED_CAPABILITY": "example.com/cap/a"},
        "could never pass",
        id="off-with-capability",
    ),
    pytest.param(
        {
            "TAILNET_IDENTITY": "off",
            "TAILNET_TAILSCALE_LOGIN": True,
            "TAILNET_ALLOWED_TAGS": "tag:ci",
        },
        "could never pass",
        id="off-with-login",
    ),
    pytest.param({"TAILNET_USERSPACE": "yes"}, "TAILNET_USERSPACE", id="userspace-string"),
    pytest.param({"TAILNET_USERSPACE": 1}, "TAILNET_USERSPACE", id="userspace-int"),
    pytest.param({"TAILNET_USERSPACE": None}, "TAILNET_USERSPACE", id="userspace-none"),
]


@pytest.mark.parametrize(("config", "message"), BAD)
def test_bad_identity_settings_fail_at_init_app(
    config: dict[str, Any], message: str, tmp_path: Path
) -> None:
    app = Flask("bad")
    app.config.update(config, TAILNET_STATE_DIR=str(tmp_path / "state"))
    with pytest.raises(ConfigurationError, match=message):
        TailnetGuard(app)
    assert "tailnet" not in app.extensions


def test_identity_settings_by_keyword(tmp_path: Path) -> None:
    app = Flask("kw")
    TailnetGuard(
        app,
        tailscale_login=True,
        allowed_users=["alice@example.com"],
        TAILNET_STATE_DIR=str(tmp_path / "state"),
    )
    conf = app.extensions["tailnet"].settings
    assert conf.tailscale_login
    assert conf.identity_rule.users == {"alice@example.com"}


def test_every_setting_has_a_row_in_docs() -> None:
    from flask_tailnet.settings import DEFAULTS  # noqa: PLC0415

    table = (Path(__file__).parent.parent / "docs" / "settings.md").read_text("utf-8")
    rows = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `TAILNET_")}
    assert rows == set(DEFAULTS)
