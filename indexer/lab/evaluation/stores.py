"""Getting a store to evaluate: the tiny model's checkpoint, a written world, and an indexed store built from it
with the real indexer pipeline (scan -> decode workers -> encode -> publish), reused when already built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexer.lab import world
from indexer.lab.evaluation.datasets import EvalDataset
from indexer.models import registry
from indexer.models.clip import ClipEncoder, load_encoder

__all__ = ["tiny_checkpoint", "tiny_encoder", "ensure_world", "build_store", "prepare_world_store"]


def tiny_checkpoint() -> Path:
    """The committed (or $PHOTOSTOCK_TINY_CHECKPOINT) tiny checkpoint; else the trainer's cached one, trained
    once per machine when absent (minutes on two cores)."""
    path = registry.tiny_checkpoint_path()
    if path.is_file():
        return path
    from indexer.lab.train import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()


def tiny_encoder(device: str = "cpu") -> ClipEncoder:
    return load_encoder("tiny", pretrained=str(tiny_checkpoint()), device=device)


def ensure_world(world_dir: Path, seed: int, gallery: int, size: tuple[int, int]) -> dict[str, Any]:
    """Write the world unless `world_dir` already holds exactly this one (same seed, count, size)."""
    summary_file = Path(world_dir) / world.WORLD_FILE
    if summary_file.is_file():
        summary: dict[str, Any] = json.loads(summary_file.read_text())
        wanted = {"world_version": world.WORLD_VERSION, "seed": seed, "gallery": gallery, "size": list(size)}
        if all(summary.get(k) == v for k, v in wanted.items()):
            return summary
        raise FileExistsError(f"{world_dir} holds another world ({summary_file}); use an empty folder")
    return world.write_world(Path(world_dir), seed=seed, gallery=gallery, size=size)


def build_store(image_root: Path, store: Path, encoder: ClipEncoder, index: dict[str, Any] | None = None,
                workers: int = 1, batch_size: int = 64) -> dict[str, Any]:
    """Index `image_root` into `store` with the indexer pipeline (a no-op run when nothing changed)."""
    from indexer.run.pipeline import run_build
    from indexer.settings import IndexerSettings

    settings = IndexerSettings(model=encoder.identity.model, device=str(encoder.device), workers=workers,
                               batch_size=batch_size, index={"use_gpu": False, **(index or {})})
    return run_build(Path(image_root), Path(store), settings, encoder)


def prepare_world_store(workdir: Path, encoder: ClipEncoder, seed: int = 0, gallery: int = 300,
                        size: tuple[int, int] = (64, 64),
                        index: dict[str, Any] | None = None) -> tuple[EvalDataset, Path]:
    """WORKDIR/world (written once) and WORKDIR/store (indexed once, incrementally after that)."""
    from indexer.lab.evaluation.datasets import load_world

    workdir = Path(workdir)
    ensure_world(workdir / "world", seed, gallery, size)
    dataset = load_world(workdir / "world")
    build_store(dataset.image_root, workdir / "store", encoder, index)
    return dataset, workdir / "store"
