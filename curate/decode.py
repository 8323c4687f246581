"""Decoding one video into scenes with their sampled frames: the step that touches a decoder.

:class:`VideoDecoder` probes and splits (:class:`curate.scenes.SceneSplitter`), samples frames
per scene (:class:`curate.sampling.FrameSampler`) and optionally encodes keyframes. The Beam
pipeline runs it in an isolated child process (``pipelines.isolation``), so that a native
decoder crash kills only the child.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from schemas.tables import KEPT

from .choices import KEYFRAME_FORMATS
from .sampling import FrameSampler
from .scenes import SceneSplitter
from .step import check_choice, check_positive

logger = logging.getLogger(__name__)

KEYFRAME_QUALITY = 90


def encode_keyframes(frames: np.ndarray, *, fmt: str, max_side: int) -> list[bytes]:
    """``(n, h, w, 3)`` uint8 → encoded images (downscaled to ``max_side`` when larger)."""
    from PIL import Image

    out = []
    for frame in np.asarray(frames):
        image = Image.fromarray(frame)
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG" if fmt == "jpeg" else "WEBP", quality=KEYFRAME_QUALITY)
        out.append(buf.getvalue())
    return out


class VideoDecoder:
    """Videos row → clip rows with their sampled ``frames`` (``(k, h, w, 3)`` uint8).

    Raises :mod:`curate.errors` exceptions for videos that cannot be used; the parent turns
    them into failures rows.
    """

    def __init__(
        self,
        *,
        detector: str = "fast",
        samples_per_scene: int = 4,
        sample_size: int = 224,
        min_scene_frames: int = 15,
        keyframes: str = "none",
        keyframe_size: int = 256,
        splitter_settings: Mapping[str, Any] | None = None,
    ) -> None:
        check_positive("samples_per_scene", samples_per_scene)
        check_positive("sample_size", sample_size)
        check_positive("min_scene_frames", min_scene_frames)
        check_choice("keyframes", keyframes, KEYFRAME_FORMATS)
        check_positive("keyframe_size", keyframe_size)
        self.detector = detector
        self.samples_per_scene = int(samples_per_scene)
        self.sample_size = int(sample_size)
        self.min_scene_frames = int(min_scene_frames)
        self.keyframes = keyframes
        self.keyframe_size = int(keyframe_size)
        self.splitter_settings = dict(splitter_settings or {})
        self._splitter: Any = None
        self._sampler: Any = None

    def setup(self) -> None:
        self._splitter = SceneSplitter(
            detector=self.detector,
            min_scene_len=self.min_scene_frames,
            **self.splitter_settings,
        )
        self._splitter.setup()
        self._sampler = FrameSampler(
            k=self.samples_per_scene,
            size=self.sample_size,
            allow_truncated=bool(self.splitter_settings.get("allow_truncated", False)),
        )
        if hasattr(self._sampler, "setup"):
            self._sampler.setup()

    def teardown(self) -> None:
        for step in (self._splitter, self._sampler):
            if step is not None and hasattr(step, "teardown"):
                step.teardown()

    def __call__(self, video: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self._splitter is None:
            self.setup()
        clips = list(self._splitter.process(dict(video)))
        sampled = list(self._sampler.process_all(clips))
        for clip in sampled:
            clip.setdefault("status", KEPT)
            if self.keyframes != "none":
                clip["keyframes"] = encode_keyframes(
                    clip["frames"], fmt=self.keyframes, max_side=self.keyframe_size
                )
                clip["keyframe_format"] = self.keyframes
        return sampled
