"""benchmarks/gpu_check.py: without CUDA one JSON 'skipped' result (exit 0); with GPU_CHECK_DEVICE=cpu the same
code runs end to end on the CPU (the dry run CI relies on to know the GPU check itself works)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def test_gpu_check_skips_without_cuda() -> None:
    done = _run({"CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_DEVICE": "cuda"})  # hides any GPU from torch
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["skipped"] is True and result["benchmark"] == "gpu_check"
    assert "CUDA" in result["reason"]


def test_gpu_check_cpu_dry_run_reports_every_section(tmp_path: Path) -> None:
    done = _run({"CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_LIMIT_S": "540"},
                "--model", "tiny", "--images", "6", "--faiss-vectors", "4096", "--text-seconds", "0.2",
                "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["benchmark"], result["skipped"], result["device"]) == ("gpu_check", False, "cpu (dry run)")
    indexer = result["indexer"]
    assert indexer["images"] == indexer["encoded"] == 6 and indexer["images_per_s"] > 0
    assert indexer["amp"] == "none"
    assert indexer["overflow_workers"] == 0 and list(indexer["devices"]) == ["cpu:onnx"]
    overflow = result["indexer_overflow"]  # GPU alone vs GPU + CPU overflow (here: a CPU primary + 1 CPU worker)
    helped = overflow["gpu_plus_cpu_overflow"]
    assert helped["encoded"] == 6 and helped["overflow_workers"] == 1 and helped["images_per_s"] > 0
    assert set(helped["devices"]) == {"cpu:onnx", "cpu-overflow-1"}
    assert sum(d["images"] for d in helped["devices"].values()) == 6
    assert overflow["gpu_alone"]["devices"]["cpu:onnx"]["images"] == 6 and overflow["speedup"] > 0
    assert result["text_encoder"]["batch_1_qps"] > 0 and result["text_encoder"]["batch_256_qps"] > 0
    ivf = result["faiss_ivf"]
    assert ivf["vectors"] == 4096 and ivf["nlist"] == 16 and ivf["cpu_train_s"] >= 0
    if ivf["gpus"] == 0:
        assert ivf["gpu_train_s"] is None and "gpu" in ivf["note"]
