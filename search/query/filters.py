"""Metadata filters (orientation, licence, tags, date range) evaluated on snapshot rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Filters", "orientation_of"]


def orientation_of(width: Any, height: Any) -> str | None:
    if not width or not height:
        return None
    if width > height:
        return "landscape"
    return "portrait" if height > width else "square"


def _tags(meta: dict[str, Any]) -> set[str]:
    raw = meta.get("tags")
    if not raw:
        return set()
    try:
        values = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return set()
    return {str(t).casefold() for t in values} if isinstance(values, list) else set()


@dataclass(frozen=True)
class Filters:
    """All given conditions must hold; `tags` means every listed tag is present; dates are ISO strings compared
    with the photo's `taken_at` (EXIF/XMP or sidecar) where present, else with `created_at` (first indexed)."""

    orientation: str | None = None
    licence: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    created_after: str | None = None
    created_before: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.orientation or self.licence or self.tags or self.created_after or self.created_before)

    def matches(self, meta: dict[str, Any]) -> bool:
        if self.orientation and orientation_of(meta.get("width"), meta.get("height")) != self.orientation:
            return False
        if self.licence and (meta.get("licence") or "") not in self.licence:
            return False
        if self.tags and not {t.casefold() for t in self.tags} <= _tags(meta):
            return False
        created = str(meta.get("taken_at") or meta.get("created_at") or "")  # when the photo was taken, if known
        if self.created_after and (not created or created < self.created_after):
            return False
        if self.created_before and (not created or created >= self.created_before):
            return False
        return True
