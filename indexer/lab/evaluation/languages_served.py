"""Per-language relevance of a published world store through the search service itself.

Why: a multilingual model is only useful if the served path (the store's exported encoder, tokenizer.json, ANN +
rerank) finds the English-captioned photo for a query in each language. For every language of the world's
queries this asks GET /search in-process and, over the same (fp32, served) query vectors, searches the stored
vectors exactly, so the index's loss is measured per language next to the model's relevance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.lab.evaluation import metrics
from indexer.lab.evaluation.world_eval import load_queries

__all__ = ["served_language_recall"]


def served_language_recall(store: Path, world_dir: Path, k: int = 10) -> dict[str, dict[str, Any]]:
    """{lang: {"queries", "served_R@k", "exact_R@k"}} for the world's queries asked in each language."""
    from fastapi.testclient import TestClient

    from search.artifact.version import open_current
    from search.http.app import create_app
    from search.runtime.towers import RuntimeEncoder, RuntimeOptions
    from search.settings import ReloadSettings, RuntimeSettings, Settings

    queries = load_queries(world_dir)
    relevant = [set(q["relevant"]) for q in queries]
    langs = sorted({lang for q in queries for lang in q.get("translations", {})})
    settings = Settings(store=Path(store), reload=ReloadSettings(watch=False),
                        runtime=RuntimeSettings(text_precision="fp32"))
    out: dict[str, dict[str, Any]] = {}
    with open_current(store) as artifact, TestClient(create_app(settings), base_url="http://localhost") as client:
        assert artifact.encoder_bundle is not None, "the store holds no encoder"
        runtime = RuntimeEncoder.load(artifact.encoder_bundle, RuntimeOptions(text_precision="fp32"))
        for lang in langs:
            idx = [i for i, q in enumerate(queries) if lang in q.get("translations", {})]
            texts = [queries[i]["translations"][lang] for i in idx]
            served = []
            for text in texts:
                response = client.get("/search", params={"q": text, "k": k})
                if response.status_code != 200:
                    raise RuntimeError(f"/search answered {response.status_code} for {text!r}: {response.text}")
                served.append([hit["path"] for hit in response.json()["hits"]])
            _, ids = artifact.exact_search(runtime.encode_texts(texts), k)
            path_of = {int(m["id"]): m["path"] for m in artifact.metadata({int(i) for i in ids.ravel() if i >= 0})}
            exact = [[path_of[int(i)] for i in row if int(i) >= 0] for row in ids]
            want = [relevant[i] for i in idx]
            out[lang] = {"queries": len(idx), f"served_R@{k}": round(metrics.hit_rate_at_k(served, want, k), 4),
                         f"exact_R@{k}": round(metrics.hit_rate_at_k(exact, want, k), 4)}
    return out
