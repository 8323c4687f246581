"""``SceneSplitter``: the curation step from a video row to its clip rows."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from curate.choices import DETECTORS
from curate.errors import CurateError
from curate.scenes.base import Detector
from curate.scenes.detect import DEFAULT_DETECTION_WIDTH, detect_scenes, make_detector
from curate.step import Step, check_choice, check_positive
from curate.video import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, probe

log = logging.getLogger(__name__)

#: the clip-row columns this step fills (a subset of ``schemas.CLIPS_SCHEMA``)
CLIP_COLUMNS: tuple[str, ...] = (
    "clip_id",
    "video_id",
    "scene_index",
    "uri",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "fps",
    "width",
    "height",
    "transition",
    "detector_score",
    "source_caption",
)


def clip_id(video_id: str, index: int) -> str:
    return f"{video_id}:{index:04d}"


def scene_caption(
    timed: Sequence[Mapping[str, Any]] | None, start_s: float, end_s: float
) -> str | None:
    """The text the timed captions (``[{start_s, end_s, text}]``) give the scene
    ``[start_s, end_s)``: the captions lying mostly inside it (at least half of their own
    span), joined in order with "; " when there are several (a scene the detector did not
    cut); when none does, the one overlapping it longest (a scene inside a longer caption).
    ``None`` when no caption with text overlaps the scene."""
    spans = []
    for c in timed or ():
        text = c.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        a, b = float(c["start_s"]), float(c["end_s"])
        overlap = min(b, end_s) - max(a, start_s)
        if overlap > 0:
            spans.append((overlap, b - a, text.strip()))
    if not spans:
        return None
    inside = [text for overlap, length, text in spans if overlap >= length / 2]
    if inside:
        return "; ".join(t.rstrip(" ,;.") or t for t in inside) if len(inside) > 1 else inside[0]
    return max(spans, key=lambda s: s[0])[2]


class SceneSplitter(Step[dict, dict]):
    """Split a video into scenes: one partial clip row per scene.

    ``process(row)`` takes a videos row (``video_id``, ``uri``, ``caption``, timed
    ``captions``, ...) and yields rows with the :data:`CLIP_COLUMNS`. A video that cannot be
    used raises its :mod:`curate.errors` exception with ``video_id`` filled in.

    Each scene's ``source_caption`` is what the timed captions overlapping it say
    (:func:`scene_caption`), else the row's ``caption``. Where a row has both, the timed ones
    win for the scenes they cover: they say what each scene shows, the caption narrates the
    whole video. A scene no timed caption covers keeps the row's caption (``None`` when it
    has none: the clip is then dropped as ``empty_caption``).

    Settings: ``detector`` (``fast``, ``content``, ``adaptive``, ``histogram``) and its
    ``detector_settings``; ``min_scene_len`` (frames); ``max_scene_len_s`` (re-cut longer
    scenes; ``None`` keeps them); ``detection_width`` (decode width for detection, px);
    ``min_frames`` (shorter videos raise ``TooFewFrames``); ``allow_truncated`` (keep the frames
    of a file that ends early instead of raising ``TruncatedVideo``); ``max_side`` /
    ``max_pixels`` (declared sizes beyond them raise ``AbsurdSize``).
    """

    stage = "split-scenes"

    def __init__(
        self,
        *,
        detector: str = "fast",
        detector_settings: dict[str, Any] | None = None,
        min_scene_len: int = 15,
        max_scene_len_s: float | None = None,
        detection_width: int = DEFAULT_DETECTION_WIDTH,
        min_frames: int = 2,
        allow_truncated: bool = False,
        max_side: int = DEFAULT_MAX_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        check_choice("detector", detector, DETECTORS)
        check_positive("min_scene_len", min_scene_len)
        if max_scene_len_s is not None:
            check_positive("max_scene_len_s", max_scene_len_s)
        check_positive("detection_width", detection_width)
        if detection_width < 16:
            raise ValueError(f"detection_width must be >= 16, got {detection_width!r}")
        check_positive("min_frames", min_frames)
        check_positive("max_side", max_side)
        check_positive("max_pixels", max_pixels)
        self.detector = detector
        self.detector_settings = dict(detector_settings or {})
        self.min_scene_len = int(min_scene_len)
        self.max_scene_len_s = max_scene_len_s
        self.detection_width = int(detection_width)
        self.min_frames = int(min_frames)
        self.allow_truncated = bool(allow_truncated)
        self.max_side = int(max_side)
        self.max_pixels = int(max_pixels)
        # build once now so that bad detector settings fail here, not on the first video
        self._detector: Detector | None = make_detector(detector, **self.detector_settings)

    def setup(self) -> None:
        if self._detector is None:
            self._detector = make_detector(self.detector, **self.detector_settings)

    def teardown(self) -> None:
        self._detector = None

    def process(self, record: dict) -> Iterable[dict]:
        return list(self._process(record))

    def _process(self, record: dict) -> Iterator[dict]:
        video_id = str(record.get("video_id") or "")
        uri = record.get("uri")
        if not video_id:
            raise CurateError("the videos row has no video_id", uri=uri, stage=self.stage)
        if not uri:
            raise CurateError("the videos row has no uri", video_id=video_id, stage=self.stage)
        uri = str(uri)
        self.setup()
        assert self._detector is not None
        try:
            info = probe(
                uri,
                max_side=self.max_side,
                max_pixels=self.max_pixels,
                min_frames=self.min_frames,
                allow_truncated=self.allow_truncated,
            )
            _, (scenes,) = detect_scenes(
                uri,
                [self._detector],
                min_scene_len=self.min_scene_len,
                max_scene_len_s=self.max_scene_len_s,
                width=self.detection_width,
                info=info,
                min_frames=self.min_frames,
                allow_truncated=self.allow_truncated,
            )
        except CurateError as exc:
            if exc.video_id is None:
                exc.video_id = video_id or None
            raise
        caption = record.get("caption")
        timed = record.get("captions")
        for s in scenes:
            score = s.score
            own = scene_caption(timed, s.start_s, s.end_s) if timed else None
            yield {
                "clip_id": clip_id(video_id, s.index),
                "video_id": video_id,
                "scene_index": s.index,
                "uri": uri,
                "start_frame": s.start_frame,
                "end_frame": s.end_frame,
                "start_s": s.start_s,
                "end_s": s.end_s,
                "fps": info.fps,
                "width": info.width,
                "height": info.height,
                "transition": s.transition,
                "detector_score": None if score is None or math.isnan(score) else score,
                "source_caption": caption if own is None else own,
            }
        log.debug("%s: %d scenes", video_id, len(scenes))


__all__ = ["CLIP_COLUMNS", "SceneSplitter", "clip_id", "scene_caption"]
