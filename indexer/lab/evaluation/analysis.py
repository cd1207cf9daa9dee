"""Turning evaluation reports and runs into tables and lists a person reads (used by the notebooks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from indexer.lab.evaluation import ranking
from indexer.lab.evaluation.datasets import EvalDataset

__all__ = ["mode_rows", "markdown_table", "worst_queries", "group_rows", "language_rows"]

TABLE_COLUMNS = ("R@1", "R@5", "R@10", "nDCG@10", "MRR", "mAP", "ms_per_query")


def mode_rows(section: Mapping[str, Any], columns: Sequence[str] = TABLE_COLUMNS) -> list[dict[str, Any]]:
    """One row per mode of a report section (e.g. report["text_to_image"]); scalar entries are skipped."""
    return [{"mode": mode, **{c: scores.get(c) for c in columns}}
            for mode, scores in section.items() if isinstance(scores, Mapping)]


def group_rows(report: Mapping[str, Any], mode: str = "exact",
               columns: Sequence[str] = ("queries", "R@1", "R@10", "chance_R@10", "MRR")) -> list[dict[str, Any]]:
    """Seen vs unseen compositions for one mode (world datasets only; empty otherwise)."""
    groups = report.get("text_to_image_by_group", {})
    return [{"group": g, **{c: groups[g][mode].get(c) for c in columns}} for g in groups if mode in groups[g]]


def language_rows(report: Mapping[str, Any], modes: Sequence[str] | None = None,
                  ks: Sequence[int] = ranking.DEFAULT_KS) -> list[dict[str, Any]]:
    """One row per query language (empty when the queries have no translations): R@K of each mode, each
    approximate mode's R@max(K) minus exact's, and the served mode's (ann_rerank, else http) gap to English."""
    by_language = report.get("text_to_image_by_language", {})
    rows: list[dict[str, Any]] = []
    for lang, section in by_language.items():
        present = [m for m in (modes or section) if isinstance(section.get(m), Mapping) and not m.startswith("gap")]
        row: dict[str, Any] = {"lang": lang, "queries": section[present[0]]["queries"] if present else 0}
        row.update({f"{m} R@{k}": section[m][f"R@{k}"] for m in present for k in ks})
        top = max(ks)
        if "exact" in present:
            row.update({f"{m} - exact R@{top}": round(section[m][f"R@{top}"] - section["exact"][f"R@{top}"], 4)
                        for m in present if m != "exact"})
        served = next((m for m in ("ann_rerank", "http", *present) if m in present), None)
        gap = section.get("gap_to_en", {}).get(served)
        if gap is not None:
            row[f"{served} gap to en R@{top}"] = gap[f"R@{top}"]
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of equal keys as a GitHub markdown table (what notebooks display and benchmarks/run_all writes)."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def worst_queries(dataset: EvalDataset, ranked: Sequence[Sequence[str]], n: int = 6,
                  top: int = 5) -> list[dict[str, Any]]:
    """The `n` text queries whose first relevant image ranks lowest (missing counts as worst), with their top
    results marked relevant or not: what a gallery of failures shows."""
    if len(ranked) != len(dataset.queries):
        raise ValueError(f"{len(ranked)} rankings for {len(dataset.queries)} queries")
    scored = []
    for q, run in zip(dataset.queries, ranked, strict=True):
        rank = ranking.first_relevant_rank(run, set(q.relevant))
        scored.append((float("inf") if rank is None else rank, q, run))
    scored.sort(key=lambda item: -item[0])
    return [{"query": q.text, "first_relevant_rank": None if r == float("inf") else int(r), "unseen": q.unseen,
             "top": [{"path": p, "relevant": p in q.relevant} for p in run[:top]],
             "relevant": sorted(q.relevant)[:top]}
            for r, q, run in scored[:n]]
