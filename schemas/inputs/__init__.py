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
        head = fh.read(4096).lstrip(BOM).lstrip()
    if not head:
        raise SchemaError(f"{path}: empty manifest")
    if head.startswith(b"{"):
        return "jsonl"
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if "videoid" in first and "contentUrl" in first:
        return "webvid"
    raise SchemaError(
        f"{path}: unrecognised manifest format: expected a WebVid CSV (header with videoid, "
        f"contentUrl, name), JSON lines, or a folder of videos; first line is {first[:80]!r}"
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
