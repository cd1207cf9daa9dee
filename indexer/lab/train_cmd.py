"""Train the project's tiny CLIP on the synthetic world (fixed step count, deterministic for a seed), save a
float16 checkpoint and print JSON metrics (loss, seconds, held-out R@K seen/unseen with chance levels)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from indexer.lab import train, world


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = train.TrainSettings()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (fixed, not a time)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--finetune-steps", type=int, default=defaults.finetune_steps,
                        help="second-stage steps on hard-negative batches, from the first stage's checkpoint")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--force", action="store_true",
                        help="train even when a checkpoint for these settings is committed or cached")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint path (default: the cache entry for these settings)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out gallery evaluation")
    parser.add_argument("--cut-bpe", action="store_true",
                        help="rewrite the tokenizer merges file cut to the world's vocabulary, print its size, exit")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--multilingual", action="store_true",
                        help="the tiny multilingual model (frozen tiny CLIP image tower, XLM-R-style text tower, "
                             "captions in en/de/es/ja/ru); --out is then a model folder, written relocatable")


def main(args: argparse.Namespace) -> int:
    if args.cut_bpe:
        from indexer.models import registry

        print(json.dumps({"bpe": str(registry.TINY_BPE),
                          "vocab_size": train.cut_bpe(world.vocabulary(), registry.TINY_BPE)}))
        return 0
    if args.steps < 1 or args.batch_size < 2 or args.finetune_steps < 0:
        print("error: --steps must be >= 1, --finetune-steps >= 0 and --batch-size >= 2", file=sys.stderr)
        return 2
    if args.multilingual:
        return _multilingual(args)
    settings = replace(train.TrainSettings(), steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                       finetune_steps=args.finetune_steps)
    if args.out is None and not args.force:
        # train at most once per machine: the committed or cached checkpoint for these settings, else train
        path = train.ensure_tiny_checkpoint(settings)
        print(json.dumps({"checkpoint": str(path), "trained_now": False, **(train.checkpoint_info(path) or {})}))
        return 0
    out = args.out or train.cached_checkpoint_path(settings)
    info = train.train_and_save(settings, out, evaluate=not args.no_eval, progress=_progress(args))
    print(json.dumps({"checkpoint": str(out), **info}))
    return 0


def _progress(args: argparse.Namespace) -> Callable[[int, float], None]:
    def progress(step: int, loss: float) -> None:
        if not args.quiet and step % 10 == 0:
            print(f"step {step + 1} loss {loss:.4f}", file=sys.stderr, flush=True)

    return progress


def _multilingual(args: argparse.Namespace) -> int:
    """The multilingual model's folder: committed or cached for its settings, else trained (`--force`, `--out`)."""
    from indexer.models import registry

    if args.finetune_steps:
        print("error: the multilingual model trains in one stage (no --finetune-steps)", file=sys.stderr)
        return 2
    settings = train.MULTILINGUAL
    if args.seed != train.TrainSettings().seed:
        settings = replace(settings, seed=args.seed)
    if args.out is None and not args.force:
        folder = train.ensure_multilingual_folder(settings)
        info = train.checkpoint_info(folder / registry.FOLDER_WEIGHTS) or {}
        print(json.dumps({"folder": str(folder), "trained_now": False, **info}))
        return 0
    work = train.cache_dir() / f"tiny-multilingual-{train.settings_key(settings)}"
    info = train.train_and_save(settings, work / registry.FOLDER_WEIGHTS, evaluate=not args.no_eval,
                                progress=_progress(args))
    folder = registry.relocatable_copy(work, args.out) if args.out is not None else work
    print(json.dumps({"folder": str(folder), **info}))
    return 0
