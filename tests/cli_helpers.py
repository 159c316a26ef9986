"""What the ``flask tailnet`` tests share: the installed command as a process, a login check, the
state directory spoilers, and a reader of ``flask tailnet status`` that ignores its spacing."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

from flask import Flask

from flask_tailnet.state import GuardState

from .conftest import ROOT, make_app

OWNER = pwd.getpwuid(os.geteuid()).pw_name
UNKNOWN_UID = 54321  # no passwd entry: status shows the number


def state_of(app: Flask) -> GuardState:
    state: GuardState = app.extensions["tailnet"]
    return state


def flask_cli(
    *args: str,
    state_dir: Path,
    app: str = "example_app",
    path: str | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``flask --app <app> <args>`` as a real process on ``state_dir`` (``env`` added to the
    environment, ``stdin`` as standard input, which is never a terminal); never raises."""
    environ = {**os.environ, "FLASK_TAILNET_STATE_DIR": str(state_dir), **(env or {})}
    if path is not None:
        environ["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", app, *args],
        cwd=ROOT,
        env=environ,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def password_login(state_dir: Path, password: str) -> bool:
    """Whether ``password`` logs in to a fresh app in password mode on ``state_dir``."""
    app = make_app(state_dir, auth="password", password_env="TAILNET_UNSET_FOR_TESTS")
    return state_of(app).credentials.verify(None, password) == ("password", None)


def linked_directory(state_dir: Path) -> str:
    real = state_dir.with_name("real-state")
    state_dir.rename(real)
    state_dir.symlink_to(real)
    return f"state directory {state_dir} is a symbolic link"


def directory_under_a_file(state_dir: Path) -> str:
    shutil.rmtree(state_dir)
    state_dir.parent.joinpath("file").write_text("")
    return "set TAILNET_STATE_DIR"


# A "label: value" line; a label holds no comma or parenthesis, so a continuation line such as
# "mode 0700, owner root, UNSAFE: ..." is never read as one.
_LABELLED = re.compile(r"\s*(?P<label>[A-Za-z][\w .-]*?):\s+(?P<value>.*)")


def status_entries(stdout: str) -> list[tuple[str, list[str]]]:
    """``flask tailnet status`` as ``(label, values)`` in order, whatever its columns: a line
    ``label: value`` starts an entry, a line without a label adds a value to the last one."""
    entries: list[tuple[str, list[str]]] = []
    for line in stdout.splitlines():
        match = _LABELLED.fullmatch(line)
        if match is not None:
            entries.append((match["label"], [match["value"].strip()]))
        else:
            entries[-1][1].append(line.strip())
    return entries


def status_value(stdout: str, label: str) -> str:
    """The value on the line of ``label`` (the only one: a second such line is an error)."""
    [values] = [values for found, values in status_entries(stdout) if found == label]
    return values[0]
