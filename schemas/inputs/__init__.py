"""Readers for the input manifests: WebVid CSV, JSONL, and a folder of videos with sidecars.

Every reader returns :class:`ManifestRead`: the good rows as ``VIDEOS_SCHEMA`` dicts and one
``FAILURES_SCHEMA`` dict per row it could not use, naming the file, the line and the reason. A bad
row never stops the others, and every line of a manifest ends up in one or the other. Relative
video paths resolve against the manifest's own folder.

What one row may hold is bounded (:class:`ManifestLimits`): a row over a limit is a failures row
that names the limit, read without holding more than the limit in memory. Only a manifest that
cannot be read at all (missing, unrecognised, a CSV without the WebVid columns) raises
:class:`~schemas.io.SchemaError`.

One module per format (``webvid``, ``jsonl``, ``folder``); ``limits`` holds the bounds and the
bounded reading of lines and JSON, ``rows`` what the readers share; :func:`read_manifest`
recognises the format and picks the reader.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from ..io import SchemaError
from .folder import VIDEO_EXTENSIONS, read_folder
from .jsonl import read_jsonl
from .limits import (
    BOM,
    CSV_FIELD_LIMIT,
    DEFAULT_LIMITS,
    ManifestLimits,
    RowError,
    json_depth,
    load_json,
)
from .rows import ROW_ERROR, ManifestRead, open_manifest, parse_duration, resolve_uri
from .webvid import WEBVID_COLUMNS, read_webvid_csv

FORMATS = ("webvid", "jsonl", "folder")


#: byte-order marks of text in an encoding other than UTF-8 (UTF-32's before UTF-16's, which
#: they start with)
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)

#: bytes that text (UTF-8 of any language) does not hold: C0 controls but tab, line feed,
#: vertical tab, form feed, carriage return and escape
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\x0b\x0c\r\x1b")


def _looks_binary(head: bytes) -> bool:
    """Whether a file starting with ``head`` is binary (a video, an archive, an image...)
    rather than text: it holds a NUL byte, or it is not UTF-8 and holds control bytes."""
    if b"\x00" in head:
        return True
    try:
        # the head may end inside a character: only a sequence that cannot continue fails
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return any(b in _CONTROL for b in head)
    return False


def detect_format(path: str | os.PathLike[str]) -> str:
    """Recognise a manifest's format from its content (not only its name)."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    if not exists:
        raise SchemaError(f"{path}: no such manifest file or folder")
    if is_dir:
        return "folder"
    with open_manifest(path) as fh:
        raw = fh.read(4096)
    head = raw.lstrip(BOM).lstrip()
    if not head:
        raise SchemaError(f"{path}: empty manifest")
    if head.startswith(b"{"):
        return "jsonl"
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if "videoid" in first and "contentUrl" in first:
        return "webvid"
    expected = (
        "expected a WebVid CSV (header with videoid, contentUrl, name), JSON lines, or a "
        "folder of videos"
    )
    wide = next((name for bom, name in _WIDE_BOMS if raw.startswith(bom)), None)
    if wide:
        raise SchemaError(f"{path}: the manifest is {wide} text; save it as UTF-8")
    if _looks_binary(raw):
        start = " ".join(f"{b:02x}" for b in raw[:12])
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            hint = (
                f"it is named like a video: give the folder that holds the videos "
                f"({path.parent}) as the manifest"
            )
        else:
            hint = expected
        raise SchemaError(
            f"{path}: unrecognised manifest format: looks like a binary file (starts with "
            f"bytes {start}), not a manifest; {hint}"
        )
    raise SchemaError(
        f"{path}: unrecognised manifest format: {expected}; first line is {first[:80]!r}"
    )


READERS = {"webvid": read_webvid_csv, "jsonl": read_jsonl, "folder": read_folder}


def read_manifest(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    limits: ManifestLimits | None = None,
) -> ManifestRead:
    """Read any supported manifest; ``fmt`` overrides recognition."""
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise SchemaError(f"unknown manifest format {fmt!r}; expected one of {FORMATS}")
    return READERS[fmt](path, limits=limits or DEFAULT_LIMITS)


__all__ = [
    "CSV_FIELD_LIMIT",
    "DEFAULT_LIMITS",
    "FORMATS",
    "READERS",
    "ROW_ERROR",
    "VIDEO_EXTENSIONS",
    "WEBVID_COLUMNS",
    "ManifestLimits",
    "ManifestRead",
    "RowError",
    "detect_format",
    "json_depth",
    "load_json",
    "parse_duration",
    "read_folder",
    "read_jsonl",
    "read_manifest",
    "read_webvid_csv",
    "resolve_uri",
]
