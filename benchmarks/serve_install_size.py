"""Serve-only install size: the project installed with only `pip install ".[serve,cpu]"` into a fresh
virtualenv, from the working tree and from a baseline git ref, side by side. Prints one JSON object: the bytes
of each site-packages (the virtualenv's own pip and setuptools left out: they are the same in both), its
largest distributions, the distributions added and removed against the baseline with their sizes, and the
ratio. Exit 1 when torch, torchvision, open_clip, transformers or sentencepiece is installed, or when the
ratio is above --max-ratio (the target: within 10 % of the baseline).

The default baseline is the commit before the HF-tokenizer / multilingual work began (issue 19's first commit,
df37088, "Text-tower families ..."; its parent). That work never changed the serve extra: `tokenizers` was in it
from the start (the CLIP BPE runs on it); its one pyproject change put transformers in the index extra.

Package downloads come from the configured registry through pip's cache (--cache-dir; reruns are cheap);
building the project's wheel needs setuptools from it too. A minute or two on two cores with a warm cache.

    .venv/bin/python benchmarks/serve_install_size.py [--baseline REF] [--cache-dir DIR] [--top 12]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path
from typing import Any

from common import ROOT, machine  # noqa: E402 (puts the repository on sys.path)

BASELINE = "570e622"  # parent of df37088, the first commit of the HF tokenizer / multilingual work
FORBIDDEN = ("torch", "torchvision", "open-clip-torch", "transformers", "sentencepiece")
VENV_TOOLS = ("pip", "setuptools")  # what `python -m venv` itself installs, the same in both environments
EXTRAS = "serve,cpu"

# run inside the fresh virtualenv: bytes of each installed distribution's own files and the distributions it
# requires (markers evaluated there; the project's requirements with the extras installed), by canonical name
SIZES = r"""
import json, os, re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
extras = set(sys.argv[1].split(","))
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
out = {}
for dist in metadata.distributions():
    name = canon(dist.metadata["Name"])
    total = sum(os.path.getsize(f.locate()) for f in dist.files or () if os.path.isfile(f.locate()))
    wanted = extras if name == "photostock-search" else {""}
    needs = set()
    for text in dist.requires or ():
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted):
            needs.add(canon(req.name))
    entry = out.setdefault(name, {"bytes": 0, "requires": []})
    entry["bytes"] += total
    entry["requires"] = sorted(set(entry["requires"]) | needs)
print(json.dumps(out))
"""


def export_tree(ref: str | None, dest: Path) -> Path:
    """The sources pip builds from: the working tree's tracked and unignored files (ref None), or `git archive`
    of `ref`. A copy, because building the wheel writes build/ and *.egg-info beside the sources."""
    dest.mkdir(parents=True)
    if ref is None:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
        for rel in filter(None, listed):
            src = ROOT / rel
            if src.is_file() and not src.is_symlink():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return dest
    archive = dest.parent / f"{dest.name}.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), ref], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def site_packages(env_dir: Path) -> Path:
    found = list(env_dir.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise RuntimeError(f"expected one site-packages under {env_dir}, found {found}")
    return found[0]


def tree_bytes(root: Path) -> int:
    """Apparent size of every regular file under `root` (links not followed)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


def install(source: Path, env_dir: Path, cache_dir: Path | None) -> dict[str, Any]:
    """A fresh virtualenv (no system site packages) with only `source[serve,cpu]` installed; its sizes."""
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cache = ["--cache-dir", str(cache_dir)] if cache_dir else []
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *cache,
                           f"{source}[{EXTRAS}]"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {source.name}[{EXTRAS}] failed:\n{done.stderr[-3000:]}")
    dists: dict[str, dict[str, Any]] = json.loads(subprocess.run([python, "-c", SIZES, EXTRAS], capture_output=True,
                                                                 text=True, env=env, check=True).stdout)
    tools = sum(dists[t]["bytes"] for t in VENV_TOOLS if t in dists)
    total = tree_bytes(site_packages(env_dir))
    return {"site_packages_bytes": total - tools, "venv_tools_bytes": tools,
            "distributions": {k: v["bytes"] for k, v in dists.items() if k not in VENV_TOOLS},
            "requires": {k: v["requires"] for k, v in dists.items()}}


def brought_only_by(name: str, requires: dict[str, list[str]], root: str = "photostock-search") -> list[str]:
    """`name` and the distributions installed only because of it: reachable from it, not from the project's
    other requirements (sub-requirements' own extras are not followed)."""
    def reach(start: list[str], blocked: str | None) -> set[str]:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            n = todo.pop()
            if n in seen or n == blocked or n not in requires:
                continue
            seen.add(n)
            todo.extend(requires[n])
        return seen

    if name not in requires:
        return []
    return sorted(reach([name], None) - reach([root], name))


def summary(measured: dict[str, Any], top: int) -> dict[str, Any]:
    dists = measured["distributions"]
    largest = sorted(dists.items(), key=lambda kv: -kv[1])[:top]
    total = measured["site_packages_bytes"]
    return {"site_packages_bytes": total, "site_packages_mb": _mb(total), "distributions": len(dists),
            "top": [{"name": n, "bytes": b, "mb": _mb(b)} for n, b in largest],
            "forbidden_installed": sorted(set(FORBIDDEN) & set(dists))}


def difference(current: dict[str, int], baseline: dict[str, int]) -> dict[str, Any]:
    """Distributions only one side installs, and the ones whose size changed by more than 100 kB."""
    return {"added": {n: current[n] for n in sorted(set(current) - set(baseline))},
            "removed": {n: baseline[n] for n in sorted(set(baseline) - set(current))},
            "changed_bytes": {n: current[n] - baseline[n] for n in sorted(set(current) & set(baseline))
                              if abs(current[n] - baseline[n]) > 100_000}}


def _with_requirements(name: str, measured: dict[str, Any]) -> dict[str, Any]:
    """The bytes of `name` alone and with what only it brings in."""
    dists = measured["distributions"]
    brought = brought_only_by(name, measured["requires"])
    alone = dists.get(name, 0)
    total = sum(dists.get(n, 0) for n in brought)
    return {"bytes": alone, "mb": _mb(alone), "with_only_its_requirements": brought,
            "with_requirements_bytes": total, "with_requirements_mb": _mb(total)}


def _mb(n: int) -> float:
    return round(n / 2**20, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help=f"git ref to compare with (default {BASELINE})")
    parser.add_argument("--cache-dir", type=Path, help="pip's cache (default: pip's own)")
    parser.add_argument("--max-ratio", type=float, default=1.10)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    baseline_commit = subprocess.run(["git", "rev-parse", "--short", f"{args.baseline}^{{commit}}"], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="photostock-serve-size-") as tmp:
        base = Path(tmp)
        current = install(export_tree(None, base / "src-current"), base / "venv-current", args.cache_dir)
        baseline = install(export_tree(args.baseline, base / "src-baseline"), base / "venv-baseline", args.cache_dir)
    ratio = current["site_packages_bytes"] / baseline["site_packages_bytes"]
    report = {
        "extras": EXTRAS, "baseline_ref": args.baseline, "baseline_commit": baseline_commit,
        "current": summary(current, args.top), "baseline": summary(baseline, args.top),
        "ratio": round(ratio, 4), "max_ratio": args.max_ratio, "within_target": ratio <= args.max_ratio,
        "difference": difference(current["distributions"], baseline["distributions"]),
        "tokenizers": _with_requirements("tokenizers", current),
        "venv_tools_bytes_left_out": current["venv_tools_bytes"], "machine": machine(),
    }
    print(json.dumps(report, indent=2))
    return 1 if report["current"]["forbidden_installed"] or not report["within_target"] else 0


if __name__ == "__main__":
    sys.exit(main())
