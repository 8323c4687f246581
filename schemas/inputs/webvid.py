"""WebVid's CSV: ``videoid, contentUrl, duration, page_dir, name`` (name is the caption), read
record by record so that a quoted caption may span lines and an unterminated quote costs one
row."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..io import SchemaError
from .limits import DEFAULT_LIMITS, ManifestLimits, RowError, bounded_lines, check_caption, too_long
from .rows import ManifestRead, Rows, decode_line, open_manifest, parse_duration, resolve_uri

WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")


def _parse_record(text: str) -> list[str] | None:
    """The fields of one CSV record, or ``None`` when ``text`` ends inside a quoted field.

    Raises ``csv.Error`` for a record the csv module refuses (a field over its size limit).
    """
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return None
    return next(csv.reader([text]), [])  # lenient, as WebVid's own files need


class _CsvHeader:
    def __init__(self, path: Path, names: list[str]) -> None:
        self.names = [h.strip().lstrip("\ufeff") for h in names]
        missing = [c for c in ("videoid", "contentUrl", "name") if c not in self.names]
        if missing:
            raise SchemaError(
                f"{path}: not a WebVid CSV: header lacks {', '.join(missing)} "
                f"(found {self.names[:20]})"
            )
        for used in ("videoid", "contentUrl", "duration", "name"):
            at = [i + 1 for i, h in enumerate(self.names) if h == used]
            if len(at) > 1:
                raise SchemaError(
                    f"{path}: the header names {used!r} {len(at)} times (columns "
                    f"{', '.join(map(str, at))}); which one holds the data is ambiguous"
                )
        self.col = {name: self.names.index(name) for name in self.names}

    def looks_like_row(self, text: str) -> bool:
        """Whether one physical line parses on its own as a whole row (so it cannot be the
        continuation of a caption that spans lines)."""
        try:
            record = _parse_record(text)
        except csv.Error:
            return False
        return (
            record is not None
            and len(record) == len(self.names)
            and bool(record[self.col["videoid"]].strip())
            and bool(record[self.col["contentUrl"]].strip())
        )


def _csv_records(
    lines: Iterator[tuple[int, bytes | None, int]], header: _CsvHeader, rows: Rows, limit: int
) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` of each record in ``lines``; a record that cannot be parsed is
    a failures row and parsing goes on at the next line.

    A quoted caption may span lines, unless one of those lines reads as a whole row: then the
    quote was never closed, the record that opened it fails, and that line starts the next
    record. So an unterminated quote costs one row, never the rows after it.
    """
    pending: tuple[int, bytes | None, int] | None = None
    while True:
        item = pending or next(lines, None)
        pending = None
        if item is None:
            return
        number, raw, size = item
        if raw is None:
            rows.fail(too_long(size, limit), line=number)
            continue
        text = decode_line(raw)
        if not text.strip():
            continue
        try:
            record = _parse_record(text)
            total = size
            while record is None:  # inside a quoted field: take the next line into it
                nxt = next(lines, None)
                if nxt is None:
                    break
                more = None if nxt[1] is None else decode_line(nxt[1])
                if more is None or total + nxt[2] > limit or header.looks_like_row(more):
                    pending = nxt
                    break
                text += more
                total += nxt[2]
                record = _parse_record(text)
        except csv.Error as exc:
            rows.fail(f"not a CSV record ({exc})", line=number)
            continue
        if record is None:
            rows.fail(
                "unterminated quote: the quoted field opened on this line is never closed "
                "(the lines after it are read as rows of their own)",
                line=number,
            )
            continue
        yield number, record


def read_webvid_csv(
    path: str | os.PathLike[str], *, limits: ManifestLimits = DEFAULT_LIMITS
) -> ManifestRead:
    """WebVid's CSV: ``videoid, contentUrl, duration, page_dir, name`` (name is the caption)."""
    path = Path(path)
    rows = Rows(path, "webvid")
    with open_manifest(path) as fh:
        lines = bounded_lines(fh, limits.max_line_bytes)
        first = next(lines, None)
        if first is None:
            raise SchemaError(f"{path}: empty manifest (no header line)")
        if first[1] is None:
            raise SchemaError(f"{path}: header {too_long(first[2], limits.max_line_bytes)}")
        try:
            names = _parse_record(decode_line(first[1])) or []
        except csv.Error as exc:
            raise SchemaError(f"{path}: unreadable header ({exc})") from None
        header = _CsvHeader(path, names)
        for line, record in _csv_records(lines, header, rows, limits.max_line_bytes):
            try:
                row = _webvid_row(record, header, path, limits)
            except Exception as exc:  # one row, whatever went wrong with it
                rows.fail_exception(exc, line=line)
                continue
            rows.add(row, line=line)
    return rows.result


def _webvid_row(
    record: list[str], header: _CsvHeader, path: Path, limits: ManifestLimits
) -> dict[str, Any]:
    if all(not c.strip() for c in record):
        # a line of separators only (",,,,,"): a row that says nothing, still a line read
        raise RowError(f"every field is blank ({len(record)} fields)")
    names, col = header.names, header.col
    if len(record) != len(names):
        raise RowError(f"expected {len(names)} fields ({', '.join(names)}), found {len(record)}")
    vid = record[col["videoid"]].strip()
    url = record[col["contentUrl"]].strip()
    if not vid or not url:
        field_name = "videoid" if not vid else "contentUrl"
        raise RowError(f"missing {field_name}", input_id=vid or None)
    duration = None
    if "duration" in col and record[col["duration"]].strip():
        try:
            duration = parse_duration(record[col["duration"]], max_seconds=limits.max_seconds)
        except ValueError as exc:
            raise RowError(str(exc), input_id=vid, uri=url) from None
    caption = record[col["name"]]
    try:
        check_caption(caption, limits)
        uri = resolve_uri(url, path.parent)
    except RowError as exc:
        raise RowError(str(exc), input_id=vid, uri=url) from None
    return {"video_id": vid, "uri": uri, "caption": caption, "duration_s": duration}
