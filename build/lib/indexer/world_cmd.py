"""Generate the synthetic captioned world: a held-out gallery of image files (JPEG and PNG in subfolders) with
`metadata.jsonl`, plus `queries.jsonl` (each distinct caption, whether its composition is unseen in training,
and its relevant images) next to it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from indexer import world


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (gallery/ goes inside)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (same seed, same files)")
    parser.add_argument("--gallery", type=int, default=600, help="number of gallery images")
    parser.add_argument("--size", default="128", help="image size: 128 or WIDTHxHEIGHT such as 640x480")


def main(args: argparse.Namespace) -> int:
    try:
        size = world.parse_size(args.size)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.gallery < 1:
        print("error: --gallery must be at least 1", file=sys.stderr)
        return 2
    summary = world.write_world(args.out, seed=args.seed, gallery=args.gallery, size=size)
    print(json.dumps(summary))
    return 0
