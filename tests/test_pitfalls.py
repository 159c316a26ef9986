"""One test per line of shared/reference/pitfalls.md: each fails if the hole it names comes back.
Line 2 (userspace tailscaled) is not detectable yet; docs/security.md says so and tests the
documented mitigation."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import EnvironBuilder, run_wsgi_app

from flask_tailnet.binds import BindRefused, check_bind
from flask_tailnet.gunicorn import redact_atoms, redact_text

from . import test_login as login
from .conftest import PASSWORD, TAILNET_HOST, TAILNET_PEER, call, make_app


def remote(client: Any, **kw: Any) -> Any:
    return call(client, peer=TAILNET_PEER, host=TAILNET_HOST, **kw)


# 1. A reverse proxy on the same host turns everyone into 127.0.0.1.
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"X-Forwarded-For": "203.0.113.9"}, 401, id="nginx"),
        pytest.param(
            {
                "X-Forwarded-For": "100.101.102.103",
                "X-Forwarded-Host": "laptop.tail1a2b3.ts.net",
                "X-Forwarded-Proto": "https",
                "Tailscale-User-Login": "alice@example.com",
            },
            401,
            id="tailscale-serve",
        ),
        pytest.param(
            {"X-Forwarded-For": "8.8.8.8", "Tailscale-Funnel-Request": "?1"}, 403, id="funnel"
        ),
    ],
)
def test_1_local_reverse_proxy_does_not_make_everyone_local(
    client: Any, headers: dict[str, str], status: int
) -> None:
    assert call(client, headers=headers).status_code == status


def test_1_trusted_proxy_client_still_authenticates(app_factory: Any) -> None:
    client = app_factory(trusted_proxies=["127.0.0.1"]).test_client()
    assert call(client, headers={"X-Forwarded-For": "100.101.102.103"}).status_code == 401
    assert call(client, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403


# 2. Userspace tailscaled dials 127.0.0.1 with no header: not detectable in this release; the
# documented mitigation is TAILNET_LOCAL_BYPASS=False, which must really turn the bypass off.
def test_2_bypass_off_makes_loopback_authenticate(app_factory: Any) -> None:
    client = app_factory(local_bypass=False).test_client()
    assert call(client).status_code == 401


# 3. Trusting a header the client controls.
@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "127.0.0.1"},
        {"X-Real-IP": "127.0.0.1"},
        {"Forwarded": "for=127.0.0.1"},
        {"Tailscale-User-Login": "alice@example.com"},
    ],
    ids=["x-forwarded-for", "x-real-ip", "forwarded", "tailscale-user-login"],
)
def test_3_client_headers_change_nothing(client: Any, token: str, headers: dict[str, str]) -> None:
    assert remote(client, headers=headers).status_code == 401
    authed = remote(client, headers={**headers, "Authorization": f"Bearer {token}"})
    assert authed.json["address"] == TAILNET_PEER
    assert authed.json["method"] == "token"


def test_3_proxyfix_in_front_of_the_guard_cannot_fake_loopback(app: Flask) -> None:
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_host=1)  # type: ignore[method-assign]
    response = remote(app.test_client(), headers={"X-Forwarded-For": "127.0.0.1"})
    assert response.status_code == 401


# 4. DNS rebinding (Transmission, Blizzard; Ollama accepted an empty Host and ":11434").
@pytest.mark.parametrize("host", ["attacker.example", "", ":11434", "attacker.example:5000"])
@pytest.mark.parametrize("peer", ["127.0.0.1", TAILNET_PEER])
def test_4_rebinding_host_is_rejected(client: Any, token: str, peer: str, host: str) -> None:
    response = call(client, peer=peer, host=host, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403


# 5. Cross-site requests to a bypassed localhost.
@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("POST", {"Origin": "https://attacker.example"}),
        ("POST", {"Origin": "null"}),
        ("DELETE", {"Sec-Fetch-Site": "cross-site"}),
        (
            "GET",
            {"Upgrade": "websocket", "Connection": "Upgrade", "Origin": "https://attacker.example"},
        ),
    ],
    ids=["form-post", "sandboxed-post", "fetch-delete", "websocket"],
)
def test_5_cross_site_request_to_loopback_is_refused(
    client: Any, method: str, headers: dict[str, str]
) -> None:
    assert call(client, method=method, headers=headers).status_code == 403


# 6. Secret files readable by others (code-server, Jupyter).
def test_6_token_file_private_from_the_first_byte(app: Flask, state_dir: Path) -> None:
    app.extensions["tailnet"].token_file.ensure()
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert (state_dir / "token").stat().st_mode & 0o777 == 0o600


# 7. A rotated secret ends access at once (there are no sessions in this release).
def test_7_rotated_token_stops_working(client: Any, app: Flask, token: str) -> None:
    app.extensions["tailnet"].token_file.rotate()
    assert remote(client, headers={"Authorization": f"Bearer {token}"}).status_code == 401


# 8. A credential stored in a cookie: the guard sets no cookie at all.
def test_8_no_cookie_is_set(client: Any, token: str) -> None:
    for response in (remote(client, headers={"Authorization": f"Bearer {token}"}), remote(client)):
        assert "Set-Cookie" not in response.headers


# 9. Token leaks through logs, error pages and redirects.
def test_9_token_reaches_no_log_and_no_response(
    client: Any, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        responses = [
            remote(client, headers={"Authorization": f"Bearer {token}x"}),
            remote(client, path="/missing", headers={"Authorization": f"Bearer {token}"}),
            call(
                client, headers={"X-Forwarded-For": "1.2.3.4", "Authorization": f"Bearer {token}"}
            ),
            call(client, host="evil.example", headers={"Authorization": f"Bearer {token}"}),
        ]
    for response in responses:
        assert token not in response.get_data(as_text=True)
        assert token not in str(response.headers)
    assert token not in caplog.text


# 10. Fail-open defaults: a missing address is not loopback; an empty secret never matches.
def test_10_missing_remote_addr_is_not_loopback(app: Flask) -> None:
    environ: dict[str, Any] = dict(
        EnvironBuilder(path="/", environ_overrides={"HTTP_HOST": "localhost"}).get_environ()
    )
    environ.pop("REMOTE_ADDR", None)
    status = run_wsgi_app(app.wsgi_app, environ)[1]
    assert status.startswith("403")


def test_10_empty_token_matches_empty_credential_never(tmp_path: Path) -> None:
    app = make_app(tmp_path / "state")
    secret = app.extensions["tailnet"].token_file
    secret.ensure()
    secret.path.write_text("")
    client = app.test_client()
    for header in ("Bearer ", "Bearer", "Bearer  "):
        assert remote(client, headers={"Authorization": header}).status_code == 401


# 12. Non-constant-time comparison.
def test_12_tokens_compared_with_compare_digest_on_bytes(
    client: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert remote(client, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert seen
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in seen)
    assert remote(client, headers={"Authorization": "Bearer \u2603"}).status_code == 401


# 7. Sessions that outlive a rotated secret (Jupyter #1566).
def test_7_sessions_end_when_their_credential_rotates(
    password_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = password_app.extensions["tailnet"].token_file
    by_token, by_password = password_app.test_client(), password_app.test_client()
    assert login.submit(by_token, token_file.ensure().decode()).status_code == 303
    assert login.submit(by_password, PASSWORD).status_code == 303
    token_file.rotate()
    assert login.remote(by_token).status_code == 401
    assert login.remote(by_password).status_code == 200
    monkeypatch.setenv("TAILNET_TEST_PASSWORD", "rotated")
    assert login.remote(by_password).status_code == 401


# 8. A credential stored in the cookie (code-server #7696).
def test_8_cookie_holds_neither_credential_nor_hash(password_app: Flask) -> None:
    client = password_app.test_client()
    login.submit(client, PASSWORD)
    cookie = login.session_cookie(client) or ""
    assert cookie
    assert PASSWORD not in cookie
    for algo in ("sha256", "sha1", "md5"):
        digest = hashlib.new(algo, PASSWORD.encode()).hexdigest()
        assert digest not in cookie


# 9 (continued). The login redirect never leaves the site, and a token link drops the token.
def test_9_login_next_is_no_open_redirect_and_token_links_are_cleaned(
    password_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    client = password_app.test_client()
    response = login.submit(client, PASSWORD, next_="//evil.example/steal")
    assert response.headers["Location"] == "/"
    token = password_app.extensions["tailnet"].token_file.ensure().decode()
    with caplog.at_level(logging.DEBUG):
        link = login.remote(password_app.test_client(), f"/?token={token}", headers=login.HTML)
    assert link.status_code == 303
    assert token not in link.headers["Location"]
    assert token not in caplog.text


# 11. Brute force: a per-client budget, and PAM is never called for a client over it.
def test_11_brute_force_is_refused_before_the_check(password_app: Flask) -> None:
    client = password_app.test_client()
    wrong = login.basic("x", "wrong")
    statuses = [login.remote(client, headers=wrong).status_code for _ in range(8)]
    assert statuses == [401] * 5 + [429] * 3
    assert login.remote(client, headers=login.basic("x", PASSWORD)).status_code == 429


# 9 (continued). gunicorn's access log holds the query string: a ?token= link is redacted, and
# Authorization and cookies never logged (a real access log is read in tests/test_gunicorn.py).
def test_9_access_log_never_holds_a_token_link_or_a_credential() -> None:
    token = "s3cr3t-token-value"
    atoms = redact_atoms(
        {
            "r": f"GET /page?x=1&token={token} HTTP/1.1",
            "q": f"token={token}",
            "f": f"http://100.64.0.1:8000/?token={token}",
            "{authorization}i": f"Bearer {token}",
            "{cookie}i": f"tailnet_session={token}",
        }
    )
    assert token not in repr(atoms)
    assert token not in redact_text(f"Error handling request /?TOKEN={token}")


# 13. Bind by accident: every spelling of the wildcard is refused, decided on the parsed address
# (the real gunicorn master exits before binding: tests/test_gunicorn.py).
@pytest.mark.parametrize(
    "spec",
    [
        "0.0.0.0:8000",
        "[::]:8000",
        "[::0]:8000",
        "[0:0:0:0:0:0:0:0]:8000",
        "[::ffff:0.0.0.0]:8000",
        ":8000",
        "0:0:0:0:0:0:0:0",
        "0",
    ],
)
def test_13_every_spelling_of_the_wildcard_is_refused(spec: str) -> None:
    with pytest.raises(BindRefused):
        check_bind(spec, network="tailnet", allow_wildcard=False)


def test_13_public_and_lan_binds_are_refused_under_the_default_policy() -> None:
    for spec in ("203.0.113.7:8000", "192.168.1.10:8000", "[2001:db8::1]:8000"):
        with pytest.raises(BindRefused):
            check_bind(spec, network="tailnet", allow_wildcard=False)
    assert check_bind("100.101.102.103:8000", network="tailnet", allow_wildcard=False).port == 8000
