"""The login page, logout, ``?token=`` links and the browser redirect: the people-facing side.

Everything here answers requests that arrive without a valid credential, so each view is exempt
from the credential check (the Host check, the network policy and the proxy rules still apply),
and every unsafe request is checked for CSRF: the login form carries a token bound to a cookie,
and login and logout refuse cross-site requests.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_plus

from flask import Blueprint, make_response, redirect, render_template, request
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.wrappers import Response

from . import accept
from .attempts import Limited
from .gate import PROXY_FIX_ORIG
from .hosts import cross_site
from .peer import Peer, logged_in
from .redirects import safe_next

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from .extension import GuardState

#: The login page's template, found through the app's Jinja loader: the app's own
#: ``templates/flask_tailnet/login.html`` comes first (docs/quickstart.md lists its variables).
TEMPLATE = "flask_tailnet/login.html"
_CSRF_SUFFIX = "_csrf"
#: What a query keeps unencoded when it is sent on: its delimiters and its escapes.
_QUERY_SAFE = "/?:@!$&'()*+,;=~%"


def prefers_html(environ: WSGIEnvironment) -> bool:
    """True when the client is a browser: its ``Accept`` prefers ``text/html`` to JSON (see
    :func:`flask_tailnet.accept.prefers_html`; a header over 1 kB is not a browser's)."""
    return accept.prefers_html(environ.get("HTTP_ACCEPT"))


def request_is_https(environ: WSGIEnvironment) -> bool:
    """The client's scheme was https (directly, or as the proxy says; a wrong claim only makes
    the browser drop a ``Secure`` cookie)."""
    proto = environ.get("HTTP_X_FORWARDED_PROTO") or environ.get("wsgi.url_scheme")
    return str(proto).strip().lower() == "https"


def login_url(state: GuardState, environ: WSGIEnvironment) -> str:
    """The login page's URL with ``next`` set to the request's own path and query (their bytes
    as sent, percent-encoded: a query that is not UTF-8 comes back as it was)."""
    query = environ.get("QUERY_STRING", "")
    here = request_path(environ) + ("?" + query if query else "")
    root = environ.get("SCRIPT_NAME", "")
    encoded = quote(here.encode("latin-1", "replace"), safe="")
    return f"{root}{state.settings.login_prefix}/login?next={encoded}"


def request_path(environ: WSGIEnvironment) -> str:
    """The request's path as it was sent: WSGI paths are bytes decoded as latin-1, so quote the
    original bytes."""
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return quote(raw.encode("latin-1", "replace"), safe="/@:!$&'()*+,;=~")


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


def set_session_cookie(response: Response, state: GuardState, value: str, https: bool) -> None:
    response.set_cookie(
        state.settings.cookie_name,
        value,
        max_age=int(state.settings.session_lifetime),
        path="/",
        secure=https,
        httponly=True,
        samesite="Lax",
    )


def token_link(
    state: GuardState, environ: WSGIEnvironment, anonymous: Peer
) -> Response | Limited | None:
    """For ``GET <page>?token=<token>``: log the browser in and send it to the same URL without
    the token (303), or :class:`Limited` (the guard answers 429); ``None`` when there is no
    ``token`` parameter or it is wrong (a failed attempt, counted)."""
    query = environ.get("QUERY_STRING", "")
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD") or "token=" not in query:
        return None
    kept, presented = [], None
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name) == "token":
            presented = unquote_plus(value)
        elif part:  # its bytes as sent, percent-encoded where they are not URL characters
            kept.append(quote(part.encode("latin-1", "replace"), safe=_QUERY_SAFE))
    if not presented:
        return None
    token = state.token_file.read(create=True)
    secret = presented.encode("latin-1", "replace")
    result = state.attempts.check(
        anonymous,
        secret,
        None,
        lambda: (
            logged_in(anonymous, "token") if token and hmac.compare_digest(secret, token) else None
        ),
    )
    if isinstance(result, Limited):
        return result
    if result is None or token is None:
        return None
    cookie = state.sessions.issue(user=None, method="token", credential=token)
    path = request_path(environ)
    response = redirect(safe_next(path + ("?" + "&".join(kept) if kept else "")), 303)
    if cookie is not None:
        set_session_cookie(response, state, cookie, request_is_https(environ))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


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
        method = state.credentials.resolve().method
        query_text(request.environ)  # before request.values parses it
        nonce = request.cookies.get(csrf_cookie) or secrets.token_urlsafe(32)
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
        return cross_site(environ, environ.get(PROXY_FIX_ORIG, environ).get("HTTP_HOST"))

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
        anonymous: Peer = request.environ["flask_tailnet.peer"]
        result = state.attempts.check(
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
    found = state.credentials.check(username or None, secret)
    return None if found is None else logged_in(anonymous, found[0], found[1])
