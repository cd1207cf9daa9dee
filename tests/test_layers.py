"""The layers of search/ import downward only (docs/contracts.md), and the serving runtime never imports the
training framework: read from the source with ast, so a new import that breaks a rule fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SEARCH = Path(__file__).resolve().parent.parent / "search"
# layer -> the search layers it may import (top-level modules: settings, state, serving, metrics, cli)
ALLOWED = {
    "artifact": {"artifact"},
    "runtime": {"artifact", "runtime", "settings", "metrics"},
    "query": {"artifact", "runtime", "query", "settings", "metrics"},
    "http": {"artifact", "runtime", "query", "http", "settings", "metrics", "state", "serving"},
}
FORBIDDEN_EVERYWHERE = {"torch", "torchvision", "open_clip", "indexer"}
WEB = {"fastapi", "starlette", "uvicorn"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "search":
                names.update(f"search.{alias.name}" for alias in node.names)
    return names


MODULES = sorted(SEARCH.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(SEARCH)) for p in MODULES])
def test_module_imports_follow_the_layers(path: Path) -> None:
    parts = path.relative_to(SEARCH).parts
    layer = parts[0] if len(parts) > 1 else None
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN_EVERYWHERE, f"{path}: imports {name} (serving never needs the trainer)"
        if layer != "http" and path.name != "cli.py":  # the CLI starts uvicorn
            assert top not in WEB, f"{path}: imports {name} (only search/http/ is web code)"
        if layer is not None and top == "search" and name != "search":
            target = name.split(".")[1]
            assert target in ALLOWED[layer], f"{path}: layer {layer} imports {name}"


def test_every_layer_is_checked() -> None:
    layers = {p.name for p in SEARCH.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert layers == set(ALLOWED)
