"""Serving stored images and thumbnails by id.

Only ids the served version indexes, and not taken down, are served (`served_mask`, also the rule of
similar-by-id and of the example queries): the metadata snapshot copies the whole store database, failed and
deleted rows included, so being in it says nothing. The id's stored relative path is joined to the image root
and the resolved result must stay inside that root. Nothing from the client is ever used as a path.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from search.artifact.takedown import TakedownList
from search.artifact.version import Artifact

__all__ = ["ImageNotFound", "ImageStore", "served_mask", "served_row"]


class ImageNotFound(LookupError):
    pass


def served_mask(artifact: Artifact, hidden: frozenset[int], ids: np.ndarray) -> np.ndarray:
    """Which of `ids` this version serves: in its index ids (the sorted id array the rerank maps ids to rows
    with: a binary search per id, never a scan of the version) and not taken down. The one rule for every
    endpoint that takes or shows an id, so an image that failed to encode, was deleted or is taken down is
    served by none."""
    ids = np.asarray(ids, dtype=np.int64)
    mask = artifact.holds(ids)
    if hidden:
        mask &= ~np.isin(ids, np.fromiter(hidden, np.int64, len(hidden)))
    return mask


def served_row(artifact: Artifact, hidden: frozenset[int], image_id: int) -> int:
    """The version row of one id `served_mask` allows; ImageNotFound (a 404) else. A taken-down id is said to
    be unavailable, as a missing file is, not absent from the index: the answer does not announce a takedown
    apart from an image that is gone."""
    try:
        (row,) = artifact.rows_for([image_id])
    except KeyError:
        raise ImageNotFound(f"no image {image_id} in index version {artifact.version}") from None
    if image_id in hidden:  # the takedown half of `served_mask`, for one id the version holds
        raise ImageNotFound(f"image {image_id} is not available")
    return int(row)


class ImageStore:
    """Resolves ids to files under the artifact's image root; keeps an LRU of rendered JPEG thumbnails."""

    def __init__(self, thumbnail_px: int, cache_size: int, takedowns: TakedownList | None = None):
        self.thumbnail_px = thumbnail_px
        self.takedowns = takedowns
        self._thumbs: LRUCache[tuple[str, int], bytes] = LRUCache(maxsize=max(1, cache_size))
        self._lock = threading.Lock()

    def path_of(self, artifact: Artifact, image_id: int) -> Path:
        """The file of an id the version serves (`served_row`). The stored bytes of the name (`path_raw`) are
        used when the snapshot has them, so a name that is not valid UTF-8 is served too."""
        self._check_served(artifact, image_id)
        try:
            (meta,) = artifact.metadata([image_id])
        except KeyError as exc:
            raise ImageNotFound(f"no image {image_id} in index version {artifact.version}") from exc
        root = Path(artifact.manifest.image_root).resolve()
        raw = meta.get("path_raw")
        path = (root / (os.fsdecode(bytes(raw)) if raw is not None else str(meta["path"]))).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ImageNotFound(f"image {image_id} is not available")
        return path

    def thumbnail(self, artifact: Artifact, image_id: int) -> bytes:
        self._check_served(artifact, image_id)  # before the cache: a cached thumbnail must go dark too
        key = (artifact.version, image_id)
        with self._lock:
            cached = self._thumbs.get(key)
        if cached is not None:
            return cached
        data = self._render(self.path_of(artifact, image_id))
        with self._lock:
            self._thumbs[key] = data
        return data

    def _check_served(self, artifact: Artifact, image_id: int) -> None:
        hidden = self.takedowns.hidden(artifact.path) if self.takedowns is not None else frozenset()
        served_row(artifact, hidden, image_id)

    def _render(self, path: Path) -> bytes:
        from PIL import Image

        with Image.open(path) as image:
            image.thumbnail((self.thumbnail_px, self.thumbnail_px))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=85)
        return out.getvalue()
