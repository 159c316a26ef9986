"""The identity examples of docs/quickstart.md, run as written: copied out of the page into an app
and asked by a local peer and by tailnet peers that a stand-in tailscaled names. A snippet that
answers 500 to a local peer (which ``@guard.require`` lets through, with no Tailscale identity)
teaches every reader to write the same crash."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_tailnet import TailnetGuard, current_peer

from .conftest import call
from .tailscaled_stand_in import StandInTailscaled

QUICKSTART = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"
ALICE = "100.64.10.7"
TAGGED_CI = "100.64.10.8"
BOB = "100.64.10.9"
CAPABILITY = "example.com/cap/deploy"


def section_code(heading: str) -> str:
    """The first ```python block under ``heading`` in docs/quickstart.md."""
    text = QUICKSTART.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block under {heading!r}"
    return match.group(1)


@pytest.fixture
def app(state_dir: Path, tailscaled: StandInTailscaled) -> Flask:
    tailscaled.add_peer(ALICE, login="alice@example.com", cap_map={CAPABILITY: [{"role": "admin"}]})
    tailscaled.add_peer(TAGGED_CI, tags=["tag:ci"], node="ci.tail1a2b3.ts.net")
    tailscaled.add_peer(BOB, login="bob@example.com")
    app = Flask("docs_example")
    app.config.update(TESTING=True, TAILNET_STATE_DIR=str(state_dir), TAILNET_AUTH="token")
    guard = TailnetGuard(app, tailscaled_socket=tailscaled.path)
    namespace: dict[str, Any] = {"app": app, "guard": guard, "current_peer": current_peer}
    exec(section_code("Views for some Tailscale users only"), namespace)
    return app


ASKED = {
    "local-peer-admin": ("GET", "/admin", "127.0.0.1", 200),
    "local-peer-deploy": ("POST", "/deploy", "127.0.0.1", 200),
    "alice-admin": ("GET", "/admin", ALICE, 200),
    "alice-with-the-capability-deploys": ("POST", "/deploy", ALICE, 200),
    "tagged-ci-node-admin": ("GET", "/admin", TAGGED_CI, 200),
    "bob-admin-refused": ("GET", "/admin", BOB, 403),
    "bob-without-the-capability-refused": ("POST", "/deploy", BOB, 403),
}


@pytest.mark.parametrize(("method", "path", "peer", "status"), ASKED.values(), ids=ASKED.keys())
def test_the_require_examples_of_the_quickstart_answer_every_peer(
    app: Flask, method: str, path: str, peer: str, status: int
) -> None:
    token = app.extensions["tailnet"].token_file.ensure().decode()
    headers = {} if peer == "127.0.0.1" else {"Authorization": f"Bearer {token}"}
    host = "localhost" if peer == "127.0.0.1" else "100.64.10.1"
    answer = call(app.test_client(), path, peer=peer, host=host, method=method, headers=headers)
    assert answer.status_code == status, answer.get_data(as_text=True)[:300]
