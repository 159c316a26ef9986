"""The login page and logout: the blueprint under ``TAILNET_LOGIN_PREFIX``.

The answers the guard itself sends (the redirect here, 401, 403, 429, a ``?token=`` link's login)
are in :mod:`flask_tailnet.responses`. Everything here answers requests that arrive without a
valid credential, so each view is exempt from the credential check (the Host check, the network
policy and the proxy rules still apply), and every unsafe request is checked for CSRF: the login
form carries a token bound to a cookie, and login and logout refuse cross-site requests.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, make_response, redirect, render_template, request
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.wrappers import Response

from .attempts import Limited
from .hosts import cross_site
from .peer import PEER_KEY, Peer, logged_in
from .proxies import original_host
from .redirects import safe_next
from .responses import request_is_https, set_session_cookie

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from .state import GuardState

#: The login page's template, found through the app's Jinja loader: the app's own
#: ``templates/flask_tailnet/login.html`` comes first (docs/quickstart.md lists its variables).
TEMPLATE = "flask_tailnet/login.html"
_CSRF_SUFFIX = "_csrf"
#: The shape of the nonces the login page makes (``secrets.token_urlsafe(32)``).
_NONCE = re.compile(r"[A-Za-z0-9_-]{43}")


def query_text(environ: WSGIEnvironment) -> str:
    """The query string as text. Raises :class:`~werkzeug.exceptions.BadRequest` (400) when its
    bytes are not UTF-8: browsers percent-encode every other byte, and werkzeug's own parser
    raises ``UnicodeDecodeError`` (a 500) on such a query."""
    raw = str(environ.get("QUERY_STRING", "")).encode("latin-1", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The query string is not UTF-8.") from None


def read_form() -> None:
    """Parse the request's form now. Raises :class:`~werkzeug.exceptions.BadRequest` (400) when
    the server cannot read the body: on a malformed chunked body werkzeug's development server
    raises ``OSError`` from the input stream, gunicorn its own ``ParseException``, and werkzeug's
    form parser lets either through (a 500, with a traceback in the log). werkzeug's own HTTP
    errors (a 400, a 413) pass as they are."""
    try:
        request.form  # noqa: B018 - parsed and cached by werkzeug
    except HTTPException:
        raise
    except Exception:  # whatever the server's input stream raises: the body is unreadable
        raise BadRequest("The request body could not be read.") from None


def blueprint(
    state: GuardState, exempt: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Blueprint:
    """The login and logout views under ``TAILNET_LOGIN_PREFIX``: endpoints ``tailnet.login``
    (the page, and the form's POST) and ``tailnet.logout``, for ``url_for``."""
    bp = Blueprint(
        "tailnet", __name__, url_prefix=state.settings.login_prefix, template_folder="templates"
    )
    csrf_cookie = state.settings.cookie_name + _CSRF_SUFFIX

    def page(*, error: str | None = None, status: int = 200, username: str = "") -> Response:
        method = state.credentials.choice.resolve().method
        query_text(request.environ)  # before request.values parses it
        nonce = request.cookies.get(csrf_cookie, "")
        if _NONCE.fullmatch(nonce) is None:  # not one this page made: never echoed back
            nonce = secrets.token_urlsafe(32)
        body = render_template(
            TEMPLATE,
            app_name=state.settings.realm,
            action=request.script_root + state.settings.login_prefix + "/login",
            csrf=nonce,
            next=safe_next(request.values.get("next")),
            ask_username=method == "pam",
            username=username,
            secret_label="Token" if method == "token" else "Password",
            token_mode=method == "token",
            error=error,
        )
        response = make_response(body, status)
        response.set_cookie(
            csrf_cookie,
            nonce,
            path=state.settings.login_prefix,
            secure=request_is_https(request.environ),
            httponly=True,
            samesite="Strict",
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "same-origin"  # no-referrer makes Origin: null
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'"
        )
        return response

    def refuse_cross_site() -> bool:
        environ = request.environ
        return cross_site(environ, original_host(environ))

    @bp.get("/login", endpoint="login")
    @exempt
    def login_form() -> Response:
        return page()

    @bp.post("/login")
    @exempt
    def login_submit() -> Response:
        read_form()  # before any page() reads request.values
        if refuse_cross_site():
            return page(error="This sign-in came from another site and was refused.", status=403)
        presented_csrf = request.form.get("csrf", "")
        expected = request.cookies.get(csrf_cookie, "")
        if not expected or not hmac.compare_digest(presented_csrf.encode(), expected.encode()):
            return page(error="The form expired. Please try again.", status=400)
        username = request.form.get("username", "").strip()
        secret = request.form.get("secret", "")
        anonymous: Peer = request.environ[PEER_KEY]
        result = state.attempts.attempt(
            anonymous,
            f"{username}\x00{secret}".encode("utf-8", "surrogateescape"),
            None,
            lambda: _login(state, anonymous, username, secret),
        )
        if isinstance(result, Limited):
            response = page(
                error=f"Too many failed attempts. Try again in {result.retry_after} seconds.",
                status=429,
                username=username,
            )
            response.headers["Retry-After"] = str(result.retry_after)
            return response
        if result is None:
            return page(
                error="That did not work. Check and try again.", status=401, username=username
            )
        credential = state.credentials.credential(result.method, result.user) or b""
        cookie = state.sessions.issue(
            user=result.user,
            method=result.method,  # type: ignore[arg-type]
            credential=credential,
        )
        if cookie is None:
            return page(
                error="Signing in is not possible right now; see the server log.", status=503
            )
        response = redirect(request.script_root + safe_next(request.form.get("next")), 303)
        set_session_cookie(response, state, cookie, request_is_https(request.environ))
        response.delete_cookie(csrf_cookie, path=state.settings.login_prefix)
        return response

    @bp.post("/logout")
    @exempt
    def logout() -> Response:
        if refuse_cross_site():
            return page(error="This sign-out came from another site and was refused.", status=403)
        response = redirect(request.script_root + state.settings.login_prefix + "/login", 303)
        response.delete_cookie(state.settings.cookie_name, path="/")
        return response

    return bp


def _login(state: GuardState, anonymous: Peer, username: str, secret: str) -> Peer | None:
    found = state.credentials.verify(username or None, secret)
    return None if found is None else logged_in(anonymous, found[0], found[1])
