"""Everything the evaluation notebooks run, so the notebooks themselves hold no logic: a small world indexed
once with the real pipeline (an IVF index is forced, so there is a recall/latency trade-off to plot), and
thin calls into runner, latency and cache_sim.

Folders are arguments (the notebooks name them: their own out/ folder unless PHOTOSTOCK_NOTEBOOK_OUT,
PHOTOSTOCK_NOTEBOOK_WORKDIR say otherwise); nothing here computes a repo path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.lab.evaluation import cache_sim, latency, runner, stores
from indexer.lab.evaluation.datasets import EvalDataset
from indexer.models.clip import ClipEncoder
from search.artifact.version import Artifact, open_current

__all__ = ["WorldContext", "world_context", "multilingual_context", "evaluate", "sweep", "latency_records",
           "hit_rate_curves"]

NLIST = 16


@dataclass
class WorldContext:
    dataset: EvalDataset
    store: Path
    encoder: ClipEncoder
    checkpoint: str
    artifact: Artifact
    view: runner.StoreView


def world_context(workdir: Path, gallery: int = 300, size: int = 64, seed: int = 1000) -> WorldContext:
    """The notebook's world and store under WORKDIR, built on first use and reused by later runs and the other
    notebook."""
    workdir = Path(workdir) / f"world-{seed}-{gallery}-{size}"
    checkpoint = str(stores.tiny_checkpoint())
    encoder = stores.tiny_encoder()
    index = {"factory": f"IVF{NLIST},Flat", "recall_queries": 100, "latency_queries": 20}
    dataset, store = stores.prepare_world_store(workdir, encoder, seed=seed, gallery=gallery, size=(size, size),
                                                index=index)
    return _context(dataset, store, encoder, checkpoint)


def multilingual_context(workdir: Path, gallery: int = 300, size: int = 64, seed: int = 1000) -> WorldContext:
    """The same world indexed by the committed tiny multilingual model (its own store under WORKDIR, built on
    first use), for relevance per query language: the gallery is captioned in English only."""
    from indexer.models import registry
    from indexer.models.clip import load_encoder

    workdir = Path(workdir) / f"world-{seed}-{gallery}-{size}-multilingual"
    encoder = load_encoder("tiny-multilingual", device="cpu")
    index = {"factory": f"IVF{NLIST},Flat", "recall_queries": 100, "latency_queries": 20}
    dataset, store = stores.prepare_world_store(workdir, encoder, seed=seed, gallery=gallery, size=(size, size),
                                                index=index)
    return _context(dataset, store, encoder, str(registry.tiny_multilingual_folder() / registry.FOLDER_WEIGHTS))


def _context(dataset: EvalDataset, store: Path, encoder: ClipEncoder, checkpoint: str) -> WorldContext:
    artifact = open_current(store, expect_encoder=encoder.identity)
    return WorldContext(dataset, store, encoder, checkpoint, artifact, runner.StoreView(artifact))


def evaluate(ctx: WorldContext, modes: Sequence[str] = runner.MODES, **kwargs: Any) -> dict[str, Any]:
    """The evaluate command's report, with the runs kept (report['_runs']) for the worst-query gallery."""
    return runner.evaluate_store(ctx.dataset, ctx.view, ctx.encoder, modes, keep_runs=True, **kwargs)


def sweep(ctx: WorldContext, values: Sequence[int] = (1, 2, 4, 8, NLIST), rerank: bool = False) -> list[dict[str, Any]]:
    queries = runner.encode_queries(ctx.encoder, [q.text for q in ctx.dataset.queries])
    return runner.sweep_param(ctx.view, queries, values, rerank=rerank)


def latency_records(ctx: WorldContext, http_load_json: Path | None = None, n: int = 200,
                    exponent: float = 1.0) -> tuple[list[dict[str, Any]], str]:
    """Stage records from `http_load_json` (benchmarks/http_load.py's output) when it has them, else measured
    here over a Zipf log of the world's captions (repeats hit the query cache). Returns (records, source)."""
    records = latency.load_stage_samples(http_load_json) if http_load_json is not None else None
    if records:
        return records, str(http_load_json)
    texts = [q.text for q in ctx.dataset.queries]
    log = [texts[r] for r in cache_sim.zipf_ranks(len(texts), n, exponent).tolist()]
    return latency.measure_stages(ctx.store, ctx.encoder, ctx.checkpoint, log), "measured in-process"


def hit_rate_curves(exponents: Sequence[float] = (0.8, 1.0, 1.2), distinct: int = 20000, length: int = 30000,
                    sizes: Sequence[int] = (10, 100, 1000, 10000)) -> dict[str, list[dict[str, float]]]:
    return {f"zipf s={s:g}": cache_sim.hit_rate_curve(cache_sim.zipf_log(distinct, length, s, seed=1), sizes)
            for s in exponents}
