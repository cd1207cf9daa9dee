"""Per-stage query latency (normalize, embed/encode, ann, rerank, metadata, total) from the service's own
query path: read from a benchmark JSON when one exists, else measured in-process through search.state's
QueryEmbedder and Searcher, which are what every HTTP request runs."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from indexer.models.clip import ClipEncoder

__all__ = ["measure_stages", "stage_percentiles", "load_stage_samples"]

NOT_STAGES = frozenset({"cache_hit", "ts", "results"})  # numeric fields of query-log records that are not ms


def measure_stages(store: Path, encoder: ClipEncoder, pretrained: str, queries: Sequence[str], k: int = 10,
                   text_backend: Literal["torch", "onnx"] = "onnx",
                   onnx_cache: Path | None = None) -> list[dict[str, Any]]:
    """One record per query: milliseconds per stage plus whether the embedding came from the cache. Repeated
    queries in `queries` hit the cache, as they would in the service.

    The service state runs the artifact's own ONNX encoder, pinned to `encoder`'s identity; `pretrained`,
    `text_backend` and `onnx_cache` are kept for callers and no longer used (the artifact carries its towers).
    """
    from search.query.pipeline import SearchSpec
    from search.query.timing import StageTimer
    from search.settings import EncoderSettings, ReloadSettings, Settings
    from search.state import build_state

    settings = Settings(store=Path(store),
                        encoder=EncoderSettings(key=encoder.identity.key), reload=ReloadSettings(watch=False))

    async def run_all() -> list[dict[str, Any]]:
        state = build_state(settings)
        try:
            records = []
            for text in queries:
                timer = StageTimer()
                with timer.stage("total"):
                    vector, hit = await state.embedder.embed(text, timer)
                    await state.searcher.search(vector, SearchSpec(k=k), timer)
                records.append({**timer.milliseconds(), "cache_hit": hit})
            return records
        finally:
            state.close()

    records: list[dict[str, Any]] = _run_in_thread(run_all)
    return records


def _run_in_thread(factory: Any) -> Any:
    """asyncio.run in a fresh thread: works whether or not the caller (a notebook kernel) has a running loop."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="latency-measure")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def stage_percentiles(records: Sequence[dict[str, Any]], percentiles: Sequence[float] = (50, 90, 99),
                      by_cache: bool = True) -> list[dict[str, Any]]:
    """Rows of stage x percentile (ms); with `by_cache`, cache hits and misses are separate rows too."""
    groups: dict[str, list[dict[str, Any]]] = {"all": list(records)}
    if by_cache:
        groups["cache hit"] = [r for r in records if r.get("cache_hit")]
        groups["cache miss"] = [r for r in records if r.get("cache_hit") is False]
    rows = []
    for group, recs in groups.items():
        stages = sorted({s for r in recs for s, v in r.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and s not in NOT_STAGES})
        for stage in stages:
            values = np.array([r[stage] for r in recs if stage in r], dtype=np.float64)
            rows.append({"queries": group, "stage": stage, "n": len(values),
                         **{f"p{p:g}_ms": round(float(np.percentile(values, p)), 3) for p in percentiles}})
    return rows


def load_stage_samples(path: Path) -> list[dict[str, Any]] | None:
    """Per-query stage records from a benchmark JSON that has a `stage_samples` list (None when the file or
    the key is absent, so the caller measures instead)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    samples = data.get("stage_samples") if isinstance(data, dict) else None
    if samples is None:
        return None
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise ValueError(f"{path}: 'stage_samples' must be a list of {{stage: ms}} objects")
    return samples
