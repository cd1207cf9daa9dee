"""Helpers for the indexer pipeline tests (scan/decode/store/incremental/resume/odd images).

The encoder is the real tiny CLIP with seeded random weights (pipeline behaviour does not depend on
training); it is loaded once per test process.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ODD_IMAGES = REPO.parent / "shared" / "testdata" / "pillow-odd-images"


@functools.lru_cache(maxsize=1)
def tiny_encoder():
    import torch

    from indexer.models.clip import load_encoder

    torch.manual_seed(0)
    return load_encoder("tiny", pretrained="random", device="cpu")


def settings(**overrides: Any):
    from indexer.settings import IndexerSettings

    base = {"model": "tiny", "pretrained": "random", "device": "cpu", "batch_size": 4, "workers": 2,
            "decode_timeout_s": 60}
    return IndexerSettings(**{**base, **overrides})


def draw(path: Path, seed: int, size: tuple[int, int] = (24, 20)) -> Path:
    """A small PNG whose content (and so hash) is unique per seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def make_tree(root: Path, n: int, start: int = 0) -> list[str]:
    """n images spread over two folders; returns their relative paths."""
    rels = []
    for i in range(start, start + n):
        rel = f"{'a' if i % 2 else 'b'}/img{i:03d}.png"
        draw(root / rel, seed=i)
        rels.append(rel)
    return rels


def run(images: Path, store: Path, **overrides: Any) -> dict[str, Any]:
    from indexer.run.pipeline import run_build

    return run_build(images, store, settings(**overrides), tiny_encoder())


def rows(store: Path) -> dict[str, dict[str, Any]]:
    """path -> row of the live database."""
    with sqlite3.connect(store / "metadata.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return {r["path"]: dict(r) for r in conn.execute("SELECT * FROM images")}


def paths_with(store: Path, status: str) -> set[str]:
    return {p for p, r in rows(store).items() if r["status"] == status}


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def status(store: Path) -> dict[str, Any]:
    from indexer.commands.status_cmd import store_status

    return json.loads(json.dumps(store_status(store)))


def current_ids(store: Path) -> np.ndarray:
    return np.load(store / "current" / "ids.npy")
