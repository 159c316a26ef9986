"""The Flask API around the guard: 429 through the app's error handlers, the RFC 6750 challenge,
exempt blueprints, what ``exempt`` refuses, a second ``init_app``, the login page's template,
``url_for`` for login and logout, and ``__version__``."""

from __future__ import annotations

import importlib
import inspect
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, url_for
from flask.views import MethodView
from werkzeug.exceptions import TooManyRequests

import example_app
import flask_tailnet
from flask_tailnet import ConfigurationError, TailnetGuard, current_peer

from .conftest import TAILNET_HOST, TAILNET_PEER, call, make_app

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def remote(client: Any, path: str = "/", **kw: Any) -> Any:
    return call(client, path, peer=TAILNET_PEER, host=TAILNET_HOST, **kw)


# ---- 429 ---------------------------------------------------------------------------------------


def limited_app(state_dir: Path) -> Flask:
    return make_app(state_dir, login_limits="2 per minute")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        pytest.param("/", {"Authorization": "Bearer wrong"}, id="bearer-token"),
        pytest.param("/", {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}, id="basic"),
        pytest.param("/?token=wrong", HTML, id="token-link"),
    ],
)
def test_429_goes_through_the_apps_error_handler(
    state_dir: Path, path: str, headers: dict[str, str]
) -> None:
    app = limited_app(state_dir)
    seen: list[Any] = []

    @app.errorhandler(429)
    def slow_down(error: TooManyRequests) -> tuple[str, int, dict[str, str]]:
        seen.append(error.retry_after)
        return "slow down", 429, {"Retry-After": str(error.retry_after)}

    client = app.test_client()
    statuses = [remote(client, path, headers=headers).status_code for _ in range(2)]
    response = remote(client, path, headers=headers)
    assert statuses != [429, 429]
    assert (response.status_code, response.get_data(as_text=True)) == (429, "slow down")
    assert len(seen) == 1
    assert isinstance(seen[0], int)
    assert 1 <= seen[0] <= 60
    assert response.headers["Retry-After"] == str(seen[0])


def test_429_by_exception_class_and_without_a_handler(state_dir: Path) -> None:
    app = limited_app(state_dir)
    client = app.test_client()
    wrong = {"Authorization": "Bearer wrong"}
    for _ in range(2):
        remote(client, headers=wrong)
    plain = remote(client, headers=wrong)
    assert plain.status_code == 429
    assert plain.json == {
        "error": "too_many_attempts",
        "message": "Too many failed attempts; try again later.",
    }
    assert 1 <= int(plain.headers["Retry-After"]) <= 60
    assert plain.headers["Cache-Control"] == "no-store"

    @app.errorhandler(TooManyRequests)
    def by_class(error: TooManyRequests) -> tuple[str, int]:
        return "by class", 429

    assert remote(client, headers=wrong).get_data(as_text=True) == "by class"


# ---- the 401 challenge -------------------------------------------------------------------------

PLAIN = 'Bearer realm="guarded"'
INVALID = 'Bearer realm="guarded", error="invalid_token"'


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        pytest.param({}, PLAIN, id="no-credential"),
        pytest.param({"Authorization": "Bearer wrong"}, INVALID, id="wrong-token"),
        pytest.param({"Authorization": "bearer wrong"}, INVALID, id="wrong-token-lower-case"),
        pytest.param({"Authorization": "Bearer "}, INVALID, id="empty-token"),
        pytest.param({"Authorization": "Bearer t\u00f6k\u00e9n"}, INVALID, id="non-ascii-token"),
        pytest.param({"Authorization": "Basic d3Jvbmc6d3Jvbmc="}, PLAIN, id="wrong-basic"),
        pytest.param({"Authorization": "Token wrong"}, PLAIN, id="other-scheme"),
        pytest.param({"Cookie": "tailnet_session=stale.cookie.value"}, PLAIN, id="stale-cookie"),
    ],
)
def test_a_presented_bearer_token_is_called_invalid_and_nothing_else_changes(
    app: Flask, headers: dict[str, str], challenge: str
) -> None:
    response = remote(app.test_client(), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge
    assert response.json == {"error": "unauthorized", "message": "A credential is required."}


def test_a_browser_with_a_wrong_token_is_still_sent_to_the_login_page(app: Flask) -> None:
    response = remote(app.test_client(), headers={**HTML, "Authorization": "Bearer wrong"})
    assert response.status_code == 303


# ---- exempt ------------------------------------------------------------------------------------


def blueprint_app(state_dir: Path, exempt_after_registering: bool = False) -> Flask:
    """``open`` (exempt, with a nested ``open.inner``, registered twice) beside ``openly`` and
    ``closed``, which are not."""
    app = Flask("blueprints")
    guard = TailnetGuard(app, state_dir=str(state_dir))
    open_bp, inner, openly, closed = (
        Blueprint("open", __name__),
        Blueprint("inner", __name__),
        Blueprint("openly", __name__),
        Blueprint("closed", __name__),
    )
    for bp in (open_bp, inner, openly, closed):

        @bp.get("/")
        def view() -> dict[str, Any]:
            return {"method": current_peer.method}

    open_bp.register_blueprint(inner, url_prefix="/inner")
    if not exempt_after_registering:
        guard.exempt(open_bp)
    app.register_blueprint(open_bp, url_prefix="/open")
    app.register_blueprint(open_bp, url_prefix="/again", name="again")
    app.register_blueprint(openly, url_prefix="/openly")
    app.register_blueprint(closed, url_prefix="/closed")
    if exempt_after_registering:
        guard.exempt(open_bp)

    @app.get("/app-view")
    def app_view() -> str:
        return "app"

    return app


@pytest.mark.parametrize("after", [False, True], ids=["exempt-first", "exempt-after-registering"])
@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/open/", 200, id="the-blueprints-view"),
        pytest.param("/open/inner/", 200, id="a-nested-blueprint"),
        pytest.param("/again/", 200, id="registered-again-under-another-name"),
        pytest.param("/again/inner/", 200, id="nested-in-the-second-registration"),
        pytest.param("/openly/", 401, id="a-blueprint-whose-name-starts-the-same"),
        pytest.param("/closed/", 401, id="another-blueprint"),
        pytest.param("/app-view", 401, id="an-app-view"),
        pytest.param("/open/missing", 401, id="no-route-under-its-prefix"),
    ],
)
def test_exempt_blueprint(state_dir: Path, after: bool, path: str, status: int) -> None:
    client = blueprint_app(state_dir, after).test_client()
    response = remote(client, path)
    assert response.status_code == status
    if status == 200:
        assert response.json == {"method": "none"}


def test_exempt_blueprint_keeps_the_other_checks(state_dir: Path) -> None:
    client = blueprint_app(state_dir).test_client()
    assert call(client, "/open/", peer="8.8.8.8").status_code == 403
    assert call(client, "/open/", host="evil.example").status_code == 403


class SomeView(MethodView):
    def get(self) -> str:
        return "view"


class Callable:
    def __call__(self) -> str:
        return "callable"


NOT_VIEWS = [
    pytest.param(SomeView, id="a-class"),
    pytest.param("index", id="a-string"),
    pytest.param(None, id="none"),
    pytest.param(42, id="a-number"),
    pytest.param(Flask("other"), id="an-app"),
    pytest.param(Callable().__call__, id="a-bound-method"),
]


@pytest.mark.parametrize("thing", NOT_VIEWS)
def test_exempt_refuses_what_is_not_a_view(thing: Any) -> None:
    with pytest.raises(TypeError, match=r"guard\.exempt"):
        TailnetGuard.exempt(thing)


@pytest.mark.parametrize("thing", NOT_VIEWS[:5])
def test_login_required_refuses_what_is_not_a_view(thing: Any) -> None:
    with pytest.raises(TypeError, match=r"guard\.login_required"):
        TailnetGuard.login_required(thing)


def test_exempt_class_based_view_through_as_view(state_dir: Path) -> None:
    app = Flask("cbv")
    guard = TailnetGuard(app, state_dir=str(state_dir))
    app.add_url_rule("/cbv", view_func=guard.exempt(SomeView.as_view("cbv")))
    assert remote(app.test_client(), "/cbv").get_data(as_text=True) == "view"


# ---- a second init_app -------------------------------------------------------------------------


def test_second_guard_with_other_settings_is_refused(app: Flask) -> None:
    middleware = app.wsgi_app
    with pytest.raises(ConfigurationError, match="already has a TailnetGuard"):
        TailnetGuard(app, network="local")
    with pytest.raises(ConfigurationError, match="already has a TailnetGuard"):
        TailnetGuard(login_prefix="/elsewhere").init_app(app)
    app.config["TAILNET_REALM"] = "changed after init_app"
    with pytest.raises(ConfigurationError, match="already has a TailnetGuard"):
        TailnetGuard().init_app(app)
    assert app.wsgi_app is middleware


def test_second_guard_with_the_same_settings_is_a_no_op(app: Flask, state_dir: Path) -> None:
    middleware = app.wsgi_app
    TailnetGuard(app, state_dir=str(state_dir), network="tailnet")
    TailnetGuard().init_app(app)
    assert app.wsgi_app is middleware


def test_a_failed_init_app_leaves_no_guard_that_a_second_one_trusts(state_dir: Path) -> None:
    """An app with its own blueprint named ``tailnet``: ``init_app`` fails to register the login
    blueprint. Retried (or caught and carried on), it must fail again, not take the half-made
    guard for a guard and leave every view open (with ``app.extensions`` saying it is guarded,
    which is what gunicorn's bind check looks at)."""
    app = Flask("half_made")
    app.config.update(TESTING=True, TAILNET_STATE_DIR=str(state_dir))
    app.register_blueprint(Blueprint("tailnet", __name__))
    guard = TailnetGuard()
    for _ in range(2):
        with pytest.raises(ValueError, match="tailnet"):
            guard.init_app(app)
    assert "tailnet" not in app.extensions


def test_second_guard_with_a_bad_setting_says_so(app: Flask) -> None:
    with pytest.raises(ConfigurationError, match="TAILNET_NETWORK"):
        TailnetGuard(app, network="everyone")


# ---- the login page's template -----------------------------------------------------------------

VARIABLES = (
    "app_name",
    "action",
    "csrf",
    "next",
    "ask_username",
    "username",
    "secret_label",
    "token_mode",
    "error",
)


def test_the_apps_template_overrides_the_login_page(state_dir: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    (templates / "flask_tailnet").mkdir(parents=True)
    (templates / "flask_tailnet" / "login.html").write_text(
        "".join(f"{name}=[{{{{ {name} }}}}]\n" for name in VARIABLES)
    )
    app = Flask("custom", template_folder=str(templates))
    TailnetGuard(app, state_dir=str(state_dir), auth="token")
    response = remote(app.test_client(), "/_tailnet/login?next=/a%3Cb%3E", headers=HTML)
    assert response.status_code == 200
    lines = dict(line.split("=", 1) for line in response.get_data(as_text=True).splitlines())
    assert set(lines) == set(VARIABLES)
    assert lines["app_name"] == "[custom]"
    assert lines["action"] == "[/_tailnet/login]"
    assert lines["next"] == "[/a&lt;b&gt;]", "autoescaped"
    assert (lines["ask_username"], lines["token_mode"]) == ("[False]", "[True]")
    assert lines["secret_label"] == "[Token]"
    assert len(lines["csrf"]) > 30
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


def test_without_an_override_the_packaged_page_is_used(app: Flask) -> None:
    page = remote(app.test_client(), "/_tailnet/login", headers=HTML).get_data(as_text=True)
    assert "Sign in to continue." in page


# ---- public names ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/_tailnet", "/auth"])
def test_url_for_login_and_logout(state_dir: Path, prefix: str) -> None:
    app = make_app(state_dir, login_prefix=prefix)
    with app.test_request_context():
        assert url_for("tailnet.login") == f"{prefix}/login"
        assert url_for("tailnet.login", next="/x") == f"{prefix}/login?next=/x"
        assert url_for("tailnet.logout") == f"{prefix}/logout"


def test_example_app_reads_nothing_internal() -> None:
    source = inspect.getsource(example_app)
    assert "extensions" not in source
    assert 'url_for("tailnet.logout")' in source


def test_version_comes_from_the_package_metadata() -> None:
    assert flask_tailnet.__version__ == metadata.version("flask-tailnet")


def test_the_mit_license_is_in_the_repository_and_the_sdist() -> None:
    root = Path(__file__).resolve().parent.parent
    pyproject = (root / "pyproject.toml").read_text()  # tomllib is not in Python 3.10
    assert '\nlicense = "MIT"\n' in pyproject
    assert (root / "LICENSE").read_text().startswith("MIT License\n")
    sdist = re.search(r"\[tool\.hatch\.build\.targets\.sdist\]\ninclude = \[(.*)\]", pyproject)
    assert sdist is not None
    assert '"LICENSE"' in sdist.group(1).split(", ")


def test_version_from_a_source_tree_never_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    try:
        assert importlib.reload(flask_tailnet).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(flask_tailnet)
    assert flask_tailnet.__version__ == metadata.version("flask-tailnet")
