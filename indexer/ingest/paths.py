r"""File names as the operating system gives them, kept losslessly.

A POSIX file name is bytes. Python hands them out as `str` decoded with `surrogateescape` (os.fsdecode), so a
name that is not valid UTF-8 (`caf\xe9.jpg` from an old camera or a zip) holds lone surrogates that SQLite,
JSON encoders and HTML cannot take. The indexer therefore keys rows by the raw bytes (`images.path_raw`) and
shows a display form everywhere else: the name itself when it is valid UTF-8, else the invalid bytes written
as `\xNN` (never ambiguous for lookup, because lookups use the bytes).
"""

from __future__ import annotations

import os

__all__ = ["display", "from_raw", "printable", "to_raw"]


def to_raw(key: str) -> bytes:
    """The exact bytes of a relative path key (a str from os.scandir/os.fsdecode)."""
    return os.fsencode(key)


def from_raw(raw: bytes) -> str:
    """Inverse of `to_raw`: the str the file system APIs accept."""
    return os.fsdecode(bytes(raw))


def display(key: str) -> str:
    """Valid Unicode for JSON/SQLite/HTML: undecodable bytes become `\\xNN`; everything else is unchanged."""
    return to_raw(key).decode("utf-8", "backslashreplace")


def printable(key: str) -> str:
    """One terminal line: the display form with control characters (newlines in names) escaped."""
    text = display(key)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
