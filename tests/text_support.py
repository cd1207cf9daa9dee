"""Shared by the text-family tests: an encoder exported to a store and loaded by the runtime at both text
precisions, cosine rows, and a corpus sent through the service's micro-batcher all at once with the batch shapes
the pool's members were called with (to show that mixed lengths really shared a batch)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.artifact.bundle import SPEC_FILE, EncoderBundle
from search.runtime.batcher import MicroBatcher
from search.runtime.towers import RuntimeEncoder, RuntimeOptions

# the hostile corpus every family's tokens and embeddings are checked over: CJK, Arabic, emoji (ZWJ sequences, flags),
# combining marks, mixed case, fullwidth forms and ligatures, 300-character strings, HTML entities, odd whitespace,
# the empty string
CORPUS = [
    "a small red circle on a grass background",
    "A Small RED Circle On A GRASS Background",
    "東京の夜景 北京烤鸭 서울 풍경",
    "نجمة حمراء صغيرة على الرمل مرحبا",
    "emoji 😀🐱‍👤 👩🏽‍🚀 🇫🇷 ❤️ ✨✨",
    "cafe\u0301 nai\u0308ve e\u0301te\u0301 n\u0303 combining ̷̧m̴a̵r̸k̶s̷",
    "Ünïcödé café naïve ＦＵＬＬＷＩＤＴＨ ﬁ",
    ("a large blue star on a sky background, " * 10)[:300],
    "x" * 300,
    "большой зелёный крест на траве",
    "HTML &amp; entities &lt;b&gt; it's DON'T",
    "tabs\tand\nnewlines  spaces ",
    "red",
    "",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """`n` strings of 0-120 characters drawn from ASCII, Latin, combining marks, CJK, emoji, Arabic and odd
    whitespace (seeded: the same texts every run)."""
    rng = random.Random(seed)
    pools = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x300, 0x370), range(0x4E00, 0x4E80),
             range(0x1F600, 0x1F650), range(0x0600, 0x0650), [0x09, 0x0A, 0x20, 0x3000, 0x200B]]
    return ["".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randint(0, 120))) for _ in range(n)]


def exported_bundle(encoder: Any, store: Path) -> EncoderBundle:
    """`encoder` exported into `store` by the indexer's own export, read back as the service reads it."""
    from indexer.models.export import export_bundle

    files = export_bundle(encoder, store, cache_dir=store / "cache")
    directory = store / files.dir
    return EncoderBundle.from_spec(directory, json.loads((directory / SPEC_FILE).read_text()), dict(files.files))


def runtime_encoders(bundle: EncoderBundle) -> dict[str, RuntimeEncoder]:
    """The runtime encoder of `bundle` at each text precision the service runs."""
    return {p: RuntimeEncoder.load(bundle, RuntimeOptions(text_precision=p)) for p in ("fp32", "int8")}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, D) arrays."""
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def micro_batched(text: Any, corpus: Sequence[str]) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Every text of `corpus` submitted concurrently to a calibrated MicroBatcher over `text` (a runtime text
    tower): (vectors in corpus order, the token-array shape of each call the members ran)."""
    batcher = MicroBatcher(text, window_s=0.003, max_batch=8, calibrate=True)
    calls: list[tuple[int, ...]] = []
    inner = text.encode_token_ids

    def recording(tokens: np.ndarray) -> np.ndarray:
        calls.append(tuple(tokens.shape))
        return np.asarray(inner(tokens))

    for member in batcher.pool.members:
        member.run = recording

    async def all_at_once() -> list[np.ndarray]:
        return list(await asyncio.gather(*(batcher.encode(t) for t in corpus)))

    try:
        return np.stack(asyncio.run(all_at_once())), calls
    finally:
        batcher.close()


def serve_probe_report(store: Path, image: Path, query: str, cwd: Path) -> dict[str, Any]:
    """Run tests/serve_probe.py (the serving runtime with torch, transformers, sentencepiece, timm and open_clip
    made unimportable) against a store, asserting it answered text and image searches and imported none of them."""
    import os
    import subprocess
    import sys

    from tests.indexer_support import REPO

    out = subprocess.run([sys.executable, str(Path(__file__).with_name("serve_probe.py")), str(store), str(image),
                          query], capture_output=True, text=True, cwd=cwd, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["text"]["status"] == 200 and report["text"]["hits"], report
    assert report["image"]["status"] == 200 and report["image"]["hits"], report
    assert report["imported"] == []
    return report
