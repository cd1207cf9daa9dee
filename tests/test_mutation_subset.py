"""Mutation testing, CI-sized: benchmarks/mutation.py on two small modules with a fixed mutant budget (each
function's first mutants). Every mutant must be killed or listed as equivalent with its reason
(benchmarks/mutation_equivalent.json), and the score must reach the committed threshold. The full run over the
query, artifact and indexer publish modules is the script itself (benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.mutation import MODULES, THRESHOLD
from tests.optional import require_optional

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ("search/query/clean.py", "search/query/result_cache.py")
PER_FUNCTION = 6  # mutants per function: 32 in all, 15-70 s on the 2-core machine (load 8-20)


def test_subset_kills_every_mutant_that_is_not_listed_as_equivalent() -> None:
    require_optional("mutmut", importlib.util.find_spec("mutmut") is not None,
                     "the test extra is not installed (pip install -e '.[test]')")
    assert all(module in MODULES for module in SUBSET)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "benchmarks/mutation.py", "--modules", *SUBSET,
                           "--per-function", str(PER_FUNCTION), "--max-children", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for module in report["modules"]:
        assert module["mutants"] > 0, module
        assert module["survivors"] == [], f"{module['module']}: unlisted survivors {module['survivors']}"
        assert module["score"] >= THRESHOLD, module
