"""People logging in from another tailnet device: the login page, the session cookie, Basic,
``?token=`` links, logout, CSRF, and the failed-attempt budget."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pam as pam_module
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_tailnet import ConfigurationError
from flask_tailnet.credentials import cookie_value
from flask_tailnet.passwords import PasswordSource
from flask_tailnet.secretfile import SecretFile

from .conftest import PASSWORD, TAILNET_HOST, TAILNET_PEER, PamUser, make_app

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
ORIGIN = f"http://{TAILNET_HOST}"


@pytest.fixture
def browser(password_app: Flask) -> FlaskClient:
    return password_app.test_client()


def remote(
    client: FlaskClient, path: str = "/", method: str = "GET", peer: str = TAILNET_PEER, **kw: Any
) -> Any:
    return client.open(
        path,
        method=method,
        base_url=f"http://{TAILNET_HOST}",
        environ_base={"REMOTE_ADDR": peer},
        **kw,
    )


def login_form(client: FlaskClient, next_: str = "/") -> str:
    """Open the login page as a browser; return the CSRF token of its form."""
    page = remote(client, f"/_tailnet/login?next={next_}", headers=HTML)
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True))
    assert match is not None
    return match.group(1)


def submit(
    client: FlaskClient,
    secret: str,
    *,
    username: str = "",
    next_: str = "/",
    csrf: str | None = None,
    headers: dict[str, str] | None = None,
    peer: str = TAILNET_PEER,
) -> Any:
    token = login_form(client, next_) if csrf is None else csrf
    return remote(
        client,
        "/_tailnet/login",
        method="POST",
        peer=peer,
        data={"csrf": token, "username": username, "secret": secret, "next": next_},
        headers={"Origin": ORIGIN, **HTML, **(headers or {})},
    )


def session_cookie(client: FlaskClient) -> str | None:
    cookie = client.get_cookie("tailnet_session", domain=TAILNET_HOST.split(":")[0])
    return None if cookie is None else cookie.value


# ---- redirect and login page ---------------------------------------------------------------


def test_browser_is_sent_to_login_with_next(browser: FlaskClient) -> None:
    response = remote(browser, "/api?x=1", headers=HTML)
    assert response.status_code == 303
    assert response.headers["Location"] == "/_tailnet/login?next=%2Fapi%3Fx%3D1"
    unicode = remote(browser, "/caf\u00e9", headers=HTML)
    assert unicode.headers["Location"] == "/_tailnet/login?next=%2Fcaf%25C3%25A9"


def test_api_client_gets_401_not_a_redirect(browser: FlaskClient) -> None:
    assert remote(browser, headers={"Accept": "*/*"}).status_code == 401
    assert remote(browser, headers={"Accept": "application/json"}).status_code == 401
    assert remote(browser, method="POST", headers=HTML).status_code == 401


@pytest.mark.parametrize(
    ("auth", "fields"),
    [
        pytest.param("password", {"secret"}, id="password"),
        pytest.param("token", {"secret"}, id="token"),
    ],
)
def test_login_page_asks_for_what_the_method_needs(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, auth: str, fields: set[str]
) -> None:
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", PASSWORD)
    app = make_app(state_dir, auth=auth, password_env="TAILNET_TEST_PASSWORD")
    page = remote(app.test_client(), "/_tailnet/login", headers=HTML)
    html = page.get_data(as_text=True)
    inputs = set(re.findall(r'<input[^>]*name="(\w+)"', html)) - {"csrf", "next"}
    assert inputs == fields
    assert "<label" in html
    assert "guarded" in html
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


# ---- logging in ------------------------------------------------------------------------------


def test_wrong_password_shows_a_generic_error(browser: FlaskClient) -> None:
    response = submit(browser, "wrong")
    assert response.status_code == 401
    assert "did not work" in response.get_data(as_text=True)
    assert session_cookie(browser) is None


def test_right_password_lands_on_next_with_a_session(browser: FlaskClient) -> None:
    response = submit(browser, PASSWORD, next_="/%3Fpage%3D2")
    assert response.status_code == 303
    assert response.headers["Location"] == "/%3Fpage%3D2"
    set_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie
    assert "SameSite=Lax" in set_cookie
    assert "Secure" not in set_cookie  # plain http here
    again = remote(browser, headers=HTML)
    assert again.status_code == 200
    assert again.json is not None
    assert again.json["method"] == "session"


def test_secure_cookie_over_https_through_a_trusted_proxy(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", PASSWORD)
    app = make_app(
        state_dir,
        auth="password",
        password_env="TAILNET_TEST_PASSWORD",
        trusted_proxies=["127.0.0.1"],
        allowed_hosts=["laptop.tail1a2b3.ts.net"],
    )
    client = app.test_client()
    proxied = {"X-Forwarded-For": TAILNET_PEER, "X-Forwarded-Proto": "https"}
    page = client.get(
        "/_tailnet/login",
        base_url="http://laptop.tail1a2b3.ts.net",
        headers={**HTML, **proxied},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True))
    assert csrf is not None
    response = client.post(
        "/_tailnet/login",
        base_url="http://laptop.tail1a2b3.ts.net",
        data={"csrf": csrf.group(1), "secret": PASSWORD, "next": "/"},
        headers={**HTML, **proxied, "Origin": "https://laptop.tail1a2b3.ts.net"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"]


def test_token_works_in_the_login_form_in_every_mode(
    browser: FlaskClient, password_app: Flask
) -> None:
    token = password_app.extensions["tailnet"].token_file.ensure().decode()
    assert submit(browser, token).status_code == 303
    assert remote(browser).json["method"] == "session"


@pytest.mark.parametrize(
    "next_",
    [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
    ],
)
def test_next_never_leaves_the_site(browser: FlaskClient, next_: str) -> None:
    response = submit(browser, PASSWORD, next_=next_)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_login_without_csrf_token_is_refused(browser: FlaskClient) -> None:
    login_form(browser)
    response = submit(browser, PASSWORD, csrf="forged")
    assert response.status_code == 400
    assert session_cookie(browser) is None


def test_login_without_csrf_cookie_is_refused(password_app: Flask) -> None:
    fresh = password_app.test_client()
    response = remote(
        fresh,
        "/_tailnet/login",
        method="POST",
        data={"csrf": "x", "secret": PASSWORD},
        headers={"Origin": ORIGIN},
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "planted",
    [
        pytest.param(",,," * 600, id="huge-cookie-echoed-over-the-size-limit"),
        pytest.param("attacker-chosen-nonce", id="fixed-by-a-cookie-tossing-sibling"),
        pytest.param("a" * 42, id="one-short"),
        pytest.param("a" * 44, id="one-long"),
        pytest.param("a" * 42 + "%C3%A9", id="not-ascii"),
    ],
)
def test_login_page_makes_its_own_nonce_for_a_cookie_it_did_not_make(
    password_app: Flask, planted: str
) -> None:
    """The CSRF nonce comes back only if it has the shape the page makes; anything else (a value
    another site planted, or one so large that setting it again fails) is replaced."""
    page = password_app.test_client(use_cookies=False).get(
        "/_tailnet/login",
        base_url=f"http://{TAILNET_HOST}",
        headers={**HTML, "Cookie": f"tailnet_session_csrf={planted}"},
        environ_base={"REMOTE_ADDR": TAILNET_PEER},
    )
    assert page.status_code == 200
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True))
    assert nonce is not None
    assert nonce.group(1) != planted
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", nonce.group(1))


def test_login_page_keeps_its_own_nonce(browser: FlaskClient) -> None:
    assert login_form(browser) == login_form(browser)


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}],
    ids=["other-origin", "null-origin", "sec-fetch-cross-site"],
)
def test_cross_site_login_is_refused(browser: FlaskClient, headers: dict[str, str]) -> None:
    response = submit(browser, PASSWORD, headers=headers)
    assert response.status_code == 403
    assert session_cookie(browser) is None


# ---- the session cookie -----------------------------------------------------------------------


def test_cookie_holds_no_credential(browser: FlaskClient, password_app: Flask) -> None:
    submit(browser, PASSWORD)
    cookie = session_cookie(browser)
    assert cookie is not None
    decoded = base64.urlsafe_b64decode(cookie.split(".")[0] + "==").decode()
    for text in (cookie, decoded):
        assert PASSWORD not in text
        for algo in ("sha256", "sha1", "md5"):
            assert hashlib.new(algo, PASSWORD.encode()).hexdigest() not in text


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        pytest.param("POST", {"Origin": ORIGIN}, 200, id="same-origin-post"),
        pytest.param("POST", {}, 200, id="post-without-origin"),
        pytest.param("POST", {"Origin": "http://evil.example"}, 403, id="cross-origin-post"),
        pytest.param("DELETE", {"Sec-Fetch-Site": "cross-site"}, 403, id="cross-site-delete"),
        pytest.param("GET", {"Origin": "http://evil.example"}, 200, id="cross-origin-get-is-safe"),
    ],
)
def test_cookie_authenticated_csrf(
    browser: FlaskClient, method: str, headers: dict[str, str], status: int
) -> None:
    submit(browser, PASSWORD)
    assert remote(browser, method=method, headers=headers).status_code == status


def test_rotating_the_token_ends_token_sessions(browser: FlaskClient, password_app: Flask) -> None:
    token_file = password_app.extensions["tailnet"].token_file
    submit(browser, token_file.ensure().decode())
    assert remote(browser).status_code == 200
    token_file.rotate()
    assert remote(browser, headers=HTML).status_code == 303


def test_changing_the_password_ends_password_sessions(
    browser: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit(browser, PASSWORD)
    assert remote(browser).status_code == 200
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", "a new password")
    assert remote(browser, headers=HTML).status_code == 303


def test_password_file_change_ends_sessions(state_dir: Path) -> None:
    SecretFile(state_dir, "password").write(b"first")
    app = make_app(state_dir, auth="password", password_env="TAILNET_UNSET_VARIABLE_X")
    client = app.test_client()
    assert submit(client, "first").status_code == 303
    assert remote(client).status_code == 200
    app.extensions["tailnet"].credentials.passwords.file.write(b"second")
    assert remote(client).status_code == 401
    assert submit(client, "second").status_code == 303


def test_logout_ends_the_session(browser: FlaskClient) -> None:
    submit(browser, PASSWORD)
    response = remote(browser, "/_tailnet/logout", method="POST", headers={"Origin": ORIGIN})
    assert response.status_code == 303
    assert session_cookie(browser) is None
    assert remote(browser).status_code == 401


def test_cross_site_logout_is_refused(browser: FlaskClient) -> None:
    submit(browser, PASSWORD)
    response = remote(
        browser, "/_tailnet/logout", method="POST", headers={"Origin": "http://evil.example"}
    )
    assert response.status_code == 403
    assert session_cookie(browser) is not None


# ---- ?token= links ---------------------------------------------------------------------------


def test_token_link_logs_in_and_drops_the_token(browser: FlaskClient, password_app: Flask) -> None:
    token = password_app.extensions["tailnet"].token_file.ensure().decode()
    response = remote(browser, f"/page?a=1&token={token}&b=2", headers=HTML)
    assert response.status_code == 303
    assert response.headers["Location"] == "/page?a=1&b=2"
    assert token not in response.headers["Location"]
    assert session_cookie(browser) is not None
    assert remote(browser).json["method"] == "session"


def test_wrong_token_link_is_a_failed_attempt(browser: FlaskClient) -> None:
    for _ in range(5):
        assert remote(browser, "/?token=wrong", headers=HTML).status_code == 303  # to login
    limited = remote(browser, "/?token=wrong", headers=HTML)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1


# ---- Basic ------------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "status", "method"),
    [
        pytest.param(basic("anyone", PASSWORD), 200, "password", id="password-any-user"),
        pytest.param(basic("", PASSWORD), 200, "password", id="password-no-user"),
        pytest.param(basic("x", "wrong"), 401, None, id="wrong-password"),
        pytest.param(basic("x", ""), 401, None, id="empty-password"),
        pytest.param({"Authorization": "Basic !!!"}, 401, None, id="bad-base64"),
        pytest.param(
            {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()},
            401,
            None,
            id="no-colon",
        ),
        pytest.param(
            {"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()},
            401,
            None,
            id="not-utf8",
        ),
        pytest.param(
            {"Authorization": "basic " + base64.b64encode(f"u:{PASSWORD}".encode()).decode()},
            200,
            "password",
            id="scheme-lower-case",
        ),
    ],
)
def test_basic_table(
    browser: FlaskClient, headers: dict[str, str], status: int, method: str | None
) -> None:
    response = remote(browser, headers=headers)
    assert response.status_code == status
    if method is not None:
        assert response.json["method"] == method


def test_basic_with_the_token(browser: FlaskClient, password_app: Flask) -> None:
    token = password_app.extensions["tailnet"].token_file.ensure().decode()
    assert remote(browser, headers=basic("", token)).json["method"] == "token"


# ---- brute force -------------------------------------------------------------------------------


def test_five_failures_then_429_without_checking(
    browser: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(5):
        assert remote(browser, headers=basic("x", "wrong")).status_code == 401
    checked: list[str] = []
    real = PasswordSource.verify

    def spy(self: PasswordSource, presented: str) -> bool:
        checked.append(presented)
        return real(self, presented)

    monkeypatch.setattr(PasswordSource, "verify", spy)
    limited = remote(browser, headers=basic("x", PASSWORD))  # even the right one
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert checked == []
    assert remote(browser, headers={"Authorization": "Bearer x"}).status_code == 429
    assert submit(browser, PASSWORD).status_code == 429


def test_failures_are_counted_per_client(browser: FlaskClient) -> None:
    for _ in range(6):
        remote(browser, headers=basic("x", "wrong"))
    assert remote(browser, headers=basic("x", "wrong")).status_code == 429
    other = remote(browser, headers=basic("x", PASSWORD), peer="100.64.0.8")
    assert other.status_code == 200


def test_success_clears_the_count(browser: FlaskClient) -> None:
    for _ in range(4):
        remote(browser, headers=basic("x", "wrong"))
    assert remote(browser, headers=basic("x", PASSWORD)).status_code == 200
    for _ in range(4):
        assert remote(browser, headers=basic("x", "wrong")).status_code == 401


def test_parallel_guesses_cannot_slip_through(password_app: Flask) -> None:
    statuses: list[int] = []
    barrier = threading.Barrier(16)

    def guess() -> None:
        client = password_app.test_client()
        barrier.wait()
        statuses.append(remote(client, headers=basic("x", "wrong")).status_code)

    threads = [threading.Thread(target=guess) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(401) == 5
    assert statuses.count(429) == 11


def test_loopback_is_never_limited(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(local_bypass=False, auth="token")
    client = app.test_client()
    for _ in range(10):
        assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401


# ---- PAM ---------------------------------------------------------------------------------------


@pytest.fixture
def pam_app(state_dir: Path, pam_user: PamUser) -> Flask:
    return make_app(
        state_dir, auth="pam", pam_service=pam_user.service, pam_users=[pam_user.username]
    )


def test_pam_login_form_and_basic(pam_app: Flask, pam_user: PamUser) -> None:
    client = pam_app.test_client()
    page = remote(client, "/_tailnet/login", headers=HTML).get_data(as_text=True)
    assert 'name="username"' in page
    assert submit(client, pam_user.password, username=pam_user.username).status_code == 303
    me = remote(client).json
    assert (me["method"], me["address"]) == ("session", TAILNET_PEER)
    api = remote(pam_app.test_client(), headers=basic(pam_user.username, pam_user.password))
    assert api.json["method"] == "pam"


@pytest.mark.parametrize(
    ("username", "good_password", "status"),
    [
        pytest.param(None, False, 401, id="bad-password"),
        pytest.param("nosuchuser-tailnet", True, 401, id="unknown-user"),
        pytest.param("root", True, 401, id="user-not-allowed"),
    ],
)
def test_pam_refusals(
    pam_app: Flask, pam_user: PamUser, username: str | None, good_password: bool, status: int
) -> None:
    user = pam_user.username if username is None else username
    password = pam_user.password if good_password else "wrong"
    assert remote(pam_app.test_client(), headers=basic(user, password)).status_code == status


def test_limited_client_never_reaches_pam(
    pam_app: Flask, pam_user: PamUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = pam_app.test_client()
    for _ in range(5):
        assert remote(client, headers=basic(pam_user.username, "wrong")).status_code == 401
    calls: list[object] = []

    def spy() -> None:
        calls.append(1)
        raise AssertionError("PAM called for a limited client")

    monkeypatch.setattr(pam_module, "pam", spy)
    assert remote(client, headers=basic(pam_user.username, pam_user.password)).status_code == 429
    assert calls == []


# ---- start-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"auth": "bogus"}, "TAILNET_AUTH", id="unknown-mode"),
        pytest.param({"login_limits": "lots"}, "limit", id="bad-limits"),
        pytest.param({"ratelimit_storage_uri": "memcached://x"}, "memcached", id="bad-storage"),
        pytest.param({"session_lifetime": 5}, "TAILNET_SESSION_LIFETIME", id="short-lifetime"),
        pytest.param({"cookie_name": "a b"}, "TAILNET_COOKIE_NAME", id="bad-cookie-name"),
        pytest.param({"login_prefix": "no-slash"}, "TAILNET_LOGIN_PREFIX", id="bad-prefix"),
    ],
)
def test_unusable_methods_fail_at_start(
    state_dir: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_app(state_dir, **settings)


#: Settings whose forced method logs nobody in on this machine, and a word of the reason.
UNUSABLE_METHODS = [
    pytest.param({"auth": "pam", "pam_service": "no-such-service-x"}, "PAM", id="pam-unusable"),
    pytest.param(
        {"auth": "password", "password_env": "UNSET_TAILNET_X"},
        "no password is set",
        id="password-missing",
    ),
]


@pytest.mark.parametrize(("settings", "reason"), UNUSABLE_METHODS)
def test_an_unusable_method_loads_and_refuses_every_login_but_the_token(
    state_dir: Path, settings: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What depends on the machine is no reason not to load the app (the CLI must run to fix it);
    each login is refused instead, fail closed, with a log line that says what to do."""
    app = make_app(state_dir, **settings)
    client = app.test_client()
    with caplog.at_level("ERROR", logger="flask_tailnet"):
        assert remote(client, headers=basic("root", "anything")).status_code == 401
        assert submit(client, "anything", username="root").status_code == 401
    [logged] = [r.getMessage() for r in caplog.records if "a login was refused" in r.message]
    assert reason in logged  # once a minute, not once per attempt
    assert "anything" not in caplog.text
    token = app.extensions["tailnet"].token_file.ensure().decode()
    assert remote(app.test_client(), headers=basic("x", token)).json["method"] == "token"


#: Password variables that the login rules refuse to match, whatever is typed: every login with
#: them fails, so they must be reported like a missing password, not pass in silence.
REFUSED_PASSWORD_VARIABLES = [
    pytest.param("   ", "an empty password", id="only-whitespace"),
    pytest.param("x" * 1025, "longer than 1024", id="longer-than-a-login-accepts"),
]


@pytest.mark.parametrize(("value", "reason"), REFUSED_PASSWORD_VARIABLES)
def test_a_password_variable_no_login_can_match_is_logged(
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str,
    reason: str,
) -> None:
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", value)
    app = make_app(state_dir, auth="password", password_env="TAILNET_TEST_PASSWORD")
    client = app.test_client()
    with caplog.at_level("ERROR", logger="flask_tailnet"):
        assert remote(client, headers=basic("x", value)).status_code == 401
    [logged] = [r.getMessage() for r in caplog.records if "a login was refused" in r.message]
    assert "TAILNET_TEST_PASSWORD" in logged
    assert reason in logged
    assert not value.strip() or value not in logged


def test_a_password_set_after_start_logs_in_without_a_restart(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(state_dir, auth="password", password_env="UNSET_TAILNET_X")
    assert remote(app.test_client(), headers=basic("x", "now set")).status_code == 401
    monkeypatch.setenv("UNSET_TAILNET_X", "now set")
    assert remote(app.test_client(), headers=basic("x", "now set")).json["method"] == "password"


def test_token_client_that_succeeded_still_spends_on_failures(
    browser: FlaskClient, password_app: Flask
) -> None:
    token = password_app.extensions["tailnet"].token_file.ensure().decode()
    good, bad = {"Authorization": f"Bearer {token}"}, {"Authorization": "Bearer wrong"}
    for _ in range(3):
        assert remote(browser, headers=good).status_code == 200
    for _ in range(5):
        assert remote(browser, headers=bad).status_code == 401
    assert remote(browser, headers=bad).status_code == 429
    assert remote(browser, headers=good).status_code == 429  # refused before any comparison
    password_app.extensions["tailnet"].token_file.rotate()
    other = remote(browser, headers=good, peer="100.64.0.9")
    assert other.status_code == 401  # the old token, from a fresh client


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("tailnet_session=abc", "abc", id="alone"),
        pytest.param("a=1; tailnet_session=abc; b=2", "abc", id="middle"),
        pytest.param("a=1;tailnet_session=abc", "abc", id="no-space"),
        pytest.param('tailnet_session="abc"', "abc", id="quoted"),
        pytest.param("xtailnet_session=evil; tailnet_session=abc", "abc", id="suffix-name-skipped"),
        pytest.param("xtailnet_session=evil", None, id="only-suffix-name"),
        pytest.param("tailnet_session=abc; tailnet_session=def", "abc", id="first-wins"),
        pytest.param("other=1", None, id="absent"),
        pytest.param("", None, id="empty"),
    ],
)
def test_cookie_value_table(header: str, value: str | None) -> None:
    assert cookie_value(header, "tailnet_session") == value


def test_token_link_never_redirects_off_site(browser: FlaskClient, password_app: Flask) -> None:
    token = password_app.extensions["tailnet"].token_file.ensure().decode()
    response = remote(
        browser,
        f"/x?token={token}",
        headers=HTML,
        environ_overrides={"PATH_INFO": "//evil.example/x"},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    spaced = remote(password_app.test_client(), f"/a b/caf\u00e9?token={token}&q=1", headers=HTML)
    assert spaced.headers["Location"] == "/a%20b/caf%C3%A9?q=1"
