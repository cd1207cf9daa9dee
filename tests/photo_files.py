"""Real image files with real metadata blocks for the photo-library tests: EXIF written by Pillow, IPTC as a
Photoshop APP13 segment, XMP through Pillow's `xmp=` (JPEG) or TIFF tag 700."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from PIL import Image

XMP = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
 photoshop:Headline="Fox headline">
<dc:description><rdf:Alt><rdf:li xml:lang="x-default">A red fox in snow</rdf:li></rdf:Alt></dc:description>
<dc:subject><rdf:Bag><rdf:li>fox</rdf:li><rdf:li>snow</rdf:li></rdf:Bag></dc:subject>
<dc:creator><rdf:Seq><rdf:li>Jane Doe</rdf:li></rdf:Seq></dc:creator>
<xmpRights:UsageTerms><rdf:Alt><rdf:li xml:lang="x-default">Editorial use only</rdf:li></rdf:Alt>
</xmpRights:UsageTerms></rdf:Description></rdf:RDF></x:xmpmeta>"""


def iptc_segment(records: list[tuple[int, bytes]]) -> bytes:
    """A JPEG APP13 'Photoshop 3.0' segment holding one IPTC-NAA resource (0x0404) with record-2 datasets."""
    data = b"".join(b"\x1c" + bytes([2, dataset]) + struct.pack(">H", len(v)) + v for dataset, v in records)
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(data)) + data
    if len(data) % 2:
        resource += b"\x00"
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def exif_block(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[271], exif[272] = "Canon", "EOS 5D"
    if orientation:
        exif[274] = orientation
    sub = exif.get_ifd(0x8769)
    sub[36867], sub[36881] = "2021:06:01 12:30:00", "+02:00"
    return exif


def jpeg_with_metadata(path: Path, size: tuple[int, int] = (48, 24), orientation: int | None = None,
                       iptc: list[tuple[int, bytes]] | None = None, xmp: bytes | None = None,
                       color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    extra = {"xmp": xmp} if xmp is not None else {}
    Image.new("RGB", size, color).save(buf, "JPEG", exif=exif_block(orientation), **extra)
    data = buf.getvalue()
    if iptc:
        data = data[:2] + iptc_segment(iptc) + data[2:]  # right after SOI, before APP1
    path.write_bytes(data)
    return path


def tiff_with_metadata(path: Path, xmp: bytes = XMP) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 40), (20, 120, 40)).save(path, "TIFF", tiffinfo={271: "Nikon", 272: "D850", 700: xmp})
    return path
