"""One app's guard state, ``app.extensions["tailnet"]``: what it holds, and how it is built from
validated settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from . import settings as settings_module
from .addresses import Policy
from .attempts import Attempts
from .credentials import BasicAuth, BearerToken, LoginCredentials, SessionCookie, Step
from .gate import Gate
from .identify import Identify
from .methods import MethodChoice
from .pamauth import PamVerifier, pam_problem
from .passwords import PASSWORD_FILE, PasswordSource
from .ratelimit import AttemptBudget
from .secretfile import MIN_SECRET_LENGTH, SecretFile
from .sessions import SESSION_KEY_FILE, SessionCodec
from .tailscaled_watch import TailscaledWatch
from .token import token_file as make_token_file

if TYPE_CHECKING:
    from flask import Flask

#: The key of ``app.extensions`` that holds the :class:`GuardState`.
EXTENSION_KEY = "tailnet"


@dataclass(frozen=True, slots=True)
class GuardState:
    """Everything one app's guard holds: ``app.extensions["tailnet"]``."""

    settings: settings_module.Settings
    gate: Gate
    identify: Identify
    token_file: SecretFile
    credentials: LoginCredentials
    sessions: SessionCodec
    attempts: Attempts
    steps: tuple[Step, ...]


def build_state(conf: settings_module.Settings, namespace: str) -> GuardState:
    """Everything one app's guard needs, from validated settings. What depends on the machine (PAM
    unusable under ``TAILNET_AUTH="pam"``, no password yet under ``"password"``) does not stop the
    app from loading: those logins are refused per request (see
    :meth:`~flask_tailnet.methods.MethodChoice.unusable`) and ``flask tailnet status`` says
    why."""
    token_file = make_token_file(conf.state_dir)
    problem = pam_problem(conf.pam_service)
    pam = None
    if problem is None and conf.auth in ("auto", "pam"):
        try:
            pam = PamVerifier(conf.pam_service, conf.pam_users)
        except (TypeError, ValueError) as exc:
            raise settings_module.ConfigurationError(
                f"{settings_module.PAM_USERS}: {exc}"
            ) from None
    passwords = PasswordSource(conf.password_env, SecretFile(conf.state_dir, PASSWORD_FILE))
    try:
        budget = AttemptBudget(conf.login_limits, conf.ratelimit_storage_uri, namespace=namespace)
    except ValueError as exc:
        raise settings_module.ConfigurationError(str(exc)) from None
    attempts = Attempts(budget)
    credentials = LoginCredentials(token_file, MethodChoice(conf.auth, passwords, pam, problem))
    key_file = SecretFile(conf.state_dir, SESSION_KEY_FILE, min_length=MIN_SECRET_LENGTH)
    sessions = SessionCodec(key_file, conf.session_lifetime)
    policy = Policy(conf.network, conf.allowlist)
    return GuardState(
        settings=conf,
        gate=Gate(
            policy=policy,
            allowed_hosts=conf.allowed_hosts,
            trusted_proxies=conf.trusted_proxies,
            local_bypass=conf.local_bypass,
        ),
        identify=Identify(
            watch=TailscaledWatch(conf.tailscaled_socket, conf.userspace),
            mode=conf.identity,
            rule=conf.identity_rule,
            tailscale_login=conf.tailscale_login,
            policy=policy,
            local_bypass=conf.local_bypass,
        ),
        token_file=token_file,
        credentials=credentials,
        sessions=sessions,
        attempts=attempts,
        steps=(  # API clients' bearer token first: it is the most frequent and cheapest
            BearerToken(token_file, attempts).authenticate,
            SessionCookie(conf.cookie_name, sessions, credentials).authenticate,
            BasicAuth(credentials, attempts).authenticate,
        ),
    )


def guard_state(app: Flask) -> GuardState | None:
    """The guard state of ``app``, or ``None`` when the app does not use the extension."""
    return cast("GuardState | None", app.extensions.get(EXTENSION_KEY))
