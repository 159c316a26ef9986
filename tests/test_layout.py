"""Where a rule lives: no import cycle between the package's modules, and the rules that were once
written in several modules each read in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import flask_tailnet

PACKAGE = Path(flask_tailnet.__file__).parent
MODULES = {path.stem: path for path in PACKAGE.glob("*.py")}


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports at module level, ``TYPE_CHECKING`` blocks included
    (an import inside a function runs only when it is called, after both modules loaded)."""
    found: set[str] = set()
    body = ast.parse(path.read_text(encoding="utf-8")).body
    nodes = [*body, *(n for node in body if isinstance(node, ast.If) for n in node.body)]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found & MODULES.keys()


def _cycle() -> list[str] | None:
    graph = {name: _imports(path) for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for dependency in sorted(graph[name]):
            found = visit(dependency, [*path, name])
            if found is not None:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found is not None:
            return found
    return None


def test_no_import_cycle() -> None:
    assert _cycle() is None


@pytest.mark.parametrize(
    ("text", "home"),
    [
        pytest.param('"werkzeug.proxy_fix.orig"', "proxies", id="proxyfix-originals"),
        pytest.param('"HTTP_X_FORWARDED_PROTO")', "proxies", id="forwarded-scheme-read"),
        pytest.param('"flask_tailnet.peer"', "peer", id="peer-environ-key"),
        pytest.param('TOKEN_FILE = "token"', "token", id="token-file-name"),
        pytest.param("def secret_matches(", "token", id="token-comparison"),
        pytest.param("ip.is_loopback", "addresses", id="loopback-rule"),
    ],
)
def test_rule_has_one_home(text: str, home: str) -> None:
    holders = sorted(name for name, path in MODULES.items() if text in path.read_text("utf-8"))
    assert holders == [home]
