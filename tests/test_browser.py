"""A real browser (Debian's headless Chromium, driven by Playwright) logs in to the example app,
served on a tailnet-range address added to the loopback interface. Needs root and chromium;
skipped otherwise, and never skipped under CI (tests/run.sh installs both).

The browser must reach the app as a tailnet peer, not from loopback (which is let in without a
login). It does without any routing trick: for a destination that is one of the machine's own
addresses, Linux picks that address as the source, so Chromium connecting to ``ADDRESS`` comes
from ``ADDRESS`` (the ``tailnet_address`` fixture checks the route, the tests check
``/api/whoami``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Response, expect, sync_playwright

from .conftest import addresses_on_lo, example_cli, serving_example_app

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ADDRESS = "100.64.0.20"
PASSWORD = "e2e correct horse"
PASSWORD_VARIABLE = "TAILNET_E2E_PASSWORD"
COOKIE = "tailnet_session"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Nothing but the app: no proxy from the environment, and no name is ever looked up.
    "--no-proxy-server",
    f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {ADDRESS}",
]
TIMEOUT_MS = 10_000

pytestmark = pytest.mark.root


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture(scope="module")
def tailnet_address() -> Iterator[str]:
    """``ADDRESS`` on ``lo`` for the module (removed afterwards, even on failure, unless it was
    there before)."""
    if os.geteuid() != 0:
        pytest.skip("adding a tailnet-range address to the loopback interface needs root")
    if shutil.which("ip") is None or not os.access(CHROMIUM, os.X_OK):
        pytest.skip("needs iproute2 and Debian's chromium (tests/run.sh installs them as root)")
    with addresses_on_lo([f"{ADDRESS}/32"]):
        route = _ip("route", "get", ADDRESS).stdout
        assert f"src {ADDRESS}" in route, f"a browser would not come from {ADDRESS}: {route}"
        yield ADDRESS


@dataclass(frozen=True)
class Served:
    """The example app running on ``url``; ``cli`` runs ``flask tailnet ...`` against its state."""

    url: str
    env: dict[str, str]

    def cli(self, *args: str) -> str:
        return example_cli(self.env, *args)


def _example_env(state: Path, **settings: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLASK_TAILNET_")},
        "FLASK_TAILNET_STATE_DIR": str(state),
        **settings,
    }


@contextmanager
def _serving(address: str, env: dict[str, str]) -> Iterator[Served]:
    log = Path(env["FLASK_TAILNET_STATE_DIR"]).parent / "server.log"
    with serving_example_app(address, env, log) as port:
        yield Served(f"http://{address}:{port}", env)


@pytest.fixture(scope="module")
def env_password_app(
    tailnet_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """People log in with ``PASSWORD``, from an environment variable."""
    env = _example_env(
        tmp_path_factory.mktemp("browser-env") / "state",
        FLASK_TAILNET_AUTH="password",
        FLASK_TAILNET_PASSWORD_ENV=PASSWORD_VARIABLE,
        **{PASSWORD_VARIABLE: PASSWORD},
    )
    with _serving(tailnet_address, env) as served:
        yield served


@pytest.fixture(scope="module")
def file_password_app(
    tailnet_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, str]]:
    """People log in with the password file that ``flask tailnet password`` writes (its variable
    is unset); with the first password, generated before the server starts."""
    env = _example_env(
        tmp_path_factory.mktemp("browser-file") / "state",
        FLASK_TAILNET_PASSWORD_ENV="TAILNET_E2E_UNSET",
    )
    env["FLASK_TAILNET_AUTH"] = "password"  # loads without a password, so the CLI can set one
    first = example_cli(env, "password", "--generate")
    with _serving(tailnet_address, env) as served:
        yield served, first


@pytest.fixture(scope="module")
def chromium(tailnet_address: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def _fresh_page(browser: Browser) -> Iterator[Page]:
    """A page in a new browser context: its own, empty cookie jar."""
    context = browser.new_context(viewport={"width": 800, "height": 600})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    with _fresh_page(chromium) as fresh:
        yield fresh


# ---- what a person does ---------------------------------------------------------------------


def open_app(page: Page, url: str) -> Response:
    response = page.goto(url)
    assert response is not None
    return response


def sign_in(page: Page, secret: str) -> Response:
    """Type ``secret`` in the login form and press "Sign in"; the answer to the form's POST."""
    page.get_by_label("Password").fill(secret)
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return posted.value


def on_login_page(page: Page, served: Served, next_: str | None = "%2F") -> None:
    expected = served.url + "/_tailnet/login" + ("" if next_ is None else f"?next={next_}")
    assert page.url == expected
    expect(page).to_have_title(re.compile(r"^Sign in · example_app$"), timeout=TIMEOUT_MS)
    expect(page.get_by_label("Password")).to_be_visible(timeout=TIMEOUT_MS)


def let_in_by_session(page: Page) -> None:
    expect(page.locator("body")).to_contain_text(
        f"You are {ADDRESS}, let in by session.", timeout=TIMEOUT_MS
    )


def session_cookie(page: Page) -> dict[str, Any] | None:
    found = [c for c in page.context.cookies() if c.get("name") == COOKIE]
    return dict(found[0]) if found else None


def whoami(page: Page, served: Served) -> Any:
    """``/api/whoami`` as the browser itself fetches it (a navigation: its own network stack)."""
    response = open_app(page, served.url + "/api/whoami")
    assert response.status == 200, page.url
    return response.json()


# ---- the tests --------------------------------------------------------------------------------


def test_password_login_stays_and_signs_out(env_password_app: Served, page: Page) -> None:
    served = env_password_app
    ARTIFACTS.mkdir(exist_ok=True)

    # 1. A tailnet peer without a session is sent to the login page, with `next`.
    response = open_app(page, served.url + "/?from=e2e")
    redirect = response.request.redirected_from
    assert redirect is not None
    assert redirect.url == served.url + "/?from=e2e"
    redirect_response = redirect.response()
    assert redirect_response is not None
    assert redirect_response.status == 303
    on_login_page(page, served, next_="%2F%3Ffrom%3De2e")
    assert response.headers["cache-control"] == "no-store"
    page.screenshot(path=str(ARTIFACTS / "login.png"))

    # 2. A wrong password shows the generic error (401), keeps `next`, and makes no session.
    posted = sign_in(page, "not the password")
    assert posted.status == 401
    expect(page.get_by_role("alert")).to_have_text(
        "That did not work. Check and try again.", timeout=TIMEOUT_MS
    )
    expect(page.get_by_label("Password")).to_have_value("", timeout=TIMEOUT_MS)
    expect(page.locator('input[name="next"]')).to_have_value("/?from=e2e", timeout=TIMEOUT_MS)
    assert session_cookie(page) is None
    page.screenshot(path=str(ARTIFACTS / "login-error.png"))
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(ARTIFACTS / "login-error-dark.png"))
    page.emulate_media(color_scheme="light")

    # 3. The right password lands on `next` with a session cookie the page's scripts cannot read.
    posted = sign_in(page, PASSWORD)
    assert posted.status == 303
    assert page.url == served.url + "/?from=e2e"
    let_in_by_session(page)
    cookie = session_cookie(page)
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Lax", False)
    assert page.evaluate("document.cookie") == ""

    # The app saw the browser's tailnet address, not loopback.
    assert whoami(page, served) == {
        "address": ADDRESS,
        "method": "session",
        "user": None,
        "local": False,
    }

    # 4. A reload keeps the session.
    open_app(page, served.url + "/")
    reloaded = page.reload()
    assert reloaded is not None
    assert reloaded.status == 200
    let_in_by_session(page)

    # 6. The app's "Sign out" button ends it: back on the login page, for good.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(served.url + "/_tailnet/login")
    on_login_page(page, served, next_=None)
    assert session_cookie(page) is None
    open_app(page, served.url + "/")
    on_login_page(page, served)


def test_token_rotation_ends_token_sessions_only(
    env_password_app: Served, chromium: Browser
) -> None:
    served = env_password_app
    with _fresh_page(chromium) as by_token, _fresh_page(chromium) as by_password:
        # 5. The token works in the login form; that session is bound to the token...
        open_app(by_token, served.url + "/")
        on_login_page(by_token, served)
        old_token = served.cli("token")
        assert sign_in(by_token, old_token).status == 303
        assert by_token.url == served.url + "/"
        let_in_by_session(by_token)

        open_app(by_password, served.url + "/")
        assert sign_in(by_password, PASSWORD).status == 303
        let_in_by_session(by_password)

        # ... so rotating the token logs that browser out, and not the one that used the password.
        new_token = served.cli("token", "--rotate")
        assert new_token != old_token
        assert by_token.reload() is not None
        on_login_page(by_token, served)
        assert by_password.reload() is not None
        let_in_by_session(by_password)

        assert sign_in(by_token, old_token).status == 401
        assert sign_in(by_token, new_token).status == 303
        let_in_by_session(by_token)


def test_changing_the_password_file_ends_password_sessions(
    file_password_app: tuple[Served, str], page: Page
) -> None:
    served, first = file_password_app
    open_app(page, served.url + "/")
    on_login_page(page, served)
    assert sign_in(page, first).status == 303
    let_in_by_session(page)

    second = served.cli("password", "--generate")  # the running server sees the new file
    assert page.reload() is not None
    on_login_page(page, served)
    assert sign_in(page, first).status == 401
    assert sign_in(page, second).status == 303
    let_in_by_session(page)
