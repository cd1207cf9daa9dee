"""Every measured figure in the docs names the script that produces it.

The rule, per file (README.md, docs/**/*.md, benchmarks/README.md):
- fenced code blocks are ignored; an inline code span counts only for the script name it may hold;
- a block is a paragraph or list (lines up to a blank line or a heading); a table is one block together with
  the paragraph right above it (its caption);
- a figure is a number followed by a unit (ms, s, min, µs, QPS, img/s, ×, x, %, B/KB/MB/GB/KiB/MiB/GiB ...);
- a block holding a figure must name a file in benchmarks/ (`ann_scale.py`, `run_all`, ...), unless the block
  is on ALLOWED below: numbers that are not measurements (config defaults, format sizes, arithmetic from other
  figures, targets), each with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = {p.name for p in (ROOT / "benchmarks").iterdir() if p.is_file()}
UNIT = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:ms|µs|us|s|min|QPS|qps|img/s|req/s|rps|×|x|%|[KMGT]i?B|B|"
                  r"gflops|GFLOP/s|GB/s|MB/s)(?![\w/])")
SCRIPT = re.compile(r"\b([a-z_]+\.py|run_all)\b")
FENCE = re.compile(r"```.*?```", re.S)
CODE = re.compile(r"`[^`]*`")

# (file, text the block contains, why its numbers are not measurements)
ALLOWED: list[tuple[str, str, str]] = [
    ("README.md", "Machine: AMD EPYC", "the machine's description"),
    ("README.md", "The 3.8 MB float16 checkpoint", "a file's size in the repository"),
    ("README.md", "seeded renders of 2 sizes", "the training recipe's documented run time, from its log"),
    ("README.md", "**Every file name.**", "the file-name rules; sizes are from test_photo_library"),
    ("docs/contracts.md", "`current_link(store)`", "limits of the contract (read sizes), not measurements"),
    ("docs/scaling.md", "Without `--ray-address`", "Ray settings the backend passes"),
    ("docs/scaling.md", "Installing the extra", "pip's own download sizes and install time"),
    ("docs/scaling.md", "decode capacity = decode CPUs", "formulas over the unit costs ray_vs_local.py prints"),
    ("docs/scaling.md", "| float16 rerank vectors", "format sizes (bytes per vector by construction)"),
    ("docs/scaling.md", "are memory-mapped", "arithmetic over the format sizes above"),
    ("docs/scaling.md", "Today each replica polls", "config defaults (reload.poll_s)"),
    ("docs/scaling.md", "Distribute and verify", "arithmetic over the format sizes above"),
    ("docs/scaling.md", "The query-embedding cache is per process", "config defaults and entry-size arithmetic"),
    ("docs/scaling.md", "Round-robin over R replicas", "arithmetic over the encode costs above"),
    ("docs/scaling.md", "A serving node must keep", "the budget in configs/index.yaml, a target"),
    ("docs/scaling.md", "So latency forces sharding", "arithmetic over the cost model above"),
    ("docs/scaling.md", "Merging per-shard top-k", "message-size arithmetic"),
    ("docs/deploy/README.md", "`python -m indexer takedown --store STORE", "the takedown_check_s default"),
    ("README.md", "Both install what they need themselves", "pip's install size, as the installer reports it"),
    ("docs/contracts.md", "The query layer's batch interface",
     "the interface's fetch rule (a multiplier), not a measurement"),
    ("docs/service.md", "| queries | n | best similarity", "similarities from `python -m indexer.lab.score_floor`, "
     "the calibration that lives with the lab (its command is in the caption)"),
    ("docs/service.md", "1. `normalize`: NFKC", "config defaults (cache sizes) and the fetch rule's multiplier"),
    ("benchmarks/README.md", "CI runs a subset, `tests/test_mutation_subset.py`",
     "the CI test's own run time range, as pytest prints it"),
]


def blocks(text: str) -> list[tuple[int, str]]:
    """(first line, text) of each block, by the rule above."""
    lines = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text).split("\n")
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start, kind = 1, ""
    for number, line in enumerate(lines, 1):
        is_table = line.lstrip().startswith("|")
        if not line.strip() or line.startswith("#"):
            if current:
                out.append((start, current))
            current, kind = [], ""
            continue
        if kind == "table" and not is_table:  # text right after a table starts a new block
            out.append((start, current))
            current = []
        if not current:
            start = number
        kind = "table" if is_table else "text"
        current.append(line)
    if current:
        out.append((start, current))
    joined = []
    for i, (n, b) in enumerate(out):  # a table starting its own block takes the paragraph above as its caption
        caption = out[i - 1][1] if i and b[0].lstrip().startswith("|") and not out[i - 1][1][-1].lstrip().startswith(
            "|") else []
        joined.append((n, " ".join(caption + b)))
    return joined


def figures_without_script(path: Path) -> list[str]:
    rel = str(path.relative_to(ROOT))
    found = []
    for line, block in blocks(path.read_text(encoding="utf-8")):
        prose = CODE.sub(lambda m: m.group(0) if SCRIPT.search(m.group(0)) else "", block)
        figures = UNIT.findall(prose)
        if not figures or any(name in BENCHMARKS for name in SCRIPT.findall(prose)):
            continue
        if any(rel == f and snippet in block for f, snippet, _ in ALLOWED):
            continue
        found.append(f"{rel}:{line}: {figures[:3]} in {block[:100]!r}")
    return found


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md"]


def test_every_figure_names_its_script() -> None:
    missing = [m for path in doc_files() for m in figures_without_script(path)]
    assert not missing, "figures with no benchmark script in their paragraph or table:\n" + "\n".join(missing)


def test_the_rule_catches_an_unsourced_figure_and_accepts_a_sourced_one(tmp_path: Path) -> None:
    text = ("The page loads in 12 ms.\n\nThe page loads in 12 ms (`http_load.py`).\n\nSee `x` for 3 items.\n\n"
            "Caption from `serving_core.py`:\n\n| a | b |\n|---|---|\n| hit | 0.7 ms |\n")
    flagged = [(n, b) for n, b in blocks(text) if UNIT.findall(CODE.sub("", b))
               and not any(s in BENCHMARKS for s in SCRIPT.findall(b))]
    assert flagged == [(1, "The page loads in 12 ms.")]


def test_every_allowed_block_still_exists() -> None:
    """An allow-list entry whose block is gone is stale: remove it."""
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in doc_files()}
    stale = [(f, s) for f, s, _ in ALLOWED if s not in texts.get(f, "")]
    assert not stale, stale
