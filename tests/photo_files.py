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


def camera_exif_block(size: tuple[int, int] = (4000, 3000)) -> Image.Exif:
    """EXIF shaped like a camera's: IFD0 with make/model/artist/copyright, an Exif sub-IFD of ~25 entries
    (exposure, lens, a 2 KB MakerNote) with DateTimeOriginal and OffsetTimeOriginal."""
    exif = Image.Exif()
    exif.update({271: "Canon", 272: "Canon EOS R5", 274: 1, 282: 300.0, 283: 300.0, 296: 2,
                 305: "Adobe Lightroom Classic 13.0", 306: "2023:05:02 10:00:00", 315: "Jane Doe",
                 33432: "(c) 2023 Jane Doe Photography"})
    sub = exif.get_ifd(0x8769)
    sub.update({33434: 0.004, 33437: 2.8, 34850: 3, 34855: 400, 36864: b"0232", 36867: "2023:05:01 18:42:07",
                36868: "2023:05:01 18:42:07", 36880: "+02:00", 36881: "+02:00", 36882: "+02:00",
                37377: 7.965784, 37378: 2.970854, 37380: 0.0, 37383: 5, 37385: 16, 37386: 85.0,
                37500: bytes(range(256)) * 8, 37521: "42", 37522: "42", 40961: 1, 40962: size[0], 40963: size[1],
                41486: 1600.0, 41487: 1600.0, 41488: 3, 41986: 0, 41987: 0, 41990: 0, 42033: "012345678901",
                42036: "RF85mm F1.2 L USM"})
    return exif


def _padding() -> bytes:
    return (b" " * 99 + b"\n") * 20  # the 2 KB of in-place-edit padding writers leave before the trailer


STOCK_XMP = b"""<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000, 0000/00/00-00:00:00">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
   xmp:CreatorTool="Adobe Photoshop Lightroom Classic 13.0 (Windows)" xmp:CreateDate="2023-05-01T18:42:07+02:00"
   xmp:ModifyDate="2023-05-02T10:00:00+02:00" xmp:MetadataDate="2023-05-02T10:00:00+02:00"
   photoshop:DateCreated="2023-05-01T18:42:07+02:00" photoshop:Headline="Red fox at dusk"
   photoshop:City="Bern" photoshop:Country="Switzerland" xmpRights:Marked="True"
   xmpMM:DocumentID="xmp.did:0b5c3f2e-1d2a-4a7e-9d3c-5e6f7a8b9c0d"
   xmpMM:InstanceID="xmp.iid:0b5c3f2e-1d2a-4a7e-9d3c-5e6f7a8b9c0e"
   xmpMM:OriginalDocumentID="0B5C3F2E1D2A4A7E9D3C5E6F7A8B9C0D"
   crs:Version="16.0" crs:ProcessVersion="11.0" crs:WhiteBalance="As Shot" crs:Temperature="5450"
   crs:Tint="+8" crs:Exposure2012="+0.35" crs:Contrast2012="+12" crs:Highlights2012="-40"
   crs:Shadows2012="+25" crs:Whites2012="+10" crs:Blacks2012="-8" crs:Texture="+5" crs:Clarity2012="+10"
   crs:Dehaze="0" crs:Vibrance="+14" crs:Saturation="0" crs:LensProfileEnable="1" crs:HasCrop="False">
   <dc:format>image/jpeg</dc:format>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Red fox</rdf:li></rdf:Alt></dc:title>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">A red fox crossing a snowy field at dusk</rdf:li>
    <rdf:li xml:lang="de">Ein Rotfuchs im Schnee</rdf:li></rdf:Alt></dc:description>
   <dc:subject><rdf:Bag><rdf:li>fox</rdf:li><rdf:li>red fox</rdf:li><rdf:li>animal</rdf:li><rdf:li>wildlife</rdf:li>
    <rdf:li>snow</rdf:li><rdf:li>winter</rdf:li><rdf:li>dusk</rdf:li><rdf:li>field</rdf:li><rdf:li>nature</rdf:li>
    <rdf:li>mammal</rdf:li><rdf:li>cold</rdf:li><rdf:li>outdoors</rdf:li><rdf:li>Switzerland</rdf:li>
    <rdf:li>no people</rdf:li><rdf:li>horizontal</rdf:li></rdf:Bag></dc:subject>
   <dc:creator><rdf:Seq><rdf:li>Jane Doe</rdf:li></rdf:Seq></dc:creator>
   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">(c) 2023 Jane Doe Photography</rdf:li></rdf:Alt></dc:rights>
   <xmpRights:UsageTerms><rdf:Alt><rdf:li xml:lang="x-default">Royalty-free licence, no resale</rdf:li>
    </rdf:Alt></xmpRights:UsageTerms>
   <xmpMM:History><rdf:Seq>
    <rdf:li stEvt:action="derived" stEvt:parameters="converted from image/x-canon-cr3 to image/jpeg"/>
    <rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:0b5c3f2e-1d2a-4a7e-9d3c-5e6f7a8b9c0e"
     stEvt:when="2023-05-02T10:00:00+02:00" stEvt:softwareAgent="Adobe Photoshop Lightroom Classic 13.0"
     stEvt:changed="/"/>
   </rdf:Seq></xmpMM:History>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
""" + _padding() + b"""<?xpacket end="w"?>"""
