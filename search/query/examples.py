"""Example queries taken from the store, for a page that would otherwise start empty.

The rule: the captions the most visible images share (ties: the caption of the lowest image id first), up to
`count`, each at most `max_chars` long; when the store has fewer distinct captions, its most frequent tags fill
the rest. Only images the version serves count (`served_mask`: in its index, not taken down). Every example is
therefore something the store holds and its metadata says in words.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import numpy as np

from search.artifact.images import served_mask
from search.artifact.version import Artifact

__all__ = ["ExampleQueries", "example_queries"]


def example_queries(artifact: Artifact, count: int, max_chars: int, hidden: frozenset[int] = frozenset()
                    ) -> list[str]:
    """The rule above, read from the version's metadata snapshot (one pass over captions and tags)."""
    if count <= 0:
        return []
    rows = artifact.metadata_conn().execute("SELECT id, caption, tags FROM images ORDER BY id").fetchall()
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    visible = served_mask(artifact, hidden, ids)
    captions: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    for row, keep in zip(rows, visible.tolist(), strict=True):
        if not keep:
            continue
        caption = " ".join(str(row[1] or "").split())
        if caption and len(caption) <= max_chars:
            captions[caption] += 1  # Counter keeps first-seen order among equal counts: lowest id first
        tags.update(_tags(row[2]))
    chosen = [c for c, _ in captions.most_common(count)]
    for tag, _ in tags.most_common():
        if len(chosen) >= count:
            break
        if tag not in chosen and len(tag) <= max_chars:
            chosen.append(tag)
    return chosen


def _tags(text: object) -> list[str]:
    try:
        tags = json.loads(text) if isinstance(text, str) else []
    except json.JSONDecodeError:
        return []
    return [" ".join(t.split()) for t in tags if isinstance(t, str) and t.strip()] if isinstance(tags, list) else []


class ExampleQueries:
    """`example_queries` computed once per (version, taken-down set): a version's snapshot never changes."""

    def __init__(self, count: int, max_chars: int):
        self.count = count
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._key: tuple[str, frozenset[int]] | None = None
        self._value: list[str] = []

    def get(self, artifact: Artifact, hidden: frozenset[int]) -> list[str]:
        key = (str(artifact.path), hidden)
        with self._lock:
            if self._key != key:
                self._value = example_queries(artifact, self.count, self.max_chars, hidden)
                self._key = key
            return list(self._value)
