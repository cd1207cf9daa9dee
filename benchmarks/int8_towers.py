"""int8 (ONNX Runtime dynamic quantisation) text and image towers side by side with fp32, in one run.

Text tower (the service's runtime option `runtime.text_precision: int8`):
  - latency p50/p95 of a 12-token query, fp32 vs int8 session (ViT-B-32 random init and the tiny model);
  - cosine of the int8 embedding to the fp32 one on world queries and on random token sequences;
  - R@1/R@10 on a held-out synthetic world through the full pipeline: `indexer` run_build publishes the store
    (with its encoder folder), the runtime encoder of that store encodes the queries at each precision, the
    artifact answers (ANN over-fetch + exact rerank).
Image tower (the indexer's `image_precision: int8`, bulk encoding):
  - images/s fp32 vs int8 (ViT-B-32 and tiny, micro-batches of 8);
  - R@1/R@10 of the held-out world indexed with the int8 image tower (fp32 text), and the cosine of its
    gallery vectors to the fp32 ones.
Rule (issue 9): int8 may become a default only when it loses <= 0.5 pt R@10 and its mean cosine is >= 0.995.

    .venv/bin/python benchmarks/int8_towers.py [--gallery 400] [--runs 60] [--skip-vit]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, latency_ms, machine  # noqa: E402

QUERY_12 = "two dogs playing with a red ball in the park"  # 12 tokens with start/end on CLIP's BPE
RULE = {"max_r10_loss_pt": 0.5, "min_mean_cosine": 0.995}




def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5), "n": int(len(cos))}


def _random_tokens(context: int, vocab: int, sot: int, eot: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, context), np.int64)
    for row in out:
        length = int(rng.integers(1, context - 1))
        row[0], row[1:length + 1], row[length + 1] = sot, rng.integers(1, min(vocab, eot) - 2, length), eot
    return out


def text_units(model: str, cache: Path, runs: int, world_queries: list[str]) -> dict[str, Any]:
    """fp32 vs int8 text sessions over the same export: latency and cosine."""
    import torch

    from indexer.models.clip import load_encoder
    from indexer.models.towers import onnx_text_encoder

    torch.manual_seed(0)
    encoder = load_encoder(model, pretrained="random" if model != "tiny" else None, device="cpu")
    fp32 = onnx_text_encoder(encoder, cache / model)
    int8 = onnx_text_encoder(encoder, cache / model, precision="int8")
    tokens = fp32.tokenize([QUERY_12])
    lat = {"fp32": latency_ms(lambda: fp32.encode_token_ids(tokens), runs),
           "int8": latency_ms(lambda: int8.encode_token_ids(tokens), runs)}
    tok = encoder.tokenizer
    random_tokens = _random_tokens(encoder.context_length, len(tok.encoder), tok.sot_token_id, tok.eot_token_id, 256)
    world = fp32.tokenize(world_queries)
    return {
        "model": model, "weights": encoder.identity.weights, "query_tokens": int(fp32.lengths(tokens)[0]),
        "latency": lat, "int8_p50_ratio": round(lat["int8"]["p50_ms"] / lat["fp32"]["p50_ms"], 3),
        "cosine_random_tokens": _cosines(int8.encode_token_ids(random_tokens), fp32.encode_token_ids(random_tokens)),
        "cosine_world_queries": _cosines(int8.encode_token_ids(world), fp32.encode_token_ids(world)),
    }


def image_units(model: str, cache: Path, n: int) -> dict[str, Any]:
    import torch

    from indexer.models.clip import load_encoder
    from indexer.models.towers import onnx_image_encoder

    torch.manual_seed(0)
    encoder = load_encoder(model, pretrained="random" if model != "tiny" else None, device="cpu")
    side = encoder.model.visual.image_size
    side = side if isinstance(side, int) else side[0]
    pixels = np.random.default_rng(0).standard_normal((n, 3, side, side)).astype(np.float32)
    rates, vectors = {}, {}
    for precision in ("fp32", "int8"):
        tower = onnx_image_encoder(encoder, cache / model, micro_batch=8, precision=precision)
        tower.encode_pixels(pixels[:8])
        start = time.perf_counter()
        vectors[precision] = tower.encode_pixels(pixels)
        rates[precision] = round(n / (time.perf_counter() - start), 2)
    return {"model": model, "images": n, "images_per_s": rates,
            "int8_speedup": round(rates["int8"] / rates["fp32"], 3),
            "cosine_random_pixels": _cosines(vectors["int8"], vectors["fp32"])}


def _recall(store: Path, queries: list[dict[str, Any]], precision: str) -> tuple[dict[str, float], np.ndarray]:
    """R@1/R@10 of the store's own runtime encoder at `precision` through ANN + exact rerank."""
    from indexer.lab.evaluation import metrics
    from search.artifact.version import open_current
    from search.runtime.towers import RuntimeEncoder, RuntimeOptions

    with open_current(store, checks="full") as artifact:
        assert artifact.encoder_bundle is not None
        encoder = RuntimeEncoder.load(artifact.encoder_bundle, RuntimeOptions(text_precision=precision))  # type: ignore[arg-type]
        vectors = encoder.encode_texts([q["query"] for q in queries])
        ids = artifact.search(vectors, 10).ids
        paths = {int(r["id"]): r["path"] for r in artifact.metadata([int(i) for i in artifact.ids])}
    ranked = [[paths[int(i)] for i in row if i >= 0] for row in ids]
    relevant = [set(q["relevant"]) for q in queries]
    return ({"R@1": round(100 * metrics.hit_rate_at_k(ranked, relevant, 1), 2),
             "R@10": round(100 * metrics.hit_rate_at_k(ranked, relevant, 10), 2)}, vectors)


def world_relevance(work: Path, gallery: int, seed: int) -> dict[str, Any]:
    """Held-out world indexed by the real pipeline twice (fp32 and int8 image tower); queries at both text
    precisions."""
    from indexer.lab import world
    from indexer.lab.evaluation.world_eval import load_queries
    from indexer.models import registry
    from indexer.models.clip import load_encoder
    from indexer.run.pipeline import run_build
    from indexer.settings import IndexerSettings
    from search.artifact.version import open_current

    world_dir = work / f"world-{seed}-{gallery}"
    if not (world_dir / world.QUERIES_FILE).is_file():
        world.write_world(world_dir, seed=seed, gallery=gallery, size=(128, 128))
    queries = load_queries(world_dir)
    checkpoint = registry.tiny_checkpoint_path()
    encoder = load_encoder("tiny", pretrained=str(checkpoint), device="cpu")
    report: dict[str, Any] = {"world_seed": seed, "gallery": gallery, "queries": len(queries),
                              "checkpoint": checkpoint.name}
    stores = {}
    for image_precision in ("fp32", "int8"):
        store = work / f"store-{seed}-{gallery}-image-{image_precision}"
        settings = IndexerSettings(model="tiny", pretrained=str(checkpoint), device="cpu", workers=2,
                                   image_backend="onnx", image_precision=image_precision,
                                   onnx_cache_dir=str(work / "onnx-cache"))
        start = time.perf_counter()
        run_build(world_dir / world.GALLERY_DIR, store, settings, encoder)
        report[f"index_s_image_{image_precision}"] = round(time.perf_counter() - start, 1)
        stores[image_precision] = store
    text = {}
    for precision in ("fp32", "int8"):
        text[precision], _ = _recall(stores["fp32"], queries, precision)
    image_int8, _ = _recall(stores["int8"], queries, "fp32")
    with open_current(stores["fp32"]) as a, open_current(stores["int8"]) as b:
        gallery_cos = _cosines(np.asarray(b.vectors, np.float32), np.asarray(a.vectors, np.float32))
    report["text_tower"] = {"fp32": text["fp32"], "int8": text["int8"],
                            "r10_loss_pt": round(text["fp32"]["R@10"] - text["int8"]["R@10"], 2)}
    report["image_tower"] = {"fp32": text["fp32"], "int8": image_int8,
                             "r10_loss_pt": round(text["fp32"]["R@10"] - image_int8["R@10"], 2),
                             "cosine_gallery_vectors": gallery_cos}
    return report


def verdict(r10_loss: float, mean_cosine: float) -> dict[str, Any]:
    ok = r10_loss <= RULE["max_r10_loss_pt"] and mean_cosine >= RULE["min_mean_cosine"]
    return {"r10_loss_pt": r10_loss, "mean_cosine": mean_cosine, "may_be_default": ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=400)
    parser.add_argument("--seed", type=int, default=4242, help="held-out world seed")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--images", type=int, default=64, help="images per image-tower speed measurement")
    parser.add_argument("--skip-vit", action="store_true", help="tiny model only (a quick smoke)")
    parser.add_argument("--work", type=Path, default=OUT / "int8_towers")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "int8_towers", "machine": machine(), "rule": RULE}
    relevance = world_relevance(args.work, args.gallery, args.seed)
    result["world"] = relevance
    from indexer.lab.evaluation.world_eval import load_queries

    texts = [q["query"] for q in load_queries(args.work / f"world-{args.seed}-{args.gallery}")]
    models = ["tiny"] + ([] if args.skip_vit else ["ViT-B-32"])
    result["text_units"] = [text_units(m, args.work / "units", args.runs, texts) for m in models]
    result["image_units"] = [image_units(m, args.work / "units", args.images) for m in models]
    tiny_text = result["text_units"][0]
    result["text_int8_verdict"] = verdict(
        relevance["text_tower"]["r10_loss_pt"],
        min(u["cosine_world_queries"]["mean"] for u in result["text_units"]))
    result["image_int8_verdict"] = verdict(
        relevance["image_tower"]["r10_loss_pt"], relevance["image_tower"]["cosine_gallery_vectors"]["mean"])
    result["headline"] = {f"{u['model']}_text_int8_p50_ratio": u["int8_p50_ratio"] for u in result["text_units"]}
    result["headline"].update({f"{u['model']}_image_int8_speedup": u["int8_speedup"] for u in result["image_units"]})
    result["headline"]["tiny_text_cosine_world"] = tiny_text["cosine_world_queries"]["mean"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
