"""What every reader shares: :class:`ManifestRead` and the collector of its rows and failures
rows, paths and durations as a row gives them, timed captions, and opening a manifest."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from ..failures import READ_MANIFEST, failure_row
from ..io import SchemaError
from .limits import DEFAULT_LIMITS, ManifestLimits, RowError, check_caption, check_seconds, describe

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


class Rows:
    """Collects rows, turning duplicates of a video id into failures."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.result = ManifestRead(path=str(path), format=fmt)
        self._first: dict[str, str] = {}

    def fail(
        self,
        message: str,
        *,
        line: int | None,
        input_id: str | None = None,
        uri: str | None = None,
        entry: str | None = None,
    ) -> None:
        """A failures row for the row at ``line`` (or, in a folder, the file ``entry``)."""
        if entry is not None:
            where = f"{os.path.join(self.result.path, entry)}:"
        else:
            where = f"{self.result.path} {f'line {line}' if line is not None else ''}".rstrip()
            where += ":"
        self.result.failures.append(
            failure_row(
                input_id or f"{self.result.path}:{line if line is not None else '?'}",
                uri=uri,
                stage=READ_MANIFEST,
                error_type=ROW_ERROR,
                message=f"{where} {message}",
                source=self.result.path,
                source_line=line,
            )
        )

    def fail_exception(self, exc: Exception, *, line: int | None) -> None:
        """A row that raised: a :class:`RowError` says why; anything else is named by type."""
        if isinstance(exc, RowError):
            self.fail(str(exc), line=line, input_id=exc.input_id, uri=exc.uri)
        else:
            self.fail(f"unreadable row ({describe(exc)})", line=line)

    def add(self, row: dict[str, Any], *, line: int | None, entry: str | None = None) -> None:
        """Take ``row``, read at ``line`` of the manifest (or, in a folder, from the file
        ``entry``, relative to it); a video id seen before makes it a failures row."""
        vid = row["video_id"]
        if vid in self._first:
            what = "file" if entry is not None else "row"
            self.fail(
                f"duplicate video_id {vid!r} (first seen {self._first[vid]}); {what} skipped",
                line=line,
                input_id=entry if entry is not None else f"{vid}@{line}",
                uri=row.get("uri"),
                entry=entry,
            )
            return
        self._first[vid] = f"as {entry}" if entry is not None else f"at line {line}"
        row.setdefault("captions", None)
        row.setdefault("duration_s", None)
        row["source"] = self.result.path
        row["source_line"] = line
        self.result.videos.append(row)


def resolve_uri(uri: str, base: Path) -> str:
    """Keep URLs as they are; make relative local paths absolute against ``base``.

    A ``file:`` URI is the local path it names: percent-escapes decoded
    (``file:///data/my%20video.mp4``), a relative one (``file:videos/a.mp4``) against
    ``base`` like any relative path. Symbolic links are resolved where they can be; a link
    loop or a dangling link is left as it is, for the probe to name.
    """
    if "\x00" in uri:
        raise RowError("uri holds a NUL character")
    parsed = urlparse(uri)
    if parsed.scheme and len(parsed.scheme) > 1:  # http://, gs://, s3:// ... (not C:\)
        if parsed.scheme != "file":
            return uri
        if parsed.netloc not in ("", "localhost"):
            raise RowError(f"file uri names another host ({parsed.netloc!r}): {uri!r:.200}")
        path = unquote(parsed.path)
        if not path:
            raise RowError(f"file uri names no path: {uri!r:.200}")
        if "\x00" in path:
            raise RowError("uri holds a NUL character")
        return os.path.realpath(os.path.join(base, path))
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


def decode_line(raw: bytes) -> str:
    # Invalid UTF-8 is kept visible as U+FFFD so that the caption stage can mark the clip
    # "invalid_caption" instead of the whole row disappearing here.
    return raw.decode("utf-8", errors="replace")


def timed_captions(value: Any, limits: ManifestLimits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
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
        start = check_seconds(item["start"], f"captions[{i}].start", limits)
        end = check_seconds(item["end"], f"captions[{i}].end", limits)
        text = item["text"]
        if not isinstance(text, str):
            raise RowError(f"captions[{i}].text must be a string, got {text!r:.60}")
        check_caption(text, limits, f"captions[{i}].text")
        if end <= start:
            raise RowError(f"captions[{i}] ends ({end:g} s) before it starts ({start:g} s)")
        if i and start < prev_start:
            raise RowError(f"captions[{i}] starts before captions[{i - 1}] (unsorted)")
        prev_start = start
        out.append({"start_s": start, "end_s": end, "text": text})
    return out


def open_manifest(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
