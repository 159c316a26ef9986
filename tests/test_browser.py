"""A real browser (Debian's headless Chromium, driven by Playwright) logs in to the example app,
served on a tailnet-range address added to the loopback interface. Needs root and chromium;
skipped otherwise, and never skipped under CI (tests/run.sh installs both)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT, serving_example_app

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ADDRESS = "100.64.0.30"
PASSWORD = "e2e-correct-horse"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.root


@dataclass
class Served:
    url: str
    env: dict[str, str]

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "example_app", "tailnet", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout.strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if os.geteuid() != 0:
        pytest.skip("adding a tailnet-range address to the loopback interface needs root")
    if shutil.which("ip") is None or not os.path.exists(CHROMIUM):
        pytest.skip("needs iproute2 and Debian's chromium (tests/run.sh installs them as root)")
    added = subprocess.run(
        ["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"],
        capture_output=True,
        text=True,
        check=False,
    )
    if added.returncode != 0 and "File exists" not in added.stderr:
        pytest.fail(f"ip addr add {ADDRESS}/32 dev lo: {added.stderr.strip()}")
    state = tmp_path_factory.mktemp("browser") / "state"
    env = {
        **os.environ,
        "FLASK_TAILNET_STATE_DIR": str(state),
        "FLASK_TAILNET_AUTH": "password",
        "FLASK_TAILNET_PASSWORD_ENV": "TAILNET_E2E_PASSWORD",
        "TAILNET_E2E_PASSWORD": PASSWORD,
    }
    try:
        with serving_example_app(ADDRESS, env, state.parent / "server.log") as port:
            yield Served(f"http://{ADDRESS}:{port}", env)
    finally:
        if added.returncode == 0:
            subprocess.run(["ip", "addr", "del", f"{ADDRESS}/32", "dev", "lo"], check=False)


def test_a_person_logs_in_stays_in_and_is_logged_out(served: Served) -> None:
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415 - needs chromium

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_context(viewport={"width": 900, "height": 650}).new_page()
            page.set_default_timeout(TIMEOUT_MS)

            # 1. A tailnet peer without a session is sent to the login page.
            page.goto(served.url + "/")
            assert re.search(r"/_tailnet/login\?next=%2F$", page.url), page.url
            expect(page.get_by_label("Password")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "login.png"))

            # 2. A wrong password shows an error, and no session.
            page.get_by_label("Password").fill("wrong")
            with page.expect_response(lambda r: r.request.method == "POST") as posted:
                page.get_by_role("button", name="Sign in").click()
            assert posted.value.status == 401
            expect(page.get_by_role("alert")).to_contain_text("did not work")
            page.screenshot(path=str(ARTIFACTS / "login-error.png"))

            # 3. The right password lands on `next`, as a session.
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(served.url + "/")
            expect(page.locator("body")).to_contain_text(f"You are {ADDRESS}")
            expect(page.locator("body")).to_contain_text("let in by session")

            # 4. A reload keeps the session.
            page.reload()
            expect(page.locator("body")).to_contain_text("let in by session")

            # 6. Signing out ends it.
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(re.compile(r".*/_tailnet/login$"))
            page.goto(served.url + "/")
            assert "/_tailnet/login" in page.url

            # 5. A session made with the token ends when the token is rotated.
            page.get_by_label("Password").fill(served.cli("token"))
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(served.url + "/")
            expect(page.locator("body")).to_contain_text("let in by session")
            served.cli("token", "--rotate")
            page.reload()
            assert "/_tailnet/login" in page.url
        finally:
            browser.close()
