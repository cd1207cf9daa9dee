"""Serving needs no training framework: the service runs a store's own ONNX encoder with torch, torchvision
and open_clip unimportable (in a subprocess), and a fresh virtualenv with only the `serve` extra serves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.service_support import ROOT

PROBE = Path(__file__).resolve().parent / "serve_probe.py"


def _probe(python: str, world, env: dict[str, str], cwd: Path) -> dict:
    path, image_id = next(iter(world.ids_by_path.items()))
    out = subprocess.run([python, str(PROBE), str(world.store), str(world.image_root / path),
                          world.queries[0]["query"]], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["started"], out.stderr
    assert report["text"]["status"] == 200 and report["text"]["hits"], report
    assert report["image"]["status"] == 200 and report["image"]["hits"][0] == image_id, report
    assert report["imported"] == []
    return report


def test_service_serves_text_and_image_queries_with_torch_unimportable(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    _probe(sys.executable, world, env, tmp_path)


@pytest.mark.slow
def test_fresh_virtualenv_with_only_the_serve_extra_runs_a_real_query(world, tmp_path):
    """pip installs the project with `[serve]` from PyPI into an empty virtualenv (no system site packages)."""
    source = tmp_path / "src"  # a copy: building the wheel writes build/ and *.egg-info beside the sources
    for package in ("search", "indexer"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    env_dir = tmp_path / "serve-venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              f"{source}[serve,cpu]"], capture_output=True, text=True, env=env, timeout=1500)
    assert install.returncode == 0, install.stderr[-4000:]
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            env=env, check=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert {"onnxruntime", "faiss-cpu", "fastapi", "tokenizers"} <= installed
    assert not installed & {"torch", "torchvision", "open-clip-torch", "open_clip_torch", "transformers",
                            "sentencepiece"}
    shared = _probe(sys.executable, world, {**os.environ, "PYTHONPATH": str(ROOT)}, tmp_path)
    fresh = _probe(python, world, env, tmp_path)
    assert fresh["python"].startswith(str(env_dir))
    assert fresh["text"]["hits"] == shared["text"]["hits"] and fresh["image"]["hits"] == shared["image"]["hits"]
