"""JSON lines: one object a line, ``video_id, uri, caption`` and optional timed ``captions``
and ``duration``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .limits import (
    DEFAULT_LIMITS,
    ManifestLimits,
    RowError,
    bounded_lines,
    check_caption,
    load_json,
    too_long,
)
from .rows import (
    ManifestRead,
    Rows,
    decode_line,
    open_manifest,
    parse_duration,
    resolve_uri,
    timed_captions,
)


def read_jsonl(
    path: str | os.PathLike[str], *, limits: ManifestLimits = DEFAULT_LIMITS
) -> ManifestRead:
    """One JSON object a line: ``video_id, uri, caption`` and optional timed ``captions``."""
    path = Path(path)
    rows = Rows(path, "jsonl")
    with open_manifest(path) as fh:
        for line_no, raw, size in bounded_lines(fh, limits.max_line_bytes):
            if raw is None:
                rows.fail(too_long(size, limits.max_line_bytes), line=line_no)
                continue
            text = decode_line(raw).strip()
            if not text:
                continue
            try:
                row = _jsonl_row(text, path, limits)
            except Exception as exc:  # one row, whatever went wrong with it
                rows.fail_exception(exc, line=line_no)
                continue
            rows.add(row, line=line_no)
    return rows.result


def _jsonl_row(text: str, path: Path, limits: ManifestLimits) -> dict[str, Any]:
    obj = load_json(text, limits)
    if not isinstance(obj, dict):
        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
    vid = obj.get("video_id")
    uri = obj.get("uri")
    missing = [k for k in ("video_id", "uri", "caption") if k not in obj]
    if missing:
        raise RowError(
            f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            input_id=str(vid)[:200] if isinstance(vid, (str, int)) else None,
            uri=uri if isinstance(uri, str) else None,
        )
    bad = [
        k
        for k, v in (("video_id", vid), ("uri", uri))
        if not isinstance(v, (str, int)) or isinstance(v, bool) or str(v).strip() == ""
    ]
    if bad:
        raise RowError(f"empty or non-string {', '.join(bad)}")
    video_id, uri_text = str(vid).strip(), str(uri).strip()
    caption = obj["caption"]
    if caption is not None and not isinstance(caption, str):
        raise RowError(f"caption must be a string, got {caption!r:.60}", input_id=video_id)
    try:
        if caption is not None:
            check_caption(caption, limits)
        row: dict[str, Any] = {
            "video_id": video_id,
            "uri": resolve_uri(uri_text, path.parent),
            "caption": caption,
        }
        if obj.get("captions") is not None:
            row["captions"] = timed_captions(obj["captions"], limits)
        if obj.get("duration") is not None:
            row["duration_s"] = parse_duration(
                str(obj["duration"])[:100], max_seconds=limits.max_seconds
            )
    except (RowError, ValueError) as exc:
        raise RowError(str(exc), input_id=video_id, uri=uri_text) from None
    return row
