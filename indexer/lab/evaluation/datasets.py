"""Evaluation datasets as (image files, text queries, qrels): the synthetic world, and Flickr30k / MSCOCO in
the Karpathy-split caption format, read from local files.

Images are named by their path relative to `image_root` ('/'-separated), which is exactly how the indexer
stores them, so a run through the store can be scored without any id mapping of its own.

Karpathy format (dataset_flickr30k.json, dataset_coco.json):
    {"images": [{"filename": "x.jpg", "filepath": "val2014"?, "split": "test", "sentences": [{"raw": "..."}]}]}
Every sentence of a split's images becomes one text query whose only relevant image is its own: the protocol
behind open_clip's published zero-shot retrieval figures (Flickr30k 1k test images, 5k captions).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.lab import world

__all__ = ["EvalDataset", "TextQuery", "load_world", "load_karpathy", "materialize_split", "DatasetError",
           "KARPATHY_SPLITS"]

KARPATHY_SPLITS = ("train", "val", "test", "restval")


class DatasetError(ValueError):
    """The dataset files are missing or not in the expected format; the message names the file and the problem."""


@dataclass(frozen=True)
class TextQuery:
    text: str
    relevant: frozenset[str]  # image paths relative to the image root
    unseen: bool | None = None  # world only: the composition was held out of training
    # world only: the same query in each language (BCP-47 -> text, English included); empty elsewhere
    translations: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class EvalDataset:
    """Images to index, text queries with their relevant images, and image->image groups (same content)."""

    name: str
    image_root: Path
    images: tuple[str, ...]
    queries: tuple[TextQuery, ...]
    # image -> the other images that count as relevant when it is the query (image->image); may be empty
    image_groups: dict[str, frozenset[str]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages the queries are also asked in, in first-seen order (English first in the world)."""
        return tuple(dict.fromkeys(lang for q in self.queries for lang in q.translations))

    def limit(self, max_queries: int | None) -> EvalDataset:
        """The first `max_queries` text queries (deterministic), for quick runs."""
        if max_queries is None or max_queries >= len(self.queries):
            return self
        if max_queries < 1:
            raise ValueError("max_queries must be >= 1")
        return EvalDataset(self.name, self.image_root, self.images, self.queries[:max_queries],
                           self.image_groups, {**self.info, "queries_limited_to": max_queries})


def load_world(world_dir: str | Path) -> EvalDataset:
    """A written synthetic world (python -m indexer world): every distinct caption is a query; image->image
    relevance is "same caption" (same size, colour, shape and background)."""
    world_dir = Path(world_dir)
    queries_file = world_dir / world.QUERIES_FILE
    metadata = world_dir / world.GALLERY_DIR / "metadata.jsonl"
    for path in (queries_file, metadata):
        if not path.is_file():
            raise DatasetError(f"{path} not found: is {world_dir} a world written by `python -m indexer world`?")
    images = tuple(r["path"] for r in _jsonl(metadata))
    records = _jsonl(queries_file)
    queries = tuple(TextQuery(r["query"], frozenset(r["relevant"]), bool(r["unseen"]), dict(r.get("translations", {})))
                    for r in records)
    groups: dict[str, frozenset[str]] = {}
    for q in queries:
        for relevant in q.relevant:
            groups[relevant] = q.relevant - {relevant}
    summary = json.loads((world_dir / world.WORLD_FILE).read_text()) if (world_dir / world.WORLD_FILE).is_file() else {}
    return EvalDataset("world", world_dir / world.GALLERY_DIR, images, queries, groups,
                       {"world": summary, "source": str(world_dir)})


def load_karpathy(annotations: str | Path, image_root: str | Path, split: str = "test",
                  name: str | None = None, check_files: bool = True) -> EvalDataset:
    """Captions of one Karpathy split. `image_root` holds the images at `filepath/filename` (COCO) or
    `filename` (Flickr30k). With `check_files`, a missing image is an error naming the first few."""
    annotations, image_root = Path(annotations), Path(image_root)
    if split not in KARPATHY_SPLITS:
        raise DatasetError(f"unknown split {split!r}; Karpathy splits are {', '.join(KARPATHY_SPLITS)}")
    entries = _karpathy_images(annotations)
    images: list[str] = []
    queries: list[TextQuery] = []
    for i, entry in enumerate(entries):
        if entry.get("split") != split:
            continue
        path = _karpathy_path(entry, annotations, i)
        images.append(path)
        for sentence in _sentences(entry, annotations, i):
            queries.append(TextQuery(sentence, frozenset({path})))
    if not images:
        raise DatasetError(f"{annotations} has no images in split {split!r}")
    if len(set(images)) != len(images):
        raise DatasetError(f"{annotations}: split {split!r} lists the same image file more than once")
    if check_files:
        missing = [p for p in images if not (image_root / p).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} of {len(images)} images of split {split!r} are not under "
                               f"{image_root}, e.g. {', '.join(missing[:3])}")
    label = name or annotations.stem.removeprefix("dataset_")
    return EvalDataset(label, image_root, tuple(images), tuple(queries), {},
                       {"annotations": str(annotations), "split": split})


def materialize_split(dataset: EvalDataset, target: str | Path) -> EvalDataset:
    """Hard-link (or copy, across file systems) exactly the dataset's images under `target`, so an index built
    there holds the split and nothing else (COCO's val2014 folder also holds images of other splits)."""
    target = Path(target)
    for rel in dataset.images:
        src, dst = dataset.image_root / rel, target / rel
        if dst.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return EvalDataset(dataset.name, target, dataset.images, dataset.queries, dataset.image_groups,
                       {**dataset.info, "materialized_from": str(dataset.image_root)})


def _karpathy_images(annotations: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"annotations file not found: {annotations}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{annotations} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{annotations} is not in the Karpathy format: expected an object with an 'images' list")
    images: list[dict[str, Any]] = data["images"]
    return images


def _karpathy_path(entry: Any, annotations: Path, i: int) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
        raise DatasetError(f"{annotations}: images[{i}] has no 'filename'")
    filepath = entry.get("filepath")
    parts = [filepath, entry["filename"]] if filepath else [entry["filename"]]
    path = "/".join(p.strip("/") for p in parts)
    if ".." in path.split("/"):
        raise DatasetError(f"{annotations}: images[{i}] path {path!r} leaves the image root")
    return path


def _sentences(entry: dict[str, Any], annotations: Path, i: int) -> list[str]:
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DatasetError(f"{annotations}: images[{i}] ({entry['filename']}) has no 'sentences'")
    out = []
    for s in sentences:
        raw = s.get("raw") if isinstance(s, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            raise DatasetError(f"{annotations}: images[{i}] ({entry['filename']}) has a sentence without 'raw' text")
        out.append(raw.strip())
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
