"""The login password: from an environment variable, else from the password file (pure).

The password file holds plain text, or a werkzeug password hash (``scrypt:`` or ``pbkdf2:``) as
``flask tailnet password`` writes it. Both sources are read at each check (the file through the
state directory's watch, see :mod:`flask_tailnet.watch`), so setting, changing or removing them
takes effect without a restart.
"""

from __future__ import annotations

import hmac
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal

from werkzeug.security import check_password_hash

try:
    import posix
except ImportError:  # pragma: no cover - not POSIX
    posix = None  # type: ignore[assignment]

from .secretfile import SecretFile

PASSWORD_FILE = "password"  # noqa: S105 - a file name
_CPYTHON = sys.implementation.name == "cpython"
_HASH_PREFIXES = (b"scrypt:", b"pbkdf2:")

#: The longest password, in characters, that a login accepts and ``flask tailnet password`` sets.
MAX_PASSWORD_LENGTH = 1024


def password_problem(password: str) -> str | None:
    """Why ``password`` is refused, or ``None``: the one set of rules for a password that is set
    (``flask tailnet password``) and for one presented at a login (:meth:`PasswordSource.verify`).

    Refused: an empty password or one of only whitespace, a NUL character (HMAC pads keys with
    NULs, so "pw\\0" would match a hash of "pw"), more than :data:`MAX_PASSWORD_LENGTH`
    characters, and text that cannot be encoded as UTF-8 (a lone surrogate from a bad locale).
    """
    if not password.strip():
        return "an empty password"
    if "\x00" in password:
        return "a password with a NUL character"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"a password longer than {MAX_PASSWORD_LENGTH} characters"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return "a password that is not valid text (check the terminal's encoding)"
    return None


@dataclass(frozen=True, slots=True)
class Password:
    """The password now in force: where it comes from, and its stored form (plain or a hash)."""

    origin: Literal["env", "file"]
    stored: bytes

    @property
    def hashed(self) -> bool:
        return self.stored.startswith(_HASH_PREFIXES)


def cpython_environ_bytes(environ: Mapping[str, str]) -> Mapping[bytes, bytes] | None:
    """The bytes dictionary behind ``environ`` when ``environ`` is ``os.environ`` on CPython under
    POSIX, else ``None``.

    That dictionary is CPython's private ``os.environ._data``, which is ``posix.environ`` and
    which ``os.environ`` updates in place on every change. It is used only when all of that holds
    (checked, not assumed): on another interpreter, or where ``_data`` is something else, the
    mapping itself is read.
    """
    if environ is not os.environ or not _CPYTHON or posix is None:
        return None
    data = getattr(environ, "_data", None)
    return data if isinstance(data, dict) and data is getattr(posix, "environ", None) else None


def _variable_reader(environ: Mapping[str, str], name: str) -> Callable[[], bytes | None]:
    """A function that reads ``name`` from ``environ`` now, as bytes (``None`` when unset).

    Through ``os.environ`` a read costs four Python calls and a decode, on every Basic request,
    which measured two points of a bare request; where :func:`cpython_environ_bytes` finds the
    bytes dictionary behind it, that is read directly instead.
    """
    data = cpython_environ_bytes(environ)
    if data is not None:
        return partial(data.get, os.fsencode(name))

    def read() -> bytes | None:
        value = environ.get(name)
        return None if value is None else value.encode("utf-8", "surrogateescape")

    return read


class PasswordSource:
    """The variable ``env_name`` when it is set and not empty, else the password file."""

    def __init__(
        self, env_name: str, password_file: SecretFile, environ: Mapping[str, str] = os.environ
    ) -> None:
        self.env_name = env_name
        self.file = password_file
        self._environ = environ
        self._last: tuple[str, bytes, Password] | None = None
        self._variable = _variable_reader(environ, env_name)

    def current(self) -> Password | None:
        """The password in force, or ``None`` when neither source holds one (an empty variable,
        and a missing, empty or untrusted file, hold none)."""
        value = self._variable()
        origin: Literal["env", "file"] = "env" if value else "file"
        source = value if value else self.file.read()
        if not source:
            return None
        last = self._last  # the same source gives the same (immutable) value, made once
        if last is not None and last[0] == origin and last[1] == source:
            return last[2]
        password = Password(origin, source)
        self._last = (origin, source, password)
        return password

    def from_env(self) -> bool:
        """True when the variable holds the password in force (it is set and not empty)."""
        return bool(self._variable())

    def verify(self, presented: str) -> bool:
        """True if ``presented`` is the password in force. False when there is none, and for an
        attempt that :func:`password_problem` refuses; never raises."""
        password = self.current()
        if password is None or password_problem(presented) is not None:
            return False
        attempt = presented.encode("utf-8")
        if password.hashed:
            try:
                return check_password_hash(password.stored.decode("ascii"), presented)
            except (ValueError, UnicodeDecodeError):
                return False
        return hmac.compare_digest(attempt, password.stored)
