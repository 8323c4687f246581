"""Writing h264 mp4 files reproducibly, with exact rational frame rates; one shapes-world video
of given scenes (:func:`make_video`, for tests and examples)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..h264 import X264_PRESETS, add_h264_stream, parse_fps, rgb_frame
from .plan import ScenePlan, VideoPlan, clean_caption
from .truth import VideoTruth
from .vocab import TRANSITION_KINDS, SceneFacts, parse_caption


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    fps: float | str | Fraction,
    crf: int = 23,
    preset: str = "veryfast",
) -> int:
    """Encode RGB frames as h264 (yuv420p) mp4 through PyAV; returns the frame count.

    Encoding is single-threaded and without macroblock-tree rate control, so the same frames
    give byte-identical files, and the stream time base is ``1 / fps`` exactly (1001/30000 for
    29.97), so frame times are exact.
    The file is written under a temporary name and renamed when complete.
    """
    import av

    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf!r}")
    if preset not in X264_PRESETS:
        raise ValueError(f"preset must be one of {X264_PRESETS}, got {preset!r}")
    rate = parse_fps(fps)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    count = 0
    container = av.open(str(tmp), mode="w", format="mp4")
    try:
        stream = None
        for arr in frames:
            if stream is None:
                h, w = np.shape(arr)[:2]
                if w % 2 or h % 2:
                    raise ValueError(f"h264 yuv420p needs even width and height, got {w}x{h}")
                stream = add_h264_stream(
                    container, rate=rate, width=w, height=h, crf=crf, preset=preset
                )
            for packet in stream.encode(rgb_frame(arr, pts=count, rate=rate)):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode(None):
            container.mux(packet)
    except BaseException:
        container.close()
        tmp.unlink(missing_ok=True)
        raise
    container.close()
    os.replace(tmp, path)
    return count


def make_video(
    path: str | os.PathLike[str],
    scenes: Sequence[SceneFacts | str],
    *,
    scene_frames: int | Sequence[int] = 48,
    fps: float | str | Fraction = 25,
    width: int = 160,
    height: int = 120,
    transitions: Sequence[str] | None = None,
    transition_frames: int = 12,
    crf: int = 23,
    seed: int = 0,
    fade_in: int = 0,
    fade_out: int = 0,
) -> VideoTruth:
    """Write one shapes-world video with the given scenes; returns its ground truth.

    ``scenes`` are :class:`SceneFacts` or captions; ``transitions`` gives the kind ("cut",
    "fade", "dissolve") entering each scene after the first (default: all cuts).
    ``fade_in`` / ``fade_out``: frames of a fade from black at the start and to black at the
    end, within the first and last scenes (no scene boundary: the truth is unchanged).
    """
    path = Path(path)
    facts = []
    for s in scenes:
        f = parse_caption(s) if isinstance(s, str) else s
        if f is None:
            raise ValueError(f"cannot parse scene caption {s!r}")
        facts.append(f)
    if not facts:
        raise ValueError("need at least one scene")
    counts = [scene_frames] * len(facts) if isinstance(scene_frames, int) else list(scene_frames)
    kinds = list(transitions) if transitions is not None else ["cut"] * (len(facts) - 1)
    if len(counts) != len(facts) or len(kinds) != len(facts) - 1:
        raise ValueError(
            f"{len(facts)} scenes need {len(facts)} scene_frames and {len(facts) - 1} transitions, "
            f"got {len(counts)} and {len(kinds)}"
        )
    for k in kinds:
        if k not in ("cut", *TRANSITION_KINDS):
            raise ValueError(f"unknown transition {k!r}; expected cut, fade or dissolve")
    if fade_in < 0 or fade_out < 0 or fade_in > counts[0] or fade_out > counts[-1]:
        raise ValueError(
            f"fade_in and fade_out must fit in the first and last scenes, got {fade_in!r}, "
            f"{fade_out!r} for {counts!r}"
        )
    if any(c < 2 for c in counts) or any(
        k != "cut" and min(counts[i], counts[i + 1]) < transition_frames
        for i, k in enumerate(kinds)
    ):
        raise ValueError(f"scenes too short for their transitions: {counts!r}")
    rng = np.random.default_rng(seed)
    plan = VideoPlan(
        path.stem,
        width,
        height,
        parse_fps(fps),
        crf,
        [
            ScenePlan(
                f,
                c,
                int(rng.integers(2**31)),
                "start" if i == 0 else kinds[i - 1],
                transition_frames if i > 0 and kinds[i - 1] != "cut" else 0,
            )
            for i, (f, c) in enumerate(zip(facts, counts, strict=True))
        ],
        fade_in=fade_in,
        fade_out=fade_out,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, plan.frames(), fps=plan.fps, crf=crf)
    truth = plan.truth(path.name, "")
    truth.source_caption = truth.clean_caption = clean_caption(facts)
    truth.root = path.parent.resolve()
    return truth
