"""A folder of videos, each with an optional sidecar caption (``NAME.txt``) or timed captions
(``NAME.json``); entries named like videos that are not video files are failures rows."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..failures import READ_MANIFEST, failure_row
from .limits import (
    BOM,
    DEFAULT_LIMITS,
    ManifestLimits,
    RowError,
    check_caption,
    describe,
    load_json,
)
from .rows import ROW_ERROR, ManifestRead, Rows, decode_line, timed_captions

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")


def _walk_videos(folder: Path, rows: Rows) -> Iterator[Path]:
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
    return data[len(BOM) :] if data.startswith(BOM) else data


def _folder_row(video: Path, vid: str, limits: ManifestLimits) -> dict[str, Any]:
    row: dict[str, Any] = {"video_id": vid, "uri": os.path.realpath(video), "caption": None}
    sidecar_json = video.with_suffix(".json")
    sidecar_txt = video.with_suffix(".txt")
    if sidecar_json.exists():
        obj = load_json(decode_line(_read_sidecar(sidecar_json, limits.max_line_bytes)), limits)
        if not isinstance(obj, dict):
            raise RowError(f"expected a JSON object, got {type(obj).__name__}")
        caption = obj.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise RowError(f"caption must be a string, got {caption!r:.60}")
        if caption is not None:
            check_caption(caption, limits)
        row["caption"] = caption
        if obj.get("captions") is not None:
            row["captions"] = timed_captions(obj["captions"], limits)
    if row["caption"] is None and sidecar_txt.exists():
        text = decode_line(_read_sidecar(sidecar_txt, limits.max_caption_bytes))
        row["caption"] = text.strip("\r\n")
    return row


def read_folder(
    path: str | os.PathLike[str], *, limits: ManifestLimits = DEFAULT_LIMITS
) -> ManifestRead:
    """A folder of videos; each may have a sidecar ``NAME.txt`` (caption) or ``NAME.json``
    (``{"caption": ..., "captions": [{start, end, text}]}``). The video id is the path relative
    to the folder, without its extension."""
    path = Path(path)
    rows = Rows(path, "folder")
    for video in _walk_videos(path, rows):
        vid = video.relative_to(path).with_suffix("").as_posix()
        try:
            row = _folder_row(video, vid, limits)
        except Exception as exc:  # one video's sidecar, whatever went wrong with it
            sidecar = video.with_suffix(".json")
            if not sidecar.exists():
                sidecar = video.with_suffix(".txt")
            reason = str(exc) if isinstance(exc, (RowError, OSError)) else describe(exc)
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
        rows.add(row, line=None, entry=video.relative_to(path).as_posix())
    return rows.result
