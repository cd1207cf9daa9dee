"""Where a running service's CPU goes, per thread: py-spy (`record --threads --native`, on-CPU samples only) for
the Python-visible threads (the event loop, the encode members, the search lane, executor threads) and
/proc/PID/task for every thread's user and system CPU, native pools (ONNX Runtime, OpenMP) included. The /proc
figures are the CPU; py-spy's say where the sampled stacks were (it counts a thread blocked in a native wait as
active: those samples are reported as "waiting in libc").

    from cpu_profile import profile_process
    summary = profile_process(pid, seconds, work_dir, load=lambda: run_wrk(...))
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

RATE = 100  # py-spy samples per second
# the first frame, from the leaf up, that names one of these places decides where a sample's CPU went
CATEGORIES = (("gc", ("gc_collect", "collect_with_callback", "_PyGC", "gc_collect_main")),
              ("faiss", ("faiss",)), ("onnxruntime", ("onnxruntime",)), ("sqlite", ("sqlite",)),
              ("blas/numpy", ("openblas", "_multiarray", "numpy")), ("json", ("json",)),
              ("tokenizer", ("tokenizers", "ftfy", "tokenize")), ("pydantic", ("pydantic",)),
              ("http (uvicorn/h11/starlette)", ("h11", "httptools", "uvicorn", "starlette", "fastapi")),
              ("prometheus", ("prometheus",)), ("asyncio/selectors", ("asyncio", "selectors", "epoll")))


WAITS = ("epoll", "pthread_cond", "sem_wait", "sem_timedwait", "futex", "libc.so")


def _category(frames: list[str]) -> str:
    """Where a sample went; a leaf in libc (epoll, condition variables, semaphores: py-spy --native counts a
    thread blocked there as active) is a wait, whatever called it."""
    if frames and any(w in frames[-1] for w in WAITS):
        return "waiting in libc (epoll/futex/cond)"
    for frame in reversed(frames):
        low = frame.lower()
        for name, needles in CATEGORIES:
            if any(n.lower() in low for n in needles):
                return name
    return "other python/native"


def _task_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user s, system s) per thread id of `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def profile_process(pid: int, seconds: int, work: Path, load: Callable[[], Any]) -> dict[str, Any]:
    """Profile `pid` for `seconds` while `load()` runs; per-thread CPU (share of one core) and where it went."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = work / "pyspy.txt"
    before = _task_cpu(pid)
    spy = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(RATE),
                            "--format", "raw", "--output", str(raw), "--threads", "--native"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    loader = threading.Thread(target=load)
    loader.start()
    spy.wait(timeout=seconds + 120)
    after = _task_cpu(pid)
    loader.join()
    names: dict[int, str] = {}
    samples: Counter[str] = Counter()
    where: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines() if raw.is_file() else []:
        stack, _, count = line.rpartition(" ")
        head, _, rest = stack.partition(": ")
        frames = rest.split(";")
        name = frames[0] if frames else "?"
        try:
            names[int(head.split("(")[1].rstrip(")"))] = name
        except (IndexError, ValueError):
            pass
        n = int(count)
        samples[name] += n
        where[name][_category(frames[1:])] += n
        leaves[name][frames[-1].split(" (")[0]] += n
    threads = []
    for name, n in samples.most_common(12):
        threads.append({"thread": name, "sampled_share_of_a_core": round(n / (RATE * seconds), 3),
                        "where": {k: round(v / n, 3) for k, v in where[name].most_common(8)},
                        "top_leaves": [[f, round(c / n, 3)] for f, c in leaves[name].most_common(6)]})
    cpu: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for tid, (user, system) in after.items():
        u0, s0 = before.get(tid, (0.0, 0.0))
        label = names.get(tid, "native threads (ONNX Runtime / OpenMP pools)")
        cpu[label][0] += user - u0
        cpu[label][1] += system - s0
    total_user = sum(v[0] for v in cpu.values())
    total_sys = sum(v[1] for v in cpu.values())
    return {"seconds": seconds, "py_spy_threads": threads,
            "proc_cpu_cores": {k: {"user": round(v[0] / seconds, 3), "system": round(v[1] / seconds, 3)}
                               for k, v in sorted(cpu.items(), key=lambda kv: -sum(kv[1]))},
            "process_cores_user": round(total_user / seconds, 3),
            "process_cores_system": round(total_sys / seconds, 3)}
