"""Metadata photos carry in their own files: EXIF, IPTC (APP13) and XMP (APP1 / TIFF tag 700).

Read in the decode worker from the image Pillow already opened, so no file is read twice. Per field the
precedence is XMP > IPTC > EXIF (a sidecar line beats all three; see indexer/store.py `effective_values`).
Fields: caption (description, else headline), tags (keywords), licence (usage terms, else copyright),
creator, taken_at (EXIF DateTimeOriginal with OffsetTimeOriginal, ISO 8601), camera_make, camera_model.

XMP goes through Pillow's `getxmp`, which parses with `defusedxml` (a declared dependency; without it Pillow
returns nothing rather than use an unsafe parser). A corrupt block never fails the image: its fields are
left out and the block is named in `FileMeta.problems`, which the run report counts.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from PIL import Image, IptcImagePlugin

__all__ = ["FileMeta", "read_file_meta"]

_EXIF_IFD = 0x8769
_TAG_DESCRIPTION, _TAG_MAKE, _TAG_MODEL, _TAG_ARTIST, _TAG_COPYRIGHT = 270, 271, 272, 315, 33432
_TAG_DATETIME_ORIGINAL, _TAG_OFFSET_ORIGINAL = 36867, 36881
_IPTC = {"caption": (2, 120), "headline": (2, 105), "tags": (2, 25), "licence": (2, 116), "creator": (2, 80)}
_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")


@dataclass
class FileMeta:
    fields: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # one line per corrupt block: "XMP: ParseError: ..."


def read_file_meta(im: Image.Image) -> FileMeta:
    """Merge EXIF, IPTC and XMP of an opened image (later layers win); never raises for bad metadata."""
    result = FileMeta()
    for name, reader in (("EXIF", _exif), ("IPTC", _iptc), ("XMP", _xmp)):
        try:
            layer = reader(im)
        except Exception as exc:  # Pillow and the XML parser raise many types for corrupt blocks
            result.problems.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        result.fields.update({k: v for k, v in layer.items() if v not in (None, "", [])})
    return result


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _exif(im: Image.Image) -> dict[str, Any]:
    exif = im.getexif()
    if not exif:
        return {}
    sub = exif.get_ifd(_EXIF_IFD)
    return {
        "caption": _text(exif.get(_TAG_DESCRIPTION)), "creator": _text(exif.get(_TAG_ARTIST)),
        "licence": _text(exif.get(_TAG_COPYRIGHT)), "camera_make": _text(exif.get(_TAG_MAKE)),
        "camera_model": _text(exif.get(_TAG_MODEL)),
        "taken_at": exif_datetime(_text(sub.get(_TAG_DATETIME_ORIGINAL)), _text(sub.get(_TAG_OFFSET_ORIGINAL))),
    }


def exif_datetime(stamp: str | None, offset: str | None) -> str | None:
    """'2021:06:01 12:30:00' (+ '+02:00') -> ISO 8601; None for the all-blank or zero dates cameras write."""
    if not stamp or stamp.startswith("0000"):
        return None
    when = datetime.strptime(stamp[:19], "%Y:%m:%d %H:%M:%S")
    text = when.isoformat()
    return text + offset if offset and _OFFSET.match(offset) else text


def _iptc(im: Image.Image) -> dict[str, Any]:
    info = IptcImagePlugin.getiptcinfo(im)  # type: ignore[arg-type]
    if not info:
        return {}

    def one(key: tuple[int, int]) -> str | None:
        value = info.get(key)
        return _text(value[0] if isinstance(value, list) else value)

    keywords = info.get(_IPTC["tags"])
    items = keywords if isinstance(keywords, list) else [keywords] if keywords else []
    return {"caption": one(_IPTC["caption"]) or one(_IPTC["headline"]), "licence": one(_IPTC["licence"]),
            "creator": one(_IPTC["creator"]), "tags": [t for t in map(_text, items) if t]}


def _xmp(im: Image.Image) -> dict[str, Any]:
    if "xmp" not in im.info and 700 not in getattr(im, "tag_v2", {}):
        return {}  # no packet: skip the parser entirely (most files)
    with warnings.catch_warnings():  # Pillow warns and returns {} without defusedxml: make that loud
        warnings.simplefilter("error", UserWarning)
        xmp = im.getxmp()
    desc = xmp.get("xmpmeta", {}).get("RDF", {}).get("Description", {})
    merged: dict[str, Any] = {}
    for part in desc if isinstance(desc, list) else [desc]:
        if isinstance(part, dict):
            merged.update(part)
    return {
        "caption": _xmp_text(merged.get("description")) or _xmp_text(merged.get("Headline")),
        "tags": _xmp_list(merged.get("subject")),
        "licence": _xmp_text(merged.get("UsageTerms")) or _xmp_text(merged.get("rights")),
        "creator": ", ".join(_xmp_list(merged.get("creator"))) or None,
        "taken_at": _xmp_date(_xmp_text(merged.get("DateTimeOriginal"))),
    }


def _xmp_items(value: Any) -> list[Any]:
    """The rdf:li items of an Alt/Bag/Seq container, or the value itself."""
    if isinstance(value, dict):
        for container in ("Alt", "Bag", "Seq"):
            if container in value:
                inner = value[container]
                items = inner.get("li", []) if isinstance(inner, dict) else []
                return items if isinstance(items, list) else [items]
        return [value]
    return value if isinstance(value, list) else [value] if value is not None else []


def _li_text(item: Any) -> str | None:
    if isinstance(item, dict):
        return _text(item.get("text"))
    return _text(item)


def _xmp_text(value: Any) -> str | None:
    """A simple value or a language alternative (x-default first)."""
    items = _xmp_items(value)
    default = [i for i in items if isinstance(i, dict) and i.get("lang") == "x-default"]
    for item in default + items:
        text = _li_text(item)
        if text:
            return text
    return None


def _xmp_list(value: Any) -> list[str]:
    return [t for t in map(_li_text, _xmp_items(value)) if t]


def _xmp_date(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
