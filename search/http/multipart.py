"""The `file` part of a multipart upload, read incrementally from the ASGI request stream under a byte cap.

Starlette's `request.form()` spools every file part to a temporary file before the handler sees it, so a
chunked upload (no Content-Length) was written to disk in full before its size could be refused. Here the
body is fed chunk by chunk into python-multipart's push parser and the read stops at the first chunk that
takes the file part past its cap: 413, nothing more is read, nothing touches the disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from search.runtime.uploads import UploadRejected

__all__ = ["read_file_part", "NotMultipart"]

_MAX_PARTS = 4


class NotMultipart(ValueError):
    """The body is not multipart/form-data with a `file` part (a 422, not a broken upload)."""


class _FilePart:
    """Parser callbacks: collect the bytes of the part named `field`, count the rest."""

    def __init__(self, field: str, max_bytes: int):
        self.field = field
        self.max_bytes = max_bytes
        self.parts = 0
        self.found = False
        self._header_name = b""
        self._header_value = b""
        self._in_field = False
        self._data = bytearray()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > _MAX_PARTS:
            raise UploadRejected(400, f"more than {_MAX_PARTS} multipart parts")
        self._in_field = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            _, options = parse_options_header(self._header_value)
            if options.get(b"name") == self.field.encode() and not self.found:
                self._in_field = self.found = True
        self._header_name, self._header_value = b"", b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_field:
            self._data += data[start:end]
            if len(self._data) > self.max_bytes:
                raise UploadRejected(413, f"upload exceeds {self.max_bytes} bytes")

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_part_data": self.on_part_data}

    def data(self) -> bytes:
        return bytes(self._data)


async def read_file_part(content_type: str | None, stream: AsyncIterator[bytes], max_bytes: int,
                         field: str = "file") -> bytes:
    """The bytes of part `field`; 413 once that part passes max_bytes (the whole body's cap is
    search/http/bodies.py's, enforced on the stream this reads)."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise NotMultipart("expected a multipart/form-data body with a 'file' part")
    part = _FilePart(field, max_bytes)
    parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadRejected(400, f"malformed multipart body ({exc})") from exc
    if not part.found:
        raise NotMultipart("expected a multipart/form-data body with a 'file' part")
    data = part.data()
    if not data:
        raise UploadRejected(400, "empty upload")
    return data
