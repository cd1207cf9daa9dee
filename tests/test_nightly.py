"""The nightly contract of `python -m indexer build`: exit 0/1/2, the run report for every exit, the Prometheus
textfile, a read-only store (exit 2 with one line; `status` still works) and a killed publish's debris."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.cli import main as indexer_main
from tests.indexer_support import REPO, draw, run
from tests.optional import require_optional

BUILD = ("--pretrained", "random", "--device", "cpu", "--batch-size", "4", "--workers", "1")


def _library(root: Path, broken: int = 1) -> Path:
    for i in range(3):
        draw(root / f"ok{i}.png", seed=300 + i)
    for i in range(broken):
        (root / f"broken{i}.png").write_bytes(b"garbage")
    return root


def _readonly(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the indexer CLI with STORE mounted read-only (a private mount namespace when root, else chmod)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "indexer", *args]
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [store, *store.rglob("*")] if not p.is_symlink()}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    require_optional("unshare", shutil.which("unshare") is not None,
                     "running as root without unshare: cannot make a read-only store")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(store), "true"], capture_output=True)
    require_optional("read-only bind mount", probe.returncode == 0,
                     f"cannot mount the store read-only: {probe.stderr!r}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(store), *cmd], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_readonly_store_exit_2_one_line_and_status_still_works(tmp_path: Path) -> None:
    images, store = _library(tmp_path / "images"), tmp_path / "store"
    run(images, store)
    draw(images / "new.png", seed=399)  # there is work to do, but the store cannot take it
    built = _readonly(store, "build", "--images", str(images), "--store", str(store), *BUILD)
    assert built.returncode == 2, built.stderr
    assert built.stdout == "" and "Traceback" not in built.stderr
    lines = built.stderr.strip().splitlines()
    assert lines[-1].startswith("error: store") and "not writable" in lines[-1]
    shown = _readonly(store, "status", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["indexed"] == 3
    taken = _readonly(store, "takedown", "--store", str(store), "ok0.png", "--reason", "x")
    assert taken.returncode == 2 and len(taken.stderr.strip().splitlines()) == 1


def test_new_failures_exit_1_with_report_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    images, store = _library(tmp_path / "images", broken=2), tmp_path / "store"
    metrics = tmp_path / "textfile" / "photostock_indexer.prom"
    args = ["build", "--images", str(images), "--store", str(store), *BUILD, "--max-new-failures", "1",
            "--metrics-file", str(metrics), "--report", str(tmp_path / "last.json")]
    assert indexer_main(args) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 1 and out["counts"]["failed_this_run"] == 2 and out["published"]
    saved = json.loads((store / "runs" / f"{out['run_id']}.json").read_text())
    assert saved["exit_code"] == 1 and json.loads((tmp_path / "last.json").read_text())["run_id"] == out["run_id"]
    samples = {(s.name, s.labels.get("kind", s.labels.get("version"))): s.value
               for fam in text_string_to_metric_families(metrics.read_text()) for s in fam.samples}
    assert samples[("photostock_indexer_last_run_exit_code", None)] == 1
    assert samples[("photostock_indexer_last_run_images", "failed_this_run")] == 2
    assert samples[("photostock_indexer_current_version_info", out["version"])] == 1
    assert not list(metrics.parent.glob("*.tmp*"))  # written atomically
    assert indexer_main(args) == 0  # the same broken files are not new failures: nothing to do
    assert json.loads(capsys.readouterr().out)["published"] is False


def test_cannot_run_is_exit_2_with_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"
    code = indexer_main(["build", "--images", str(tmp_path / "missing"), "--store", str(tmp_path / "store"),
                         *BUILD, "--report", str(report)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert json.loads(report.read_text())["exit_code"] == 2 and not (tmp_path / "store" / "runs").exists()
    assert indexer_main(["build", "--images", str(tmp_path), "--store", str(tmp_path / "s"), *BUILD,
                         "--max-new-failures", "-1"]) == 2


def test_killed_publish_debris_is_removed_by_the_next_run(tmp_path: Path) -> None:
    images, store = _library(tmp_path / "images", broken=0), tmp_path / "store"
    run(images, store)
    tmp = store / "versions" / ".tmp-20990101T000000.000000Z-abc-xyz"
    tmp.mkdir()
    (tmp / "vectors.f16.npy").write_bytes(b"partial")
    (tmp / "vectors.f16.npy").chmod(0o444)
    os.symlink("versions/nowhere", store / ".current.deadbeef")
    report = run(images, store)
    assert "versions/" + tmp.name in report["debris_removed"] and ".current.deadbeef" in report["debris_removed"]
    assert not tmp.exists() and not (store / ".current.deadbeef").is_symlink()
