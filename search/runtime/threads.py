"""One deliberate thread budget for the process: ONNX Runtime, FAISS/OpenMP and the event loop's helpers.

Why: on a small machine ONNX Runtime's intra-op threads spin after each run by default, and FAISS's OpenMP
team spins too; the two pools then fight for the same cores and the FAISS search right after an encode slows
down (benchmarks/thread_contention.py; figures in benchmarks/README.md). The budget is set once from config;
sessions take their options from `session_options`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ThreadBudget", "apply_faiss_threads", "available_cores", "configure_process", "process_budget",
           "resolve_budget",
           "session_options", "use_faiss_threads", "use_loop_workers"]

_PROCESS: list[ThreadBudget] = []  # the budget this process was configured with (threads are process-wide)


@dataclass(frozen=True)
class ThreadBudget:
    """Resolved thread counts (no zeros left): what the process actually runs with."""

    ort_intra_op: int
    ort_inter_op: int
    ort_spinning: bool
    faiss_omp: int
    loop_workers: int


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_budget(ort_intra_op: int = 0, ort_inter_op: int = 1, ort_spinning: bool = False,
                   faiss_omp: int = 1, loop_workers: int = 0, cores: int = 0) -> ThreadBudget:
    """0 means: ONNX Runtime gets all cores this process may use but one, which stays with the event loop (on
    2 cores under 2x overload: admitted p99 117 vs 214 ms, rejections 6.6 vs 9.0 ms, at +0.6 ms for one int8
    12-token encode; benchmarks/README.md); FAISS all cores. FAISS's default is one thread: it splits a search
    over its queries, and a team whose helper slept since the last search (an idle gap between requests) waits
    for it to be scheduled again: 8-15 ms for one query against 0.3 ms alone on 2 loaded cores, and slower at
    every batch size up to 64 (benchmarks/lane_ann.py; benchmarks/README.md, issue 20). `cores` (0: the process's
    affinity) is this process's share when several worker processes split the node (search/http/workers.py)."""
    cores = cores or available_cores()
    return ThreadBudget(ort_intra_op=ort_intra_op or max(1, cores - 1), ort_inter_op=max(1, ort_inter_op),
                        ort_spinning=ort_spinning, faiss_omp=faiss_omp or cores,
                        loop_workers=loop_workers or min(32, cores + 4))


def session_options(budget: ThreadBudget | None) -> Any:
    """ONNX Runtime SessionOptions with the budget's threads; spinning off unless asked for."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if budget is not None:
        opts.intra_op_num_threads = budget.ort_intra_op
        opts.inter_op_num_threads = budget.ort_inter_op
        spin = "1" if budget.ort_spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


def apply_faiss_threads(budget: ThreadBudget) -> None:
    """FAISS's OpenMP team size for the calling thread. OpenMP (libgomp) keeps the team size per thread: a
    thread that never set it uses every core, so each thread that runs FAISS sets it (`use_faiss_threads`)."""
    import faiss

    faiss.omp_set_num_threads(budget.faiss_omp)


def use_faiss_threads() -> None:
    """Give the calling thread the process budget's FAISS team (nothing configured: FAISS's default): the
    initializer of the threads that search (the search lane's, the loop's executor)."""
    budget = process_budget()
    if budget is not None:
        apply_faiss_threads(budget)


def configure_process(budget: ThreadBudget) -> None:
    """Make `budget` the process's: FAISS's OpenMP team now, ONNX sessions created from here on."""
    _PROCESS[:] = [budget]
    apply_faiss_threads(budget)
    log.info("thread budget: %s", budget)


def process_budget() -> ThreadBudget | None:
    """The configured budget, or None before `configure_process` (sessions then keep ORT's defaults)."""
    return _PROCESS[0] if _PROCESS else None


def use_loop_workers(loop: Any) -> None:
    """The event loop's default executor (asyncio.to_thread: uploads, admin; searches run on the search lane,
    search/query/lane.py) sized by the budget."""
    from concurrent.futures import ThreadPoolExecutor

    budget = process_budget()
    if budget is not None:
        loop.set_default_executor(ThreadPoolExecutor(budget.loop_workers, thread_name_prefix="search",
                                                     initializer=use_faiss_threads))
