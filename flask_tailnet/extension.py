"""TailnetGuard: the Flask adapter around the pure gate and the credential cascade.

The guard wraps ``app.wsgi_app``, so every request (404s, static files, automatic OPTIONS
included) is decided before Flask routes it, at the cost of one function call: a
``before_request`` hook alone would cost more than the whole decision. Refusals are raised
through Flask's own error handling, so ``@app.errorhandler(401)``, ``(403)`` and ``(429)`` work.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Blueprint, Flask, current_app, request
from werkzeug import exceptions
from werkzeug.local import LocalProxy

from . import devserver, login
from . import settings as settings_module
from .credentials import DENY
from .gate import Outcome
from .identity import IdentityRule
from .peer import NOBODY, PEER_KEY, Peer
from .redaction import redact_logger
from .responses import Forbidden, challenge, denial
from .secretfile import UnsafeSecretFile, ensure_private_dir
from .sessions import SESSION_KEY_FILE
from .state import EXTENSION_KEY, GuardState, build_state, guard_state
from .tailscaled_watch import describe
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
_REQUIRED_ATTR = "_tailnet_login_required"

F = TypeVar("F", bound=Callable[..., Any])
#: What :meth:`TailnetGuard.exempt` marks: a view function, or a blueprint.
E = TypeVar("E", bound=Callable[..., Any] | Blueprint)


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
        """Validate the settings and install the guard. Calling it again for the same app with
        the same settings does nothing; with other settings it raises
        :class:`~flask_tailnet.ConfigurationError` (the app keeps the guard it has, so the new
        settings would never apply). Raises the same for a bad setting, and when ``flask run``
        would start werkzeug's debugger on an address other than loopback (it answers before the
        guard; see :mod:`flask_tailnet.devserver`). ``app.run()`` then refuses the same."""
        config = {k: v for k, v in app.config.items() if k.startswith("TAILNET_")}
        config.update(self._overrides)
        installed = guard_state(app)
        if installed is not None:
            conf = settings_module.load(config, instance_path=app.instance_path, app_name=app.name)
            if conf != installed.settings:
                raise settings_module.ConfigurationError(
                    f"the app {app.name!r} already has a TailnetGuard with other settings; a "
                    "second guard would never run: give every setting to the first one"
                )
            return
        problem = devserver.flask_run_problem()
        if problem is not None:
            raise devserver.DebuggerRefused(problem)
        conf = settings_module.load(config, instance_path=app.instance_path, app_name=app.name)
        state = build_state(conf, app.name)
        if conf.state_dir.exists():
            try:
                ensure_private_dir(conf.state_dir)
            except UnsafeSecretFile as exc:
                log.error("flask-tailnet: %s; every credential is refused until fixed", exc)
        _log_tailscaled(state)
        redact_logger(logging.getLogger("werkzeug"))  # `flask run` logs each request line
        app.register_blueprint(login.blueprint(state, self.exempt))
        app.wsgi_app = guard_middleware(app, app.wsgi_app, state)  # type: ignore[assignment]
        # Last: an app that has the state has the guard (a second init_app, and gunicorn's bind
        # check, trust it), so a registration that failed above leaves none.
        app.extensions[EXTENSION_KEY] = state
        devserver.refuse_debugger_in_app_run(app)

    @staticmethod
    def exempt(view: E) -> E:
        """Serve ``view`` without a credential, or every view of a :class:`~flask.Blueprint`
        (its nested blueprints and its static files included, whenever they are registered; a view
        belongs to the blueprint its endpoint's dotted name starts with, as in Flask). The
        Host check, the network policy, the allowlist, the proxy rules and the cross-site refusal
        of the loopback bypass still apply, and :meth:`login_required` wins over it.

        Raises :class:`TypeError` for anything else (a class, a string, ``None``, the app): a
        mark that nothing reads would leave the view asking for a credential without a word.
        """
        if not isinstance(view, Blueprint):
            _refuse_non_view("exempt", view)
        try:
            setattr(view, _EXEMPT_ATTR, True)
        except (AttributeError, TypeError):
            raise TypeError(f"guard.exempt cannot mark {view!r}: decorate the function") from None
        return view

    @staticmethod
    def login_required(view: F) -> F:
        """Ask for a credential before ``view`` runs, even from loopback (like Flask-HTTPAuth's
        ``login_required``): for the one view that not every local process should reach.

        A peer the loopback bypass served (``current_peer.method == "loopback"``) must present
        what a remote peer presents: the bearer token, a session cookie, or Basic; the cascade
        and its refusals are the remote peer's (a browser's GET goes to the login page, an API
        client gets 401, a cross-site request riding on a cookie 403). The peer the view then
        sees is the authenticated one (``local`` is false). Remote peers were already asked by
        the guard; an anonymous peer that an exempt view or blueprint let through is asked
        here, so this decorator wins over :meth:`exempt`. Other views pay nothing for it.

        The app's ``before_request`` hooks run before this check, as they run for every other
        loopback request. Raises :class:`TypeError` for anything that is not a view function.
        """
        _refuse_non_view("login_required", view)

        @functools.wraps(view)
        def required(*args: Any, **kwargs: Any) -> Any:
            peer = request.environ.get(PEER_KEY, NOBODY)
            if peer.method in _ASKED_HERE:
                answer = _credential_for_view(request.environ, peer)
                if answer is not None:
                    if isinstance(answer, exceptions.HTTPException):
                        raise answer
                    return answer
            return current_app.ensure_sync(view)(*args, **kwargs)

        setattr(required, _REQUIRED_ATTR, True)
        return cast(F, required)

    @staticmethod
    def require(
        *,
        users: Iterable[str] = (),
        tags: Iterable[str] = (),
        capability: str | None = None,
    ) -> Callable[[F], F]:
        """Serve the view only to peers whose Tailscale identity matches, 403 otherwise:
        ``users`` (login names, case-insensitive, or ``*@example.com``; never a tagged node) or
        ``tags`` (``tag:name``), either list when both are given, and, when ``capability`` is
        given, a peer granted it in the tailnet policy file. A peer served as local (loopback, or
        a process on this node's own tailnet address) passes; a remote peer without an identity
        from tailscaled never does, whatever credential it presented.

        Raises :class:`ValueError` for a malformed entry, and :class:`TypeError` when nothing
        is given (a gate that narrows nothing is a mistake) or for anything that is not a view.
        """
        if isinstance(users, str) or isinstance(tags, str):
            raise TypeError("guard.require takes lists: users=['alice@example.com']")
        rule = IdentityRule.parse(users, tags, capability)
        if not rule.restricts:
            raise TypeError("guard.require needs users=, tags= or capability=")

        def decorate(view: F) -> F:
            _refuse_non_view("require", view)

            @functools.wraps(view)
            def required(*args: Any, **kwargs: Any) -> Any:
                peer = request.environ.get(PEER_KEY, NOBODY)
                if not peer.local and not rule.admits(peer.tailscale):
                    raise Forbidden()
                return current_app.ensure_sync(view)(*args, **kwargs)

            return cast(F, required)

        return decorate


#: The methods of peers that :meth:`TailnetGuard.login_required` asks for a credential.
_ASKED_HERE = frozenset({"loopback", "none"})


def _refuse_non_view(decorator: str, view: object) -> None:
    """Raise :class:`TypeError` unless ``view`` can be a view function."""
    if isinstance(view, type):
        raise TypeError(
            f"guard.{decorator} takes a view function, not the class {view.__name__}: "
            f"list it in the class's `decorators` or decorate {view.__name__}.as_view(...)"
        )
    if not callable(view) or isinstance(view, Flask):
        raise TypeError(f"guard.{decorator} takes a view function, not {view!r}")


def _credential_for_view(environ: WSGIEnvironment, peer: Peer) -> Any:
    """For a view under :meth:`TailnetGuard.login_required`: ``None`` once a credential admitted
    the peer (now the request's peer), else the refusal to raise or the response to return.

    A loopback peer goes through the whole cascade, as a remote one does in the middleware. An
    anonymous peer already went through it there (an exempt view served it): it is not asked to
    spend another attempt, only sent to log in.
    """
    state = guard_state(current_app)
    if state is None:
        raise RuntimeError("guard.login_required is used on an app without a TailnetGuard")
    if peer.method == "none":
        return challenge(state, environ)
    # A peer the bypass served stays `local`: its attempts here spend from the budget.
    anonymous = Peer(
        peer.address, "none", local=peer.local, via_proxy=peer.via_proxy, tailscale=peer.tailscale
    )
    for step in state.steps:
        result = step(environ, anonymous)
        if result is not None:
            break
    else:
        result = DENY
    if isinstance(result, Peer):
        environ[PEER_KEY] = result
        return None
    return denial(state, environ, result, anonymous, exempt_view=None)


class SlowPaths:
    """What the guard does with a request that the gate and the cascade did not admit: a
    ``?token=`` link logs the browser in, an exempt view is served to the anonymous peer, a
    browser is sent to the login page, and every refusal (401, 403, 429) is answered through the
    app's error handlers. None of it runs for an admitted request."""

    def __init__(self, app: Flask, wsgi_app: WSGIApplication, state: GuardState) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.state = state

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
        if getattr(view, _EXEMPT_ATTR, False) is True:
            return True
        # "outer.inner.view": the blueprints it was registered through, innermost first
        blueprint, _, _ = rule.endpoint.rpartition(".")
        while blueprint:
            if getattr(app.blueprints.get(blueprint), _EXEMPT_ATTR, False) is True:
                return True
            blueprint, _, _ = blueprint.rpartition(".")
        return False

    def denied(
        self, environ: WSGIEnvironment, result: object, anonymous: Peer
    ) -> WSGIApplication | exceptions.HTTPException | None:
        """The answer to a cascade that did not admit the peer (see :func:`denial`)."""
        return denial(self.state, environ, result, anonymous, self.exempt_view)

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
    identify = state.identify
    steps = state.steps
    slow = SlowPaths(app, wsgi_app, state)
    serve, authenticate, deny, peer_key = Outcome.SERVE, Outcome.AUTHENTICATE, DENY, PEER_KEY

    def guard(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            verdict = identify(environ, admit(environ))
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


def _log_tailscaled(state: GuardState) -> None:
    """The start-up line: what the guard found of tailscaled (a warning when a loopback request
    cannot be trusted as local, an error when ``"required"`` identity or a gate has no
    tailscaled: every remote peer is then refused)."""
    snapshot = state.identify.watch.current()
    conf = state.settings
    lines = describe(
        snapshot, needs_identity=conf.needs_identity, funnel_served=conf.network == "any"
    )
    text = "flask-tailnet: " + "; ".join(lines)
    needed_by = state.settings.identity_needed_by
    if needed_by is not None and not snapshot.reachable:
        log.error("%s; %s: every remote peer is refused until tailscaled answers", text, needed_by)
    elif snapshot.unknown or snapshot.problem is not None:
        log.warning("%s", text)
    else:
        log.info("%s", text)


def _setting_key(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("TAILNET_") else f"TAILNET_{upper}"


def _current_peer() -> Peer:
    peer = request.environ.get(PEER_KEY, NOBODY)
    return cast(Peer, peer)


#: The :class:`Peer` of the current request (like Flask-Login's ``current_user``).
current_peer: Peer = cast(Peer, LocalProxy(_current_peer))
