"""A test client that is a tailnet peer with a real credential (like Flask-Login's
``FlaskLoginClient``).

Nothing here turns the guard off or stands in for it: every request goes through the app's real
guard, from the socket address the client was given, with the credential a real client of that
kind sends (the app's token, a session cookie the login page would have issued, or Basic), so the
views are tested behind the checks they run behind in production::

    from flask_tailnet.testing import TailnetClient

    app.test_client_class = TailnetClient
    client = app.test_client(peer="100.64.0.7", method="token")
    assert client.get("/api/whoami").json["method"] == "token"
"""

from __future__ import annotations

import base64
from typing import Any

from flask.testing import FlaskClient

from .addresses import is_loopback, parse_ip
from .peer import Method
from .state import GuardState, guard_state

#: The socket address a :class:`TailnetClient` calls from unless told otherwise.
DEFAULT_PEER = "100.64.0.7"


class TailnetClient(FlaskClient):
    """A Flask test client calling from ``peer`` (the socket address the guard sees) and
    authenticating with ``method``, so that ``current_peer.method`` in a view is that method:

    - ``"token"`` sends ``Authorization: Bearer`` with the app's token (created, as
      ``flask tailnet token`` would, when there is none yet);
    - ``"session"`` holds the session cookie the login page issues now: with ``user``, a PAM
      login as that user; without, a login with the password when one is in force (see
      ``flask tailnet status``), else with the token;
    - ``"password"`` sends Basic with ``password``; ``"pam"`` sends Basic with ``user`` and
      ``password`` (checked by PAM, as in production);
    - ``"loopback"`` sends nothing from a loopback ``peer`` (the loopback bypass serves it);
    - ``"none"`` sends nothing (the guard asks for a credential, as it would a stranger).

    The credential is taken when the client is made: rotating the token or the session key
    afterwards makes the guard refuse it, as it would refuse a real client. A request's own
    ``headers`` win over the client's ``Authorization``.

    Raises :class:`ValueError` for a ``peer`` that is not an IP address, an unknown ``method``,
    or a credential the method needs and was not given (or cannot have: ``"loopback"`` from a
    remote address, a PAM ``user`` the guard does not allow), and :class:`RuntimeError` for an
    app without a :class:`~flask_tailnet.TailnetGuard`, or a session the guard cannot issue now
    (its message says why when ``TAILNET_AUTH`` forces a method that logs nobody in on this
    machine: ``"password"`` with no password set, ``"pam"`` where PAM cannot be used). Such an
    app still loads, and a ``"password"`` or ``"pam"`` client for it is made but refused (401),
    as a real client would be; the token works.
    """

    def __init__(
        self,
        *args: Any,
        peer: str = DEFAULT_PEER,
        method: Method = "token",
        user: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        ip = parse_ip(peer)
        if ip is None:
            raise ValueError(f"peer must be an IP address, not {peer!r}")
        self.environ_base["REMOTE_ADDR"] = str(ip)
        if method in ("none", "loopback"):
            if method == "loopback" and not is_loopback(ip):
                raise ValueError(f"method 'loopback' needs a loopback peer, not {peer!r}")
            return
        if method == "token":
            self._authorize("Bearer " + self._state().token_file.ensure().decode("latin-1"))
        elif method == "session":
            self._log_in(user)
        elif method in ("password", "pam"):
            if password is None or (method == "pam" and user is None):
                needed = "password=" if method == "password" else "user= and password="
                raise ValueError(f"method {method!r} sends Basic: give {needed}")
            pair = f"{user or ''}:{password}".encode()
            self._authorize("Basic " + base64.b64encode(pair).decode("ascii"))
        else:
            raise ValueError(
                f"unknown method {method!r}; use 'token', 'session', 'password', 'pam', "
                "'loopback' or 'none'"
            )

    def _state(self) -> GuardState:
        state = guard_state(self.application)
        if state is None:
            raise RuntimeError("TailnetClient needs an app with a TailnetGuard (init_app it first)")
        return state

    def _authorize(self, value: str) -> None:
        self.environ_base["HTTP_AUTHORIZATION"] = value

    def _log_in(self, user: str | None) -> None:
        """Hold the cookie the login page would set after a login by ``user`` now."""
        state = self._state()
        login = state.credentials.choice.resolve().method
        # The method TAILNET_AUTH forces may log nobody in here (no password yet, PAM unusable):
        # the app loads regardless, and its logins are refused, so no session can be had.
        unusable = state.credentials.choice.unusable()
        if user is not None:
            if login == "pam" and unusable is not None:
                raise RuntimeError(f"no session can be issued for 'pam' now: {unusable}")
            if login != "pam" or not state.credentials.pam_user_allowed(user):
                raise ValueError(
                    f"user= is for PAM logins, as one of TAILNET_PAM_USERS: the login method "
                    f"is {login!r}, and {user!r} {'may' if login == 'pam' else 'would'} not log in"
                )
        elif login == "pam":
            login = "token"  # the form takes the token in every mode
        if login == "token":
            state.token_file.ensure()
        credential = state.credentials.credential(login, user)
        cookie = (
            None
            if credential is None
            else state.sessions.issue(user=user, method=login, credential=credential)
        )
        if cookie is None:
            why = unusable if login != "token" and unusable is not None else None
            raise RuntimeError(
                f"no session can be issued for {login!r} now: {why}"
                if why is not None
                else f"no session can be issued for {login!r} now (see `flask tailnet status`)"
            )
        server_name = self.application.config.get("SERVER_NAME") or "localhost"
        self.set_cookie(state.settings.cookie_name, cookie, domain=server_name.partition(":")[0])
