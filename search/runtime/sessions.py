"""ONNX Runtime sessions for the encoder towers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PROVIDERS", "ort_session"]

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def ort_session(path: Path, threads: int = 0, providers: Sequence[str] = DEFAULT_PROVIDERS) -> Any:
    """An inference session with full graph optimisation; `threads` 0 keeps ONNX Runtime's default."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
