"""SIGKILL a real `python -m indexer build` subprocess at several points, rerun, and compare with a clean run:
same indexed and failed files, no duplicates, nothing lost, every vector belongs to its path."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.indexer_support import REPO, make_tree, rows, run

N_IMAGES = 40
BATCH = 2
POLL_LIMIT_S = 300  # generous bound: the subprocess imports torch on a shared 2-core machine


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray], dict[str, str]]:
    """The image tree, and what an uninterrupted run makes of it: path -> vector, path -> failure reason."""
    base = tmp_path_factory.mktemp("resume")
    images = base / "images"
    make_tree(images, N_IMAGES)
    (images / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    store = base / "clean-store"
    run(images, store, batch_size=BATCH, workers=1)
    return images, _vectors_by_path(store), _failures(store)


def _vectors_by_path(store: Path) -> dict[str, np.ndarray]:
    ids = np.load(store / "current" / "ids.npy")
    vectors = np.load(store / "current" / "vectors.f16.npy")
    assert len(np.unique(ids)) == len(ids), "duplicate ids in the published version"
    path_of = {r["id"]: p for p, r in rows(store).items()}
    return {path_of[int(i)]: v for i, v in zip(ids, vectors, strict=True)}


def _failures(store: Path) -> dict[str, str]:
    return {p: r["reason"] for p, r in rows(store).items() if r["status"] == "failed"}


def _query(store: Path, sql: str) -> int:
    """One integer from the live DB, or -1 while it (or its tables) does not exist yet."""
    db = store / "metadata.sqlite"
    if not db.exists():
        return -1
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(sql).fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return -1


KILL_POINTS: dict[str, Callable[[Path], bool]] = {
    "after_plan": lambda s: _query(s, "SELECT COUNT(*) FROM images") > 0,
    "after_3_batches": lambda s: _query(s, "SELECT COUNT(*) FROM shards") >= 3,
    "near_the_end": lambda s: _query(s, "SELECT COUNT(*) FROM shards") >= N_IMAGES // BATCH - 3,
}


def _build_and_kill(images: Path, store: Path, ready: Callable[[Path], bool]) -> int:
    """Start a build, poll the DB (bounded) until `ready`, SIGKILL it; returns the exit status."""
    cmd = [sys.executable, "-m", "indexer", "build", "--images", str(images), "--store", str(store),
           "--pretrained", "random", "--device", "cpu", "--batch-size", str(BATCH), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for _ in range(int(POLL_LIMIT_S / 0.02)):
            if ready(store):
                os.kill(proc.pid, signal.SIGKILL)
                break
            try:
                proc.wait(timeout=0.02)  # paces the poll and notices an early exit
                break
            except subprocess.TimeoutExpired:
                continue
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_then_rerun_equals_a_clean_run(point: str, clean, tmp_path: Path) -> None:
    images, clean_vectors, clean_failures = clean
    store = tmp_path / "store"
    code = _build_and_kill(images, store, KILL_POINTS[point])
    assert code == -signal.SIGKILL, f"the build was not killed at {point} (exit {code})"
    committed = _query(store, "SELECT COUNT(*) FROM images WHERE status='indexed'")

    report = run(images, store, batch_size=BATCH, workers=1)

    assert report["counts"]["encoded"] == N_IMAGES - max(committed, 0)  # committed work is not redone
    resumed = _vectors_by_path(store)
    assert sorted(resumed) == sorted(clean_vectors)
    for path, vector in clean_vectors.items():
        np.testing.assert_allclose(resumed[path].astype(np.float32), vector.astype(np.float32), atol=2e-3)
    assert _failures(store) == clean_failures
    assert _query(store, "SELECT COUNT(*) FROM images WHERE status='pending'") == 0
    named = {f"{n}{s}" for n in _shard_names(store) for s in (".f16.npy", ".ids.npy")}
    assert {p.name for p in (store / "shards").iterdir()} == named  # no debris, nothing missing


def _shard_names(store: Path) -> list[str]:
    with sqlite3.connect(store / "metadata.sqlite") as conn:
        return [r[0] for r in conn.execute("SELECT name FROM shards")]
