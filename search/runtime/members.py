"""Pool members from config: which sessions on which devices encode text.

Pluggable by precision: a member names a tower precision ("fp32" or "int8", both carried in the artifact's
encoder folder) and a device ("cpu"; "cuda" where onnxruntime-gpu and a GPU exist). A member that cannot
be built here is a start-up error naming what is missing, never a silent fallback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from search.artifact.bundle import TEXT_FILE, TEXT_INT8_FILE
from search.runtime.costs import CostModel
from search.runtime.pool import EncodeFn, Member
from search.runtime.threads import process_budget, session_options
from search.runtime.towers import text_feeds
from search.settings import PoolMemberSettings

log = logging.getLogger(__name__)

__all__ = ["TOWER_PATHS", "build_members", "onnx_member_fn"]

# precision -> that text tower's ONNX file in the loaded encoder's folder (`text`: the service's ServiceEncoder)
TOWER_PATHS: dict[str, Callable[[Any], Path]] = {
    "fp32": lambda text: Path(text.current.bundle.path(TEXT_FILE)),
    "int8": lambda text: Path(text.current.bundle.path(TEXT_INT8_FILE)),
}


def onnx_member_fn(path: Path, device: str, threads: int = 0, mask_pad_id: int | None = None) -> EncodeFn:
    """A session on `device` running the text tower at `path` (tokens already cut to the batch's length; an HF
    tower's attention mask from `mask_pad_id`, the encoder's `text.mask_pad_id`)."""
    import onnxruntime as ort

    opts = session_options(process_budget())
    if threads > 0:
        opts.intra_op_num_threads = threads
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("pool member on cuda needs onnxruntime-gpu and a GPU (no CUDAExecutionProvider)")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)

    def run(tokens: np.ndarray) -> np.ndarray:
        (out,) = session.run(None, text_feeds(tokens, mask_pad_id))
        return np.asarray(out, dtype=np.float32)

    return run


def build_members(text: Any, configs: list[PoolMemberSettings], max_batch: int,
                  calibrate_in_background: bool = False, solo_threads: int = 1) -> list[Member]:
    """One member per config entry (first = primary), each with its cost measured on a 12-token query.
    No entries: the text encoder's own session is the only member; `solo_threads` > 1 gives it a second session
    with that many intra-op threads, which runs a lone request while nothing else is running or waiting (the
    load-time budget leaves a core to the event loop, which a lone query does not need).
    `calibrate_in_background`: members start on the default cost model and are measured in a thread (the
    service's cold start does not wait; the first batches' EWMA corrects the defaults meanwhile)."""
    fns: list[tuple[str, str, EncodeFn]] = []
    if not configs:
        loaded = getattr(text, "loaded", None)
        precision = getattr(loaded, "precision", "fp32") if loaded is not None else "fp32"
        fns.append((f"text-cpu-{precision}", "cpu", text.encode_token_ids))
    for i, cfg in enumerate(configs):
        if cfg.precision not in TOWER_PATHS:
            raise ValueError(f"pool member {i}: no {cfg.precision} text tower in this build "
                             f"(available: {sorted(TOWER_PATHS)})")
        if getattr(text, "loaded", None) is None:
            raise ValueError("pool members need the encoder loaded at start (no index version opened yet)")
        path = TOWER_PATHS[cfg.precision](text)
        fns.append((f"text-{i}-{cfg.device}-{cfg.precision}", cfg.device,
                    onnx_member_fn(path, cfg.device, cfg.threads, _mask_pad_id(text))))
    sample = None
    if getattr(text, "loaded", True) is not None:  # no encoder yet: costs are learnt from the first batches
        tokens = text.tokenize(["a large orange square on a sand background at dusk"])
        sample = tokens[:, : int(text.lengths(tokens)[0])]
    members = [Member(name, device, fn, CostModel(), max_batch=max_batch) for name, device, fn in fns]
    if not configs and solo_threads > 1 and getattr(text, "loaded", None) is not None:
        members[0].solo = onnx_member_fn(TOWER_PATHS[text.loaded.precision](text), "cpu", solo_threads,
                                         _mask_pad_id(text))
    if sample is not None:
        if calibrate_in_background:
            threading.Thread(target=_calibrate, args=(members, sample), name="pool-calibration", daemon=True).start()
        else:
            _calibrate(members, sample)
    return members


def _mask_pad_id(text: Any) -> int | None:
    """The loaded encoder's attention-mask pad id (HF towers), None for towers that take tokens only."""
    return text.current.bundle.text.mask_pad_id  # type: ignore[no-any-return]


def _calibrate(members: list[Member], sample: np.ndarray) -> None:
    for member in members:
        member.cost.calibrate(member.run, sample)
        log.info("pool member %s: %.2f ms + %.3f ms/token", member.name, member.cost.fixed_s * 1e3,
                 member.cost.per_token_s * 1e3)
