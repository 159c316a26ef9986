"""The Flask adapter: responses, exempt views, current_peer, settings, and the bearer token."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_tailnet import ConfigurationError, TailnetGuard, current_peer
from flask_tailnet import peer as peer_module
from flask_tailnet.gate import Gate
from flask_tailnet.peer import NOBODY

from .conftest import TAILNET_HOST, TAILNET_PEER, call, make_app


def remote(client: Any, path: str = "/", auth: str | None = None, **kw: Any) -> Any:
    headers = dict(kw.pop("headers", {}))
    if auth is not None:
        headers["Authorization"] = auth
    return call(client, path, peer=TAILNET_PEER, host=TAILNET_HOST, headers=headers, **kw)


def test_loopback_served_without_credential(client: Any) -> None:
    response = call(client)
    assert response.status_code == 200
    assert response.json == {
        "address": "127.0.0.1",
        "method": "loopback",
        "local": True,
        "via_proxy": False,
    }


def test_remote_without_credential_gets_401(client: Any, app: Flask) -> None:
    response = remote(client)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="guarded"'
    assert response.json == {"error": "unauthorized", "message": "A credential is required."}


def test_remote_with_token(client: Any, token: str) -> None:
    response = remote(client, auth=f"Bearer {token}")
    assert response.status_code == 200
    assert response.json == {
        "address": TAILNET_PEER,
        "method": "token",
        "local": False,
        "via_proxy": False,
    }


AUTHORIZATION = [
    pytest.param(lambda t: f"Bearer {t}", 200, id="bearer"),
    pytest.param(lambda t: f"bearer {t}", 200, id="scheme-lower-case"),
    pytest.param(lambda t: f"BEARER {t}", 200, id="scheme-upper-case"),
    pytest.param(lambda t: f"  Bearer {t}  ", 200, id="surrounding-whitespace"),
    pytest.param(lambda t: f"Bearer   {t}", 200, id="extra-inner-spaces"),
    pytest.param(lambda t: "Bearer", 401, id="empty-bearer-no-space"),
    pytest.param(lambda t: "Bearer ", 401, id="empty-bearer"),
    pytest.param(lambda t: "Bearer    ", 401, id="whitespace-bearer"),
    pytest.param(lambda t: "", 401, id="empty-header"),
    pytest.param(lambda t: t, 401, id="token-without-scheme"),
    pytest.param(lambda t: f"Basic {t}", 401, id="wrong-scheme-basic"),
    pytest.param(lambda t: f"Token {t}", 401, id="wrong-scheme-token"),
    pytest.param(lambda t: f"Bearer{t}", 401, id="no-separator"),
    pytest.param(lambda t: f"Bearer {t[:-1]}", 401, id="prefix-of-token"),
    pytest.param(lambda t: f"Bearer {t}x", 401, id="token-plus-one"),
    pytest.param(lambda t: f"Bearer {t} {t}", 401, id="token-twice"),
    pytest.param(lambda t: f"Bearer {t.upper()}", 401, id="token-case-changed"),
    pytest.param(lambda t: "Bearer tökén", 401, id="non-ascii"),
    pytest.param(lambda t: "Bearer \u2603\u2603", 401, id="non-latin1"),
    pytest.param(lambda t: "Bearer " + "A" * 10_000, 401, id="ten-kilobytes"),
    pytest.param(lambda t: f"Bearer {t}\x00", 401, id="nul-byte"),
]


@pytest.mark.parametrize(("make", "status"), AUTHORIZATION)
def test_authorization_table(
    client: Any, token: str, make: Callable[[str], str], status: int
) -> None:
    assert remote(client, auth=make(token)).status_code == status


def test_not_found_without_credential_is_401_not_404(client: Any, token: str) -> None:
    assert remote(client, "/no/such/route").status_code == 401
    assert remote(client, "/no/such/route", auth=f"Bearer {token}").status_code == 404
    assert call(client, "/no/such/route").status_code == 404


def test_options_and_wrong_method_are_guarded(client: Any, token: str) -> None:
    assert remote(client, method="OPTIONS").status_code == 401
    assert remote(client, "/healthz", method="POST").status_code == 401
    assert remote(client, method="OPTIONS", auth=f"Bearer {token}").status_code == 200


def test_static_files_are_guarded(state_dir: Path, tmp_path: Path) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "app.js").write_text("secret()")
    app = Flask("static_app", static_folder=str(static))
    TailnetGuard(app, state_dir=str(state_dir))
    client = app.test_client()
    assert remote(client, "/static/app.js").status_code == 401
    response = call(client, "/static/app.js")
    assert response.status_code == 200
    response.close()


def test_exempt_view_needs_no_credential_but_keeps_the_other_checks(client: Any) -> None:
    assert remote(client, "/healthz").status_code == 200
    assert call(client, "/healthz", peer="8.8.8.8", host="8.8.8.8").status_code == 403
    assert call(client, "/healthz", peer="8.8.8.8").status_code == 403
    assert call(client, "/healthz", host="evil.example").status_code == 403


def test_exempt_view_sees_anonymous_peer(app: Flask) -> None:
    guard = TailnetGuard()

    @app.get("/who")
    @guard.exempt
    def who() -> dict[str, Any]:
        return {"method": current_peer.method, "address": current_peer.address}

    assert remote(app.test_client(), "/who").json == {"method": "none", "address": TAILNET_PEER}


REFUSALS = [
    pytest.param({"peer": "8.8.8.8"}, id="public-peer"),
    pytest.param({"peer": "192.168.1.5"}, id="lan-peer"),
    pytest.param({"host": "evil.example"}, id="rebinding-host"),
    pytest.param({"host": "evil.example:5000", "peer": TAILNET_PEER}, id="rebinding-host-tailnet"),
    pytest.param(
        {"method": "POST", "headers": {"Origin": "http://evil.example"}}, id="cross-site-post"
    ),
]


@pytest.mark.parametrize("kwargs", REFUSALS)
def test_refusals_are_one_flat_403(client: Any, token: str, kwargs: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    response = call(client, headers=headers, **kwargs)
    assert response.status_code == 403
    assert response.json == {"error": "forbidden", "message": "This request is not served."}
    assert "WWW-Authenticate" not in response.headers


def test_apps_error_handlers_are_used(app: Flask) -> None:
    @app.errorhandler(401)
    def custom(error: Exception) -> tuple[str, int]:
        return "please log in", 401

    response = remote(app.test_client())
    assert (response.status_code, response.get_data(as_text=True)) == (401, "please log in")


def test_refused_requests_never_reach_app_hooks(app: Flask) -> None:
    seen: list[str] = []

    @app.before_request
    def record() -> None:
        seen.append("before")

    remote(app.test_client())
    call(app.test_client(), peer="8.8.8.8")
    assert seen == []
    call(app.test_client())
    assert seen == ["before"]


def test_internal_error_fails_closed(
    app_factory: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Gate, environ: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(Gate, "admit", broken)
    assert call(app_factory().test_client()).status_code == 403


def test_init_app_is_idempotent(app: Flask) -> None:
    middleware = app.wsgi_app
    TailnetGuard(app)
    TailnetGuard().init_app(app)
    assert app.wsgi_app is middleware
    assert not hasattr(middleware.wrapped, "tailnet_state")  # type: ignore[attr-defined]


def test_two_apps_stay_independent(tmp_path: Path) -> None:
    one, two = make_app(tmp_path / "one"), make_app(tmp_path / "two", network="local")
    token_one = one.extensions["tailnet"].token_file.ensure().decode()
    token_two = two.extensions["tailnet"].token_file.ensure().decode()
    assert token_one != token_two
    assert remote(one.test_client(), auth=f"Bearer {token_one}").status_code == 200
    assert remote(two.test_client(), auth=f"Bearer {token_one}").status_code == 401
    assert call(one.test_client(), peer="192.168.1.5", host="localhost").status_code == 403
    assert call(two.test_client(), peer="192.168.1.5", host="localhost").status_code == 401


def test_current_peer_without_the_guard_is_nobody() -> None:
    app = Flask("plain")
    with app.test_request_context():
        assert current_peer.method == "none"
        assert current_peer == NOBODY


def test_keyword_settings_override_config(state_dir: Path) -> None:
    app = Flask("kw")
    app.config["TAILNET_NETWORK"] = "tailnet"
    TailnetGuard(app, network="local", TAILNET_STATE_DIR=str(state_dir))
    assert app.extensions["tailnet"].settings.network == "local"


BAD_SETTINGS = [
    pytest.param({"TAILNET_NETWORK": "public"}, "TAILNET_NETWORK", id="unknown-policy"),
    pytest.param({"TAILNET_NETWORK": None}, "TAILNET_NETWORK", id="policy-none"),
    pytest.param({"TAILNET_ALLOWLIST": ["100.64.0.0/33"]}, "100.64.0.0/33", id="bad-cidr"),
    pytest.param({"TAILNET_ALLOWLIST": "100.64.0.1, nope"}, "nope", id="bad-allowlist-string"),
    pytest.param({"TAILNET_ALLOWLIST": 42}, "TAILNET_ALLOWLIST", id="allowlist-not-a-list"),
    pytest.param({"TAILNET_TRUSTED_PROXIES": ["localhost"]}, "localhost", id="proxy-by-name"),
    pytest.param({"TAILNET_ALLOWED_HOSTS": ["*"]}, "cannot be turned off", id="wildcard-host"),
    pytest.param({"TAILNET_ALLOWED_HOSTS": ["100.64.0.1"]}, "IP address", id="ip-as-host"),
    pytest.param({"TAILNET_ALLOWED_HOSTS": ["bad host"]}, "not a host name", id="host-with-space"),
    pytest.param({"TAILNET_LOCAL_BYPASS": "no"}, "TAILNET_LOCAL_BYPASS", id="bypass-string"),
    pytest.param({"TAILNET_STATE_DIR": 5}, "TAILNET_STATE_DIR", id="state-dir-int"),
    pytest.param({"TAILNET_STATE_DIR": ""}, "TAILNET_STATE_DIR", id="state-dir-empty"),
    pytest.param({"TAILNET_REALM": 'a"b'}, "TAILNET_REALM", id="realm-quote"),
    # an HTTP header is latin-1: the server drops the connection at every 401 instead
    pytest.param({"TAILNET_REALM": "Ops \U0001f680"}, "TAILNET_REALM", id="realm-not-latin-1"),
    pytest.param({"TAILNET_NETWRK": "local"}, "TAILNET_NETWRK", id="typo-in-key"),
    pytest.param({"TAILNET_BIND": 8000}, "TAILNET_BIND", id="bind-not-a-list"),
    pytest.param({"TAILNET_BIND": [8000]}, "TAILNET_BIND", id="bind-entry-not-text"),
    pytest.param({"TAILNET_BIND": ["127.0.0.1:http"]}, "not a port", id="bind-bad-port"),
    pytest.param({"TAILNET_BIND": "::1:8000"}, "brackets", id="bind-ipv6-unbracketed"),
    pytest.param({"TAILNET_BIND": ["[::1]x"]}, "TAILNET_BIND", id="bind-junk-after-bracket"),
    pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": "yes"}, "True or False", id="wildcard-string"),
    pytest.param({"TAILNET_ALLOW_WILDCARD_BIND": 1}, "True or False", id="wildcard-int"),
]


@pytest.mark.parametrize(("config", "message"), BAD_SETTINGS)
def test_bad_settings_fail_at_init_app(config: dict[str, Any], message: str) -> None:
    app = Flask("bad")
    app.config.update(config)
    with pytest.raises(ConfigurationError, match=message):
        TailnetGuard(app)
    assert "tailnet" not in app.extensions


def test_list_settings_accept_strings(state_dir: Path) -> None:
    app = Flask("lists")
    app.config.update(
        TAILNET_ALLOWLIST="100.64.0.0/24, 100.64.1.1",
        TAILNET_ALLOWED_HOSTS="a.example b.example",
        TAILNET_STATE_DIR=str(state_dir),
    )
    TailnetGuard(app)
    conf = app.extensions["tailnet"].settings
    assert len(conf.allowlist) == 2
    assert [r.name for r in conf.allowed_hosts] == ["a.example", "b.example"]


def test_default_state_dir_is_in_instance_path(tmp_path: Path) -> None:
    app = Flask("inst", instance_path=str(tmp_path / "instance"))
    TailnetGuard(app)
    assert app.extensions["tailnet"].settings.state_dir == tmp_path / "instance" / "tailnet"


def test_token_never_logged_or_echoed(
    client: Any, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        good = remote(client, auth=f"Bearer {token}")
        bad = remote(client, auth=f"Bearer {token}x")
        spoofed = call(
            client, headers={"X-Forwarded-For": token, "Authorization": f"Bearer {token}x"}
        )
    assert good.status_code == 200
    for response in (bad, spoofed):
        assert token not in response.get_data(as_text=True)
        assert token not in str(response.headers)
    assert token not in caplog.text


def test_allowlist_narrows_peers_not_the_host_check(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(allowlist=[TAILNET_PEER])
    token = app.extensions["tailnet"].token_file.ensure().decode()
    response = remote(app.test_client(), auth=f"Bearer {token}")  # Host: the server's own IP
    assert response.status_code == 200
    other = call(app.test_client(), peer="100.64.0.8", host=TAILNET_HOST)
    assert other.status_code == 403


def test_errors_in_an_exempt_view_are_the_apps_not_the_guards(app: Flask) -> None:
    guard = TailnetGuard()

    @app.get("/broken")
    @guard.exempt
    def broken() -> str:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        remote(app.test_client(), "/broken")
    app.testing = False
    assert remote(app.test_client(), "/broken").status_code == 500


def test_trapped_http_exceptions_still_refuse_with_the_right_status(app: Flask) -> None:
    app.config["TRAP_HTTP_EXCEPTIONS"] = True
    assert remote(app.test_client()).status_code == 401
    assert call(app.test_client(), peer="8.8.8.8").status_code == 403


def test_failing_error_handler_still_refuses(app: Flask) -> None:
    @app.errorhandler(403)
    def broken(error: Exception) -> str:
        raise RuntimeError("handler bug")

    app.testing = False
    response = call(app.test_client(), peer="8.8.8.8")
    assert response.status_code in (403, 500)
    assert response.status_code != 200


def test_refused_hosts_are_logged_with_the_fix_and_capped(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "flask_tailnet"):
        for n in range(50):
            call(client, host=f"name{n}.example")
    refused = [r for r in caplog.records if "TAILNET_ALLOWED_HOSTS" in r.getMessage()]
    assert 1 <= len(refused) <= 20
    assert "name0.example" in refused[0].getMessage()


def test_logged_in_peers_are_shared_values(monkeypatch: pytest.MonkeyPatch) -> None:
    anonymous = peer_module.Peer("100.64.0.7", "none")
    first = peer_module.logged_in(anonymous, "token")
    assert first is peer_module.logged_in(anonymous, "token")
    assert (first.address, first.method, first.local, first.authenticated) == (
        "100.64.0.7",
        "token",
        False,
        True,
    )
    assert not anonymous.authenticated
    monkeypatch.setattr(peer_module._LOGGED_IN_CACHE, "max_entries", 2)
    for n in range(5):
        peer_module.logged_in(peer_module.Peer(f"100.64.0.{n}", "none"), "token")
    assert len(peer_module._LOGGED_IN) <= 2
