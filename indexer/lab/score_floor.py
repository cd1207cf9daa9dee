"""Calibrate the weak-match floor (`guidance.score_floors` in configs/service.yaml) for a store's encoder.

The service flags a text search as weak when no hit reaches the floor (cosine similarity of query and image).
This script measures, through the service's own runtime (the store's ONNX text tower at the configured
precision, exact search over the store's vectors), the best similarity each query reaches:

- known: every caption of the synthetic world (`queries.jsonl`), plus shorter queries built from the world's
  words (colour + shape, shape + background, single words), reported separately;
- unknown: everyday concepts the world never shows ("dog on a beach") and nonsense strings.

The floor is the unknown queries' 95th percentile rounded up to 0.01 (so about 19 in 20 of them are flagged),
and the script reports the share of each known group that the floor would flag as weak.

    python -m indexer world --out W && python -m indexer build --images W/gallery --store S --model tiny
    python -m indexer.lab.score_floor --world W --store S [--precision int8|fp32]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from indexer.lab import world

UNKNOWN: tuple[str, ...] = (
    "dog on a beach", "a cat sleeping on a sofa", "mountain landscape at sunset", "portrait of a woman",
    "city skyline", "a bowl of fruit", "car on a highway", "birthday cake", "snowy forest", "people at a concert",
    "coffee cup", "laptop on a desk", "an airplane", "flowers in a vase", "a horse in a field", "the eiffel tower",
    "children playing football", "a bicycle", "waves crashing on rocks", "a plate of pasta", "old man reading",
    "fireworks", "a train station", "tulips", "a wedding", "kitchen interior", "a lighthouse", "rainy street",
    "a baby smiling", "desert dunes", "bookshelf", "a guitar", "hot air balloon", "a smartphone", "sushi",
    "a bridge over a river", "elephant", "office meeting", "autumn leaves", "a sailing boat",
    "qwerty", "lorem ipsum dolor", "xyzzy", "asdf jkl", "zzzz", "foo bar baz",
)


def known_groups() -> dict[str, list[str]]:
    """Queries made of the world's own words, shortest last (the model trained on whole captions only)."""
    return {
        "colour_shape": [f"a {c} {s}" for c in world.COLOURS for s in world.SHAPES],
        "shape_background": [f"a {s} on a {b} background" for s in world.SHAPES for b in world.BACKGROUNDS],
        "single_word": [*world.COLOURS, *world.SHAPES, *world.BACKGROUNDS],
    }


def best_similarities(store: Path, queries: list[str], precision: str) -> np.ndarray:
    """The top-1 cosine each query reaches in the store's current version, through the runtime encoder."""
    from search.artifact.version import open_current
    from search.runtime.towers import RuntimeEncoder, RuntimeOptions

    with open_current(store) as artifact:
        if artifact.encoder_bundle is None:
            raise ValueError(f"{store}: the current version carries no encoder files")
        encoder = RuntimeEncoder.load(artifact.encoder_bundle, RuntimeOptions(text_precision=precision))  # type: ignore[arg-type]
        scores, _ = artifact.exact_search(encoder.encode_texts(queries), 1)
        return np.asarray(scores[:, 0], dtype=np.float64)


def _summary(values: np.ndarray, floor: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(len(values)), "min": round(float(values.min()), 3),
                           "p5": round(float(np.percentile(values, 5)), 3),
                           "p50": round(float(np.median(values)), 3),
                           "p95": round(float(np.percentile(values, 95)), 3), "max": round(float(values.max()), 3)}
    if floor is not None:
        out["flagged_weak"] = round(float(np.mean(values < floor)), 3)
    return out


def calibrate(store: Path, world_dir: Path, precision: str = "int8") -> dict[str, Any]:
    captions = [json.loads(line)["query"] for line in (world_dir / world.QUERIES_FILE).read_text().splitlines()]
    groups = {"captions": captions, **known_groups()}
    unknown = best_similarities(store, list(UNKNOWN), precision)
    floor = math.ceil(float(np.percentile(unknown, 95)) * 100) / 100
    report: dict[str, Any] = {"store": str(store), "precision": precision, "rule": "unknown p95, rounded up to 0.01",
                              "score_floor": floor, "unknown": _summary(unknown, floor)}
    for name, queries in groups.items():
        report[name] = _summary(best_similarities(store, queries, precision), floor)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indexer.lab.score_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="the world folder (queries.jsonl inside)")
    parser.add_argument("--store", type=Path, required=True, help="a store built from WORLD/gallery")
    parser.add_argument("--precision", choices=("int8", "fp32"), default="int8",
                        help="text tower precision (int8: the service default)")
    args = parser.parse_args(argv)
    print(json.dumps(calibrate(args.store, args.world, args.precision), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
