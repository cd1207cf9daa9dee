"""Text-tower families in the service's runtime: the bare ONNX session against the in-service encode (runtime
tokenizer + micro-batcher + session pool), one query and 16 concurrent, per family, in one run.

Families: `clip-tiny` (the committed tiny CLIP: causal, EOT pooled, batches cut after the longest real token)
and `siglip-tiny` (the random-init SigLIP-style folder of indexer/lab/tiny_siglip.py: bidirectional, pooled at
the last of 64 positions, every row fed at the full context), `xlmr-tiny` and `nllb-tiny` (the random-init HF
text towers of indexer/lab/tiny_hf_text.py: XLM-R mean pooler, NLLB-style M2M100 encoder with the CLS pooler;
tokens and attention mask fed, batches cut after the longest real row), and `mobileclip-tiny` (the random-init
MobileCLIP2-S0-shaped folder of indexer/lab/tiny_mobileclip.py: CLIP tokenizer, no causal mask, pooled at the
end-of-text token, every row fed at the full 77-token context). `--large` adds ViT-B-32 (random init), a
random-init text tower of ViT-B-16-SigLIP's shape (width 768, 12 layers, 12 heads, vocabulary 32000, context
64; toy image tower) and one of MobileCLIP-S*'s shape (width 512, 12 layers, 8 heads, context 77). Each family
is exported to an encoder folder as a publish would and loaded by search.runtime.towers.RuntimeEncoder at the
chosen precision.

Per family:
  - one_query: p50/p95 of a bare `session.run` on the query's prepared tokens, of the bare path with the
    runtime tokenizer (`OnnxTextEncoder.encode`), and of `await MicroBatcher.encode` (in service); the gap is
    in-service p50 minus bare-with-tokenizer p50;
  - concurrent_16: queries/s of the bare session on 16 rows at once vs 16 one-row calls (the session's own
    batching gain), and of the in-service encode under 16 concurrent callers with micro-batching vs without
    (window 0: one text per batch), so the micro-batching gain reads beside the bare session's own.

    .venv/bin/python benchmarks/text_families.py [--runs 200] [--queries 320] [--text-precision int8|fp32]
        [--large] [--only mobileclip-tiny,MobileCLIP-S-shaped]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, drive, latency_ms, machine  # noqa: E402

QUERY = "a large orange square on a sand background at dusk"


def _queries(n: int) -> list[str]:
    """World captions of mixed lengths (1 to ~10 words), each distinct, so no cache could answer."""
    from indexer.lab import world

    captions = [c.caption for c in world.all_compositions()]
    out: list[str] = []
    for i in range(n):
        words = captions[i % len(captions)].split()
        out.append(" ".join(words[: 1 + i % len(words)]) + f" {i}")
    return out


def _encoders(large: bool, work: Path, only: set[str] | None = None) -> dict[str, Any]:
    """family -> a loaded open_clip encoder (torch), exported below; `only` keeps the named families."""
    import torch

    from indexer.lab.tiny_hf_text import write_tiny_hf_text
    from indexer.lab.tiny_mobileclip import write_tiny_mobileclip
    from indexer.lab.tiny_siglip import write_tiny_siglip
    from indexer.models.clip import load_encoder

    def folder_model(name: str, write: Callable[[Path], Any]) -> Callable[[], Any]:
        def load() -> Any:
            folder = work / name
            if not (folder / "open_clip_config.json").is_file():
                write(folder)
            return load_encoder(f"local-dir:{folder}", device="cpu")
        return load

    def random_vit_b_32() -> Any:
        torch.manual_seed(0)
        return load_encoder("ViT-B-32", pretrained="random", device="cpu")

    families: dict[str, Callable[[], Any]] = {
        "clip-tiny": lambda: load_encoder("tiny", device="cpu"),
        "siglip-tiny": folder_model("siglip-tiny", write_tiny_siglip),
        "xlmr-tiny": folder_model("xlmr-tiny", lambda f: write_tiny_hf_text(f, "xlm-roberta")),
        "nllb-tiny": folder_model("nllb-tiny", lambda f: write_tiny_hf_text(f, "nllb")),
        "mobileclip-tiny": folder_model("mobileclip-tiny", write_tiny_mobileclip),
    }
    if large:
        families["ViT-B-32"] = random_vit_b_32
        families["ViT-B-16-SigLIP-shaped"] = folder_model("siglip-b16-text", lambda f: write_tiny_siglip(
            f, width=768, layers=12, heads=12, text_vocab_size=32000, vision_width=32, vision_layers=1))
        families["MobileCLIP-S-shaped"] = folder_model("mobileclip-s-text", lambda f: write_tiny_mobileclip(
            f, width=512, layers=12, heads=8, embed_dim=512, image_size=64))
    unknown = (only or set()) - set(families)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)} (known: {', '.join(families)})")
    return {name: load() for name, load in families.items() if only is None or name in only}


def _runtime(encoder: Any, store: Path, precision: str) -> Any:
    from indexer.models.export import export_bundle
    from search.artifact.bundle import SPEC_FILE, EncoderBundle
    from search.runtime.towers import RuntimeEncoder, RuntimeOptions

    files = export_bundle(encoder, store, cache_dir=store / "cache")
    directory = store / files.dir
    bundle = EncoderBundle.from_spec(directory, json.loads((directory / SPEC_FILE).read_text()), dict(files.files))
    return RuntimeEncoder.load(bundle, RuntimeOptions(text_precision=precision))  # type: ignore[arg-type]


def _in_service_one(batcher: Any, runs: int) -> dict[str, float]:
    async def timed() -> list[float]:
        samples = []
        for i in range(runs + 5):
            start = time.perf_counter()
            await batcher.encode(f"{QUERY} {i}")
            if i >= 5:
                samples.append((time.perf_counter() - start) * 1000.0)
        return samples

    samples = sorted(asyncio.run(timed()))
    return {"p50_ms": round(statistics.median(samples), 3),
            "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 3)}


def family(runtime: Any, runs: int, queries: int) -> dict[str, Any]:
    from search.runtime.batcher import MicroBatcher

    text = runtime.text
    session = text.session
    tokens = text.tokenize([QUERY])
    fed = text.feeds(tokens)  # the trimmed tokens (and an HF tower's attention mask)
    tokens16 = text.tokenize(_queries(16))
    batch16 = text.feeds(tokens16)
    one_row = [text.feeds(tokens16[i:i + 1]) for i in range(16)]

    bare = latency_ms(lambda: session.run(None, fed), runs)
    bare_tok = latency_ms(lambda: text.encode([QUERY]), runs)
    batching = MicroBatcher(text, window_s=0.003, max_batch=32)
    single = MicroBatcher(text, window_s=0.0)
    try:
        in_service = _in_service_one(batching, runs)
        rounds = max(3, runs // 16)

        def sixteen_alone() -> None:
            for r in one_row:
                session.run(None, r)

        alone = latency_ms(sixteen_alone, rounds)
        together = latency_ms(lambda: session.run(None, batch16), rounds)
        texts = _queries(queries)
        asyncio.run(drive(batching, texts[:32], 16))  # warm-up
        with_mb = asyncio.run(drive(batching, texts, 16))
        asyncio.run(drive(single, texts[:32], 16))
        without_mb = asyncio.run(drive(single, texts, 16))
    finally:
        batching.close()
        single.close()
    return {
        "trim": bool(text.trim), "context_length": int(text.context_length),
        "fed_tokens_one_query": int(fed["tokens"].shape[1]), "precision": runtime.precision,
        "one_query": {"bare_session": bare, "bare_with_tokenizer": bare_tok, "in_service": in_service,
                      "in_service_gap_ms": round(in_service["p50_ms"] - bare_tok["p50_ms"], 3)},
        "concurrent_16": {
            "bare_session_16_one_row_calls_qps": round(16_000 / alone["p50_ms"], 1),
            "bare_session_one_16_row_call_qps": round(16_000 / together["p50_ms"], 1),
            "bare_session_batching_gain": round(alone["p50_ms"] / together["p50_ms"], 2),
            "in_service_no_batching": without_mb, "in_service_micro_batching": with_mb,
            "in_service_micro_batching_gain": round(with_mb["qps"] / without_mb["qps"], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--text-precision", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--large", action="store_true",
                        help="add ViT-B-32 and ViT-B-16-SigLIP- and MobileCLIP-S-shaped text towers")
    parser.add_argument("--only", help="comma-separated families to run (default: all)")
    parser.add_argument("--work", type=Path, default=OUT / "text_families")
    args = parser.parse_args()

    from search.runtime.threads import configure_process, resolve_budget

    configure_process(resolve_budget())
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "text_families", "machine": machine(), "runs": args.runs,
                              "queries": args.queries, "text_precision": args.text_precision, "families": {}}
    only = set(args.only.split(",")) if args.only else None
    for name, encoder in _encoders(args.large, args.work, only).items():
        runtime = _runtime(encoder, args.work / "store", args.text_precision)
        result["families"][name] = {"model": encoder.identity.model, **family(runtime, args.runs, args.queries)}
    np.set_printoptions(suppress=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
