"""Per-stage timings for the run report (the service's StageTimer), and tqdm progress bars that appear only on a
terminal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from search.query.timing import StageTimer

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["StageTimer", "progress_bar"]


def progress_bar(total: int, desc: str, unit: str = "img") -> tqdm[Any]:
    """A tqdm bar with ETA on stderr, disabled when stderr is not a TTY (logs, CI, tests)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty(), dynamic_ncols=True)
