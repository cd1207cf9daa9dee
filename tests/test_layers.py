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
    "fleet": {"artifact", "runtime", "query", "http", "fleet", "settings", "metrics", "state", "serving"},
}
RAY_ONLY_IN = SEARCH / "fleet" / "app.py"  # the fleet's deployments; everything else runs without Ray
FORBIDDEN_EVERYWHERE = {"torch", "torchvision", "open_clip", "indexer"}
WEB = {"fastapi", "starlette", "uvicorn"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module in ("search", "indexer"):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
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
        if top == "ray":
            assert path == RAY_ONLY_IN, f"{path}: imports {name} (only {RAY_ONLY_IN.name} of search/fleet/ uses Ray)"
        if layer is not None and top == "search" and name != "search":
            target = name.split(".")[1]
            assert target in ALLOWED[layer], f"{path}: layer {layer} imports {name}"


def test_every_layer_is_checked() -> None:
    layers = {p.name for p in SEARCH.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert layers == set(ALLOWED)


INDEXER = SEARCH.parent / "indexer"
# stage -> the indexer packages it may import (top-level modules settings, progress and cli are open to all)
INDEXER_STAGES = {
    "ingest": {"ingest"},
    "storage": {"ingest", "storage"},
    "encoding": {"ingest", "storage", "encoding", "models"},
    "index": {"storage", "index", "models"},
    "run": {"ingest", "storage", "encoding", "index", "run", "models"},
    "commands": {"ingest", "storage", "encoding", "index", "run", "commands", "models"},
    "models": {"models"},
    "lab": {"ingest", "storage", "encoding", "index", "run", "commands", "models", "lab"},
}
INDEXER_TOP = {"settings", "progress", "cli"}
INDEXER_MODULES = sorted(INDEXER.rglob("*.py"))


@pytest.mark.parametrize("path", INDEXER_MODULES, ids=[str(p.relative_to(INDEXER)) for p in INDEXER_MODULES])
def test_indexer_stages_import_only_earlier_stages(path: Path) -> None:
    parts = path.relative_to(INDEXER).parts
    if len(parts) == 1:
        return  # top-level modules (cli, settings, progress) wire the stages together
    stage = parts[0]
    for name in _imports(path):
        pieces = name.split(".")
        if pieces[0] != "indexer" or len(pieces) < 2 or pieces[1] in INDEXER_TOP:
            continue
        assert pieces[1] in INDEXER_STAGES[stage], f"{path}: stage {stage} imports {name}"


def test_every_indexer_stage_is_checked() -> None:
    stages = {p.name for p in INDEXER.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert stages == set(INDEXER_STAGES)
    flat = {p.stem for p in INDEXER.glob("*.py")} - {"__init__", "__main__"}
    assert flat == INDEXER_TOP, f"modules outside a stage package: {sorted(flat - INDEXER_TOP)}"


def test_a_fleet_replica_process_imports_no_http_app() -> None:
    """Serve imports the module of a deployment's class in each replica process it starts: the encoder's and the
    shards' (search/fleet/replicas.py) must not pull in the service's HTTP app, which only the ingress runs (its
    import is part of every cold start from zero, docs/scaling.md)."""
    import subprocess
    import sys

    code = ("import sys, search.fleet.replicas; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'ray') "
            "or m.startswith('search.http')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=SEARCH.parent, env={"PYTHONPATH": str(SEARCH.parent), "PATH": ""})
    assert done.stdout.strip() == "[]", done.stdout
