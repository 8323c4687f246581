"""PySceneDetect's detectors, fed with frames we decoded (decord), not with its own video I/O.

Each wrapper builds the scenedetect detector (``ContentDetector``, ``AdaptiveDetector``,
``HistogramDetector``) and calls its ``process_frame(timecode, bgr_frame)`` /
``post_process(timecode)`` API frame by frame, so the same decode can also feed our own
detectors. PySceneDetect reports hard cuts only.
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from curate.scenes.base import Boundary, Detector, StreamInfo, check_frames


class PySceneDetectDetector(Detector):
    """Base of the wrappers: subclasses say which scenedetect class to build."""

    name: ClassVar[str] = "pyscenedetect"

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self._detector: Any = self._build()  # validates the settings now
        self._rate = Fraction(30)
        self._scores: deque[tuple[int, float]] = deque(maxlen=256)
        self._last: int | None = None

    def _build(self) -> Any:
        raise NotImplementedError

    def reset(self, stream: StreamInfo) -> None:
        super().reset(stream)
        self._detector = self._build()
        # timecodes count frames; the rate only converts them to seconds inside scenedetect
        self._rate = stream.video.frame_rate / stream.stride
        self._scores.clear()
        self._last = None

    def _score_of(self, frame: int) -> float:
        for f, s in reversed(self._scores):
            if f == frame:
                return s
        return float("nan")

    def _frame_score(self) -> float | None:
        return getattr(self._detector, "_frame_score", None)

    def process(self, indices: np.ndarray, frames: np.ndarray) -> list[Boundary]:
        from scenedetect import FrameTimecode

        if len(frames):
            check_frames(frames, type(self).__name__)
        stride = self.stream.stride if hasattr(self, "stream") else 1
        out: list[Boundary] = []
        # scenedetect wants BGR; one flip per chunk, then contiguous frames for OpenCV
        bgr = np.ascontiguousarray(frames[..., ::-1])
        for i, frame in zip(indices.tolist(), bgr, strict=True):
            tc = FrameTimecode(i // stride, fps=self._rate)
            cuts = self._detector.process_frame(tc, frame)
            score = self._frame_score()
            if score is not None:
                self._scores.append((i // stride, float(score)))
            out += [self._boundary(c.frame_num * stride) for c in cuts]
            self._last = i
        return out

    def flush(self) -> list[Boundary]:
        from scenedetect import FrameTimecode

        if self._last is None:
            return []
        stride = self.stream.stride if hasattr(self, "stream") else 1
        cuts = self._detector.post_process(FrameTimecode(self._last // stride, fps=self._rate))
        return [self._boundary(c.frame_num * stride) for c in cuts]

    def _boundary(self, frame: int) -> Boundary:
        stride = self.stream.stride if hasattr(self, "stream") else 1
        return Boundary(int(frame), "cut", self._score_of(frame // stride))


class ContentDetector(PySceneDetectDetector):
    """scenedetect's ``ContentDetector``: HSV change above a fixed ``threshold`` (27)."""

    name: ClassVar[str] = "content"

    def __init__(self, *, threshold: float = 27.0, min_scene_len: int = 15, **settings: Any):
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        super().__init__(threshold=threshold, min_scene_len=min_scene_len, **settings)

    def _build(self) -> Any:
        from scenedetect.detectors import ContentDetector as _Content

        return _Content(**self.settings)


class AdaptiveDetector(PySceneDetectDetector):
    """scenedetect's ``AdaptiveDetector``: the content score against its rolling average."""

    name: ClassVar[str] = "adaptive"

    def __init__(
        self,
        *,
        adaptive_threshold: float = 3.0,
        min_content_val: float = 15.0,
        window_width: int = 2,
        min_scene_len: int = 15,
        **settings: Any,
    ):
        if adaptive_threshold <= 0:
            raise ValueError(f"adaptive_threshold must be > 0, got {adaptive_threshold!r}")
        if window_width < 1:
            raise ValueError(f"window_width must be >= 1, got {window_width!r}")
        super().__init__(
            adaptive_threshold=adaptive_threshold,
            min_content_val=min_content_val,
            window_width=window_width,
            min_scene_len=min_scene_len,
            **settings,
        )

    def _build(self) -> Any:
        from scenedetect.detectors import AdaptiveDetector as _Adaptive

        return _Adaptive(**self.settings)


class HistogramDetector(PySceneDetectDetector):
    """scenedetect's ``HistogramDetector``: luma-histogram correlation below ``1 - threshold``."""

    name: ClassVar[str] = "histogram"

    def __init__(
        self, *, threshold: float = 0.20, bins: int = 128, min_scene_len: int = 15, **settings: Any
    ):
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins!r}")
        super().__init__(threshold=threshold, bins=bins, min_scene_len=min_scene_len, **settings)

    def _build(self) -> Any:
        from scenedetect.detectors import HistogramDetector as _Histogram

        return _Histogram(**self.settings)

    def _frame_score(self) -> float | None:
        return None  # scenedetect keeps the histogram distance only in a stats manager


__all__ = ["AdaptiveDetector", "ContentDetector", "HistogramDetector", "PySceneDetectDetector"]
