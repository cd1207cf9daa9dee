#!/usr/bin/env bash
# GPU check (at most 8 minutes): on a CUDA machine, measures indexer images/s for ViT-B-32 from JPEG files
# (AMP, random-init weights saved as a local checkpoint: speed does not depend on the weights), text-encoder
# QPS, and FAISS IVF training time on the GPU (CPU time beside it for the ratio). Prints one JSON object.
# Without CUDA it prints {"skipped": true, ...} and exits 0.
#   bash benchmarks/gpu_check.sh [--images 2000] [--faiss-vectors 1000000] [--out DIR]
# GPU_CHECK_DEVICE=cpu runs the same code on the CPU with small sizes (a dry run of the script itself).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
LIMIT_S="${GPU_CHECK_LIMIT_S:-470}"

DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [[ "$DEVICE" == cuda ]] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo '{"benchmark": "gpu_check", "skipped": true, "reason": "no CUDA device visible to torch"}'
  exit 0
fi

cd "$ROOT"
SCRIPT="$(mktemp -d)/gpu_check.py"  # a real file: the indexer's decode workers re-import __main__ from it
cat > "$SCRIPT" <<'PY'
import argparse, json, os, tempfile, time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from indexer import world

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")


def write_jpeg(args):
    index, root, size = args
    item = world.gallery_item(0, index, size)
    item.image.save(Path(root) / f"img-{index:06d}.jpg", format="JPEG", quality=90)


def indexer_rate(root: Path, store: Path, ckpt: Path, n: int) -> dict:
    from indexer.pipeline import run_build
    from indexer.settings import IndexerSettings
    from indexer.models.clip import load_encoder

    encoder = load_encoder("ViT-B-32", pretrained=str(ckpt), device=DEVICE)
    workers = max(1, (os.cpu_count() or 2) - 2)
    settings = IndexerSettings(model="ViT-B-32", device=DEVICE, workers=workers, batch_size=256,
                               index={"use_gpu": True, "recall_queries": 100, "latency_queries": 20})
    start = time.perf_counter()
    report = run_build(root, store, settings, encoder)
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
            "workers": workers, "batch_size": 256, "amp": "float16 autocast" if DEVICE == "cuda" else "none", "timings": report["timings"],
            "encoded": report["counts"]["encoded"]}


def text_qps(ckpt: Path) -> dict:
    from indexer.models.clip import load_encoder

    encoder = load_encoder("ViT-B-32", pretrained=str(ckpt), device=DEVICE)
    texts = [item.composition.caption for item in world.iter_gallery(5, 256, (16, 16))]
    out = {}
    for batch in (1, 256):
        encoder.encode_texts(texts[:batch])  # warm-up (kernels, autotune)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 5.0:
            encoder.encode_texts(texts[:batch])
            count += batch
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        out[f"batch_{batch}_qps"] = round(count / (time.perf_counter() - start), 1)
    return out


def faiss_ivf(n: int, d: int = 512) -> dict:
    import faiss

    nlist = 4096 if n >= 1_000_000 else max(16, n // 256)
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    faiss.normalize_L2(x)
    sample = x[: nlist * 64]
    out = {"vectors": n, "dim": d, "nlist": nlist, "train_points": len(sample), "gpus": faiss.get_num_gpus()}
    if faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexIVFFlat(res, d, nlist, faiss.METRIC_INNER_PRODUCT)
        start = time.perf_counter()
        index.train(sample)
        out["gpu_train_s"] = round(time.perf_counter() - start, 2)
    else:
        out["gpu_train_s"] = None
        out["note"] = "this faiss build has no GPU support (pip install -e .[gpu] for faiss-gpu-cu12)"
    cpu = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    cpu.train(sample)
    out["cpu_train_s"] = round(time.perf_counter() - start, 2)
    if out["gpu_train_s"]:
        out["gpu_speedup"] = round(out["cpu_train_s"] / out["gpu_train_s"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--faiss-vectors", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import open_clip

    base = Path(args.out or tempfile.mkdtemp(prefix="gpu-check-"))
    root = base / "jpegs"
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with Pool(max(1, (os.cpu_count() or 2) - 1)) as pool:
        pool.map(write_jpeg, [(i, str(root), (640, 480)) for i in range(args.images)], chunksize=32)
    write_s = time.perf_counter() - start
    torch.manual_seed(0)
    ckpt = base / "vit-b-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), ckpt)
    result = {"benchmark": "gpu_check", "skipped": False, "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "jpeg_write_s": round(write_s, 1)}
    result["indexer"] = indexer_rate(root, base / "store", ckpt, args.images)
    result["text_encoder"] = text_qps(ckpt)
    result["faiss_ivf"] = faiss_ivf(args.faiss_vectors)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
PY
export GPU_CHECK_DEVICE="$DEVICE"
exec timeout --signal=TERM "$LIMIT_S" "$PY" "$SCRIPT" "$@"
