"""indexer.ingest.file_meta on real blocks: the fast paths (Exif sub-IFD scan, C parser for DTD-free XMP) give what
Pillow's full readers and defusedxml give, and anything hostile or odd still takes the defused / Pillow path."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image

from indexer.ingest import file_meta
from indexer.ingest.file_meta import read_file_meta
from tests.photo_files import STOCK_XMP, XMP, camera_exif_block, jpeg_with_metadata

ATTRIBUTES_XMP = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"
 dc:description="Harbour at dawn" photoshop:Headline="Harbour" exif:DateTimeOriginal="2019-08-10T05:40:00Z"/>
</rdf:RDF></x:xmpmeta>"""

LANGUAGES_XMP = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>
<rdf:li xml:lang="de">Hafen</rdf:li><rdf:li xml:lang="x-default">Harbour</rdf:li></rdf:Alt></dc:description>
<dc:rights><rdf:Description><dc:subject><rdf:Bag><rdf:li>nested</rdf:li></rdf:Bag></dc:subject></rdf:Description>
</dc:rights></rdf:Description></rdf:RDF></x:xmpmeta>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&c;</x:xmpmeta>"""
EXTERNAL_ENTITY = b"""<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&e;
</x:xmpmeta>"""


def _meta(tmp_path: Path, xmp: bytes | None = None, name: str = "a.jpg") -> file_meta.FileMeta:
    path = jpeg_with_metadata(tmp_path / name, xmp=xmp)
    with Image.open(path) as im:
        return read_file_meta(im)


def test_xmp_values_inside_alt_bag_and_seq(tmp_path: Path) -> None:
    fields = _meta(tmp_path, XMP).fields
    assert fields["caption"] == "A red fox in snow"  # dc:description > rdf:Alt > rdf:li x-default
    assert fields["tags"] == ["fox", "snow"]  # rdf:Bag
    assert fields["creator"] == "Jane Doe"  # rdf:Seq
    assert fields["licence"] == "Editorial use only"


def test_xmp_simple_properties_as_attributes(tmp_path: Path) -> None:
    fields = _meta(tmp_path, ATTRIBUTES_XMP).fields
    assert fields["caption"] == "Harbour at dawn"
    assert fields["taken_at"] == "2019-08-10T05:40:00+00:00"  # XMP beats the EXIF date of the same file


def test_xmp_language_alternative_and_nested_description(tmp_path: Path) -> None:
    fields = _meta(tmp_path, LANGUAGES_XMP).fields
    assert fields["caption"] == "Harbour"  # x-default first, whatever the order in the packet
    assert fields["tags"] == ["nested"]  # a structured value's inner rdf:Description is read too


def test_lightroom_sized_packet(tmp_path: Path) -> None:
    fields = _meta(tmp_path, STOCK_XMP).fields
    assert fields["caption"] == "A red fox crossing a snowy field at dusk"
    assert len(fields["tags"]) == 15 and fields["tags"][:2] == ["fox", "red fox"]
    assert fields["licence"] == "Royalty-free licence, no resale"


@pytest.mark.parametrize("packet", [XMP, ATTRIBUTES_XMP, LANGUAGES_XMP, STOCK_XMP], ids=["alt", "attr", "lang", "lr"])
def test_c_parser_and_defusedxml_read_the_same(tmp_path: Path, packet: bytes) -> None:
    """A comment (`<!--`) sends the same packet through defusedxml: both paths give the same fields."""
    assert not file_meta._needs_defusing(packet)
    commented = packet.replace(b"<rdf:RDF", b"<!-- forces defusedxml --><rdf:RDF", 1)
    assert file_meta._needs_defusing(commented)
    plain, defused = _meta(tmp_path, packet, "plain.jpg"), _meta(tmp_path, commented, "defused.jpg")
    assert plain.fields == defused.fields and not plain.problems and not defused.problems


@pytest.mark.parametrize("packet", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["entity-expansion", "external-entity"])
def test_hostile_xmp_is_refused_and_the_image_keeps_its_other_fields(tmp_path: Path, packet: bytes) -> None:
    assert file_meta._needs_defusing(packet)  # never reaches the stdlib parser
    meta = _meta(tmp_path, packet)
    assert meta.problems and meta.problems[0].startswith("XMP: EntitiesForbidden")
    assert meta.fields["camera_make"] == "Canon" and meta.fields["taken_at"] == "2021-06-01T12:30:00+02:00"
    assert "caption" not in meta.fields


def test_utf16_packet_goes_through_defusedxml(tmp_path: Path) -> None:
    packet = XMP.decode().encode("utf-16-be")
    packet = b"\xfe\xff" + packet  # with its byte order mark, as XMP allows
    assert file_meta._needs_defusing(packet)
    assert _meta(tmp_path, packet).fields["caption"] == "A red fox in snow"


def test_broken_packet_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    meta = _meta(tmp_path, b"<x:xmpmeta><broken")
    assert meta.problems and meta.problems[0].startswith("XMP: ParseError")
    assert meta.fields["camera_model"] == "EOS 5D"


def _pillow_sub_ifd(im: Image.Image) -> dict[int, object]:
    sub = im.getexif().get_ifd(0x8769)
    return {t: sub.get(t) for t in (36867, 36881) if sub.get(t) is not None}


def test_camera_exif_sub_ifd_scan_matches_pillow(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, "JPEG", exif=camera_exif_block())
    with Image.open(buf) as im:
        fast = file_meta._exif_sub_ifd(im.getexif())
    with Image.open(buf) as im:
        assert fast == _pillow_sub_ifd(im) == {36867: "2023:05:01 18:42:07", 36881: "+02:00"}
        assert read_file_meta(im).fields["taken_at"] == "2023-05-01T18:42:07+02:00"


def test_sub_ifd_scan_matches_pillow_on_real_camera_files(odd_images: Path) -> None:
    checked = 0
    for path in sorted(odd_images.glob("*.jp*g")):
        try:
            with Image.open(path) as im:
                exif = im.getexif()
                if 0x8769 not in exif:
                    continue
                fast = {t: v for t, v in file_meta._exif_sub_ifd(exif).items() if t in (36867, 36881)}
            with Image.open(path) as im:
                want = _pillow_sub_ifd(im)
        except Exception:  # files Pillow cannot open or whose EXIF it rejects are not this test's subject
            continue
        assert fast == want, path.name
        checked += 1
    assert checked >= 10


def _tiff_exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """Little-endian EXIF: IFD0 with the Exif pointer only, then a sub-IFD of (tag, type, count, data)."""
    sub_at = 8 + 2 + 12 + 4
    data_at = sub_at + 2 + 12 * len(entries) + 4
    table, blob = b"", b""
    for tag, kind, count, data in entries:
        if len(data) <= 4:
            table += struct.pack("<HHL4s", tag, kind, count, data.ljust(4, b"\x00"))
        else:
            table += struct.pack("<HHLL", tag, kind, count, data_at + len(blob))
            blob += data
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHLL", 0x8769, 4, 1, sub_at) + struct.pack("<L", 0)
    return b"II*\x00" + struct.pack("<L", 8) + ifd0 + struct.pack("<H", len(entries)) + table + b"\0\0\0\0" + blob


@pytest.mark.parametrize("entries,taken_at", [
    ([(36867, 7, 20, b"2020:02:03 04:05:06\x00")], "2020-02-03T04:05:06"),  # UNDEFINED type: Pillow decides
    ([(36867, 2, 20, b"2020:02:03 04:05:06\x00"), (36881, 2, 7, b"-05:00\x00")], "2020-02-03T04:05:06-05:00"),
    ([(36867, 2, 20, b"2020:02")], None),  # value runs past the block: Pillow skips the tag
], ids=["undefined-type", "ascii", "truncated"])
def test_odd_sub_ifd_entries_fall_back_to_pillow(entries: list[tuple[int, int, int, bytes]],
                                                 taken_at: str | None) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG", exif=b"Exif\x00\x00" + _tiff_exif(entries))
    with Image.open(buf) as im:
        meta = read_file_meta(im)
    assert meta.fields.get("taken_at") == taken_at and not meta.problems
