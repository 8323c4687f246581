"""Scene splitting: decode a video once at low resolution and let detectors find its scenes.

Detectors (:class:`Detector`) see frames, not files. ``fast`` is a numba kernel finding hard
cuts, fades and dissolves; ``content``, ``adaptive`` and ``histogram`` are PySceneDetect's
detectors fed with the same frames. :class:`SceneSplitter` is the curation step.

>>> from curate.scenes import split_scenes
>>> for scene in split_scenes("video.mp4", "fast"):  # doctest: +SKIP
...     print(scene.start_s, scene.end_s, scene.transition)
"""

from __future__ import annotations

from typing import Any

from curate.choices import DETECTORS
from curate.scenes.base import (
    GRADUAL,
    TRANSITIONS,
    Boundary,
    Detector,
    Scene,
    StreamInfo,
    build_scenes,
)
from curate.scenes.detect import (
    DEFAULT_DETECTION_WIDTH,
    detect_boundaries,
    detect_scenes,
    make_detector,
    split_scenes,
)
from curate.scenes.splitter import CLIP_COLUMNS, SceneSplitter, clip_id

_LAZY = {
    "FastDetector": "curate.scenes.fast",
    "ContentDetector": "curate.scenes.pyscenedetect",
    "AdaptiveDetector": "curate.scenes.pyscenedetect",
    "HistogramDetector": "curate.scenes.pyscenedetect",
}


def __getattr__(name: str) -> Any:  # numba and scenedetect load only when used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLIP_COLUMNS",
    "DEFAULT_DETECTION_WIDTH",
    "DETECTORS",
    "GRADUAL",
    "TRANSITIONS",
    "AdaptiveDetector",
    "Boundary",
    "ContentDetector",
    "Detector",
    "FastDetector",
    "HistogramDetector",
    "Scene",
    "SceneSplitter",
    "StreamInfo",
    "build_scenes",
    "clip_id",
    "detect_boundaries",
    "detect_scenes",
    "make_detector",
    "split_scenes",
]
