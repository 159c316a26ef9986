"""What the guard answers a request it does not simply serve: 401, 403, 429 (werkzeug HTTP
exceptions, so the app's error handlers run), the redirect to the login page, and the answer to a
``?token=`` login link.

The middleware (:mod:`flask_tailnet.extension`) sends these before Flask routes the request; the
login blueprint (:mod:`flask_tailnet.login`) answers with its own page. No body names the check
that failed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flask import redirect
from werkzeug import exceptions
from werkzeug.wrappers import Response

from . import accept
from .attempts import Limited
from .credentials import FORBID, bearer_credential
from .peer import Peer, logged_in
from .proxies import forwarded_scheme
from .redirects import safe_next
from .token import PARAMETER, link_parameter, secret_matches

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

    from .state import GuardState


class Unauthorized(exceptions.Unauthorized):
    """401 with ``WWW-Authenticate: Bearer`` and a small JSON body that names no failed check.

    When the request presented a bearer token, the challenge says ``error="invalid_token"`` (RFC
    6750, section 3.1), so an API client can tell a wrong token from a missing one; the body is
    the same either way.
    """

    def __init__(self, realm: str, *, invalid_token: bool = False) -> None:
        super().__init__("A credential is required.")
        self.realm = realm
        self.invalid_token = invalid_token

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        challenge = f'Bearer realm="{self.realm}"'
        if self.invalid_token:
            challenge += ', error="invalid_token"'
        return [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("WWW-Authenticate", challenge),
        ]

    def get_body(self, *args: Any, **kwargs: Any) -> str:
        return json.dumps({"error": "unauthorized", "message": self.description})


class Forbidden(exceptions.Forbidden):
    """A flat 403 with a JSON body; the same for every refusal, so it tells nothing."""

    def __init__(self) -> None:
        super().__init__("This request is not served.")

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), ("Cache-Control", "no-store")]

    def get_body(self, *args: Any, **kwargs: Any) -> str:
        return json.dumps({"error": "forbidden", "message": self.description})


class TooManyAttempts(exceptions.TooManyRequests):
    """429 with ``Retry-After`` (whole seconds) and a JSON body: the client spent its budget of
    failed attempts, and no credential of its is looked at until it may try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many failed attempts; try again later.", retry_after=retry_after)

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Retry-After", str(self.retry_after)),
        ]

    def get_body(self, *args: Any, **kwargs: Any) -> str:
        return json.dumps({"error": "too_many_attempts", "message": self.description})


def prefers_html(environ: WSGIEnvironment) -> bool:
    """True when the client is a browser: its ``Accept`` prefers ``text/html`` to JSON (see
    :func:`flask_tailnet.accept.prefers_html`; a header over 1 kB is not a browser's)."""
    return accept.prefers_html(environ.get("HTTP_ACCEPT"))


def request_is_https(environ: WSGIEnvironment) -> bool:
    """The client's scheme was https, directly or as ``X-Forwarded-Proto`` says (see
    :func:`flask_tailnet.proxies.forwarded_scheme` for why that claim is believed here)."""
    return forwarded_scheme(environ) == "https"


def request_path(environ: WSGIEnvironment) -> str:
    """The request's path as it was sent: WSGI paths are bytes decoded as latin-1, so quote the
    original bytes."""
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return quote(raw.encode("latin-1", "replace"), safe="/@:!$&'()*+,;=~")


def login_url(state: GuardState, environ: WSGIEnvironment) -> str:
    """The login page's URL with ``next`` set to the request's own path and query (their bytes
    as sent, percent-encoded: a query that is not UTF-8 comes back as it was)."""
    query = environ.get("QUERY_STRING", "")
    here = request_path(environ) + ("?" + query if query else "")
    root = environ.get("SCRIPT_NAME", "")
    encoded = quote(here.encode("latin-1", "replace"), safe="")
    return f"{root}{state.settings.login_prefix}/login?next={encoded}"


def login_redirect(state: GuardState, environ: WSGIEnvironment) -> Response:
    """303 to the login page, which sends the browser back here after it logged in."""
    response = redirect(login_url(state, environ), 303)
    response.headers["Cache-Control"] = "no-store"
    return response


def set_session_cookie(response: Response, state: GuardState, value: str, https: bool) -> None:
    """Set the session cookie: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` when ``https``."""
    response.set_cookie(
        state.settings.cookie_name,
        value,
        max_age=int(state.settings.session_lifetime),
        path="/",
        secure=https,
        httponly=True,
        samesite="Lax",
    )


def token_link_login(
    state: GuardState, environ: WSGIEnvironment, anonymous: Peer
) -> Response | Limited | None:
    """The answer to ``GET``/``HEAD <page>?token=<token>``: with the right token, a session cookie
    and a 303 to the same URL without the token; :class:`Limited` (answered 429 by
    :func:`denial`) when the client is over its budget. ``None`` (the request goes on as one
    without a credential) for another method, no or an empty ``token`` parameter, or a wrong
    token (a failed attempt, counted)."""
    query = environ.get("QUERY_STRING", "")
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD") or PARAMETER + "=" not in query:
        return None
    presented, kept = link_parameter(query)
    if not presented:
        return None
    token = state.token_file.read(create=True)
    secret = presented.encode("latin-1", "replace")
    result = state.attempts.attempt(
        anonymous,
        secret,
        None,
        lambda: logged_in(anonymous, "token") if secret_matches(secret, token) else None,
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


def denial(
    state: GuardState,
    environ: WSGIEnvironment,
    result: object,
    anonymous: Peer,
    exempt_view: Callable[[WSGIEnvironment], bool] | None,
) -> WSGIApplication | exceptions.HTTPException | None:
    """The answer to a cascade that did not admit the peer: 429 over the budget, 403 for a
    cross-site request on a cookie; else a ``?token=`` login (a response, or 429), ``None`` when
    ``exempt_view`` says the view is exempt (the app then serves it to the anonymous peer), and
    last :func:`challenge`."""
    if isinstance(result, Limited):
        return TooManyAttempts(result.retry_after)
    if result is FORBID:
        return Forbidden()
    link = token_link_login(state, environ, anonymous)
    if isinstance(link, Limited):
        return TooManyAttempts(link.retry_after)
    if link is not None:
        return link
    if exempt_view is not None and exempt_view(environ):
        return None
    return challenge(state, environ)


def challenge(state: GuardState, environ: WSGIEnvironment) -> WSGIApplication | Unauthorized:
    """Ask for a credential: a browser's GET or HEAD is sent to the login page, anything else
    gets 401 (saying ``invalid_token`` when a bearer token was presented)."""
    if environ.get("REQUEST_METHOD") in ("GET", "HEAD") and prefers_html(environ):
        return login_redirect(state, environ)
    presented = bearer_credential(environ.get("HTTP_AUTHORIZATION")) is not None
    return Unauthorized(state.settings.realm, invalid_token=presented)
