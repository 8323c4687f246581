"""One input video on its way through the per-video phase, and the record it is committed as.

A clip record carries, besides its clips-table columns, values later steps need that are not
columns: the *extras* (the caption fragment it was scored with, its frame and storyboard
embeddings, the captioner's caption, the dedup signature, a note on its caption). They are
committed beside the clips (``clip_extras``, see :data:`curate.shards.CLIP_EXTRAS`) and joined
back when the corpus phase reads the work: :func:`work_record` splits them off,
:func:`joined_clips` joins them back, and nothing else does either.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np

from schemas.failures import video_failure_row
from schemas.io import SchemaError, validate_rows
from schemas.tables import CLIPS_SCHEMA

from .errors import CurateError
from .shards import ATTEMPT, CLIP_EXTRAS, FINGERPRINT
from .video import local_path

#: the extras of a clip record, in ``CLIP_EXTRAS`` order
EXTRA_KEYS: tuple[str, ...] = tuple(f.name for f in CLIP_EXTRAS if f.name != "clip_id")

# FINGERPRINT and ATTEMPT, the keys a run sets on a videos row it processes, are defined with
# the work records in .shards (whose resume plan sets them), so that .shards needs no import
# of this module

#: the columns of a manifest row that decide a video's result (``source`` and ``source_line``
#: only say where the row is)
ROW_KEYS = ("video_id", "uri", "caption", "captions", "duration_s")


# --- what determines a video's result ---------------------------------------------------------


def file_state(uri: str | None) -> str:
    """What a rerun compares of a video's file: its size and modification time (nanoseconds),
    the error that stops reading it, or ``remote`` for a URL (its row is all a run sees)."""
    if not uri:
        return "none"
    parsed = urlparse(uri)
    if parsed.scheme and len(parsed.scheme) > 1 and parsed.scheme != "file":
        return "remote"
    path = local_path(uri) if parsed.scheme == "file" else uri
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        return f"error:{getattr(exc, 'errno', None) or type(exc).__name__}"
    return f"{st.st_size}:{st.st_mtime_ns}"


def config_digest(config: Mapping[str, Any]) -> str:
    """A digest of the per-video settings (and model files) a run works under."""
    text = json.dumps(dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(video: Mapping[str, Any], *, config: str) -> str:
    """What determines a video's committed result: its manifest row (:data:`ROW_KEYS`), its
    file (:func:`file_state`) and the per-video settings (``config``, a
    :func:`config_digest`). A rerun redoes a video whose fingerprint changed."""
    row = {k: video.get(k) for k in ROW_KEYS}
    text = json.dumps([row, file_state(video.get("uri")), config], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class VideoWork:
    """One input video on its way through the per-video stages.

    ``clips`` are clip records (clips-table columns, extras, and transient keys such as the
    sampled ``frames``); ``failures`` holds the failures rows of a video that failed. A failed
    video has no clips: a stage that fails after the split moves the whole video to the
    failures table, so that every input lands in exactly one of the two.
    """

    video: dict[str, Any]
    clips: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: seconds spent per stage, for the progress line and the benchmark
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def video_id(self) -> str:
        return self.video["video_id"]

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def fail(self, row: dict[str, Any]) -> VideoWork:
        """The same video, now failed: its clips are withdrawn and ``row`` recorded."""
        return VideoWork(video=self.video, clips=[], failures=[row], timings=dict(self.timings))

    def frame_bytes(self) -> int:
        total = 0
        for clip in self.clips:
            frames = clip.get("frames")
            total += int(getattr(frames, "nbytes", 0) or 0)
        return total

    def record(self) -> dict[str, Any]:
        return work_record(self.video, self.clips, self.failures)

    def invalid(self) -> str | None:
        """Why this video's clips cannot be committed (a value no table takes, such as a NaN
        score), or ``None``. A step that produced such a value fails the video, not the run."""
        return rows_problem(self.video, self.clips)


def rows_problem(
    video: Mapping[str, Any],
    clips: list[dict[str, Any]],
    story: Mapping[str, Any] | None = None,
) -> str | None:
    """Why ``clips`` (and ``story``) of ``video`` do not fit their tables, or ``None``: the
    row, column and value, as :func:`schemas.io.validate_rows` names them. The dedup
    signature, which is no column, must be finite too (faiss would take a NaN for a match)."""
    where = str(video.get("video_id") or "?")
    try:
        validate_rows([table_row(c) for c in clips], "clips", where=where)
        if story is not None:
            validate_rows([story], "stories", where=where)
    except SchemaError as exc:
        return str(exc)
    for clip in clips:
        signature = clip.get("dedup_signature")
        if signature is not None and not np.isfinite(np.asarray(signature, np.float64)).all():
            return f"{where}: clip {clip.get('clip_id')}: dedup signature is not finite"
    return None


def failure_from_exception(
    video: Mapping[str, Any],
    exc: BaseException | None,
    *,
    stage: str,
    error_type: str | None = None,
    message: str | None = None,
    traceback: str | None = None,
) -> dict[str, Any]:
    """A failures row about ``video`` from a raised exception: domain errors keep their own
    stage and reason, and the message names the input (rows are read one at a time)."""
    if isinstance(exc, CurateError):
        stage = exc.stage or stage
        message = exc.reason
    etype = error_type or (type(exc).__name__ if exc is not None else "Error")
    text = message if message is not None else (str(exc) if exc is not None else "unknown error")
    uri = video.get("uri")
    if uri and uri not in text:
        text = f"{uri}: {text}"
    return video_failure_row(
        video, stage=stage, error_type=etype, message=text, traceback=traceback
    )


# --- the committed record ---------------------------------------------------------------------


def table_row(clip: Mapping[str, Any]) -> dict[str, Any]:
    """A clip record's clips-table columns (extras and transient keys left behind)."""
    return {name: clip.get(name) for name in CLIPS_SCHEMA.names}


def _plain(value: Any) -> Any:
    """Arrays as (nested) lists of Python numbers, as Parquet takes them."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def work_record(
    video: Mapping[str, Any],
    clips: list[dict[str, Any]],
    failures: list[dict[str, Any]],
) -> dict[str, Any]:
    """The committed form of a finished video: table columns, extras beside them, no frames;
    the fingerprint and attempt the run gave the video (see :func:`fingerprint`)."""
    return {
        "video_id": video["video_id"],
        "fingerprint": video.get(FINGERPRINT),
        "attempt": video.get(ATTEMPT),
        "video": dict(video),
        "clips": [table_row(c) for c in clips],
        "clip_extras": [
            {"clip_id": c.get("clip_id"), **{k: _plain(c.get(k)) for k in EXTRA_KEYS}}
            for c in clips
        ],
        "failures": list(failures),
    }


def joined_clips(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The clips of a committed record with their extras joined back by ``clip_id``."""
    extras = {
        e["clip_id"]: e for e in record.get("clip_extras") or () if e.get("clip_id") is not None
    }
    out = []
    for clip in record.get("clips") or ():
        row = dict(clip)
        extra = extras.get(clip.get("clip_id")) or {}
        for key in EXTRA_KEYS:
            if row.get(key) is None and extra.get(key) is not None:
                row[key] = extra[key]
        out.append(row)
    return out
