"""Run a relevance evaluation through the real pipeline and print a JSON report.

Datasets: the synthetic world (written and indexed here, or an existing --world / --store), or Flickr30k /
MSCOCO in the Karpathy caption format (--annotations dataset_flickr30k.json --images DIR). Modes: exact, ann,
ann_rerank (in-process, through the artifact reader) and http (the real service, started here on a local port
unless --url names a running one). Exit code 2 with a one-line error when the evaluation cannot run.

When the world's queries carry translations (en, de, es, ja, ru), every mode also runs per query language:
the JSON gains text_to_image_by_language (each mode's metrics, its recall against exact search and its R@K gap
to English) and the same numbers are printed as a table on stderr. A multilingual model, e.g.:
    python -m indexer evaluate --model tiny-multilingual --size 128 --modes exact,ann_rerank

Reproducing open_clip's zero-shot Flickr30k figures (ViT-B-32 laion2b_s34b_b79k: text->image R@1/5/10 =
66.8/88.4/93.1) needs the 1k test images and the checkpoint file on local disk:
    python -m indexer evaluate --dataset karpathy --annotations dataset_flickr30k.json --images flickr30k-images \\
        --model ViT-B-32 --pretrained /path/to/open_clip_pytorch_model.bin --modes exact,ann_rerank
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.lab.evaluation.datasets import EvalDataset

EXIT_CANNOT_RUN = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--dataset", choices=("world", "karpathy"), default="world")
    parser.add_argument("--world", type=Path, help="an existing world folder (python -m indexer world)")
    parser.add_argument("--gallery", type=int, default=600, help="world images to write when --world is absent")
    parser.add_argument("--seed", type=int, default=1000, help="world seed (default: a held-out one)")
    parser.add_argument("--size", default="96", help="world image size, 96 or WIDTHxHEIGHT")
    parser.add_argument("--annotations", type=Path, help="Karpathy-format JSON (dataset_flickr30k.json, ...)")
    parser.add_argument("--images", type=Path, help="Karpathy image root (images at [filepath/]filename)")
    parser.add_argument("--split", default="test", help="Karpathy split (default test)")
    parser.add_argument("--store", type=Path, help="evaluate this existing store instead of building one")
    parser.add_argument("--workdir", type=Path, help="where to write the world/store (default: a temp folder)")
    parser.add_argument("--model", default="tiny", help="tiny | an open_clip model name")
    parser.add_argument("--pretrained", help="checkpoint path or open_clip tag (default: the tiny checkpoint)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="exact,ann,ann_rerank", help="comma list of exact, ann, ann_rerank, http")
    parser.add_argument("--url", help="for mode http: a running service (default: start one here)")
    parser.add_argument("--k", type=int, default=10, help="ranking depth (at least 10)")
    parser.add_argument("--params", type=json.loads, help='FAISS search params, e.g. \'{"nprobe": 4}\'')
    parser.add_argument("--candidates", type=int, help="ANN over-fetch before rerank (default: the tuned count)")
    parser.add_argument("--factory", help="force the index type when building, e.g. IVF16,Flat")
    parser.add_argument("--max-queries", type=int, dest="max_queries", help="evaluate only the first N queries")


def main(args: argparse.Namespace) -> int:
    from indexer.lab.evaluation.datasets import DatasetError
    from search.artifact.encoder import WeightsUnavailableError
    from search.artifact.version import ArtifactError

    try:
        modes = _modes(args.modes)
        if args.k < 1 or (args.max_queries is not None and args.max_queries < 1):
            raise ValueError("--k and --max-queries must be >= 1")
        with tempfile.TemporaryDirectory(prefix="photostock-evaluate-") as tmp:
            report = run(args, modes, args.workdir or Path(tmp))
    except (DatasetError, ArtifactError, WeightsUnavailableError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print(json.dumps(report, indent=2))
    table = _language_table(report)
    if table:
        print(table, file=sys.stderr)
    return 0


def _language_table(report: dict[str, Any]) -> str:
    """The per-language rows (world queries asked in each language) as a table a person reads; stdout stays
    the JSON report, which holds the same numbers under text_to_image_by_language."""
    from indexer.lab.evaluation.analysis import language_rows, markdown_table

    rows = language_rows(report)
    return f"text -> image per query language (gallery captioned in English):\n{markdown_table(rows)}" if rows else ""


def _modes(text: str) -> list[str]:
    from indexer.lab.evaluation.runner import MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in (*MODES, "http")]
    if unknown or not modes:
        raise ValueError(f"unknown modes {unknown or text!r}; choose from {', '.join((*MODES, 'http'))}")
    return modes


def _encoder(args: argparse.Namespace) -> tuple[Any, str | None]:
    from indexer.lab.evaluation.stores import tiny_checkpoint
    from indexer.models.clip import load_encoder

    pretrained = args.pretrained
    if pretrained is None and args.model in ("tiny", "photostock-tiny"):
        pretrained = str(tiny_checkpoint())
    return load_encoder(args.model, pretrained=pretrained, device=args.device), pretrained


def _dataset(args: argparse.Namespace, workdir: Path) -> EvalDataset:
    from indexer.lab import world
    from indexer.lab.evaluation import datasets, stores

    if args.dataset == "karpathy":
        if args.annotations is None or args.images is None:
            raise ValueError("--dataset karpathy needs --annotations and --images")
        return datasets.load_karpathy(args.annotations, args.images, args.split)
    if args.world is None:
        if args.gallery < 1:
            raise ValueError("--gallery must be >= 1")
        stores.ensure_world(workdir / "world", args.seed, args.gallery, world.parse_size(args.size))
    return datasets.load_world(args.world or workdir / "world")


def run(args: argparse.Namespace, modes: list[str], workdir: Path) -> dict[str, Any]:
    from indexer.lab.evaluation import runner, stores
    from indexer.lab.evaluation.datasets import materialize_split
    from search.artifact.version import open_current

    dataset = _dataset(args, workdir).limit(args.max_queries)
    encoder, pretrained = _encoder(args)
    store = args.store
    build: dict[str, Any] | None = None
    if store is None:
        if args.dataset == "karpathy":  # index exactly the split's images, not the rest of the folder
            dataset = materialize_split(dataset, workdir / "images")
        store = workdir / "store"
        index = {"factory": args.factory} if args.factory else {}
        build = stores.build_store(dataset.image_root, store, encoder, index)
    with open_current(store, expect_encoder=encoder.identity) as artifact:
        view = runner.StoreView(artifact)
        url = args.url
        inprocess = [m for m in modes if m != "http"]
        if "http" in modes and url is None:
            with _served(store, encoder, pretrained) as url:
                report = runner.evaluate_store(dataset, view, encoder, inprocess, args.k, args.params,
                                               args.candidates, http_url=url)
        else:
            report = runner.evaluate_store(dataset, view, encoder, inprocess, args.k, args.params, args.candidates,
                                           http_url=url if "http" in modes else None)
    report["encoder"] = encoder.identity.to_dict()
    report["store"] = str(store)
    if build is not None:
        report["build"] = {"counts": build["counts"], "timings": build["timings"], "published": build["published"]}
    return report


def _served(store: Path, encoder: Any, pretrained: str | None) -> AbstractContextManager[str]:
    from indexer.lab.evaluation.served import serve_store

    if pretrained is None:
        raise ValueError("mode http needs a checkpoint path (--pretrained) so the service loads the same weights")
    return serve_store(store, encoder, pretrained)
