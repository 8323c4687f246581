"""Readers for the input manifests: WebVid CSV, JSONL, and a folder of videos with sidecars.

Every reader returns :class:`ManifestRead`: the good rows as ``VIDEOS_SCHEMA`` dicts and one
``FAILURES_SCHEMA`` dict per row it could not use, naming the file, the line and the reason. A bad
row never stops the others. Relative video paths resolve against the manifest's own folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .failures import READ_MANIFEST, failure_row
from .io import SchemaError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
FORMATS = ("webvid", "jsonl", "folder")
ROW_ERROR = "ManifestRowError"


@dataclass
class ManifestRead:
    """What a manifest yielded: usable videos, and a failure row for everything else."""

    path: str
    format: str
    videos: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def inputs(self) -> int:
        return len(self.videos) + len(self.failures)


class _Rows:
    """Collects rows, turning duplicates of a video id into failures."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.result = ManifestRead(path=str(path), format=fmt)
        self._first_line: dict[str, int | None] = {}

    def fail(
        self, message: str, *, line: int | None, input_id: str | None = None, uri: str | None = None
    ) -> None:
        where = f"line {line}" if line is not None else self.result.path
        self.result.failures.append(
            failure_row(
                input_id or f"{self.result.path}:{line if line is not None else '?'}",
                uri=uri,
                stage=READ_MANIFEST,
                error_type=ROW_ERROR,
                message=f"{self.result.path} {where}: {message}",
                source=self.result.path,
                source_line=line,
            )
        )

    def add(self, row: dict[str, Any], *, line: int | None) -> None:
        vid = row["video_id"]
        if vid in self._first_line:
            first = self._first_line[vid]
            self.fail(
                f"duplicate video_id {vid!r} (first seen at line {first}); row skipped",
                line=line,
                input_id=f"{vid}@{line}",
                uri=row.get("uri"),
            )
            return
        self._first_line[vid] = line
        row.setdefault("captions", None)
        row.setdefault("duration_s", None)
        row["source"] = self.result.path
        row["source_line"] = line
        self.result.videos.append(row)


def resolve_uri(uri: str, base: Path) -> str:
    """Keep URLs as they are; make relative local paths absolute against ``base``."""
    parsed = urlparse(uri)
    if parsed.scheme and len(parsed.scheme) > 1:  # http://, gs://, s3:// ... (not C:\)
        if parsed.scheme == "file":
            return parsed.path
        return uri
    p = Path(uri).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float:
    """Seconds from WebVid's ISO-8601 durations (``PT00H00M12S``) or a plain number."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        m = _ISO_DURATION.match(text)
        if not m or text in ("P", "PT"):
            raise ValueError(
                f"bad duration {text!r} (expected ISO-8601 like PT00H00M12S)"
            ) from None
        parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
        value = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad duration {text!r}")
    return value


def _decode_line(raw: bytes) -> str:
    # Invalid UTF-8 is kept visible as U+FFFD so that the caption stage can mark the clip
    # "invalid_caption" instead of the whole row disappearing here.
    return raw.decode("utf-8", errors="replace")


def _timed_captions(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ValueError(f"'captions' must be a list of {{start, end, text}}, got {value!r:.60}")
    out: list[dict[str, Any]] = []
    prev_start = 0.0
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"captions[{i}] must be an object, got {item!r:.60}")
        missing = [k for k in ("start", "end", "text") if k not in item]
        if missing:
            raise ValueError(f"captions[{i}] lacks {', '.join(missing)}")
        start, end, text = item["start"], item["end"], item["text"]
        if isinstance(start, bool) or not isinstance(start, (int, float)):
            raise ValueError(f"captions[{i}].start must be a number, got {start!r}")
        if isinstance(end, bool) or not isinstance(end, (int, float)):
            raise ValueError(f"captions[{i}].end must be a number, got {end!r}")
        if not isinstance(text, str):
            raise ValueError(f"captions[{i}].text must be a string, got {text!r:.60}")
        if end <= start:
            raise ValueError(f"captions[{i}] ends ({end:g} s) before it starts ({start:g} s)")
        if i and start < prev_start:
            raise ValueError(f"captions[{i}] starts before captions[{i - 1}] (unsorted)")
        prev_start = float(start)
        out.append({"start_s": prev_start, "end_s": float(end), "text": text})
    return out


def read_webvid_csv(path: str | os.PathLike[str]) -> ManifestRead:
    """WebVid's CSV: ``videoid, contentUrl, duration, page_dir, name`` (name is the caption)."""
    path = Path(path)
    rows = _Rows(path, "webvid")
    text = _decode_line(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise SchemaError(f"{path}: empty manifest (no header line)") from None
    header = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in ("videoid", "contentUrl", "name") if c not in header]
    if missing:
        raise SchemaError(
            f"{path}: not a WebVid CSV: header lacks {', '.join(missing)} (found {header})"
        )
    col = {name: header.index(name) for name in header}
    line = reader.line_num
    for record in reader:
        start_line = line + 1
        line = reader.line_num
        if not record or all(not c.strip() for c in record):
            continue
        if len(record) != len(header):
            rows.fail(
                f"expected {len(header)} fields ({', '.join(header)}), found {len(record)}",
                line=start_line,
            )
            continue
        vid = record[col["videoid"]].strip()
        url = record[col["contentUrl"]].strip()
        if not vid or not url:
            field_name = "videoid" if not vid else "contentUrl"
            rows.fail(f"missing {field_name}", line=start_line, input_id=vid or None)
            continue
        duration = None
        if "duration" in col and record[col["duration"]].strip():
            try:
                duration = parse_duration(record[col["duration"]])
            except ValueError as exc:
                rows.fail(str(exc), line=start_line, input_id=vid, uri=url)
                continue
        rows.add(
            {
                "video_id": vid,
                "uri": resolve_uri(url, path.parent),
                "caption": record[col["name"]],
                "duration_s": duration,
            },
            line=start_line,
        )
    return rows.result


def read_jsonl(path: str | os.PathLike[str]) -> ManifestRead:
    """One JSON object a line: ``video_id, uri, caption`` and optional timed ``captions``."""
    path = Path(path)
    rows = _Rows(path, "jsonl")
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            text = _decode_line(raw).strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                rows.fail(f"not valid JSON ({exc.msg} at column {exc.colno})", line=line_no)
                continue
            if not isinstance(obj, dict):
                rows.fail(f"expected a JSON object, got {type(obj).__name__}", line=line_no)
                continue
            vid = obj.get("video_id")
            uri = obj.get("uri")
            missing = [k for k in ("video_id", "uri", "caption") if k not in obj]
            if missing:
                rows.fail(
                    f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                    line=line_no,
                    input_id=str(vid) if vid is not None else None,
                    uri=uri if isinstance(uri, str) else None,
                )
                continue
            bad = [
                k
                for k, v in (("video_id", vid), ("uri", uri))
                if not isinstance(v, (str, int)) or isinstance(v, bool) or str(v).strip() == ""
            ]
            if bad:
                rows.fail(f"empty or non-string {', '.join(bad)}", line=line_no)
                continue
            caption = obj["caption"]
            if caption is not None and not isinstance(caption, str):
                rows.fail(f"caption must be a string, got {caption!r:.60}", line=line_no)
                continue
            row: dict[str, Any] = {
                "video_id": str(vid).strip(),
                "uri": resolve_uri(str(uri).strip(), path.parent),
                "caption": caption,
            }
            try:
                if obj.get("captions") is not None:
                    row["captions"] = _timed_captions(obj["captions"])
                if obj.get("duration") is not None:
                    row["duration_s"] = parse_duration(str(obj["duration"]))
            except ValueError as exc:
                rows.fail(str(exc), line=line_no, input_id=row["video_id"], uri=row["uri"])
                continue
            rows.add(row, line=line_no)
    return rows.result


def _iter_videos(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."):
            yield p


def read_folder(path: str | os.PathLike[str]) -> ManifestRead:
    """A folder of videos; each may have a sidecar ``NAME.txt`` (caption) or ``NAME.json``
    (``{"caption": ..., "captions": [{start, end, text}]}``). The video id is the path relative
    to the folder, without its extension."""
    path = Path(path)
    rows = _Rows(path, "folder")
    for video in _iter_videos(path):
        vid = video.relative_to(path).with_suffix("").as_posix()
        row: dict[str, Any] = {"video_id": vid, "uri": str(video.resolve()), "caption": None}
        sidecar_json = video.with_suffix(".json")
        sidecar_txt = video.with_suffix(".txt")
        try:
            if sidecar_json.exists():
                obj = json.loads(_decode_line(sidecar_json.read_bytes()))
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                caption = obj.get("caption")
                if caption is not None and not isinstance(caption, str):
                    raise ValueError(f"caption must be a string, got {caption!r:.60}")
                row["caption"] = caption
                if obj.get("captions") is not None:
                    row["captions"] = _timed_captions(obj["captions"])
            if row["caption"] is None and sidecar_txt.exists():
                row["caption"] = _decode_line(sidecar_txt.read_bytes()).strip("\r\n")
        except (ValueError, OSError) as exc:
            sidecar = sidecar_json if sidecar_json.exists() else sidecar_txt
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            rows.result.failures.append(
                failure_row(
                    vid,
                    uri=row["uri"],
                    stage=READ_MANIFEST,
                    error_type=ROW_ERROR,
                    message=f"{sidecar}: bad sidecar: {msg}",
                    source=str(sidecar),
                    source_line=getattr(exc, "lineno", None),
                )
            )
            continue
        rows.add(row, line=None)
    return rows.result


def detect_format(path: str | os.PathLike[str]) -> str:
    """Recognise a manifest's format from its content (not only its name)."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: no such manifest file or folder")
    if path.is_dir():
        return "folder"
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
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


def read_manifest(path: str | os.PathLike[str], *, fmt: str | None = None) -> ManifestRead:
    """Read any supported manifest; ``fmt`` overrides recognition."""
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise SchemaError(f"unknown manifest format {fmt!r}; expected one of {FORMATS}")
    return READERS[fmt](path)
