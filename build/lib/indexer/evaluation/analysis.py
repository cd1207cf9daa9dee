"""Turning evaluation reports and runs into tables and lists a person reads (used by the notebooks)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from indexer.evaluation import ranking
from indexer.evaluation.datasets import EvalDataset

__all__ = ["mode_rows", "markdown_table", "worst_queries", "group_rows"]

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
    for q, run in zip(dataset.queries, ranked):
        rank = ranking.first_relevant_rank(run, set(q.relevant))
        scored.append((float("inf") if rank is None else rank, q, run))
    scored.sort(key=lambda item: -item[0])
    return [{"query": q.text, "first_relevant_rank": None if r == float("inf") else int(r), "unseen": q.unseen,
             "top": [{"path": p, "relevant": p in q.relevant} for p in run[:top]],
             "relevant": sorted(q.relevant)[:top]}
            for r, q, run in scored[:n]]
