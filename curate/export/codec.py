"""One video's samples: its windows decoded (one decoder pass per group of nearby windows,
area-resized), each re-encoded as a byte-reproducible h264 mp4 with its JSON; and the step a
child process runs per video (:class:`curate.isolation.IsolatedWorker`).

PyAV, OpenCV and decord load inside the functions that decode or encode: the plan, the writer
and the readers import this package without them.
"""

from __future__ import annotations

import io
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas import failure_row

from ..errors import CurateError, TruncatedVideo
from ..h264 import add_h264_stream, parse_fps, rgb_frame
from ..video import FrameReader, probe
from .plan import VideoJob, Window, window_clip_ids
from .settings import STAGE_DECODE, STAGE_ENCODE, ExportSettings

logger = logging.getLogger(__name__)


def encode_mp4(
    frames: np.ndarray,
    *,
    fps: float,
    crf: int = 23,
    preset: str = "veryfast",
    pix_fmt: str = "yuv420p",
) -> bytes:
    """h264 mp4 bytes of uint8 RGB ``frames`` (N, H, W, 3), byte-reproducible: one thread,
    no macroblock-tree rate control (see :func:`curate.h264.add_h264_stream`)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    rate = parse_fps(fps)
    buf = io.BytesIO()
    container = av.open(buf, mode="w", format="mp4")
    try:
        stream = add_h264_stream(
            container, rate=rate, width=w, height=h, crf=crf, preset=preset, pix_fmt=pix_fmt
        )
        for i, arr in enumerate(frames):
            for packet in stream.encode(rgb_frame(arr, pts=i, rate=rate, pix_fmt=pix_fmt)):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    return buf.getvalue()


#: decode_mp4's backends, in the order "auto" tries them
DECODERS = ("decord", "av", "opencv")


def decode_mp4(data: bytes, *, backend: str = "auto") -> np.ndarray:
    """Every frame of an mp4 sample as uint8 RGB (N, H, W, 3).

    ``backend``: "decord", "av" (PyAV), "opencv" or "auto": the first of them that imports.
    decord's wheel is the smaller one to carry to a machine that lacks all three; OpenCV is
    the one a stock GPU image tends to have (it reads from a file, so the bytes go through a
    temporary file in memory-backed ``/dev/shm`` where there is one).
    """
    if backend != "auto" and backend not in DECODERS:
        raise ValueError(f"backend must be auto or one of {DECODERS}, got {backend!r}")
    for name in DECODERS if backend == "auto" else (backend,):
        try:
            decode = _DECODE[name]
            return decode(data)
        except ImportError:
            if backend != "auto":
                raise
    raise ImportError(f"decoding an mp4 sample needs one of {DECODERS}; none imports")


def _decode_decord(data: bytes) -> np.ndarray:
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    try:
        return reader.get_batch(list(range(len(reader)))).asnumpy()
    finally:
        del reader


def _decode_av(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _decode_opencv(data: bytes) -> np.ndarray:
    import os
    import tempfile

    import cv2

    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=".mp4", dir=shm) as tmp:
        tmp.write(data)
        tmp.flush()
        cap = cv2.VideoCapture(tmp.name)
        try:
            frames = []
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()
    if not frames:
        raise ValueError("OpenCV read no frames from the mp4 sample")
    return np.stack(frames)


_DECODE = {"decord": _decode_decord, "av": _decode_av, "opencv": _decode_opencv}


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
        "clip_ids": window_clip_ids([window]),
        "raw": settings.raw,
        "segments": window.segments(settings.fps),
        # each segment's whole clip span in the sample's frames (a cut clip reaches past the
        # sample's ends): how far into its prompt each frame is
        "segment_spans": window.segment_spans(settings.fps),
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
        return [], video_failures(job, settings, stage, type(exc).__name__, reason, tail)
    return out, []


def video_failures(
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


class ExportStep:
    """One video's export, as a child process runs it (:class:`curate.isolation.IsolatedWorker`):
    a decoder that crashes or hangs costs that video, not the export."""

    def __init__(self, settings: ExportSettings) -> None:
        import cv2

        cv2.setNumThreads(1)
        self.settings = settings

    def __call__(self, job: VideoJob) -> tuple[list[Encoded], list[dict]]:
        return export_video(job, self.settings)
