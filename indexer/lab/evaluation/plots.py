"""Figures for the evaluation notebooks, each saved as a PNG into the folder the caller names (matplotlib is
imported only when a figure is drawn)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["save", "metric_bars", "language_bars", "recall_latency", "worst_gallery", "latency_bars", "hit_rate"]

def save(fig: Any, name: str, out_dir: Path) -> Path:
    """Write `fig` as OUT_DIR/NAME.png (the folder is created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _plt() -> Any:
    import matplotlib

    if not _in_kernel():  # scripts and tests draw off-screen; a notebook keeps its inline backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_kernel() -> bool:
    import sys

    return "ipykernel" in sys.modules


def metric_bars(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("R@1", "R@5", "R@10", "mAP"),
                label: str = "mode", title: str = "") -> Any:
    """Grouped bars: one group per metric, one bar per row (mode)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [row.get(m) or 0.0 for m in metrics], width, label=str(row[label]))
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(metrics))], list(metrics))
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def language_bars(rows: Sequence[Mapping[str, Any]], modes: Sequence[str] = ("exact", "ann_rerank"),
                  ks: Sequence[int] = (1, 5, 10), title: str = "") -> Any:
    """One panel per K: R@K per query language (analysis.language_rows), one bar per mode side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(ks), figsize=(3.4 * len(ks), 3.2), sharey=True, squeeze=False)
    width = 0.8 / max(len(modes), 1)
    langs = [str(r["lang"]) for r in rows]
    for ax, k in zip(axes[0], ks, strict=True):
        for i, mode in enumerate(modes):
            ax.bar([j + i * width for j in range(len(rows))], [r.get(f"{mode} R@{k}") or 0.0 for r in rows], width,
                   label=mode)
        ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(rows))], langs)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"R@{k}")
    axes[0][0].set_ylabel("text -> image")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def recall_latency(curves: Mapping[str, Sequence[Mapping[str, Any]]], param: str, k: int = 10) -> Any:
    """Recall@k against exact search vs milliseconds per query, one line per curve, points labelled by param."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in curves.items():
        xs, ys = [r["ms_per_query"] for r in rows], [r[f"recall@{k}"] for r in rows]
        ax.plot(xs, ys, marker="o", label=name)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(f"{param}={r[param]}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, -9))
    ax.set_xlabel("median ms per query (one query at a time)")
    ax.set_ylabel(f"recall@{k} vs exact")
    ax.set_ylim(0, 1.05)
    ax.legend()
    return fig


def worst_gallery(worst: Sequence[Mapping[str, Any]], image_root: Path, thumb: int = 96) -> Any:
    """One row per query: its top results as thumbnails, green frame when relevant, red when not."""
    from PIL import Image

    plt = _plt()
    cols = max((len(w["top"]) for w in worst), default=1)
    fig, axes = plt.subplots(len(worst), cols, figsize=(1.6 * cols, 1.8 * len(worst)), squeeze=False)
    for r, item in enumerate(worst):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(item["top"]):
                ax.axis("off")
                continue
            hit = item["top"][c]
            with Image.open(Path(image_root) / hit["path"]) as im:
                im.thumbnail((thumb, thumb))
                ax.imshow(im.convert("RGB"))
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if hit["relevant"] else "red")
                spine.set_linewidth(3)
        rank = item["first_relevant_rank"]
        axes[r][0].set_title(f"{item['query']}  (first relevant: {rank or 'none'})", fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def latency_bars(rows: Sequence[Mapping[str, Any]], group: str = "all") -> Any:
    """p50 and p99 per stage for one row group of latency.stage_percentiles."""
    plt = _plt()
    picked = [r for r in rows if r["queries"] == group]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(picked))
    ax.bar([x - 0.2 for x in xs], [r["p50_ms"] for r in picked], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [r["p99_ms"] for r in picked], 0.4, label="p99")
    ax.set_xticks(list(xs), [r["stage"] for r in picked], rotation=30)
    ax.set_ylabel("ms")
    ax.set_title(f"query latency per stage ({group})")
    ax.legend()
    return fig


def hit_rate(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
    """Cache hit rate against cache size (log x), one line per query-log shape, dashed ceiling."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in curves.items():
        line = ax.plot([r["cache_size"] for r in rows], [r["hit_rate"] for r in rows], marker="o", label=name)[0]
        ax.axhline(rows[0]["ceiling"], linestyle="--", color=line.get_color(), linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("cache size (entries)")
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1)
    ax.legend()
    return fig
