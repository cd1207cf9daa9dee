"""Bytes per image of a published version's metadata snapshot (docs/scaling.md's per-vector table).

A live store of --rows world-style rows (the synthetic world's gallery captions, tags, licences, popularity;
`part-NNN/img-NNNNNN.jpg` paths, a content hash, a shard location) written with the indexer's own writers
(MetadataStore.apply_plan, commit_batch, apply_sidecar), then copied by `publish.snapshot_metadata` exactly as
a publish does. Prints one JSON object: the live database's and the snapshot's size, per row.

    .venv/bin/python benchmarks/metadata_size.py [--rows 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from indexer.index.publish import snapshot_metadata  # noqa: E402
from indexer.lab.world import LICENCES, STREAM_GALLERY, image_rng, sample_composition  # noqa: E402
from indexer.storage.store import Decoded, MetadataStore, RowChange  # noqa: E402


def world_records(rows: int, seed: int = 0) -> list[dict[str, object]]:
    """The gallery's sidecar records without rendering pixels (same draws as indexer.lab.world.gallery_item)."""
    out = []
    for index in range(rows):
        rng = image_rng(seed, STREAM_GALLERY, index)
        comp = sample_composition(rng, "gallery")
        popularity = round(float(rng.random()), 4)
        licence = LICENCES[rng.integers(len(LICENCES))]
        fmt = "png" if rng.random() < 0.25 else "jpg"
        out.append({"path": f"part-{index // 100:03d}/img-{index:06d}.{fmt}", "caption": comp.caption,
                    "tags": comp.tags, "licence": licence, "popularity": popularity})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    records = world_records(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        live, snap = Path(tmp) / "metadata.sqlite", Path(tmp) / "snapshot.sqlite"
        store = MetadataStore.open(live)
        store.apply_plan([RowChange(str(r["path"]), hashlib.sha256(str(r["path"]).encode()).hexdigest(), 50_000,
                                    1_700_000_000_000_000_000, "pending") for r in records], [], {})
        ids = [i for i, _ in store.pending()]
        store.commit_batch("000000", [Decoded(i, 640, 480) for i in ids], [])
        store.apply_sidecar({str(r["path"]): {k: v for k, v in r.items() if k != "path"} for r in records})
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        snapshot_metadata(live, snap)
        live_bytes, snap_bytes = live.stat().st_size, snap.stat().st_size
    print(json.dumps({"benchmark": "metadata_size", "machine": machine(), "rows": args.rows,
                      "live_bytes": live_bytes, "snapshot_bytes": snap_bytes,
                      "snapshot_bytes_per_row": round(snap_bytes / args.rows, 1),
                      "live_bytes_per_row": round(live_bytes / args.rows, 1)}, indent=2))


if __name__ == "__main__":
    main()
