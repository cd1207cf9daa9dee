"""Text->image relevance of an encoder on a written synthetic-world gallery, seen vs unseen compositions.

The gallery is read back from its files (decoded with PIL as the indexer does) and searched exactly, so the
numbers measure the model, not the ANN index or the renderer.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.lab import world
from indexer.lab.evaluation import metrics

KS = (1, 5, 10)


def load_queries(world_dir: Path) -> list[dict[str, Any]]:
    with open(Path(world_dir) / world.QUERIES_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def encode_gallery(encoder: Any, gallery_dir: Path, batch: int = 256) -> tuple[list[str], np.ndarray]:
    """Decode every file listed in metadata.jsonl and encode it with the encoder's own preprocess."""
    with open(Path(gallery_dir) / "metadata.jsonl", encoding="utf-8") as fh:
        paths = [json.loads(line)["path"] for line in fh if line.strip()]
    chunks = []
    for start in range(0, len(paths), batch):
        images = []
        for rel in paths[start:start + batch]:
            with Image.open(Path(gallery_dir) / rel) as im:
                images.append(im.convert("RGB"))
        chunks.append(encoder.encode_images(images))
    return paths, np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)


def relevance_report(ranked: list[list[str]], relevant: list[set[str]], n_items: int) -> dict[str, Any]:
    report: dict[str, Any] = {"queries": len(ranked)}
    for k in KS:
        report[f"R@{k}"] = round(metrics.hit_rate_at_k(ranked, relevant, k), 4)
        report[f"chance_R@{k}"] = round(metrics.chance_hit_rate_at_k(n_items, [len(r) for r in relevant], k), 4)
    report["MRR"] = round(metrics.mean_reciprocal_rank(ranked, relevant), 4)
    return report


def evaluate_world(encoder: Any, world_dir: Path, k: int = max(KS)) -> dict[str, Any]:
    """Exact text->image search for every query in queries.jsonl; R@K overall, seen and unseen."""
    world_dir = Path(world_dir)
    paths, vectors = encode_gallery(encoder, world_dir / world.GALLERY_DIR)
    queries = load_queries(world_dir)
    text = encoder.encode_texts([q["query"] for q in queries])
    order = np.argsort(-(text @ vectors.T), axis=1, kind="stable")[:, :k]
    ranked = [[paths[i] for i in row] for row in order]
    relevant = [set(q["relevant"]) for q in queries]
    report: dict[str, Any] = {"gallery": len(paths), "all": relevance_report(ranked, relevant, len(paths))}
    for name, flag in (("seen", False), ("unseen", True)):
        idx = [i for i, q in enumerate(queries) if q["unseen"] == flag]
        if idx:
            report[name] = relevance_report([ranked[i] for i in idx], [relevant[i] for i in idx], len(paths))
    report["languages"] = per_language(encoder, queries, paths, vectors, relevant, k)
    return report


def per_language(encoder: Any, queries: list[dict[str, Any]], paths: list[str], vectors: np.ndarray,
                 relevant: list[set[str]], k: int) -> dict[str, Any]:
    """The same queries asked in each language of their `translations` (the gallery stays captioned in
    English): R@K per language, so a multilingual model's gap to English is a number, not an impression."""
    langs = sorted({lang for q in queries for lang in q.get("translations", {})})
    out: dict[str, Any] = {}
    for lang in langs:
        idx = [i for i, q in enumerate(queries) if lang in q.get("translations", {})]
        text = encoder.encode_texts([queries[i]["translations"][lang] for i in idx])
        order = np.argsort(-(text @ vectors.T), axis=1, kind="stable")[:, :k]
        out[lang] = relevance_report([[paths[j] for j in row] for row in order], [relevant[i] for i in idx],
                                     len(paths))
    return out


def evaluate_checkpoint(checkpoint: Path, seed: int, gallery: int, size: int = 128,
                        model: str = "tiny") -> dict[str, Any]:
    """Write a held-out gallery to a temporary folder and evaluate the tiny model loaded from `checkpoint` (or
    the model folder `model`, `local-dir:DIR`, whose weights file `checkpoint` is)."""
    from indexer.models import registry
    from indexer.models.clip import load_encoder

    folder = registry.is_model_folder(model)
    encoder = load_encoder(model, pretrained=None if folder else str(checkpoint), device="cpu")
    with tempfile.TemporaryDirectory(prefix="photostock-eval-") as tmp:
        world.write_world(Path(tmp), seed=seed, gallery=gallery, size=(size, size))
        return evaluate_world(encoder, Path(tmp))
