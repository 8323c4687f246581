"""Readers for the input manifests: WebVid CSV, JSONL, and a folder of videos with sidecars.

Every reader returns :class:`ManifestRead`: the good rows as ``VIDEOS_SCHEMA`` dicts and one
``FAILURES_SCHEMA`` dict per row it could not use, naming the file, the line and the reason. A bad
row never stops the others, and every line of a manifest ends up in one or the other. Relative
video paths resolve against the manifest's own folder.

What one row may hold is bounded (:class:`ManifestLimits`): a row over a limit is a failures row
that names the limit, read without holding more than the limit in memory. Only a manifest that
cannot be read at all (missing, unrecognised, a CSV without the WebVid columns) raises
:class:`~schemas.io.SchemaError`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from .failures import READ_MANIFEST, failure_row
from .io import SchemaError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
FORMATS = ("webvid", "jsonl", "folder")
ROW_ERROR = "ManifestRowError"
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ManifestLimits:
    """What one manifest row may hold; a row over a limit becomes a failures row.

    The defaults are far above any real caption or row and far below what would slow a run
    down: a caption is scored and re-captioned by the model's first tokens only (77 for CLIP),
    so a longer one carries nothing but cost.
    """

    #: bytes of one caption (UTF-8), the plain caption or one timed caption's text
    max_caption_bytes: int = 65_536
    #: bytes of one manifest line (a CSV record, a JSONL object) or one sidecar file
    max_line_bytes: int = 4 << 20
    #: nesting depth of a JSON value (a JSONL row or a ``.json`` sidecar); a row is 3 deep
    max_json_depth: int = 32
    #: timed captions of one video
    max_timed_captions: int = 10_000
    #: seconds: largest start, end or duration a row may give
    max_seconds: float = 1_000_000.0

    def __post_init__(self) -> None:
        for name in ("max_caption_bytes", "max_line_bytes", "max_json_depth", "max_timed_captions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.max_seconds, (int, float)) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds!r}")


DEFAULT_LIMITS = ManifestLimits()

#: the csv module's own limit on one field (characters); a longer field is a failures row
CSV_FIELD_LIMIT = csv.field_size_limit()


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


class RowError(ValueError):
    """One manifest row cannot be used; the message says why (the reader adds where)."""

    def __init__(self, message: str, *, input_id: str | None = None, uri: str | None = None):
        super().__init__(message)
        self.input_id = input_id
        self.uri = uri


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

    def fail_exception(self, exc: Exception, *, line: int | None) -> None:
        """A row that raised: a :class:`RowError` says why; anything else is named by type."""
        if isinstance(exc, RowError):
            self.fail(str(exc), line=line, input_id=exc.input_id, uri=exc.uri)
        else:
            self.fail(f"unreadable row ({_describe(exc)})", line=line)

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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def resolve_uri(uri: str, base: Path) -> str:
    """Keep URLs as they are; make relative local paths absolute against ``base``.

    Symbolic links are resolved where they can be; a link loop or a dangling link is left as
    it is, for the probe to name.
    """
    if "\x00" in uri:
        raise RowError("uri holds a NUL character")
    parsed = urlparse(uri)
    if parsed.scheme and len(parsed.scheme) > 1:  # http://, gs://, s3:// ... (not C:\)
        if parsed.scheme == "file":
            return parsed.path
        return uri
    p = os.path.expanduser(uri)
    return os.path.realpath(os.path.join(base, p))


_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str, *, max_seconds: float = DEFAULT_LIMITS.max_seconds) -> float:
    """Seconds from WebVid's ISO-8601 durations (``PT00H00M12S``) or a plain number."""
    text = text.strip()
    if len(text) > 64:
        raise ValueError(f"bad duration {text[:40]!r}... ({len(text)} characters)")
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
    if value > max_seconds:
        raise ValueError(f"duration {text!r} is over the limit of {max_seconds:g} s")
    return value


def _decode_line(raw: bytes) -> str:
    # Invalid UTF-8 is kept visible as U+FFFD so that the caption stage can mark the clip
    # "invalid_caption" instead of the whole row disappearing here.
    return raw.decode("utf-8", errors="replace")


def _check_caption(text: str, limits: ManifestLimits, what: str = "caption") -> None:
    # a str of n characters is at most 4n bytes of UTF-8: encode only when it could be over
    if len(text) * 4 > limits.max_caption_bytes:
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > limits.max_caption_bytes:
            raise RowError(
                f"{what} is {size:,} bytes, over the limit of {limits.max_caption_bytes:,} "
                "(--max-caption-bytes)"
            )


def _seconds(value: Any, name: str, limits: ManifestLimits) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"{name} must be a number, got {value!r:.60}")
    if not math.isfinite(value) or not 0 <= value <= limits.max_seconds:
        raise RowError(f"{name} must be between 0 and {limits.max_seconds:g} s, got {value!r:.60}")
    return float(value)


def _timed_captions(value: Any, limits: ManifestLimits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RowError(f"'captions' must be a list of {{start, end, text}}, got {value!r:.60}")
    if len(value) > limits.max_timed_captions:
        raise RowError(
            f"'captions' holds {len(value):,} entries, over the limit of "
            f"{limits.max_timed_captions:,}"
        )
    out: list[dict[str, Any]] = []
    prev_start = 0.0
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise RowError(f"captions[{i}] must be an object, got {item!r:.60}")
        missing = [k for k in ("start", "end", "text") if k not in item]
        if missing:
            raise RowError(f"captions[{i}] lacks {', '.join(missing)}")
        start = _seconds(item["start"], f"captions[{i}].start", limits)
        end = _seconds(item["end"], f"captions[{i}].end", limits)
        text = item["text"]
        if not isinstance(text, str):
            raise RowError(f"captions[{i}].text must be a string, got {text!r:.60}")
        _check_caption(text, limits, f"captions[{i}].text")
        if end <= start:
            raise RowError(f"captions[{i}] ends ({end:g} s) before it starts ({start:g} s)")
        if i and start < prev_start:
            raise RowError(f"captions[{i}] starts before captions[{i - 1}] (unsorted)")
        prev_start = start
        out.append({"start_s": start, "end_s": end, "text": text})
    return out


# --- bounded lines and JSON --------------------------------------------------------------------


def _lines(fh: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, bytes, size)`` per line; the bytes are ``None`` for a line longer than
    ``limit``, which is skipped without being held in memory. A leading BOM is dropped."""
    number = 0
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while True:
                more = fh.readline(1 << 20)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield number, None, size
        else:
            yield number, raw, len(raw)


def _too_long(size: int, limit: int) -> str:
    return f"line is {size:,} bytes, over the limit of {limit:,} bytes"


#: a JSON string (skipped whole) or one bracket
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def json_depth(text: str, *, stop_above: int | None = None) -> int:
    """The nesting depth of JSON ``text`` (``[[1]]`` is 2), counted without parsing it, so a
    value nested too deep for a recursive parser is measured safely; counting stops once the
    depth passes ``stop_above``."""
    depth = deepest = 0
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        elif token in ("]", "}"):
            depth -= 1
    return deepest


def load_json(text: str, limits: ManifestLimits = DEFAULT_LIMITS) -> Any:
    """Parse one JSON value, refusing one nested deeper than ``limits.max_json_depth``."""
    depth = json_depth(text, stop_above=limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise RowError(f"JSON nested deeper than the limit of {limits.max_json_depth} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of too many digits
        raise RowError(f"not valid JSON ({_describe(exc)})") from None


# --- WebVid CSV ----------------------------------------------------------------------------------


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
    lines: Iterator[tuple[int, bytes | None, int]], header: _CsvHeader, rows: _Rows, limit: int
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
            rows.fail(_too_long(size, limit), line=number)
            continue
        text = _decode_line(raw)
        if not text.strip():
            continue
        try:
            record = _parse_record(text)
            total = size
            while record is None:  # inside a quoted field: take the next line into it
                nxt = next(lines, None)
                if nxt is None:
                    break
                more = None if nxt[1] is None else _decode_line(nxt[1])
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
    rows = _Rows(path, "webvid")
    with _open_manifest(path) as fh:
        lines = _lines(fh, limits.max_line_bytes)
        first = next(lines, None)
        if first is None:
            raise SchemaError(f"{path}: empty manifest (no header line)")
        if first[1] is None:
            raise SchemaError(f"{path}: header {_too_long(first[2], limits.max_line_bytes)}")
        try:
            names = _parse_record(_decode_line(first[1])) or []
        except csv.Error as exc:
            raise SchemaError(f"{path}: unreadable header ({exc})") from None
        header = _CsvHeader(path, names)
        for line, record in _csv_records(lines, header, rows, limits.max_line_bytes):
            try:
                row = _webvid_row(record, header, path, limits)
            except Exception as exc:  # one row, whatever went wrong with it
                rows.fail_exception(exc, line=line)
                continue
            if row is not None:
                rows.add(row, line=line)
    return rows.result


def _webvid_row(
    record: list[str], header: _CsvHeader, path: Path, limits: ManifestLimits
) -> dict[str, Any] | None:
    if not record or all(not c.strip() for c in record):
        return None
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
        _check_caption(caption, limits)
    except RowError as exc:
        raise RowError(str(exc), input_id=vid, uri=url) from None
    return {
        "video_id": vid,
        "uri": resolve_uri(url, path.parent),
        "caption": caption,
        "duration_s": duration,
    }


# --- JSONL ---------------------------------------------------------------------------------------


def read_jsonl(
    path: str | os.PathLike[str], *, limits: ManifestLimits = DEFAULT_LIMITS
) -> ManifestRead:
    """One JSON object a line: ``video_id, uri, caption`` and optional timed ``captions``."""
    path = Path(path)
    rows = _Rows(path, "jsonl")
    with _open_manifest(path) as fh:
        for line_no, raw, size in _lines(fh, limits.max_line_bytes):
            if raw is None:
                rows.fail(_too_long(size, limits.max_line_bytes), line=line_no)
                continue
            text = _decode_line(raw).strip()
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
            _check_caption(caption, limits)
        row: dict[str, Any] = {
            "video_id": video_id,
            "uri": resolve_uri(uri_text, path.parent),
            "caption": caption,
        }
        if obj.get("captions") is not None:
            row["captions"] = _timed_captions(obj["captions"], limits)
        if obj.get("duration") is not None:
            row["duration_s"] = parse_duration(
                str(obj["duration"])[:100], max_seconds=limits.max_seconds
            )
    except (RowError, ValueError) as exc:
        raise RowError(str(exc), input_id=video_id, uri=uri_text) from None
    return row


# --- a folder of videos ----------------------------------------------------------------------------


def _walk_videos(folder: Path, rows: _Rows) -> Iterator[Path]:
    """Every regular video file under ``folder``, in a stable order. An entry named like a
    video that is not one (a folder, a dangling link, a link loop, a device) becomes a
    failures row, so it is counted like every other input; hidden names are not inputs."""

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else folder
        rows.result.failures.append(
            _entry_failure(folder, where, f"cannot list the folder ({exc.strerror or exc})")
        )

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames.sort()
        here = Path(dirpath)
        names = sorted(
            n
            for n in (*filenames, *dirnames)
            if not n.startswith(".") and Path(n).suffix.lower() in VIDEO_EXTENSIONS
        )
        for name in names:
            entry = here / name
            problem = _not_a_video_file(entry)
            if problem is None:
                yield entry
            else:
                rows.result.failures.append(_entry_failure(folder, entry, problem))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]


def _not_a_video_file(entry: Path) -> str | None:
    try:
        st = os.stat(entry)
    except OSError as exc:
        if os.path.islink(entry):
            if exc.errno is not None and exc.errno == 40:  # ELOOP
                return "symbolic link loop"
            return f"dangling symbolic link (to {os.readlink(entry)!r})"
        return f"cannot read it ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "a folder named like a video, not a video file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device, pipe or socket)"
    return None


def _entry_failure(folder: Path, entry: Path, problem: str) -> dict[str, Any]:
    try:
        vid = entry.relative_to(folder).with_suffix("").as_posix()
    except ValueError:
        vid = str(entry)
    return failure_row(
        vid,
        uri=str(entry),
        stage=READ_MANIFEST,
        error_type=ROW_ERROR,
        message=f"{entry}: {problem}",
        source=str(folder),
    )


def _read_sidecar(path: Path, limit: int) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise RowError(f"{os.path.getsize(path):,} bytes, over the limit of {limit:,} bytes")
    return data[len(_BOM) :] if data.startswith(_BOM) else data


def _folder_row(video: Path, vid: str, limits: ManifestLimits) -> dict[str, Any]:
    row: dict[str, Any] = {"video_id": vid, "uri": os.path.realpath(video), "caption": None}
    sidecar_json = video.with_suffix(".json")
    sidecar_txt = video.with_suffix(".txt")
    if sidecar_json.exists():
        obj = load_json(_decode_line(_read_sidecar(sidecar_json, limits.max_line_bytes)), limits)
        if not isinstance(obj, dict):
            raise RowError(f"expected a JSON object, got {type(obj).__name__}")
        caption = obj.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise RowError(f"caption must be a string, got {caption!r:.60}")
        if caption is not None:
            _check_caption(caption, limits)
        row["caption"] = caption
        if obj.get("captions") is not None:
            row["captions"] = _timed_captions(obj["captions"], limits)
    if row["caption"] is None and sidecar_txt.exists():
        text = _decode_line(_read_sidecar(sidecar_txt, limits.max_caption_bytes))
        row["caption"] = text.strip("\r\n")
    return row


def read_folder(
    path: str | os.PathLike[str], *, limits: ManifestLimits = DEFAULT_LIMITS
) -> ManifestRead:
    """A folder of videos; each may have a sidecar ``NAME.txt`` (caption) or ``NAME.json``
    (``{"caption": ..., "captions": [{start, end, text}]}``). The video id is the path relative
    to the folder, without its extension."""
    path = Path(path)
    rows = _Rows(path, "folder")
    for video in _walk_videos(path, rows):
        vid = video.relative_to(path).with_suffix("").as_posix()
        try:
            row = _folder_row(video, vid, limits)
        except Exception as exc:  # one video's sidecar, whatever went wrong with it
            sidecar = video.with_suffix(".json")
            if not sidecar.exists():
                sidecar = video.with_suffix(".txt")
            reason = str(exc) if isinstance(exc, (RowError, OSError)) else _describe(exc)
            if isinstance(exc, OSError):
                reason = exc.strerror or reason
            rows.result.failures.append(
                failure_row(
                    vid,
                    uri=str(video),
                    stage=READ_MANIFEST,
                    error_type=ROW_ERROR,
                    message=f"{sidecar}: bad sidecar: {reason}",
                    source=str(sidecar),
                )
            )
            continue
        rows.add(row, line=None)
    return rows.result


# --- which reader -----------------------------------------------------------------------------


def _open_manifest(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None


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
    with _open_manifest(path) as fh:
        head = fh.read(4096).lstrip(_BOM).lstrip()
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
