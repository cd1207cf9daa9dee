"""Per-language relevance of the tiny multilingual model through the search service: a held-out world (the
training evaluation seed, English captions only) is indexed by `python -m indexer build --model
tiny-multilingual`, and its queries are asked in en, de, es, ja and ru over GET /search (ANN + rerank) and by
exact search over the same fp32 query vectors. Prints one JSON object (R@10 per language, the build's wall
time, the machine). Seconds on two cores; the model itself is the committed folder (no training).

    .venv/bin/python benchmarks/multilingual_relevance.py [--gallery 300] [--k 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, timed_run  # noqa: E402 (puts the repository on sys.path)

from indexer.lab import train, world
from indexer.lab.evaluation.languages_served import served_language_recall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="photostock-multilingual-") as tmp:
        base = Path(tmp)
        world.write_world(base / "world", seed=train.TrainSettings().eval_seed, gallery=args.gallery,
                          size=(128, 128))
        build_s, _ = timed_run([sys.executable, "-m", "indexer", "build", "--images", str(base / "world" / "gallery"),
                           "--store", str(base / "store"), "--model", "tiny-multilingual", "--device", "cpu",
                           "--workers", "1"], cwd=ROOT)
        report = served_language_recall(base / "store", base / "world", k=args.k)
    print(json.dumps({"gallery": args.gallery, "languages": report, "build_s": round(build_s, 1),
                      "machine": machine()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
