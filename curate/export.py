"""Training shards from a curate run: WebDataset-style tar files that video trainers stream.

``curate export RUN --out DIR`` reads a published run folder (its clips table) and writes::

    DIR/
      shard-000000.tar       samples: KEY.json (timed prompts, ids, span, scores) + KEY.mp4
      shard-000001.tar       ...
      _index.parquet         one row per sample: shard, key, clip_id, prompt, frames, ...
      _failures.parquet      every selected clip that is not in a sample, with the reason
      _export.json           settings, the source run, counts, shards (written last)
      _parts/                what each finished shard holds (for resume; kept afterwards)

A *sample* is a window of ``frames`` frames re-encoded at ``width`` x ``height`` and ``fps``
(h264 mp4, as video2dataset writes samples). Windows are laid over one video's *runs*: maximal
sequences of consecutive selected clips (by default kept, non-duplicate clips), so a window
may span a cut and its frames carry per-frame prompts (the JSON's ``segments``, in the shape
of a stories segment, in the sample's own frames and seconds). A run of ``L`` frames at the
export fps holds ``L // frames`` windows, centred, without overlap: no source frame is in two
samples. A run shorter than one window, and a clip that falls wholly in the frames trimmed
off a run's ends, is named in ``_failures.parquet`` with the reason, as is every clip of a
video that cannot be decoded (the rest export). With ``raw`` every input video is one run and
every frame's prompt is the video's manifest caption (the raw arm of the curation ablation).

Frame ``k`` at the export fps of a run that starts at source frame ``a`` shows source frame
``a + round(k * source_fps / fps)`` (:func:`source_indices`): nearest-frame resampling, no
blending, so every frame is a real frame of the source. Each sample's JSON lists its
``source_frames``.

Determinism and resume: the plan (which windows, in which order, with which keys) depends on
the run's tables alone; videos are ordered by a hash of their id (so shards mix videos) and
encoding is single-threaded without macroblock-tree rate control (byte-reproducible). Shards
are filled in plan order and closed when the next sample would pass ``samples_per_shard`` or
``shard_bytes``. Each shard is written under a temporary name and renamed, then its part
record (samples, failures met since the previous shard, where the plan continues) is written
atomically. A rerun after a crash keeps the shards whose part records exist, removes anything
else, and continues from the last part: the shards come out byte-identical.

Tar files are written with the standard library's :mod:`tarfile` rather than webdataset's
``TarWriter``: it needs no extra dependency on the machines that write shards, and it lets us
fix every header field (mtime, owner, mode, format) so that reruns are byte-identical
(``TarWriter`` stamps the current time). The samples follow the WebDataset layout (members
grouped by key, key = name up to the first dot), so ``webdataset.WebDataset`` and ``tarfile``
both read them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import RunManifest, failure_row, rows_to_table
from schemas.tables import DUPLICATE, FAILURES_SCHEMA, KEPT, SEGMENT

from .errors import CurateError
from .shards import read_table

#: a sample's timed prompts have the stories table's segment fields, in its order
SEGMENT_FIELDS = tuple(field.name for field in SEGMENT)

logger = logging.getLogger(__name__)

INDEX_NAME = "_index.parquet"
FAILURES_NAME = "_failures.parquet"
EXPORT_NAME = "_export.json"
PARTS_DIR = "_parts"
SETTINGS_NAME = "_settings.json"
EXPORT_FORMAT = "storyloom-shards/1"
RESIZE_MODES = ("scale", "crop")
PIX_FMTS = ("yuv420p", "yuv444p")
#: header fields of every tar member: fixed, so the same samples give the same bytes
TAR_MTIME = 0
TAR_MODE = 0o444

#: failures stages and error types written by the export
STAGE_PLAN = "export-plan"
STAGE_DECODE = "export-decode"
STAGE_ENCODE = "export-encode"
STAGE_RUN = "curate-run"
RUN_TOO_SHORT = "RunTooShort"
OUTSIDE_WINDOWS = "OutsideWindows"
NO_PROMPT = "NoPrompt"
SAMPLE_CAP = "SampleCap"

#: one row of ``_index.parquet`` per sample
INDEX_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        # the clip holding most of the sample's frames, and its prompt
        pa.field("clip_id", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("clip_ids", pa.list_(pa.string())),
        # the source span: first source frame, one past the last
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("segments", pa.list_(SEGMENT), nullable=False),
        # where the mp4 lies inside the tar (random access without reading the tar)
        pa.field("mp4_offset", pa.int64(), nullable=False),
        pa.field("mp4_bytes", pa.int64(), nullable=False),
    ]
)


class ExportError(CurateError):
    """The run folder cannot be exported, or the output folder holds another export."""

    stage = "export"


# --- settings --------------------------------------------------------------------------------


def parse_size(text: str | int) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"96x64"`` -> (96, 64) (width x height, even sides)."""
    s = str(text).strip().lower()
    try:
        parts = s.split("x", 1) if "x" in s else [s, s]
        w, h = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"size must be N or WxH, got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise ValueError(f"size must have even sides of at least 16 pixels, got {text!r}")
    return w, h


def parse_bytes(text: str | int) -> int:
    """``"64MB"``, ``"500KB"``, ``"1GiB"`` or a plain number of bytes."""
    s = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)(i?)B?", s, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"expected a size such as 64MB or 500KB, got {text!r}")
    base = 1024 if m[3] else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3}[m[2].upper()]
    value = int(float(m[1]) * base**power)
    if value < 1:
        raise ValueError(f"expected a positive size, got {text!r}")
    return value


@dataclass(frozen=True)
class ExportSettings:
    """What ``curate export`` writes. Every field enters the shards, so a resumed export must
    use the same settings."""

    width: int = 64
    height: int = 64
    fps: float = 8.0
    #: frames per sample
    frames: int = 16
    #: "scale": the whole frame resized (aspect not kept); "crop": scaled to cover, centre crop
    resize: str = "scale"
    crf: int = 23
    preset: str = "veryfast"
    #: "yuv420p" (what players expect) or "yuv444p" (full-resolution colour: at 64 px the
    #: chroma subsampling of yuv420p blurs thin details, e.g. a ring's hole, away)
    pix_fmt: str = "yuv420p"
    samples_per_shard: int | None = 1000
    shard_bytes: int | None = None
    include_dropped: bool = False
    raw: bool = False
    #: stop planning after this many samples (videos in plan order; the rest become failures)
    max_samples: int | None = None

    def __post_init__(self) -> None:
        from .shapes import X264_PRESETS

        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16 or v % 2:
                raise ValueError(f"{name} must be an even integer >= 16, got {v!r}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, int | float) or self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps!r}")
        # 8 and 8.0 must write the same JSON, or a resumed export would differ
        object.__setattr__(self, "fps", float(self.fps))
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise ValueError(f"frames must be a positive integer, got {self.frames!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.pix_fmt not in PIX_FMTS:
            raise ValueError(f"pix_fmt must be one of {PIX_FMTS}, got {self.pix_fmt!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf!r}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {X264_PRESETS}, got {self.preset!r}")
        if self.samples_per_shard is None and self.shard_bytes is None:
            raise ValueError("give samples_per_shard or shard_bytes (or both)")
        for name in ("samples_per_shard", "shard_bytes", "max_samples"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.raw and self.include_dropped:
            raise ValueError("raw exports every input video already; drop include_dropped")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the plan --------------------------------------------------------------------------------


def source_indices(start: int, count: int, source_fps: float, fps: float) -> np.ndarray:
    """Source frame numbers of ``count`` output frames at ``fps`` from source frame ``start``."""
    return start + np.round(np.arange(count) * (source_fps / fps)).astype(np.int64)


def frames_in_span(start: int, end: int, source_fps: float, fps: float) -> int:
    """How many output frames at ``fps`` the source span ``[start, end)`` holds."""
    if end <= start:
        return 0
    n = int(np.floor((end - start) * fps / source_fps)) + 2
    idx = source_indices(start, n, source_fps, fps)
    return int(np.count_nonzero(idx < end))


@dataclass(frozen=True)
class Piece:
    """One clip's share of a run: source span, prompt, ids and score."""

    clip_id: str | None
    start_frame: int
    end_frame: int
    prompt: str
    score: float | None
    status: str | None
    reason: str | None = None
    #: where the prompt came from: the clip's ``recaption_source``, or "manifest" (raw)
    prompt_source: str | None = None


@dataclass(frozen=True)
class Window:
    """One planned sample."""

    key: str
    video_id: str
    uri: str
    source_fps: float
    #: source frame of each output frame
    source_frames: tuple[int, ...]
    #: the clip (piece index into ``pieces``) shown by each output frame
    piece_of_frame: tuple[int, ...]
    pieces: tuple[Piece, ...]
    position: int  # place in the plan (0, 1, 2, ...)

    def segments(self, fps: float) -> list[dict[str, Any]]:
        """The timed prompts in the sample's own frames and seconds (stories' segment shape)."""
        out: list[dict[str, Any]] = []
        for k, p in enumerate(self.piece_of_frame):
            if out and out[-1]["_piece"] == p:
                out[-1]["end_frame"] = k + 1
                continue
            piece = self.pieces[p]
            out.append(
                {
                    "_piece": p,
                    "start_frame": k,
                    "end_frame": k + 1,
                    "prompt": piece.prompt,
                    "clip_id": piece.clip_id,
                    "score": piece.score,
                    "status": piece.status,
                    "reason": piece.reason,
                    "prompt_source": piece.prompt_source,
                }
            )
        for seg in out:
            del seg["_piece"]
            seg["start_s"] = round(seg["start_frame"] / fps, 6)
            seg["end_s"] = round(seg["end_frame"] / fps, 6)
        return [{k: s[k] for k in SEGMENT_FIELDS} for s in out]

    def main_piece(self) -> Piece:
        counts = np.bincount(np.asarray(self.piece_of_frame), minlength=len(self.pieces))
        return self.pieces[int(np.argmax(counts))]


@dataclass
class VideoJob:
    """The windows of one video, decoded and encoded together."""

    video_id: str
    uri: str
    width: int
    height: int
    windows: list[Window] = field(default_factory=list)

    @property
    def clip_ids(self) -> list[str]:
        return _window_clip_ids(self.windows)


@dataclass
class Plan:
    jobs: list[VideoJob]
    #: failures known before decoding (too short, outside windows, no prompt, over the cap)
    failures: list[dict[str, Any]]
    counts: dict[str, int]

    @property
    def samples(self) -> int:
        return sum(len(j.windows) for j in self.jobs)


def video_order(video_id: str) -> str:
    """Plan order of videos: a hash of the id, so consecutive samples come from unrelated
    videos (shards are mixed before any shuffle buffer) and a sample cap takes a random-like,
    reproducible subset."""
    return hashlib.blake2b(video_id.encode(), digest_size=8).hexdigest() + video_id


def sample_key(video_id: str, index: int) -> str:
    """A WebDataset key: no dots (they separate the key from the extension) or slashes."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", video_id)
    if safe != video_id:  # two ids may differ only in characters that were replaced
        safe += "_" + hashlib.blake2b(video_id.encode(), digest_size=3).hexdigest()
    return f"{safe}-{index:04d}"


def _selected(clip: Mapping[str, Any], include_dropped: bool) -> bool:
    if include_dropped:
        return True
    if clip["status"] != KEPT or clip.get("reason") == DUPLICATE:
        return False
    dup = clip.get("duplicate_of")
    return dup is None or dup == clip["clip_id"]


def _prompt(clip: Mapping[str, Any]) -> str | None:
    for key in ("recaption", "source_caption"):
        text = clip.get(key)
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


def _clip_failure(
    clip: Mapping[str, Any], stage: str, error_type: str, message: str
) -> dict[str, Any]:
    return failure_row(
        clip["clip_id"],
        uri=clip.get("uri"),
        stage=stage,
        error_type=error_type,
        message=f"{clip['clip_id']}: {message}",
    )


def _runs(clips: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Maximal sequences of selected clips that follow each other without a gap."""
    run: list[dict[str, Any]] = []
    for clip in clips:
        if run and clip["start_frame"] != run[-1]["end_frame"]:
            yield run
            run = []
        run.append(clip)
    if run:
        yield run


def plan_export(run_folder: str | os.PathLike[str], settings: ExportSettings) -> Plan:
    """Every sample the export will write, in order, and the clips no sample can hold.

    Reads the run's clips (and, for ``raw``, its failures) through its manifest; decodes
    nothing, so the plan is the same whenever it is made.
    """
    clips = read_table(run_folder, "clips").to_pylist()
    by_video: dict[str, list[dict[str, Any]]] = {}
    for c in clips:
        by_video.setdefault(c["video_id"], []).append(c)
    failures: list[dict[str, Any]] = []
    counts = {"run_clips": len(clips), "run_videos": len(by_video)}
    if settings.raw:
        run_failures = read_table(run_folder, "failures").to_pylist()
        for f in run_failures:
            if f["input_id"] not in by_video:
                failures.append(
                    f
                    | {
                        "stage": f"{STAGE_RUN}:{f['stage']}",
                        "message": f"not decodable in the curate run: {f['message']}",
                    }
                )
    jobs: list[VideoJob] = []
    position = 0
    capped = False
    n = settings.frames
    for video_id in sorted(by_video, key=video_order):
        vclips = sorted(by_video[video_id], key=lambda c: (c["start_frame"], c["scene_index"]))
        first = vclips[0]
        job = VideoJob(video_id, first["uri"], int(first["width"]), int(first["height"]))
        fps = float(first["fps"])
        if settings.raw:
            runs = [_raw_run(vclips)]
        else:
            runs = []
            usable: list[dict[str, Any]] = []
            for c in vclips:
                if not _selected(c, settings.include_dropped):
                    continue
                prompt = _prompt(c)
                if prompt is None:
                    failures.append(_clip_failure(c, STAGE_PLAN, NO_PROMPT, "no prompt"))
                    continue
                usable.append(c)
            for run in _runs(usable):
                runs.append(
                    [
                        Piece(
                            c["clip_id"],
                            int(c["start_frame"]),
                            int(c["end_frame"]),
                            _prompt(c) or "",
                            c.get("caption_score"),
                            c["status"],
                            c.get("reason"),
                            c.get("recaption_source"),
                        )
                        for c in run
                    ]
                )
        windows: list[Window] = []
        for pieces in runs:
            start, end = pieces[0].start_frame, pieces[-1].end_frame
            total = frames_in_span(start, end, fps, settings.fps)
            count = total // n
            if count == 0:
                for p in pieces:
                    if p.clip_id is not None and not settings.raw:
                        failures.append(
                            _piece_failure(
                                p,
                                job.uri,
                                RUN_TOO_SHORT,
                                f"its run of consecutive selected clips spans {total} frames at "
                                f"{settings.fps:g} fps, fewer than one {n}-frame window",
                            )
                        )
                if settings.raw:
                    failures.append(
                        failure_row(
                            video_id,
                            uri=job.uri,
                            stage=STAGE_PLAN,
                            error_type=RUN_TOO_SHORT,
                            message=f"{video_id}: {total} frames at {settings.fps:g} fps, "
                            f"fewer than one {n}-frame window",
                        )
                    )
                continue
            offset = (total - count * n) // 2
            idx = source_indices(start, total, fps, settings.fps)
            ends = np.array([p.end_frame for p in pieces])
            piece_idx = np.searchsorted(ends, idx, side="right")
            covered: set[int] = set()
            for w in range(count):
                sl = slice(offset + w * n, offset + (w + 1) * n)
                frame_pieces = tuple(int(i) for i in piece_idx[sl])
                covered.update(frame_pieces)
                windows.append(
                    Window(
                        key="",
                        video_id=video_id,
                        uri=job.uri,
                        source_fps=fps,
                        source_frames=tuple(int(i) for i in idx[sl]),
                        piece_of_frame=frame_pieces,
                        pieces=tuple(pieces),
                        position=0,
                    )
                )
            for i, p in enumerate(pieces):
                if i not in covered and p.clip_id is not None and not settings.raw:
                    failures.append(
                        _piece_failure(
                            p,
                            job.uri,
                            OUTSIDE_WINDOWS,
                            f"its frames lie in the {total - count * n} frames (at "
                            f"{settings.fps:g} fps) trimmed off the ends of its run to fit "
                            f"{count} window(s) of {n} frames",
                        )
                    )
        if not windows:
            continue
        if capped or (
            settings.max_samples is not None and position + len(windows) > settings.max_samples
        ):
            capped = True
            ids = [video_id] if settings.raw else _window_clip_ids(windows)
            for cid in ids:
                failures.append(
                    failure_row(
                        cid,
                        uri=job.uri,
                        stage=STAGE_PLAN,
                        error_type=SAMPLE_CAP,
                        message=f"{cid}: not exported, the plan reached max_samples "
                        f"({settings.max_samples})",
                    )
                )
            continue
        job.windows = [
            replace(w, key=sample_key(video_id, i), position=position + i)
            for i, w in enumerate(windows)
        ]
        position += len(windows)
        jobs.append(job)
    counts["planned_samples"] = position
    counts["planned_videos"] = len(jobs)
    return Plan(jobs, failures, counts)


def _window_clip_ids(windows: Sequence[Window]) -> list[str]:
    """Clip ids shown by the windows' frames, in order of appearance."""
    ids: dict[str, None] = {}
    for w in windows:
        for p in w.piece_of_frame:
            cid = w.pieces[p].clip_id
            if cid is not None:
                ids.setdefault(cid)
    return list(ids)


def _raw_run(vclips: list[dict[str, Any]]) -> list[Piece]:
    """The whole video, every frame prompted with the manifest caption; the pieces keep the
    clip ids (for the index) but not their prompts."""
    caption = next((c["source_caption"] for c in vclips if c.get("source_caption")), "") or ""
    pieces = []
    t = 0
    for c in vclips:
        start = max(int(c["start_frame"]), t)
        end = int(c["end_frame"])
        if end > start:
            pieces.append(Piece(c["clip_id"], start, end, caption, None, "raw", None, "manifest"))
            t = end
    if pieces and pieces[0].start_frame > 0:
        p = pieces[0]
        pieces[0] = Piece(p.clip_id, 0, p.end_frame, p.prompt, None, "raw", None, "manifest")
    return pieces


def _piece_failure(piece: Piece, uri: str, error_type: str, message: str) -> dict[str, Any]:
    assert piece.clip_id is not None
    return failure_row(
        piece.clip_id,
        uri=uri,
        stage=STAGE_PLAN,
        error_type=error_type,
        message=f"{piece.clip_id}: {message}",
    )


# --- encoding and decoding one sample -------------------------------------------------------


def encode_mp4(
    frames: np.ndarray,
    *,
    fps: float,
    crf: int = 23,
    preset: str = "veryfast",
    pix_fmt: str = "yuv420p",
) -> bytes:
    """h264 mp4 bytes of uint8 RGB ``frames`` (N, H, W, 3), byte-reproducible: one thread,
    no macroblock-tree rate control (see :func:`curate.shapes.write_video`)."""
    import av
    import cv2

    from .shapes import parse_fps

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    rate = parse_fps(fps)
    buf = io.BytesIO()
    container = av.open(buf, mode="w", format="mp4")
    try:
        stream = container.add_stream(
            "libx264",
            rate=rate,
            options={
                "crf": str(crf),
                "preset": preset,
                "threads": "1",
                "x264-params": "mbtree=0",
            },
        )
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.thread_count = 1
        for i, arr in enumerate(frames):
            arr = np.ascontiguousarray(arr)
            if pix_fmt == "yuv420p":
                # OpenCV's BT.601 conversion, as curate.shapes.write_video does (and faster)
                yuv = np.asarray(cv2.cvtColor(arr, cv2.COLOR_RGB2YUV_I420), dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            else:
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    return buf.getvalue()


def decode_mp4(data: bytes, *, backend: str = "auto") -> np.ndarray:
    """Every frame of an mp4 sample as uint8 RGB (N, H, W, 3).

    ``backend``: "decord", "av" (PyAV) or "auto" (decord when it imports, else PyAV: decord's
    wheel is the smaller one to carry to a machine that lacks both).
    """
    if backend not in ("auto", "decord", "av"):
        raise ValueError(f"backend must be auto, decord or av, got {backend!r}")
    if backend in ("auto", "decord"):
        try:
            import decord
        except ImportError:
            if backend == "decord":
                raise
        else:
            decord.logging.set_level(decord.logging.QUIET)
            reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
            try:
                return reader.get_batch(list(range(len(reader)))).asnumpy()
            finally:
                del reader
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _resize(frame: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    if mode == "crop":
        scale = max(width / w, height / h)
        sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
        frame = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA)
        x, y = (sw - width) // 2, (sh - height) // 2
        return np.ascontiguousarray(frame[y : y + height, x : x + width])
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def decode_size(job: VideoJob, settings: ExportSettings) -> tuple[int, int]:
    """The size decord decodes at: twice the target (or the source, if smaller), which
    OpenCV's area filter then halves. decord's own scaler aliases: a ring's hole read back as
    a hole in 19 of 245 frames scaled 128 -> 64 by decord, 171 by area (yuv444p, crf 23)."""
    tw, th = settings.width, settings.height
    if settings.resize == "crop":
        scale = max(tw / job.width, th / job.height)
        tw = max(tw, int(round(job.width * scale / 2)) * 2)
        th = max(th, int(round(job.height * scale / 2)) * 2)
    return min(job.width, 2 * tw), min(job.height, 2 * th)


def window_groups(job: VideoJob) -> list[list[Window]]:
    """The windows of ``job`` in groups that one decoder pass reads: windows of one run share
    a span (and nearby runs too: seeking would cost more than decoding the gap)."""
    groups: list[list[Window]] = []
    for w in job.windows:
        if groups and w.source_frames[0] <= groups[-1][-1].source_frames[-1] + 64:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


def decode_windows(job: VideoJob, settings: ExportSettings) -> Iterator[np.ndarray]:
    """The frames of each window of ``job`` (uint8 (frames, H, W, 3)), in order."""
    from .video import FrameReader, probe

    info = probe(job.uri)
    dw, dh = decode_size(job, settings)
    for group in window_groups(job):
        wanted = {i for w in group for i in w.source_frames}
        lo, hi = min(wanted), max(wanted) + 1
        got: dict[int, np.ndarray] = {}
        with FrameReader(job.uri, width=dw, height=dh, start=lo, end=hi, info=info) as reader:
            for indices, frames in reader:
                for i, f in zip(indices.tolist(), frames):
                    if i in wanted:
                        got[i] = _resize(f, settings.width, settings.height, settings.resize)
        missing = sorted(wanted - set(got))
        if missing:
            from .errors import TruncatedVideo

            raise TruncatedVideo(
                f"frame {missing[0]} cannot be decoded ({len(got)} of {len(wanted)} read)",
                uri=job.uri,
            )
        for w in group:
            yield np.stack([got[i] for i in w.source_frames])


def sample_json(window: Window, settings: ExportSettings) -> dict[str, Any]:
    """The JSON member of a sample."""
    n = len(window.source_frames)
    src = window.source_fps
    start, end = window.source_frames[0], window.source_frames[-1] + 1
    return {
        "key": window.key,
        "video_id": window.video_id,
        "uri": window.uri,
        "fps": settings.fps,
        "frames": n,
        "width": settings.width,
        "height": settings.height,
        "source": {
            "fps": src,
            "start_frame": start,
            "end_frame": end,
            "start_s": round(start / src, 6),
            "end_s": round(end / src, 6),
        },
        "source_frames": list(window.source_frames),
        "clip_ids": _window_clip_ids([window]),
        "raw": settings.raw,
        "segments": window.segments(settings.fps),
    }


@dataclass
class Encoded:
    """One finished sample: its members' bytes and its index row (without shard / offset)."""

    key: str
    mp4: bytes
    meta: dict[str, Any]


def export_video(job: VideoJob, settings: ExportSettings) -> tuple[list[Encoded], list[dict]]:
    """Decode and encode every window of one video; a failure fails the whole video (its
    clips become failures rows), so a sample never holds frames of a half-read file."""
    stage = STAGE_DECODE
    out: list[Encoded] = []
    try:
        windows = iter(job.windows)
        for frames in decode_windows(job, settings):
            w = next(windows)
            stage = STAGE_ENCODE
            mp4 = encode_mp4(
                frames,
                fps=settings.fps,
                crf=settings.crf,
                preset=settings.preset,
                pix_fmt=settings.pix_fmt,
            )
            stage = STAGE_DECODE
            out.append(Encoded(w.key, mp4, sample_json(w, settings)))
    except Exception as exc:
        reason = exc.reason if isinstance(exc, CurateError) else str(exc) or type(exc).__name__
        tail = "".join(traceback.format_exception(exc)[-3:])[-2000:]
        return [], _video_failures(job, settings, stage, type(exc).__name__, reason, tail)
    return out, []


def _video_failures(
    job: VideoJob, settings: ExportSettings, stage: str, error_type: str, reason: str, tail: str
) -> list[dict[str, Any]]:
    """A failures row for every clip of a video that could not be exported (its video id with
    ``raw``)."""
    ids = [job.video_id] if settings.raw else job.clip_ids
    logger.warning("%s: cannot export (%s): %s", job.video_id, error_type, reason)
    return [
        failure_row(
            cid,
            uri=job.uri,
            stage=stage,
            error_type=error_type,
            message=f"{cid}: {job.uri}: {reason}",
            traceback=tail,
        )
        for cid in ids
    ]


class _ExportStep:
    """One video's export, as a child process runs it (:class:`curate.isolation.IsolatedWorker`):
    a decoder that crashes or hangs costs that video, not the export."""

    def __init__(self, settings: ExportSettings) -> None:
        import cv2

        cv2.setNumThreads(1)
        self.settings = settings

    def __call__(self, job: VideoJob) -> tuple[list[Encoded], list[dict]]:
        return export_video(job, self.settings)


# --- the output folder -----------------------------------------------------------------------


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Add one member with fixed header fields; returns the offset of its data in the tar."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - len(data) - (-len(data) % tarfile.BLOCKSIZE)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _member_bytes(samples: Sequence[Encoded]) -> int:
    """The tar's size for these samples (headers, padding, end blocks)."""
    total = 0
    for s in samples:
        for size in (len(_json_bytes(s.meta)), len(s.mp4)):
            total += tarfile.BLOCKSIZE + size + (-size % tarfile.BLOCKSIZE)
    total += 2 * tarfile.BLOCKSIZE
    return total + (-total % tarfile.RECORDSIZE)


def write_tar(path: Path, samples: Sequence[Encoded]) -> list[int]:
    """Write one shard (temporary name, then rename); returns each sample's mp4 data offset."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    offsets = []
    try:
        with (
            open(tmp, "wb") as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            for s in samples:
                _tar_member(tar, f"{s.key}.json", _json_bytes(s.meta))
                offsets.append(_tar_member(tar, f"{s.key}.mp4", s.mp4))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return offsets


def index_row(shard: str, sample: Encoded, offset: int) -> dict[str, Any]:
    meta = sample.meta
    segs = meta["segments"]
    counts: dict[int, int] = {}
    for i, s in enumerate(segs):
        counts[i] = counts.get(i, 0) + s["end_frame"] - s["start_frame"]
    main = segs[max(counts, key=lambda i: (counts[i], -i))]
    return {
        "shard": shard,
        "key": sample.key,
        "clip_id": main["clip_id"],
        "prompt": main["prompt"],
        "frames": meta["frames"],
        "video_id": meta["video_id"],
        "uri": meta["uri"],
        "clip_ids": meta["clip_ids"],
        "start_frame": meta["source"]["start_frame"],
        "end_frame": meta["source"]["end_frame"],
        "fps": meta["fps"],
        "width": meta["width"],
        "height": meta["height"],
        "segments": segs,
        "mp4_offset": offset,
        "mp4_bytes": len(sample.mp4),
    }


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _write_parquet_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _run_identity(run_folder: Path) -> dict[str, Any]:
    m = RunManifest.read(run_folder)
    return {
        "path": str(run_folder.resolve()),
        "created_at": m.created_at,
        "code_version": m.code_version,
        "counts": m.counts,
    }


def clear_export(out: str | os.PathLike[str]) -> None:
    """Remove what an export wrote into ``out`` (its own names only)."""
    folder = Path(out)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if re.fullmatch(r"\.?shard-\d{6}\.tar(\.tmp-.*)?", p.name) or p.name in (
            INDEX_NAME,
            FAILURES_NAME,
            EXPORT_NAME,
        ):
            p.unlink()
    shutil.rmtree(folder / PARTS_DIR, ignore_errors=True)


def _load_parts(out: Path) -> list[dict[str, Any]]:
    """The part records of finished shards, in order; anything after a gap is discarded."""
    parts_dir = out / PARTS_DIR
    parts: list[dict[str, Any]] = []
    for i in range(1_000_000):
        path = parts_dir / f"part-{i:06d}.json"
        if not path.exists():
            break
        record = json.loads(path.read_text())
        shard = record.get("shard")
        if shard is not None and not (out / shard).exists():
            break
        parts.append(record)
    return parts


def _prune(out: Path, parts: list[dict[str, Any]]) -> None:
    """Remove shards, part records and temporary files no finished part accounts for."""
    keep_shards = {p["shard"] for p in parts if p.get("shard")}
    for p in out.iterdir():
        if (re.fullmatch(r"shard-\d{6}\.tar", p.name) and p.name not in keep_shards) or (
            p.name.startswith(".shard-") and ".tmp-" in p.name
        ):
            p.unlink()
    for p in (out / PARTS_DIR).glob("part-*.json"):
        if int(p.stem.split("-")[1]) >= len(parts):
            p.unlink()
    for p in (out / PARTS_DIR).glob(".*"):
        p.unlink()


@dataclass
class ExportSummary:
    out: Path
    samples: int
    shards: int
    bytes: int
    failures: int
    counts: dict[str, int]
    resumed_from: int = 0

    def lines(self) -> list[str]:
        c = self.counts
        return [
            f"export {self.out}: {self.samples} samples in {self.shards} shards "
            f"({self.bytes / 1e6:.2f} MB)",
            f"  clips exported {c.get('clips_exported', 0)}, failed {c.get('clips_failed', 0)}, "
            f"not selected {c.get('clips_not_selected', 0)} (of {c.get('run_clips', 0)})",
            f"  failures {self.failures}; index {self.out / INDEX_NAME}",
        ]


def export_run(
    run_folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: ExportSettings | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    on_shard: Callable[[str], None] | None = None,
    timeout_s: float | None = 600.0,
) -> ExportSummary:
    """Export a published run into shards under ``out`` (see the module docstring).

    Rerunning into the same ``out`` with the same settings resumes (or, when the export is
    complete, returns its summary); other settings are refused unless ``overwrite``.
    ``workers`` child processes decode and encode videos in parallel (the output does not
    depend on it); a video whose decoder crashes or takes over ``timeout_s`` seconds becomes
    failures rows and the rest export.
    """
    settings = settings or ExportSettings()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    run_folder = Path(run_folder)
    out = Path(out)
    identity = {"format": EXPORT_FORMAT, "settings": settings.to_dict()}
    identity["run"] = _run_identity(run_folder)
    if overwrite:
        clear_export(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTS_DIR).mkdir(exist_ok=True)
    settings_path = out / PARTS_DIR / SETTINGS_NAME
    if settings_path.exists():
        before = json.loads(settings_path.read_text())
        if before != json.loads(json.dumps(identity, default=str)):
            raise ExportError(
                "the folder holds an export of another run or with other settings; "
                "pass overwrite (--overwrite) or choose another folder",
                uri=str(out),
            )
    else:
        if any(out.glob("shard-*.tar")) or (out / EXPORT_NAME).exists():
            raise ExportError(
                "the folder holds shards without export settings; pass overwrite (--overwrite)",
                uri=str(out),
            )
        _write_json_atomic(settings_path, identity)

    plan = plan_export(run_folder, settings)
    parts = _load_parts(out)
    _prune(out, parts)
    if parts and parts[-1].get("final"):  # every shard is written: publish (again)
        if (out / EXPORT_NAME).exists():
            return _summary(out, json.loads((out / EXPORT_NAME).read_text()))
        return _publish(out, plan, settings, identity)
    (out / EXPORT_NAME).unlink(missing_ok=True)
    resume = parts[-1]["next"] if parts else 0
    jobs = [j for j in plan.jobs if j.windows[-1].position >= resume]
    logger.info(
        "export: %d samples planned from %d videos; %d shards done, resuming at sample %d",
        plan.samples,
        len(plan.jobs),
        len(parts),
        resume,
    )

    state = _ShardWriter(out, settings, len(parts), sum(1 for p in parts if p.get("shard")))
    state.next = resume
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.samples, initial=resume, desc="export", unit="sample")
    results = _results(jobs, settings, workers, timeout_s)
    for job, (samples, failures) in zip(jobs, results):
        state.failures.extend(failures)
        for window, sample in zip(job.windows, _align(job, samples)):
            if window.position < resume or sample is None:
                continue
            name = state.add(sample, next_position=window.position + 1)
            if name and on_shard:
                on_shard(name)
        state.next = max(state.next, job.windows[-1].position + 1)
        if bar is not None:
            bar.update(len(job.windows))
    if bar is not None:
        bar.close()
    state.finish()
    if on_shard:
        on_shard("")
    return _publish(out, plan, settings, identity)


def _align(job: VideoJob, samples: list[Encoded]) -> list[Encoded | None]:
    by_key = {s.key: s for s in samples}
    return [by_key.get(w.key) for w in job.windows]


def _results(
    jobs: list[VideoJob],
    settings: ExportSettings,
    workers: int,
    timeout_s: float | None,
    step: type = _ExportStep,
) -> Iterator[tuple[list[Encoded], list[dict]]]:
    """Each job's samples and failures, in job order. Videos are decoded and encoded by
    ``step`` in ``workers`` isolated child processes; a child that crashes or overruns
    ``timeout_s`` fails its video and is replaced."""
    from concurrent.futures import ThreadPoolExecutor

    from .isolation import IsolatedWorker

    pool = [
        IsolatedWorker(step, {"settings": settings}, timeout_s=timeout_s, name="export")
        for _ in range(max(1, min(workers, len(jobs))))
    ]
    free = list(pool)

    def one(job: VideoJob) -> tuple[list[Encoded], list[dict]]:
        worker = free.pop()
        try:
            outcome = worker.call(job)
        finally:
            free.append(worker)
        if outcome.ok:
            return outcome.value
        return [], _video_failures(
            job,
            settings,
            STAGE_DECODE,
            outcome.error_type or "ExportError",
            outcome.message or "export failed",
            outcome.traceback or "",
        )

    try:
        with ThreadPoolExecutor(max_workers=len(pool)) as threads:
            yield from threads.map(one, jobs)
    finally:
        for worker in pool:
            worker.close()


class _ShardWriter:
    """Fills shards in plan order; each full shard is written, then its part record."""

    def __init__(self, out: Path, settings: ExportSettings, parts: int, shards: int) -> None:
        self.out, self.settings = out, settings
        self.part, self.shard = parts, shards
        self.samples: list[Encoded] = []
        self.failures: list[dict[str, Any]] = []
        self.next = 0

    def _full_with(self, sample: Encoded) -> bool:
        s = self.settings
        if s.samples_per_shard is not None and len(self.samples) + 1 > s.samples_per_shard:
            return True
        return s.shard_bytes is not None and _member_bytes([*self.samples, sample]) > s.shard_bytes

    def add(self, sample: Encoded, *, next_position: int) -> str | None:
        written = None
        if self.samples and self._full_with(sample):
            written = self._close(final=False)
        self.samples.append(sample)
        self.next = next_position
        return written

    def _close(self, *, final: bool) -> str | None:
        name = None
        rows: list[dict[str, Any]] = []
        if self.samples:
            name = shard_name(self.shard)
            offsets = write_tar(self.out / name, self.samples)
            rows = [index_row(name, s, o) for s, o in zip(self.samples, offsets)]
            self.shard += 1
        record = {
            "shard": name,
            "samples": rows,
            "failures": self.failures,
            "next": self.next,
            "final": final,
        }
        _write_json_atomic(self.out / PARTS_DIR / f"part-{self.part:06d}.json", record)
        self.part += 1
        self.samples, self.failures = [], []
        return name

    def finish(self) -> None:
        self._close(final=True)


def _publish(
    out: Path, plan: Plan, settings: ExportSettings, identity: dict[str, Any]
) -> ExportSummary:
    parts = _load_parts(out)
    rows = [r for p in parts for r in p["samples"]]
    failures = plan.failures + [f for p in parts for f in p["failures"]]
    index = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    _write_parquet_atomic(out / INDEX_NAME, index)
    _write_parquet_atomic(out / FAILURES_NAME, rows_to_table(failures, "failures"))
    shards = []
    for p in parts:
        if p["shard"]:
            path = out / p["shard"]
            shards.append(
                {
                    "path": p["shard"],
                    "samples": len(p["samples"]),
                    "bytes": path.stat().st_size,
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                }
            )
    exported = {c for r in rows for c in r["clip_ids"] if c is not None}
    failed = {f["input_id"] for f in failures}
    counts = dict(plan.counts)
    counts.update(
        samples=len(rows),
        shards=len(shards),
        bytes=sum(s["bytes"] for s in shards),
        frames=sum(r["frames"] for r in rows),
        failures=len(failures),
        videos_exported=len({r["video_id"] for r in rows}),
    )
    if not settings.raw:
        counts["clips_exported"] = len(exported)
        counts["clips_failed"] = len(failed - exported)
        counts["clips_not_selected"] = plan.counts["run_clips"] - len(exported | failed)
    manifest = {
        **identity,
        "counts": counts,
        "shards": shards,
        "index": INDEX_NAME,
        "failures": FAILURES_NAME,
    }
    _write_json_atomic(out / EXPORT_NAME, manifest)
    return _summary(out, manifest)


def _summary(out: Path, manifest: Mapping[str, Any]) -> ExportSummary:
    c = manifest["counts"]
    return ExportSummary(
        out=out,
        samples=c["samples"],
        shards=c["shards"],
        bytes=c["bytes"],
        failures=c["failures"],
        counts=dict(c),
    )


# --- reading ---------------------------------------------------------------------------------


def read_export(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``_export.json`` of a finished export."""
    path = Path(folder) / EXPORT_NAME
    if not path.exists():
        raise ExportError("no _export.json: not a finished curate export", uri=str(folder))
    return json.loads(path.read_text())


def shard_paths(folder: str | os.PathLike[str]) -> list[Path]:
    """The shards of a finished export, in order."""
    folder = Path(folder)
    return [folder / s["path"] for s in read_export(folder)["shards"]]


def iter_samples(paths: Iterable[str | os.PathLike[str]]) -> Iterator[dict[str, Any]]:
    """``{"__key__", "json", "mp4"}`` per sample, streaming each tar with :mod:`tarfile`."""
    for path in paths:
        with tarfile.open(path, mode="r|") as tar:
            current: dict[str, Any] = {}
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                fh = tar.extractfile(member)
                assert fh is not None
                data = fh.read()
                current["__key__"] = key
                current[ext] = json.loads(data) if ext == "json" else data
            if current:
                yield current


def read_failures(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return pq.read_table(Path(folder) / FAILURES_NAME).to_pylist()


__all__ = [
    "EXPORT_NAME",
    "FAILURES_NAME",
    "FAILURES_SCHEMA",
    "INDEX_NAME",
    "INDEX_SCHEMA",
    "ExportError",
    "ExportSettings",
    "ExportSummary",
    "decode_mp4",
    "encode_mp4",
    "export_run",
    "iter_samples",
    "parse_bytes",
    "parse_size",
    "plan_export",
    "read_export",
    "read_failures",
    "shard_paths",
    "source_indices",
]
