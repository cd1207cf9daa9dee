"""What a query means after cleaning: control, format (zero-width), surrogate, private-use and unassigned
characters and U+FFFD are dropped, whitespace collapsed. A query that cleans to nothing is refused (the
encoder would otherwise embed the empty string and return arbitrary hits)."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["clean_query"]

_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}
_SPACE = re.compile(r"\s+")


def clean_query(text: str) -> str:
    """The searchable text of `text` ('' when nothing searchable is left)."""
    kept = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or (ch != "\ufffd" and unicodedata.category(ch) not in _DROP_CATEGORIES))
    return _SPACE.sub(" ", kept).strip()
