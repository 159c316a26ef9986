"""TailnetGuard: the Flask adapter around the pure gate and the credential cascade.

The guard wraps ``app.wsgi_app``, so every request (404s, static files, automatic OPTIONS
included) is decided before Flask routes it, at the cost of one function call: a
``before_request`` hook alone would cost more than the whole decision. Refusals are raised
through Flask's own error handling, so ``@app.errorhandler(401)`` and ``(403)`` work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Flask, request
from werkzeug import exceptions
from werkzeug.local import LocalProxy

from . import devserver, login
from . import settings as settings_module
from .attempts import Limited
from .credentials import DENY, FORBID
from .gate import Outcome
from .peer import NOBODY, PEER_KEY, Peer
from .redaction import redact_logger
from .responses import (
    Forbidden,
    Unauthorized,
    login_redirect,
    prefers_html,
    token_link_login,
    too_many,
)
from .secretfile import UnsafeSecretFile, ensure_private_dir
from .sessions import SESSION_KEY_FILE
from .state import EXTENSION_KEY, GuardState, build_state, guard_state
from .token import TOKEN_FILE

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Besides this module's own names, the ones re-exported under the import paths they had before
#: they got modules of their own (state.py, peer.py, sessions.py, token.py).
__all__ = [
    "EXTENSION_KEY",
    "PEER_KEY",
    "SESSION_KEY_FILE",
    "TOKEN_FILE",
    "GuardState",
    "SlowPaths",
    "TailnetGuard",
    "build_state",
    "current_peer",
    "guard_middleware",
    "guard_state",
]

log = logging.getLogger("flask_tailnet")

_EXEMPT_ATTR = "_tailnet_exempt"

F = TypeVar("F", bound=Callable[..., Any])


class TailnetGuard:
    """Protect a Flask app: local requests just work, tailnet peers authenticate, others are
    refused.

    ``settings`` are ``TAILNET_*`` values given by keyword, with or without the prefix and in any
    case (``network="local"``); they take precedence over ``app.config``.
    """

    def __init__(self, app: Flask | None = None, **settings: Any) -> None:
        self._overrides = {_setting_key(k): v for k, v in settings.items()}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the settings and install the guard. Calling it again for the same app does
        nothing. Raises :class:`~flask_tailnet.ConfigurationError` for a bad setting, and when
        ``flask run`` would start werkzeug's debugger on an address other than loopback (it
        answers before the guard; see :mod:`flask_tailnet.devserver`). ``app.run()`` then
        refuses the same."""
        if EXTENSION_KEY in app.extensions:
            return
        problem = devserver.flask_run_problem()
        if problem is not None:
            raise devserver.DebuggerRefused(problem)
        config = {k: v for k, v in app.config.items() if k.startswith("TAILNET_")}
        config.update(self._overrides)
        conf = settings_module.load(config, instance_path=app.instance_path, app_name=app.name)
        state = build_state(conf, app.name)
        if conf.state_dir.exists():
            try:
                ensure_private_dir(conf.state_dir)
            except UnsafeSecretFile as exc:
                log.error("flask-tailnet: %s; every credential is refused until fixed", exc)
        app.extensions[EXTENSION_KEY] = state
        redact_logger(logging.getLogger("werkzeug"))  # `flask run` logs each request line
        app.register_blueprint(login.blueprint(state, self.exempt))
        app.wsgi_app = guard_middleware(app, app.wsgi_app, state)  # type: ignore[assignment]
        devserver.refuse_debugger_in_app_run(app)

    @staticmethod
    def exempt(view: F) -> F:
        """Serve ``view`` without a credential. The Host check, the network policy, the allowlist,
        the proxy rules and the cross-site refusal of the loopback bypass still apply."""
        setattr(view, _EXEMPT_ATTR, True)
        return view


class SlowPaths:
    """What the guard does with a request that the gate and the cascade did not admit: a
    ``?token=`` link logs the browser in, an exempt view is served to the anonymous peer, a
    browser is sent to the login page, and every refusal (401, 403, 429) is answered through the
    app's error handlers. None of it runs for an admitted request."""

    def __init__(self, app: Flask, wsgi_app: WSGIApplication, state: GuardState) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.state = state

    def unauthenticated(
        self, environ: WSGIEnvironment, anonymous: Peer
    ) -> WSGIApplication | exceptions.HTTPException | None:
        """What to answer a request without a valid credential: a ``?token=`` login (a
        response), ``None`` when its view is exempt (the app then serves it to the anonymous
        peer), a redirect to the login page for a browser's GET, else 401."""
        link = token_link_login(self.state, environ, anonymous)
        if link is not None:
            return link
        if self.exempt_view(environ):
            return None
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD") and prefers_html(environ):
            return login_redirect(self.state, environ)
        return Unauthorized(self.state.settings.realm)

    def exempt_view(self, environ: WSGIEnvironment) -> bool:
        """Whether the request routes to a view marked exempt. Only the URL map is consulted: no
        request context is pushed, so a request without a credential opens no session (its
        ``Cookie`` header is not parsed) and runs none of the app's hooks. A request that does
        not route (404, 405, a redirect to add a slash, a Host ``TRUSTED_HOSTS`` refuses) is
        not exempt."""
        app = self.app
        try:
            adapter = app.create_url_adapter(app.request_class(environ))
            if adapter is None:
                return False
            rule, _ = adapter.match(return_rule=True)
        except exceptions.HTTPException:
            return False
        view = app.view_functions.get(rule.endpoint)
        return getattr(view, _EXEMPT_ATTR, False) is True

    def denied(
        self, environ: WSGIEnvironment, result: object, anonymous: Peer
    ) -> WSGIApplication | exceptions.HTTPException | None:
        """The answer to a cascade that did not admit the peer (see :meth:`unauthenticated`)."""
        if isinstance(result, Limited):
            return too_many(result.retry_after)
        if result is FORBID:
            return Forbidden()
        return self.unauthenticated(environ, anonymous)

    def refuse(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        error: exceptions.HTTPException,
    ) -> Iterable[bytes]:
        """Answer with ``error`` through the app's error handlers for its status; the app's views
        and before-request hooks never run. If that fails, the bare ``error`` is the answer."""
        app = self.app
        try:
            with app.request_context(environ):
                try:
                    rv = app.handle_http_exception(error)
                except Exception as exc:  # an error handler that failed
                    rv = app.handle_exception(exc)
                response = app.finalize_request(rv, from_error_handler=True)
        except Exception:
            log.exception("flask-tailnet: the app's error handling failed; answering plainly")
            return error(environ, start_response)
        return response(environ, start_response)


def guard_middleware(app: Flask, wsgi_app: WSGIApplication, state: GuardState) -> WSGIApplication:
    """The WSGI callable that applies ``state`` to every request before ``wsgi_app`` sees it.

    A closure rather than an object with ``__call__``, and with every name it uses bound
    locally, because it runs on every request (see benchmarks/).
    """
    admit = state.gate.admit
    steps = state.steps
    slow = SlowPaths(app, wsgi_app, state)
    serve, authenticate, deny, peer_key = Outcome.SERVE, Outcome.AUTHENTICATE, DENY, PEER_KEY

    def guard(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            verdict = admit(environ)
            outcome = verdict.outcome
            peer = verdict.peer
            if outcome is not serve:
                environ[peer_key] = peer
                if outcome is not authenticate:
                    return slow.refuse(environ, start_response, Forbidden())
                for step in steps:
                    result = step(environ, peer)
                    if result is not None:
                        break
                else:
                    result = deny
                if result.__class__ is not Peer:
                    answer = slow.denied(environ, result, peer)
                    if answer is not None:
                        if isinstance(answer, exceptions.HTTPException):
                            return slow.refuse(environ, start_response, answer)
                        return answer(environ, start_response)
                else:
                    peer = result
        except Exception:
            log.exception("flask-tailnet: internal error while deciding a request; refused")
            return Forbidden()(environ, start_response)
        environ[peer_key] = peer
        return wsgi_app(environ, start_response)

    guard.tailnet_state = state  # type: ignore[attr-defined]
    guard.wrapped = wsgi_app  # type: ignore[attr-defined]
    return guard


def _setting_key(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("TAILNET_") else f"TAILNET_{upper}"


def _current_peer() -> Peer:
    peer = request.environ.get(PEER_KEY, NOBODY)
    return cast(Peer, peer)


#: The :class:`Peer` of the current request (like Flask-Login's ``current_user``).
current_peer: Peer = cast(Peer, LocalProxy(_current_peer))
