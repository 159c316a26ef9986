"""``@guard.login_required``: a view that asks even loopback for a credential, the same credential a
remote peer presents, with the same refusals."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from flask_tailnet import TailnetGuard, current_peer

from .conftest import PASSWORD, TAILNET_HOST, TAILNET_PEER, example_cli, serving_example_app

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
LOOPBACK = "127.0.0.1"


def make_admin_app(state_dir: Path, **settings: Any) -> tuple[Flask, list[str]]:
    """``/admin`` is login_required, ``/`` is an ordinary view; the list records each view run."""
    app = Flask("admin_app")
    app.config["TESTING"] = True
    guard = TailnetGuard(app, state_dir=str(state_dir), **settings)
    ran: list[str] = []

    @app.route("/admin", methods=["GET", "POST"])
    @guard.login_required
    def admin() -> dict[str, Any]:
        ran.append("admin")
        return {
            "method": current_peer.method,
            "user": current_peer.user,
            "local": current_peer.local,
        }

    @app.get("/")
    def index() -> dict[str, Any]:
        return {"method": current_peer.method, "local": current_peer.local}

    return app, ran


@pytest.fixture
def admin(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Flask, list[str]]:
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", PASSWORD)
    return make_admin_app(state_dir, auth="password", password_env="TAILNET_TEST_PASSWORD")


@pytest.fixture
def limited_admin(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Flask, list[str]]:
    """The ``admin`` app with a budget of three failed attempts a minute."""
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", PASSWORD)
    return make_admin_app(
        state_dir,
        auth="password",
        password_env="TAILNET_TEST_PASSWORD",
        login_limits="3 per minute",
    )


def token_of(app: Flask) -> str:
    value: bytes = app.extensions["tailnet"].token_file.ensure()
    return value.decode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def local(client: FlaskClient, path: str = "/admin", method: str = "GET", **kw: Any) -> Any:
    return client.open(path, method=method, environ_base={"REMOTE_ADDR": LOOPBACK}, **kw)


def remote(client: FlaskClient, path: str = "/admin", method: str = "GET", **kw: Any) -> Any:
    return client.open(
        path,
        method=method,
        base_url=f"http://{TAILNET_HOST}",
        environ_base={"REMOTE_ADDR": TAILNET_PEER},
        **kw,
    )


# ---- loopback is asked -----------------------------------------------------------------------


def test_loopback_api_client_without_a_credential_gets_401(admin: tuple[Flask, list[str]]) -> None:
    app, ran = admin
    response = local(app.test_client())
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="admin_app"'
    assert response.json == {"error": "unauthorized", "message": "A credential is required."}
    assert ran == []


def test_loopback_browser_is_sent_to_the_login_page(admin: tuple[Flask, list[str]]) -> None:
    app, ran = admin
    response = local(app.test_client(), headers=HTML)
    assert response.status_code == 303
    assert response.headers["Location"] == "/_tailnet/login?next=%2Fadmin"
    assert ran == []


def test_other_views_still_serve_loopback_without_a_credential(
    admin: tuple[Flask, list[str]],
) -> None:
    app, _ = admin
    assert local(app.test_client(), "/").json == {"method": "loopback", "local": True}


@pytest.mark.parametrize(
    ("credential", "method"),
    [
        pytest.param(lambda t: {"Authorization": f"Bearer {t}"}, "token", id="bearer-token"),
        pytest.param(lambda t: basic("", PASSWORD), "password", id="basic-password"),
        pytest.param(lambda t: basic("", t), "token", id="basic-with-the-token"),
    ],
)
def test_loopback_with_a_remote_peers_credential_is_served_as_that_peer(
    admin: tuple[Flask, list[str]], credential: Any, method: str
) -> None:
    app, ran = admin
    response = local(app.test_client(), headers=credential(token_of(app)))
    assert response.status_code == 200
    assert response.json == {"method": method, "user": None, "local": False}
    assert ran == ["admin"]


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param(basic("", "wrong"), id="wrong-password"),
        pytest.param({"Cookie": "tailnet_session=forged.value.sig"}, id="forged-cookie"),
        pytest.param({"X-Forwarded-For": "127.0.0.1"}, id="proxy-header-claiming-loopback"),
    ],
)
def test_loopback_with_a_wrong_credential_is_refused(
    admin: tuple[Flask, list[str]], credential: dict[str, str]
) -> None:
    app, ran = admin
    assert local(app.test_client(), headers=credential).status_code == 401
    assert ran == []


@pytest.mark.parametrize(
    "guess",
    [
        pytest.param(lambda c: local(c, headers={"Authorization": "Bearer wrong"}), id="bearer"),
        pytest.param(lambda c: local(c, headers=basic("admin", "wrong")), id="basic"),
        pytest.param(lambda c: local(c, "/admin?token=wrong", headers=HTML), id="token-link"),
    ],
)
def test_a_local_process_guessing_at_a_required_view_spends_a_budget(
    limited_admin: tuple[Flask, list[str]], guess: Any
) -> None:
    """Loopback is not metered where the bypass serves it; where a view asks it for a credential,
    a local process guessing the password would otherwise have no limit at all."""
    app, ran = limited_admin
    client = app.test_client()
    statuses = [guess(client).status_code for _ in range(4)]
    assert statuses[3] == 429, statuses
    assert local(client, headers=basic("admin", PASSWORD)).status_code == 429
    assert ran == []


@pytest.mark.parametrize(
    "proxy_header",
    [
        pytest.param({"X-Forwarded-For": "100.64.0.9"}, id="x-forwarded-for"),
        pytest.param({"X-Forwarded-Host": "example.com"}, id="x-forwarded-host"),
        pytest.param({"Forwarded": "for=100.64.0.9"}, id="forwarded"),
    ],
)
def test_a_local_process_cannot_shed_its_budget_with_a_proxy_header(
    limited_admin: tuple[Flask, list[str]], proxy_header: dict[str, str]
) -> None:
    """A proxy header takes a loopback request off the bypass (it must authenticate in the
    guard, as not local): its guesses still spend the loopback address's budget, or one header
    would give a local process unlimited guesses at the credential a required view asks for."""
    app, ran = limited_admin
    client = app.test_client()
    statuses = [
        local(client, headers={**basic("admin", f"wrong{n}"), **proxy_header}).status_code
        for n in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    assert local(client, headers={**basic("admin", PASSWORD), **proxy_header}).status_code == 429
    assert local(client, headers=basic("admin", PASSWORD)).status_code == 429
    assert ran == []


def test_a_local_process_cannot_multiply_its_budget_by_its_source_address(
    limited_admin: tuple[Flask, list[str]],
) -> None:
    """Every address of 127.0.0.0/8 (and ::1) is this machine, and any local process can send
    from any of them: they share one budget, or each new source address would bring three more
    guesses."""
    app, ran = limited_admin
    client = app.test_client()
    sources = ["127.0.0.2", "127.0.0.3", "127.1.2.3", "::1"]
    statuses = [
        client.get(
            "/admin", environ_base={"REMOTE_ADDR": source}, headers=basic("admin", "wrong")
        ).status_code
        for source in sources
    ]
    assert statuses == [401, 401, 401, 429]
    assert local(client, headers=basic("admin", PASSWORD)).status_code == 429
    assert ran == []


def test_a_local_process_guessing_at_the_login_form_spends_a_budget(
    limited_admin: tuple[Flask, list[str]],
) -> None:
    app, _ = limited_admin
    client = app.test_client()
    statuses = []
    for _ in range(4):
        page = local(client, "/_tailnet/login", headers=HTML).get_data(as_text=True)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        statuses.append(
            local(
                client,
                "/_tailnet/login",
                method="POST",
                data={"csrf": csrf.group(1), "secret": "wrong", "next": "/admin"},
                headers={"Origin": "http://localhost", **HTML},
            ).status_code
        )
    assert statuses == [401, 401, 401, 429]


def test_wrong_bearer_token_from_loopback_says_invalid_token(
    admin: tuple[Flask, list[str]],
) -> None:
    app, _ = admin
    response = local(app.test_client(), headers={"Authorization": "Bearer wrong"})
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_loopback_browser_logs_in_through_the_login_page(admin: tuple[Flask, list[str]]) -> None:
    app, ran = admin
    client = app.test_client()
    login = local(client, local(client, headers=HTML).headers["Location"], headers=HTML)
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.get_data(as_text=True))
    assert csrf is not None
    submitted = local(
        client,
        "/_tailnet/login",
        method="POST",
        data={"csrf": csrf.group(1), "secret": PASSWORD, "next": "/admin"},
        headers={"Origin": "http://localhost", **HTML},
    )
    assert (submitted.status_code, submitted.headers["Location"]) == (303, "/admin")
    assert local(client).json == {"method": "session", "user": None, "local": False}
    assert ran == ["admin"]


def test_loopback_token_link_logs_in(admin: tuple[Flask, list[str]]) -> None:
    app, _ = admin
    client = app.test_client()
    link = local(client, f"/admin?token={token_of(app)}", headers=HTML)
    assert (link.status_code, link.headers["Location"]) == (303, "/admin")
    assert local(client).json["method"] == "session"


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param(lambda t: {"Authorization": f"Bearer {t}"}, id="bearer-token"),
        pytest.param(lambda t: basic("", PASSWORD), id="basic-password"),
        pytest.param(lambda t: {}, id="no-credential"),
    ],
)
def test_cross_site_unsafe_request_from_loopback_is_403(
    admin: tuple[Flask, list[str]], credential: Any
) -> None:
    app, ran = admin
    headers = {"Origin": "http://evil.example", **credential(token_of(app))}
    assert local(app.test_client(), method="POST", headers=headers).status_code == 403
    assert ran == []


def test_cross_site_request_on_a_session_cookie_from_loopback_is_403(
    admin: tuple[Flask, list[str]],
) -> None:
    app, ran = admin
    client = app.test_client()
    local(client, f"/admin?token={token_of(app)}", headers=HTML)  # logs in
    evil = {"Origin": "http://evil.example", "Upgrade": "websocket"}
    assert local(client, headers=evil).status_code == 403
    assert ran == []


def test_the_apps_401_handler_answers(admin: tuple[Flask, list[str]]) -> None:
    app, _ = admin

    @app.errorhandler(401)
    def custom(error: Exception) -> tuple[str, int]:
        return "please log in", 401

    response = local(app.test_client())
    assert (response.status_code, response.get_data(as_text=True)) == (401, "please log in")


# ---- remote peers, exempt views ----------------------------------------------------------------


def test_remote_peers_are_asked_as_before(admin: tuple[Flask, list[str]]) -> None:
    app, _ = admin
    client = app.test_client()
    assert remote(client).status_code == 401
    authorized = remote(client, headers={"Authorization": f"Bearer {token_of(app)}"})
    assert authorized.json == {"method": "token", "user": None, "local": False}


def _exempt_then_required(app: Flask, guard: TailnetGuard) -> None:
    @app.get("/both")
    @guard.exempt
    @guard.login_required
    def both() -> str:
        return "served"


def _required_then_exempt(app: Flask, guard: TailnetGuard) -> None:
    @app.get("/both")
    @guard.login_required
    @guard.exempt
    def both() -> str:
        return "served"


def _required_in_an_exempt_blueprint(app: Flask, guard: TailnetGuard) -> None:
    bp = Blueprint("open", __name__)

    @bp.get("/both")
    @guard.login_required
    def both() -> str:
        return "served"

    guard.exempt(bp)
    app.register_blueprint(bp)


@pytest.mark.parametrize(
    "declare",
    [
        pytest.param(_exempt_then_required, id="exempt-outside"),
        pytest.param(_required_then_exempt, id="exempt-inside"),
        pytest.param(_required_in_an_exempt_blueprint, id="exempt-blueprint"),
    ],
)
def test_login_required_wins_over_exempt(state_dir: Path, declare: Any) -> None:
    app = Flask("both")
    guard = TailnetGuard(app, state_dir=str(state_dir))
    declare(app, guard)
    client = app.test_client()
    assert remote(client, "/both").status_code == 401
    assert remote(client, "/both", headers=HTML).status_code == 303
    assert local(client, "/both").status_code == 401
    token = {"Authorization": f"Bearer {token_of(app)}"}
    assert remote(client, "/both", headers=token).get_data(as_text=True) == "served"


def test_a_wrong_credential_on_an_exempt_required_view_is_counted_once(state_dir: Path) -> None:
    app = Flask("both")
    guard = TailnetGuard(app, state_dir=str(state_dir), login_limits="3 per minute")
    _exempt_then_required(app, guard)
    client = app.test_client()
    wrong = {"Authorization": "Bearer wrong"}
    statuses = [remote(client, "/both", headers=wrong).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


def test_without_local_bypass_loopback_is_asked_by_the_guard(state_dir: Path) -> None:
    app, ran = make_admin_app(state_dir, local_bypass=False)
    client = app.test_client()
    assert local(client).status_code == 401
    assert local(client, "/").status_code == 401
    authorized = local(client, headers={"Authorization": f"Bearer {token_of(app)}"})
    assert authorized.json["method"] == "token"
    assert ran == ["admin"]


def test_on_an_app_without_the_guard_it_fails_closed() -> None:
    app = Flask("unguarded")
    app.config["TESTING"] = True

    @app.get("/admin")
    @TailnetGuard.login_required
    def admin_view() -> str:
        return "secret"

    with pytest.raises(RuntimeError, match="without a TailnetGuard"):
        app.test_client().get("/admin")


# ---- a real server -----------------------------------------------------------------------------


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_example_apps_admin_view_asks_a_real_loopback_client(tmp_path: Path) -> None:
    env = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(tmp_path / "state")}
    env.pop("FLASK_RUN_HOST", None)
    token = example_cli(env, "token")
    with serving_example_app("127.0.0.1", env, tmp_path / "server.log") as port:
        assert _get(port, "/api/whoami", {})[0] == 200
        status, _ = _get(port, "/admin", {"Accept": "application/json"})
        assert status == 401
        status, body = _get(port, "/admin", {"Authorization": f"Bearer {token}"})
        assert status == 200
        assert json.loads(body)["method"] == "token"


def test_a_real_local_client_with_a_proxy_header_spends_the_loopback_budget(
    tmp_path: Path,
) -> None:
    """A local process that adds ``X-Forwarded-For`` to leave the bypass guesses the token at the
    example app's ``/admin`` under the loopback address's budget, as it does without it."""
    env = {
        **os.environ,
        "FLASK_TAILNET_STATE_DIR": str(tmp_path / "state"),
        "FLASK_TAILNET_AUTH": "token",
        "FLASK_TAILNET_LOGIN_LIMITS": "3 per minute",
    }
    env.pop("FLASK_RUN_HOST", None)
    token = example_cli(env, "token")
    forged = {"X-Forwarded-For": "100.64.0.9", "Accept": "application/json"}
    with serving_example_app("127.0.0.1", env, tmp_path / "server.log") as port:
        statuses = [
            _get(port, "/admin", {**forged, "Authorization": f"Bearer guess{n}"})[0]
            for n in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        assert _get(port, "/admin", {**forged, "Authorization": f"Bearer {token}"})[0] == 429
        assert _get(port, "/admin", {"Authorization": f"Bearer {token}"})[0] == 429


def _get_from(source: str, port: int, path: str, headers: dict[str, str]) -> int:
    """The status of ``GET path`` sent from the loopback address ``source``."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_real_local_client_rotating_its_loopback_source_address_shares_one_budget(
    tmp_path: Path,
) -> None:
    """Any local process can connect from any address of 127.0.0.0/8: guessing the token at the
    example app's ``/admin`` from a new one each time still spends one budget."""
    env = {
        **os.environ,
        "FLASK_TAILNET_STATE_DIR": str(tmp_path / "state"),
        "FLASK_TAILNET_AUTH": "token",
        "FLASK_TAILNET_LOGIN_LIMITS": "3 per minute",
    }
    env.pop("FLASK_RUN_HOST", None)
    token = example_cli(env, "token")
    api = {"Accept": "application/json"}
    with serving_example_app("127.0.0.1", env, tmp_path / "server.log") as port:
        statuses = [
            _get_from(f"127.0.0.{n}", port, "/admin", {**api, "Authorization": f"Bearer guess{n}"})
            for n in range(2, 6)
        ]
        assert statuses == [401, 401, 401, 429]
        right = {**api, "Authorization": f"Bearer {token}"}
        assert _get_from("127.0.0.9", port, "/admin", right) == 429
