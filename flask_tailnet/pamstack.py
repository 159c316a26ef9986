"""What a PAM service's ``auth`` stack says, read from its files: whether a module in it lets an
account without a password through (``nullok``), and how long it makes a failure last.

Only what the guard needs is read: the ``auth`` lines of the service file and of every file it
includes (``@include``, ``include``, ``substack``), as Linux-PAM finds them (``/etc/pam.d``, then
``/usr/lib/pam.d``). Nothing here decides a login alone; :mod:`flask_tailnet.pamauth` refuses an
account without a password whatever the stack says, and uses this report when it cannot read the
account, to time its refusals, and for ``flask tailnet status``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

#: pam_unix's failure delay when its ``nodelay`` argument is absent, in seconds.
PAM_UNIX_DELAY = 2.0
#: Where pam_faildelay reads ``FAIL_DELAY`` when it has no ``delay=`` argument.
LOGIN_DEFS = "/etc/login.defs"

_CONTROLS_THAT_INCLUDE = ("include", "substack")
_MAX_DEPTH = 16  # Linux-PAM's own limit on nested includes is lower
_FIELD = re.compile(r"\[[^\]]*\]?|[^\s]+")
_FAIL_DELAY = re.compile(r"^\s*FAIL_DELAY\s+(\d{1,6})\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class StackReport:
    """The ``auth`` stack of one service, as far as its files could be read.

    ``nullok`` holds ``file:line`` of each ``auth`` line with a ``nullok`` argument (pam_unix's
    ``nullok``, ``nullok_secure``, and the same argument of any other module); ``unreadable``
    names the files of the stack that could not be read (the stack is then unknown, and treated
    as allowing empty passwords); ``fail_delay`` is the longest delay after a failure that a
    module in the stack asks for, in seconds (pam_faildelay's ``delay=``, else ``FAIL_DELAY`` of
    :data:`LOGIN_DEFS`; pam_unix's 2 s unless ``nodelay``).
    """

    service: str
    nullok: tuple[str, ...]
    unreadable: tuple[str, ...]
    fail_delay: float

    @property
    def may_pass_empty(self) -> bool:
        """True unless every file was read and no ``auth`` line has ``nullok``: fail closed."""
        return bool(self.nullok or self.unreadable)

    def describe(self) -> str:
        if self.unreadable:
            return "cannot be read in full (" + ", ".join(self.unreadable) + ")"
        if self.nullok:
            return (
                "lets accounts without a password through (nullok in "
                + ", ".join(self.nullok)
                + ")"
            )
        return "refuses accounts without a password (no nullok)"


def read_stack(service: str, dirs: tuple[str, ...]) -> StackReport:
    """The :class:`StackReport` of ``service`` (a plain file name, already checked) looked up in
    ``dirs`` in order. Never raises: what cannot be read is listed in ``unreadable``."""
    reader = _Reader(dirs)
    reader.read(service.lower(), depth=0)
    return StackReport(
        service=service,
        nullok=tuple(reader.nullok),
        unreadable=tuple(reader.unreadable),
        fail_delay=max(reader.delays, default=0.0),
    )


class _Reader:
    def __init__(self, dirs: tuple[str, ...]) -> None:
        self.dirs = dirs
        self.nullok: list[str] = []
        self.unreadable: list[str] = []
        self.delays: list[float] = []

    def read(self, name: str, depth: int) -> None:
        path = self._find(name)
        if path is None or depth > _MAX_DEPTH:
            self.unreadable.append(path or name)
            return
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read(1 << 20)
        except OSError:
            self.unreadable.append(path)
            return
        for number, fields in _lines(text):
            if fields[0] == "@include":
                if len(fields) > 1:
                    self.read(fields[1], depth + 1)
                continue
            if fields[0].lstrip("-").lower() != "auth" or len(fields) < 3:
                continue
            control, module, args = fields[1], fields[2], fields[3:]
            if control.lower() in _CONTROLS_THAT_INCLUDE:
                self.read(module, depth + 1)
                continue
            where = f"{path}:{number}"
            if any(arg.startswith("nullok") for arg in args):
                self.nullok.append(where)
            self._delay(os.path.basename(module), args)

    def _find(self, name: str) -> str | None:
        if os.path.isabs(name):
            return name
        if "/" in name or name in ("", ".", ".."):
            return None
        for directory in self.dirs:
            path = os.path.join(directory, name)
            if os.path.exists(path):
                return path
        return None

    def _delay(self, module: str, args: list[str]) -> None:
        if module == "pam_unix.so" and "nodelay" not in args:
            self.delays.append(PAM_UNIX_DELAY)
        elif module == "pam_faildelay.so":
            given = [arg[6:] for arg in args if arg.startswith("delay=")]
            if given and given[-1].isdigit():
                self.delays.append(int(given[-1]) / 1e6)
            elif not given:
                self.delays.append(_login_defs_delay())


def _lines(text: str) -> list[tuple[int, list[str]]]:
    """Each logical line (continued by a trailing backslash, ``#`` starting a comment) as its
    fields, with the number of its first physical line. A ``[...]`` field may hold spaces."""
    found: list[tuple[int, list[str]]] = []
    pending, first = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0]
        if not pending:
            first = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        fields = _fields(pending + line)
        pending = ""
        if fields:
            found.append((first, fields))
    return found


def _fields(line: str) -> list[str]:
    """Whitespace-separated fields; one that starts with ``[`` runs to the next ``]``."""
    return [match.group() for match in _FIELD.finditer(line)]


def _login_defs_delay() -> float:
    try:
        with open(LOGIN_DEFS, encoding="utf-8", errors="replace") as handle:
            found = _FAIL_DELAY.search(handle.read(1 << 20))
    except OSError:
        return 0.0
    return float(found.group(1)) if found else 0.0
