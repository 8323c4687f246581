"""The scene-splitting vocabulary: what a detector reports and what a scene is.

A :class:`Detector` sees decoded frames, never files: the caller decodes a video once (at a low
resolution) and feeds the same chunks to every detector. A detector reports
:class:`Boundary` objects, the first frame of each new scene and how it was entered;
:func:`build_scenes` turns them into :class:`Scene` objects with frame-exact times, enforcing a
minimum scene length and, optionally, re-cutting scenes longer than a maximum.

A video that opens with a fade in from black, or ends with a fade out to black, is not cut
there: the fade belongs to the first (or last) scene. Detectors see such a fade as a
transition (its frames change smoothly and linearly, as in a dissolve), so
:func:`edge_fades` finds the fades at a video's two ends from its frames' mean levels, and
boundaries inside them are dropped whichever detector reported them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from curate.video import VideoInfo

#: how a scene begins
TRANSITIONS: tuple[str, ...] = ("start", "cut", "fade", "dissolve", "recut")
#: transitions that span several frames
GRADUAL: tuple[str, ...] = ("fade", "dissolve")


@dataclass(frozen=True)
class Boundary:
    """The start of a new scene, as one detector saw it."""

    #: first frame of the new scene
    frame: int
    #: "cut", "fade" or "dissolve"
    kind: str
    #: the detector's confidence, in the detector's own units
    score: float
    #: the frames a gradual transition spans, half-open ``[start_frame, end_frame)``
    start_frame: int | None = None
    end_frame: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("cut", *GRADUAL):
            raise ValueError(f"boundary kind must be cut, fade or dissolve, got {self.kind!r}")

    @property
    def span(self) -> tuple[int, int]:
        """The transition's frames; a cut spans its own frame."""
        if self.start_frame is None or self.end_frame is None:
            return self.frame, self.frame + 1
        return self.start_frame, self.end_frame


@dataclass(frozen=True)
class Scene:
    """One scene: frames ``[start_frame, end_frame)``, times ``[start_s, end_s)``."""

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    #: how the scene begins: one of :data:`TRANSITIONS`
    transition: str
    #: the detector's score of the boundary that starts it (``None`` for "start" / "recut")
    score: float | None = None
    #: for a scene entered through a gradual transition, that transition's frames
    transition_start: int | None = None
    transition_end: int | None = None

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StreamInfo:
    """What a detector is told before the frames of a video arrive."""

    video: VideoInfo
    #: the decoded frame size (width, height)
    size: tuple[int, int]
    #: number of frames that will be fed (after stride)
    num_samples: int
    stride: int = 1


class Detector(ABC):
    """Finds scene boundaries in a stream of decoded RGB frames.

    Feed every chunk of a video, in order, to :meth:`process`; then call :meth:`flush` for the
    boundaries that need the end of the stream. :meth:`reset` starts a new video.
    """

    #: the name the registry and the CLI use
    name: ClassVar[str] = "detector"

    def reset(self, stream: StreamInfo) -> None:
        """Forget the previous video; ``stream`` describes the next one."""
        self.stream = stream

    @abstractmethod
    def process(self, indices: np.ndarray, frames: np.ndarray) -> list[Boundary]:
        """Consume frames ``(n, h, w, 3)`` uint8 RGB with frame numbers ``indices`` (n,);
        return the boundaries confirmed so far (possibly none)."""

    def flush(self) -> list[Boundary]:
        """The stream ended: return the boundaries still pending."""
        return []


def check_frames(frames: np.ndarray, detector: str) -> None:
    """``ValueError`` unless ``frames`` are what every detector reads: ``(n, h, w, 3)`` uint8
    RGB (the numba path would truncate floats in [0, 1] to 0 and find nothing, OpenCV's would
    fail on other channel counts)."""
    shape: tuple = tuple(getattr(frames, "shape", ()))
    dtype = getattr(frames, "dtype", None)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            f"{detector} scene detector reads frames (n, height, width, 3) of uint8 RGB, got "
            f"shape {shape} of {dtype}"
        )


#: mean level (0-255) below which a frame is black, for the fades at a video's ends
EDGE_BLACK_LEVEL = 8.0


def _ramp(levels: np.ndarray, *, black_level: float, min_step: float) -> int:
    """How many samples at the start of ``levels`` are a fade in from black: the black run,
    then the steady brightening after it (0 when the first sample is not black).

    The brightening ends where the level stops rising by ``min_step`` a sample, or at a jump
    several times larger than the steps before it (a cut, not the fade). A black opening that
    brightens in one or two jumps (a black scene cut to another) is not a fade: only its
    black run is counted."""
    n = len(levels)
    if n == 0 or not levels[0] < black_level:
        return 0
    t = 0
    while t + 1 < n and levels[t + 1] < black_level:
        t += 1
    black_end = t + 1
    steps: list[float] = []
    while t + 1 < n:
        step = float(levels[t + 1] - levels[t])
        if not step > min_step:
            break
        if len(steps) >= 2 and step > 4.0 * float(np.median(steps)) + 2.0:
            break
        steps.append(step)
        t += 1
    rise = sum(steps)
    if len(steps) < 3 or max(steps) > 0.5 * rise:
        return black_end
    return t + 1


def edge_fades(
    levels: np.ndarray, *, black_level: float = EDGE_BLACK_LEVEL, min_step: float = 0.5
) -> tuple[int, int]:
    """``(start, end)``: samples ``[0, start)`` are a fade in from black that opens the
    video, samples ``[end, n)`` a fade out to black that ends it (``start == 0`` / ``end ==
    n`` when there is none). ``levels`` are the frames' mean levels (0-255), in order."""
    levels = np.nan_to_num(np.asarray(levels, dtype=np.float64), nan=255.0)
    n = len(levels)
    start = _ramp(levels, black_level=black_level, min_step=min_step)
    end = n - _ramp(levels[::-1], black_level=black_level, min_step=min_step)
    return start, max(end, start)


def build_scenes(
    boundaries: list[Boundary],
    info: VideoInfo,
    *,
    num_frames: int | None = None,
    min_scene_len: int = 15,
    max_scene_len_s: float | None = None,
) -> list[Scene]:
    """Scenes covering ``[0, num_frames)`` from a detector's boundaries.

    A boundary closer than ``min_scene_len`` frames to the previous kept one (or to frame 0,
    or to the end) is dropped, except that a gradual transition replaces a cut it collides
    with (a detector may see a cut at the edge of a dissolve). Scenes longer than
    ``max_scene_len_s`` seconds are split into equal parts that begin with ``"recut"``.
    """
    if min_scene_len < 1:
        raise ValueError(f"min_scene_len must be >= 1, got {min_scene_len!r}")
    if max_scene_len_s is not None and max_scene_len_s <= 0:
        raise ValueError(f"max_scene_len_s must be > 0, got {max_scene_len_s!r}")
    n = info.num_frames if num_frames is None else num_frames
    kept: list[Boundary] = []
    for b in sorted(boundaries, key=lambda b: b.frame):
        if b.frame <= 0 or b.frame > n - min_scene_len:
            continue
        prev = kept[-1].frame if kept else 0
        if b.frame - prev >= min_scene_len:
            kept.append(b)
        elif kept and b.kind in GRADUAL and kept[-1].kind == "cut":
            before = kept[-2].frame if len(kept) > 1 else 0
            if b.frame - before >= min_scene_len:
                kept[-1] = b
    starts: list[tuple[int, str, float | None, Boundary | None]] = [(0, "start", None, None)]
    starts += [(b.frame, b.kind, b.score, b) for b in kept]
    spans = []
    for i, (a, kind, score, bound) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else n
        spans.append((a, end, kind, score, bound))
    if max_scene_len_s is not None:
        spans = _recut(spans, info, max_scene_len_s, min_scene_len)
    scenes = []
    for i, (a, end, kind, score, entry) in enumerate(spans):
        scenes.append(
            Scene(
                index=i,
                start_frame=a,
                end_frame=end,
                start_s=info.frame_time(a) if a <= info.num_frames else a / info.fps,
                end_s=info.frame_time(end) if end <= info.num_frames else end / info.fps,
                transition=kind,
                score=None if score is None else float(score),
                transition_start=entry.start_frame if entry and kind in GRADUAL else None,
                transition_end=entry.end_frame if entry and kind in GRADUAL else None,
            )
        )
    return scenes


def _recut(spans: list, info: VideoInfo, max_s: float, min_len: int) -> list:
    out = []
    for a, end, kind, score, b in spans:
        length_s = info.frame_time(min(end, info.num_frames)) - info.frame_time(a)
        parts = max(1, math.ceil(length_s / max_s - 1e-9))
        # never cut below the minimum scene length
        parts = min(parts, max(1, (end - a) // min_len))
        edges = [a + round((end - a) * p / parts) for p in range(parts + 1)]
        for p in range(parts):
            if p == 0:
                out.append((edges[0], edges[1], kind, score, b))
            else:
                out.append((edges[p], edges[p + 1], "recut", None, None))
    return out


__all__ = [
    "EDGE_BLACK_LEVEL",
    "GRADUAL",
    "TRANSITIONS",
    "Boundary",
    "Detector",
    "Scene",
    "StreamInfo",
    "build_scenes",
    "edge_fades",
]
