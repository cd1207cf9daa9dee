"""Metadata photos carry in their own files: EXIF, IPTC (APP13) and XMP (APP1 / TIFF tag 700).

Read in the decode worker from the image Pillow already opened, so no file is read twice. Per field the
precedence is XMP > IPTC > EXIF (a sidecar line beats all three; see indexer/storage/store.py `effective_values`).
Fields: caption (description, else headline), tags (keywords), licence (usage terms, else copyright),
creator, taken_at (EXIF DateTimeOriginal with OffsetTimeOriginal, ISO 8601), camera_make, camera_model.

XMP: the packet Pillow extracted is never parsed in a way that expands a declared entity or follows an
external reference: any packet that could carry a DTD goes through `defusedxml` (a declared dependency, the
parser Pillow's own `getxmp` uses), a plain one through the stdlib's C parser (see `_parse_xmp`). A corrupt
block never fails the image: its fields are left out and the block is named in `FileMeta.problems`, which the
run report counts.

Cost: this runs once per image in the decode worker, next to a 2-70 ms draft decode; only the fields used are
decoded (the Exif sub-IFD's two dates, not its 30-40 entries; no dict of the whole XMP packet).
benchmarks/file_meta_overhead.py measures it against the decode without it.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any
from xml.etree import ElementTree

from PIL import Image, IptcImagePlugin

__all__ = ["FileMeta", "read_file_meta"]

_EXIF_IFD = 0x8769
_TAG_DESCRIPTION, _TAG_MAKE, _TAG_MODEL, _TAG_ARTIST, _TAG_COPYRIGHT = 270, 271, 272, 315, 33432
_TAG_DATETIME_ORIGINAL, _TAG_OFFSET_ORIGINAL = 36867, 36881
_IPTC = {"caption": (2, 120), "headline": (2, 105), "tags": (2, 25), "licence": (2, 116), "creator": (2, 80)}
_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})")


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
    exif = im.getexif()  # parsed once and cached on the image: the orientation step reuses it
    if not exif:
        return {}
    sub = _exif_sub_ifd(exif)
    return {
        "caption": _text(exif.get(_TAG_DESCRIPTION)), "creator": _text(exif.get(_TAG_ARTIST)),
        "licence": _text(exif.get(_TAG_COPYRIGHT)), "camera_make": _text(exif.get(_TAG_MAKE)),
        "camera_model": _text(exif.get(_TAG_MODEL)),
        "taken_at": exif_datetime(_text(sub.get(_TAG_DATETIME_ORIGINAL)), _text(sub.get(_TAG_OFFSET_ORIGINAL))),
    }


def _exif_sub_ifd(exif: Image.Exif) -> dict[int, Any]:
    """The two Exif sub-IFD tags we use. Pillow's `get_ifd` decodes every entry of the sub-IFD (30-40 in a camera
    file, MakerNote included: 0.2-0.4 ms); a scan of its 12-byte entries reads only ours. Anything unexpected
    (BigTIFF, a non-ASCII type, an entry out of range) goes to Pillow's `get_ifd`, as before."""
    offset, endian = exif.get(_EXIF_IFD), exif.endian
    if not isinstance(offset, int) or endian is None or exif.bigtiff:
        return exif.get_ifd(_EXIF_IFD)  # no pointer ({}), or one Pillow already followed (TIFF) or cannot
    try:
        found = _scan_ifd_ascii(exif.fp, endian, offset, (_TAG_DATETIME_ORIGINAL, _TAG_OFFSET_ORIGINAL))
    except (OSError, ValueError, struct.error):
        found = None
    return exif.get_ifd(_EXIF_IFD) if found is None else found


def _scan_ifd_ascii(fp: IO[bytes], endian: str, offset: int, tags: tuple[int, ...]) -> dict[int, str] | None:
    """ASCII entries `tags` of the TIFF IFD at `offset`, decoded as Pillow does; None when not plainly readable."""
    fp.seek(offset)
    head = fp.read(2)
    if len(head) != 2:
        return None
    (count,) = struct.unpack(endian + "H", head)
    table = fp.read(12 * count)
    if len(table) != 12 * count:
        return None
    found: dict[int, str] = {}
    for tag, kind, size, value in struct.iter_unpack(endian + "HHL4s", table):
        if tag not in tags:
            continue
        if kind != 2 or size > 64:  # not ASCII, or not a date: let Pillow decide what it is
            return None
        if size > 4:
            fp.seek(struct.unpack(endian + "L", value)[0])
            data = fp.read(size)
            if len(data) != size:
                return None
        else:
            data = value[:size]
        found[tag] = (data[:-1] if data.endswith(b"\x00") else data).decode("latin-1", "replace")
    return found


def exif_datetime(stamp: str | None, offset: str | None) -> str | None:
    """'2021:06:01 12:30:00' (+ '+02:00') -> ISO 8601; None for the all-blank or zero dates cameras write."""
    if not stamp or stamp.startswith("0000"):
        return None
    match = _EXIF_DATE.match(stamp)
    if match is None:
        raise ValueError(f"EXIF date {stamp!r} is not YYYY:MM:DD HH:MM:SS")
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    text = datetime(year, month, day, hour, minute, second).isoformat()  # validates; strptime costs 10x more
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


_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_DESCRIPTION, _LI = _RDF + "Description", _RDF + "li"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_XMP_NAMES = frozenset({"description", "subject", "creator", "rights", "UsageTerms", "Headline", "DateTimeOriginal"})
_XmpValues = list[tuple[str | None, str]]


def _xmp_packet(im: Image.Image) -> bytes | None:
    """The raw packet Pillow extracted (JPEG/WebP `xmp`, PNG iTXt, TIFF tag 700), as its getxmp reads it."""
    packet = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if packet is None and hasattr(im, "tag_v2"):
        packet = im.tag_v2.get(700)
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    return bytes(packet).rstrip(b"\x00 \r\n\t") if packet else None


def _xmp(im: Image.Image) -> dict[str, Any]:
    """The fields we use from the XMP packet, without building a dict of the whole packet as Pillow's getxmp
    does (a third of the cost)."""
    packet = _xmp_packet(im)
    if not packet:
        return {}  # no packet: skip the parser entirely (most files)
    root = _parse_xmp(packet)
    found: dict[str, _XmpValues] = {}
    for element in root.iter(_DESCRIPTION):
        for attr, value in element.attrib.items():  # simple properties may be attributes
            name = attr.rpartition("}")[2]
            if name in _XMP_NAMES:
                found.setdefault(name, []).append((None, value))
        for child in element:
            name = child.tag.rpartition("}")[2]
            if name not in _XMP_NAMES:
                continue
            items = list(child.iter(_LI))
            values = [(li.get(_XML_LANG), li.text or "") for li in items] if items else [(None, child.text or "")]
            found.setdefault(name, []).extend(values)
    return {
        "caption": _xmp_text(found.get("description")) or _xmp_text(found.get("Headline")),
        "tags": _xmp_list(found.get("subject")),
        "licence": _xmp_text(found.get("UsageTerms")) or _xmp_text(found.get("rights")),
        "creator": ", ".join(_xmp_list(found.get("creator"))) or None,
        "taken_at": _xmp_date(_xmp_text(found.get("DateTimeOriginal"))),
    }


def _parse_xmp(packet: bytes) -> ElementTree.Element:
    """The packet as an element tree, never expanding a declared entity nor following an external reference.

    Anything that could declare or reference an entity or a DTD (`<!` anywhere, a NUL byte as in UTF-16/32,
    an XML declaration, which may name another encoding) is parsed by defusedxml, as Pillow's getxmp does: it
    refuses entity declarations and external references. A packet without any of these cannot hold a DTD, so it
    has nothing for defusedxml to refuse (a reference to an entity other than the five predefined ones is
    expat's "undefined entity" error in both parsers). Such a packet, which is what cameras and editors write,
    is parsed by the stdlib's C parser, which builds the tree without a Python call per element: half the cost
    of a Lightroom-sized packet (benchmarks/file_meta_overhead.py). The stdlib's own "XML vulnerabilities"
    table lists xml.etree as safe from external entity expansion and DTD retrieval, and expat >= 2.4.1 caps
    entity amplification; the gate above keeps even those cases on defusedxml's refusals.
    """
    if not _needs_defusing(packet):
        return ElementTree.fromstring(packet)
    from defusedxml import ElementTree as defused

    return defused.fromstring(packet)


def _needs_defusing(packet: bytes) -> bool:
    """`<!` (DOCTYPE, ENTITY, also comments and CDATA), NUL (UTF-16/32) or an XML declaration: byte searches,
    microseconds (a regex over a 5 KB packet costs 0.1 ms)."""
    return b"<!" in packet or b"\x00" in packet or packet[:64].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<?xml")


def _xmp_text(values: list[tuple[str | None, str]] | None) -> str | None:
    """A simple value or a language alternative (x-default first)."""
    if not values:
        return None
    ordered = [v for lang, v in values if lang == "x-default"] + [v for _, v in values]
    return next((t for t in map(_text, ordered) if t), None)


def _xmp_list(values: list[tuple[str | None, str]] | None) -> list[str]:
    return [t for t in (_text(v) for _, v in values or []) if t]


def _xmp_date(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
