"""Decode once, run every detector: the entry points of scene splitting."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from curate.errors import TooFewFrames, ZeroFrames
from curate.scenes.base import Boundary, Detector, Scene, StreamInfo, build_scenes, edge_fades
from curate.video import FrameReader, VideoInfo, probe

#: default decode width for detection (frames are downscaled by decord while decoding)
DEFAULT_DETECTION_WIDTH = 128


def _registry() -> dict[str, Callable[..., Detector]]:
    # numba (the fast path) and scenedetect are slow to import: only when a detector is made
    from curate.scenes.fast import FastDetector
    from curate.scenes.pyscenedetect import AdaptiveDetector, ContentDetector, HistogramDetector

    return {
        "fast": FastDetector,
        "content": ContentDetector,
        "adaptive": AdaptiveDetector,
        "histogram": HistogramDetector,
    }


def make_detector(name: str, **settings: Any) -> Detector:
    """A detector by name (:data:`DETECTORS`) with its keyword settings."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"detector must be one of {tuple(registry)}, got {name!r}")
    return registry[name](**settings)


def detect_boundaries(
    uri: str | os.PathLike[str],
    detectors: Sequence[Detector],
    *,
    width: int | None = DEFAULT_DETECTION_WIDTH,
    stride: int = 1,
    chunk: int = 64,
    info: VideoInfo | None = None,
    min_frames: int = 2,
    allow_truncated: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[VideoInfo, list[list[Boundary]]]:
    """Decode ``uri`` once at ``width`` px and feed every chunk to every detector.

    Returns the probe result and, per detector, its boundaries, less those inside a fade in
    from black at the video's start or a fade out to black at its end
    (:func:`~curate.scenes.base.edge_fades`). ``progress`` is called with the number of
    frames of each chunk. When a truncated file is kept (``allow_truncated``), the returned
    info counts the frames that actually decoded; it raises :class:`~curate.errors.ZeroFrames`
    when none does and :class:`~curate.errors.TooFewFrames` below ``min_frames``.
    """
    if not detectors:
        raise ValueError("detectors must name at least one detector, got none")
    uri = os.fspath(uri)
    info = info or probe(uri, min_frames=min_frames, allow_truncated=allow_truncated)
    found: list[list[Boundary]] = [[] for _ in detectors]
    levels: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    with FrameReader(
        uri, width=width, stride=stride, chunk=chunk, info=info, allow_truncated=allow_truncated
    ) as reader:
        assert reader.size is not None
        stream = StreamInfo(video=info, size=reader.size, num_samples=len(reader), stride=stride)
        for det in detectors:
            det.reset(stream)
        for idx, frames in reader:
            for det, out in zip(detectors, found, strict=True):
                out += det.process(idx, frames)
            levels.append(frames.reshape(len(frames), -1).mean(axis=1))
            indices.append(np.asarray(idx, dtype=np.int64))
            if progress is not None:
                progress(len(idx))
        for det, out in zip(detectors, found, strict=True):
            out += det.flush()
        decoded_to = reader.truncated_at
    if levels:
        found = _outside_edge_fades(found, np.concatenate(levels), np.concatenate(indices))
    if decoded_to is not None and decoded_to < info.num_frames:
        # a truncated file kept by option: the scenes end where decoding stopped
        if decoded_to == 0:
            raise ZeroFrames("no frame decodes (the file is truncated or corrupt)", uri=uri)
        if decoded_to < min_frames:
            raise TooFewFrames(
                f"{decoded_to} frame(s) decode before the file ends, at least {min_frames} needed",
                uri=uri,
            )
        found = [[b for b in out if b.frame < decoded_to] for out in found]
        info = dataclasses.replace(
            info,
            num_frames=decoded_to,
            duration_s=info.frame_time(decoded_to),
            frame_times=None if info.frame_times is None else info.frame_times[:decoded_to],
        )
    return info, found


def _outside_edge_fades(
    found: list[list[Boundary]], levels: np.ndarray, indices: np.ndarray
) -> list[list[Boundary]]:
    """Each detector's boundaries less those inside the fades at the video's two ends. A
    boundary on a fade's first black frame at the end is kept, as one on the first frame after
    a fade in is: it is a hard cut to black (a fade out ramps down before its black run)."""
    start, end = edge_fades(levels)
    if start == 0 and end == len(levels):
        return found
    first = int(indices[start]) if start < len(indices) else int(indices[-1]) + 1
    last = int(indices[end]) + 1 if end < len(indices) else int(indices[-1]) + 1
    return [[b for b in out if first <= b.frame < last] for out in found]


def detect_scenes(
    uri: str | os.PathLike[str],
    detectors: Sequence[Detector | str] = ("fast",),
    *,
    min_scene_len: int = 15,
    max_scene_len_s: float | None = None,
    width: int | None = DEFAULT_DETECTION_WIDTH,
    stride: int = 1,
    chunk: int = 64,
    info: VideoInfo | None = None,
    min_frames: int = 2,
    allow_truncated: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[VideoInfo, list[list[Scene]]]:
    """The scenes of ``uri`` according to each detector, from one decode."""
    dets = [make_detector(d) if isinstance(d, str) else d for d in detectors]
    info, found = detect_boundaries(
        uri,
        dets,
        width=width,
        stride=stride,
        chunk=chunk,
        info=info,
        min_frames=min_frames,
        allow_truncated=allow_truncated,
        progress=progress,
    )
    return info, [
        build_scenes(b, info, min_scene_len=min_scene_len, max_scene_len_s=max_scene_len_s)
        for b in found
    ]


def split_scenes(
    uri: str | os.PathLike[str],
    detector: Detector | str = "fast",
    *,
    min_scene_len: int = 15,
    max_scene_len_s: float | None = None,
    width: int | None = DEFAULT_DETECTION_WIDTH,
    info: VideoInfo | None = None,
    min_frames: int = 2,
    **detect: Any,
) -> list[Scene]:
    """The scenes of one video with one detector."""
    _, (scenes,) = detect_scenes(
        uri,
        [detector],
        min_scene_len=min_scene_len,
        max_scene_len_s=max_scene_len_s,
        width=width,
        info=info,
        min_frames=min_frames,
        **detect,
    )
    return scenes
