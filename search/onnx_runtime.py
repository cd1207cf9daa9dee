"""ONNX Runtime plumbing shared by the text and image towers: where exports live, exporting once, sessions.

Exports are keyed by encoder identity (`<cache>/<export_key>/<name>.onnx`), written to a temporary file and
renamed into place, so concurrent processes (service replicas, an indexer run) never read a half-written file
and a model change can never reuse a stale graph.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["default_cache_dir", "export_key", "export_tower", "ort_session"]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/photostock/onnx (~/.cache/photostock/onnx)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "photostock" / "onnx"


def export_key(encoder: Any) -> str:
    """Directory name for an encoder's exports: its identity key, or a digest of the weights themselves when
    the identity cannot tell weights apart (random init: every such encoder shares one identity)."""
    identity = encoder.identity
    if identity.checksum != "random-init":
        return identity.key
    digest = hashlib.sha256(identity.key.encode())
    for name, tensor in sorted(encoder.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return "random-" + digest.hexdigest()[:16]


def export_tower(
    encoder: Any,
    cache_dir: Path,
    name: str,
    tower: Callable[[Any], Any],
    sample: tuple[Any, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Path:
    """Export `tower(model)` once to `cache_dir/<export key>/<name>.onnx`; an existing export is reused.

    The tower is built from the encoder's model in float32 on the CPU; the model goes back to its device after.
    """
    import torch

    target = Path(cache_dir) / export_key(encoder) / f"{name}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        module = tower(encoder.model.float().cpu())
        # grad stays enabled: under no_grad nn.MultiheadAttention takes a fused fast path ONNX cannot export
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter (advanced indexing, constant shapes) on exact graphs
            torch.onnx.export(
                module, sample, str(tmp), dynamo=False, input_names=list(input_names),
                output_names=list(output_names), dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=17,
            )
    finally:
        encoder.model.to(encoder.device)
    os.replace(tmp, target)  # atomic: concurrent exporters never see a half-written file
    return target


def ort_session(path: Path, threads: int = 0) -> Any:
    """A CPU inference session with full graph optimisation and the process's thread budget (spinning off,
    `search.runtime.threads`); `threads` > 0 overrides the budget's intra-op count."""
    import onnxruntime as ort

    from search.runtime.threads import process_budget, session_options

    opts = session_options(process_budget())
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
