"""Shapes world: a procedural video corpus with exact ground truth.

Coloured shapes move over plain backgrounds; a video is a sequence of 1-5 scenes joined by hard
cuts or gradual transitions (fade through black, dissolve). Each scene is described by a small
grammar (``"a red circle moving right on a navy background"``) and every video carries a
WebVid-style source caption that is correct or, at a controlled rate, noise of a known kind.
Because every pixel is known, cut detection, caption scoring, re-captioning, dedup and generated
videos can all be checked against ground truth, and :func:`read_frame` / :func:`read_motion`
read a frame's content back from pixels without any learned model.

Conventions of the ground truth (``ground_truth.json``, see :class:`GroundTruth`):

* Frame indices are 0-based decode order; spans are half-open ``[start_frame, end_frame)``.
  The scenes of a video are contiguous and cover ``[0, num_frames)``.
* ``cuts`` lists the first frame of every scene entered through a hard cut.
* A gradual transition of length ``L`` spans ``[start_frame, end_frame)`` with
  ``end_frame - start_frame == L``; every frame in it mixes both scenes. The *scene boundary*
  is ``boundary_frame = start_frame + L // 2``: the outgoing scene ends there (exclusive) and
  the incoming one starts there. In a fade the outgoing scene darkens to pure black at
  ``boundary_frame - 1`` and the incoming one rises from pure black at ``boundary_frame``; in a
  dissolve the incoming scene's weight is ``(k + 1) / (L + 1)`` at ``start_frame + k``, so it
  passes one half at the boundary frame.
* ``caption_noise`` is one of :data:`NOISE_KINDS`. ``caption_is_noise`` is true for
  ``mismatched``, ``boilerplate``, ``empty`` and ``non_ascii``. A ``truncated`` caption (a
  correct caption cut mid-word) counts as noise only when what is left no longer names the
  colour and shape of the first scene; otherwise it is a usable, if incomplete, description.
* Paths in the manifests and the ground truth are relative to the corpus root (the folder that
  holds ``ground_truth.json``, ``webvid.csv`` and ``manifest.jsonl``); readers resolve them
  against the manifest's folder.
"""

from __future__ import annotations

from ..h264 import X264_PRESETS, parse_fps
from .corpus import (
    generate_corpus,
    iso_duration,
    write_manifests,
)
from .plan import (
    DEFAULT_FPS,
    DEFAULT_RESOLUTION_WEIGHTS,
    DEFAULT_RESOLUTIONS,
    MIN_HEIGHT,
    MIN_WIDTH,
    VideoPlan,
    clean_caption,
    plan_video,
    random_facts,
    truncate_caption,
    truncated_is_noise,
)
from .read import (
    FrameFacts,
    classify_contour,
    read_frame,
    read_motion,
)
from .render import (
    SceneRenderer,
    ShapeTrack,
    draw_shape_mask,
    plan_track,
    render_scene,
)
from .truth import (
    GroundTruth,
    SceneTruth,
    TransitionTruth,
    VideoTruth,
)
from .video import (
    make_video,
    write_video,
)
from .vocab import (
    BACKGROUNDS,
    BOILERPLATE,
    COLORS,
    DUPLICATE_KINDS,
    MIN_CONTRAST,
    MOTIONS,
    NOISE_KINDS,
    NON_ASCII,
    SHAPES,
    TRANSITION_KINDS,
    SceneFacts,
    all_captions,
    caption_for,
    compatible,
    join_captions,
    parse_caption,
    parse_captions,
)

__all__ = [
    "BACKGROUNDS",
    "BOILERPLATE",
    "all_captions",
    "caption_for",
    "classify_contour",
    "clean_caption",
    "COLORS",
    "compatible",
    "DEFAULT_FPS",
    "DEFAULT_RESOLUTION_WEIGHTS",
    "DEFAULT_RESOLUTIONS",
    "draw_shape_mask",
    "DUPLICATE_KINDS",
    "FrameFacts",
    "generate_corpus",
    "GroundTruth",
    "iso_duration",
    "join_captions",
    "make_video",
    "MIN_CONTRAST",
    "MIN_HEIGHT",
    "MIN_WIDTH",
    "MOTIONS",
    "NOISE_KINDS",
    "NON_ASCII",
    "parse_caption",
    "parse_captions",
    "parse_fps",
    "plan_track",
    "plan_video",
    "random_facts",
    "read_frame",
    "read_motion",
    "render_scene",
    "SceneFacts",
    "SceneRenderer",
    "SceneTruth",
    "SHAPES",
    "ShapeTrack",
    "TRANSITION_KINDS",
    "TransitionTruth",
    "truncate_caption",
    "truncated_is_noise",
    "VideoPlan",
    "VideoTruth",
    "write_manifests",
    "write_video",
    "X264_PRESETS",
]
