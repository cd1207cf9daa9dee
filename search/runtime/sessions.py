"""ONNX Runtime sessions for the encoder towers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PROVIDERS", "ort_session"]

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def ort_session(path: Path, threads: int = 0, providers: Sequence[str] = DEFAULT_PROVIDERS) -> Any:
    """An inference session with full graph optimisation and the process's thread budget (spinning off,
    `search.runtime.threads`); `threads` > 0 overrides the budget's intra-op count."""
    import onnxruntime as ort

    from search.runtime.threads import process_budget, session_options

    opts = session_options(process_budget())
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
