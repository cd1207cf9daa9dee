"""The evaluation notebooks execute top to bottom on the tiny model (a cell error fails the test) and write
their plots as PNG files to the directory named by PHOTOSTOCK_NOTEBOOK_OUT."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from indexer.models import registry
from tests.service_support import tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {
    "relevance_eval.ipynb": {"relevance_modes", "recall_latency", "worst_queries", "seen_vs_unseen",
                             "relevance_per_language"},
    "latency_and_cache.ipynb": {"latency_stages", "cache_hit_rate"},
}


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("notebooks")
    env = {
        "PHOTOSTOCK_NOTEBOOK_OUT": str(base / "out"),
        "PHOTOSTOCK_NOTEBOOK_WORKDIR": str(base / "work"),  # shared: the second notebook reuses the store
        "PHOTOSTOCK_NOTEBOOK_GALLERY": "150",
        "PHOTOSTOCK_NOTEBOOK_SIZE": "48",
        # the trained tiny model when it exists, else a seeded random-init one (the notebooks run either way)
        "PHOTOSTOCK_TINY_CHECKPOINT": str(tiny_checkpoint(base) if not registry.tiny_checkpoint_path().is_file()
                                          else registry.tiny_checkpoint_path()),
    }
    return env


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes_and_saves_plots(name: str, notebook_env: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in notebook_env.items():
        monkeypatch.setenv(key, value)  # the kernel process inherits this environment
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    written = {p.stem for p in Path(notebook_env["PHOTOSTOCK_NOTEBOOK_OUT"]).glob("*.png") if p.stat().st_size > 0}
    assert NOTEBOOKS[name] <= written
