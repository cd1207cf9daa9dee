"""Run an evaluation dataset against a published store: text->image and image->image, per search mode.

Modes (in-process, through the artifact reader the service itself uses):
  exact       brute force over the stored float16 vectors (the ground truth for ANN recall);
  ann         the FAISS index alone with its tuned (or given) search parameters;
  ann_rerank  ANN over-fetch + exact float16 rerank: what the service does.
Through HTTP, a running service answers POST /search: its own ANN + rerank, so the mode is `http`.

Runs are lists of image paths (relative to the image root), the names the qrels use.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.lab.evaluation import metrics, ranking
from indexer.lab.evaluation.datasets import EvalDataset
from indexer.models.clip import ClipEncoder
from search.artifact.encoder import encoder_mismatch
from search.artifact.version import Artifact, ArtifactError

__all__ = ["MODES", "ModeRun", "StoreView", "encode_queries", "run_mode", "run_http", "evaluate_store",
           "param_name", "sweep_param", "with_gap_to"]

MODES = ("exact", "ann", "ann_rerank")
ENCODE_BATCH = 256


@dataclass
class ModeRun:
    """One mode's ranked paths per query and its search time (all queries, one thread)."""

    mode: str
    ranked: list[list[str]]
    seconds: float
    ids: np.ndarray | None = None  # image ids, same shape as ranked (in-process only)


@dataclass
class StoreView:
    """An artifact with its id <-> path maps (the qrels name paths, the index returns ids)."""

    artifact: Artifact
    paths: np.ndarray = field(init=False)
    id_of: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        rows = self.artifact.metadata(self.artifact.ids.tolist())
        self.paths = np.array([r["path"] for r in rows] + [""], dtype=object)  # index -1 -> "" (no result)
        self.id_of = {r["path"]: int(r["id"]) for r in rows}

    def to_paths(self, ids: np.ndarray) -> list[list[str]]:
        rows = np.where(ids >= 0, np.searchsorted(self.artifact.ids, np.clip(ids, 0, None)), -1)
        return [[p for p in self.paths[r].tolist() if p] for r in rows]


def check_encoder(artifact: Artifact, encoder: ClipEncoder) -> None:
    """Query vectors from another encoder than the index's would make every number meaningless."""
    reason = encoder_mismatch(encoder.identity, artifact.manifest.encoder, f"version {artifact.version}")
    if reason is not None:
        raise ArtifactError(reason)


def encode_queries(encoder: ClipEncoder, texts: Sequence[str]) -> np.ndarray:
    chunks = [encoder.encode_texts(list(texts[i:i + ENCODE_BATCH])) for i in range(0, len(texts), ENCODE_BATCH)]
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)


def run_mode(view: StoreView, queries: np.ndarray, mode: str, k: int, params: Mapping[str, Any] | None = None,
             candidates: int | None = None, exclude: np.ndarray | None = None) -> ModeRun:
    """Search `queries` in one mode. `exclude` (one id per query) drops the query image itself (image->image)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}")
    art = view.artifact
    fetch = k + (1 if exclude is not None else 0)
    start = time.perf_counter()
    if mode == "exact":
        _, ids = art.exact_search(queries, fetch)
    elif mode == "ann":
        _, ids = art.ann_search(queries, fetch, params)
    else:
        ids = art.search(queries, fetch, params=params, candidates=candidates).ids
    seconds = time.perf_counter() - start
    if exclude is not None:
        ids = _drop_self(ids, exclude, k)
    return ModeRun(mode, view.to_paths(ids), seconds, ids)


def _drop_self(ids: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Each row without its own query id, cut (or padded with -1) to k."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for q, (row, ex) in enumerate(zip(ids, exclude, strict=True)):
        kept = row[row != ex][:k]
        out[q, :len(kept)] = kept
    return out


def run_http(url: str, texts: Sequence[str], k: int, timeout_s: float = 60.0, lang: str | None = None) -> ModeRun:
    """Text queries through a running service (POST /search, in language `lang` when given: models that take a
    source language need it); the service's answer is ANN + rerank."""
    import httpx

    ranked: list[list[str]] = []
    body: dict[str, Any] = {"k": k} if lang is None else {"k": k, "lang": lang}
    start = time.perf_counter()
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s) as client:
        for text in texts:
            response = client.post("/search", json={"query": text, **body})
            if response.status_code != 200:
                raise RuntimeError(f"{url}/search answered {response.status_code} for {text!r}: {response.text[:300]}")
            ranked.append([hit["path"] for hit in response.json()["hits"]])
    return ModeRun("http", ranked, time.perf_counter() - start)


def _mode_report(run: ModeRun, qrels: Sequence[AbstractSet[Hashable]], n_items: int,
                 ks: Sequence[int]) -> dict[str, Any]:
    report: dict[str, Any] = dict(ranking.score_run(run.ranked, qrels, ks, n_items=n_items))
    report["ms_per_query"] = round(1000.0 * run.seconds / max(len(run.ranked), 1), 4)
    return report


def _ann_recall(runs: dict[str, ModeRun], k: int) -> dict[str, float]:
    """Recall@k of each approximate mode against exact search over the same vectors (no labels needed)."""
    if "exact" not in runs:
        return {}
    exact = runs["exact"].ranked
    return {f"{m}_vs_exact_recall@{k}": round(metrics.recall_against_exact(r.ranked, exact, k), 4)
            for m, r in runs.items() if m != "exact"}


def evaluate_store(dataset: EvalDataset, view: StoreView, encoder: ClipEncoder | None, modes: Sequence[str],
                   k: int = 10, params: Mapping[str, Any] | None = None, candidates: int | None = None,
                   http_url: str | None = None, ks: Sequence[int] = ranking.DEFAULT_KS,
                   keep_runs: bool = False) -> dict[str, Any]:
    """The JSON report: per direction (text->image, image->image), per mode, every metric; ANN vs exact."""
    depth = max(k, *ks)
    missing = sorted(set(dataset.images) - set(view.id_of))
    n_items = len(view.id_of)
    report: dict[str, Any] = {
        "dataset": dataset.name, "images": len(dataset.images), "indexed": n_items,
        "not_in_index": len(missing), "not_in_index_examples": missing[:5], "version": view.artifact.version,
        "index": {"factory": view.artifact.manifest.index.factory,
                  "params": dict(params or view.artifact.search_params),
                  "rerank_candidates": candidates or view.artifact.rerank_candidates},
        "k": depth,
    }
    texts = [q.text for q in dataset.queries]
    qrels = [set(q.relevant) for q in dataset.queries]
    runs: dict[str, ModeRun] = {}
    if http_url:
        runs["http"] = run_http(http_url, texts, depth)
    inprocess = [m for m in modes if m != "http"]
    if inprocess:
        if encoder is None:
            raise ValueError("in-process modes need the encoder")
        check_encoder(view.artifact, encoder)
        vectors = encode_queries(encoder, texts)
        for mode in inprocess:
            runs[mode] = run_mode(view, vectors, mode, depth, params, candidates)
    t2i: dict[str, Any] = {m: _mode_report(r, qrels, n_items, ks) for m, r in runs.items()}
    t2i.update(_ann_recall(runs, depth))
    report["text_to_image"] = t2i
    report["text_to_image_by_group"] = _by_group(dataset, runs, n_items, ks)
    if dataset.languages:
        report["text_to_image_by_language"] = _by_language(dataset, view, encoder, modes, depth, params, candidates,
                                                           http_url, ks)
    if dataset.image_groups and inprocess:
        report["image_to_image"] = _image_to_image(dataset, view, inprocess, depth, params, candidates, ks)
    if keep_runs:
        report["_runs"] = runs
    return report


def _by_group(dataset: EvalDataset, runs: dict[str, ModeRun], n_items: int, ks: Sequence[int]) -> dict[str, Any]:
    """World only: seen vs unseen compositions (queries whose colour-shape pair training never drew)."""
    out: dict[str, Any] = {}
    for name, flag in (("seen", False), ("unseen", True)):
        idx = [i for i, q in enumerate(dataset.queries) if q.unseen is flag]
        if idx:
            qrels = [set(dataset.queries[i].relevant) for i in idx]
            out[name] = {m: ranking.score_run([r.ranked[i] for i in idx], qrels, ks, n_items=n_items)
                         for m, r in runs.items()}
    return out


def _by_language(dataset: EvalDataset, view: StoreView, encoder: ClipEncoder | None, modes: Sequence[str], k: int,
                 params: Mapping[str, Any] | None, candidates: int | None, http_url: str | None,
                 ks: Sequence[int]) -> dict[str, Any]:
    """World only: the same queries asked in each language of their translations (the gallery stays captioned
    in English), every mode per language, each mode's loss against exact search, and each language's R@K gap
    to English, so a multilingual model's weak language and the index's loss in it are numbers."""
    n_items = len(view.id_of)
    out: dict[str, Any] = {}
    for lang in dataset.languages:
        asked = [q for q in dataset.queries if lang in q.translations]
        texts = [q.translations[lang] for q in asked]
        runs: dict[str, ModeRun] = {}
        if http_url:
            runs["http"] = run_http(http_url, texts, k, lang=lang)
        inprocess = [m for m in modes if m != "http"]
        if inprocess:
            if encoder is None:
                raise ValueError("in-process modes need the encoder")
            vectors = encode_queries(encoder, texts)
            for mode in inprocess:
                runs[mode] = run_mode(view, vectors, mode, k, params, candidates)
        section: dict[str, Any] = {m: _mode_report(r, [set(q.relevant) for q in asked], n_items, ks)
                                   for m, r in runs.items()}
        section.update(_ann_recall(runs, k))
        out[lang] = section
    return with_gap_to(out, "en", ks)


def with_gap_to(by_language: dict[str, Any], reference: str, ks: Sequence[int]) -> dict[str, Any]:
    """Each language's section gains gap_to_<reference>: {mode: {R@K: reference R@K - this language's}} (positive
    means worse than the reference); unchanged when the reference language was not asked."""
    ref = by_language.get(reference)
    if ref is None:
        return by_language
    modes = [m for m, scores in ref.items() if isinstance(scores, Mapping)]
    for section in by_language.values():
        section[f"gap_to_{reference}"] = {m: {f"R@{k}": round(ref[m][f"R@{k}"] - section[m][f"R@{k}"], 4) for k in ks}
                                          for m in modes if m in section}
    return by_language


def _image_to_image(dataset: EvalDataset, view: StoreView, modes: Sequence[str], k: int,
                    params: Mapping[str, Any] | None, candidates: int | None, ks: Sequence[int]) -> dict[str, Any]:
    """Every indexed image that has at least one other relevant image is a query; itself is excluded."""
    queries = [p for p in dataset.images if dataset.image_groups.get(p) and p in view.id_of]
    if not queries:
        return {"queries": 0}
    ids = np.array([view.id_of[p] for p in queries], dtype=np.int64)
    vectors = view.artifact.vectors_for(ids)
    qrels = [set(dataset.image_groups[p]) for p in queries]
    runs = {m: run_mode(view, vectors, m, k, params, candidates, exclude=ids) for m in modes}
    out: dict[str, Any] = {m: _mode_report(r, qrels, len(view.id_of) - 1, ks) for m, r in runs.items()}
    out.update(_ann_recall(runs, k))
    return out


def param_name(artifact: Artifact) -> str | None:
    """The search parameter that trades recall for speed on this index (None for an exact index)."""
    import faiss

    index = faiss.downcast_index(artifact.index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexIVF):
        return "nprobe"
    if isinstance(index, faiss.IndexHNSW):
        return "efSearch"
    return None


def sweep_param(view: StoreView, queries: np.ndarray, values: Sequence[int], k: int = 10,
                rerank: bool = False, candidates: int | None = None) -> list[dict[str, Any]]:
    """Recall@k against exact search and median single-query latency for each value of the index's speed knob."""
    name = param_name(view.artifact)
    if name is None:
        raise ValueError(f"index {view.artifact.manifest.index.factory} is exact: it has no search parameter to sweep")
    exact = run_mode(view, queries, "exact", k)
    mode = "ann_rerank" if rerank else "ann"
    rows = []
    for value in values:
        params = {name: int(value)}
        run = run_mode(view, queries, mode, k, params, candidates)
        rows.append({name: int(value), "rerank": rerank,
                     f"recall@{k}": round(metrics.recall_against_exact(run.ranked, exact.ranked, k), 4),
                     "ms_per_query": _median_single_query_ms(view, queries, mode, k, params, candidates)})
    return rows


def _median_single_query_ms(view: StoreView, queries: np.ndarray, mode: str, k: int, params: Mapping[str, Any],
                            candidates: int | None) -> float:
    """Median latency of one query at a time (what a request sees), robust to a noisy shared machine."""
    times = [run_mode(view, queries[i:i + 1], mode, k, params, candidates).seconds for i in range(len(queries))]
    return round(1000.0 * float(np.median(times)), 4)
