"""Scoring whole videos in-process: split, sample and score every video of a manifest.

``curate calibrate`` and the quality benchmark score a corpus without Beam: each video goes
through the scene splitter (or given scenes), the frame sampler and the CLIP scorer, and a
video that fails at any of them becomes a failures row; the others go on.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from schemas.failures import failure_row

from .errors import CurateError

logger = logging.getLogger(__name__)


def score_videos(
    videos: Iterable[dict[str, Any]],
    *,
    scorer: Any,
    sampler: Any,
    splitter: Any | None = None,
    clips_of: Callable[[dict[str, Any]], list[dict]] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> tuple[list[dict], list[dict]]:
    """Split, sample and score every video; a failing video becomes a failures row.

    ``clips_of(video) -> list[clip dict]`` replaces the scene splitter when given (e.g. scenes
    from ground truth). Returns ``(scored clip records, failures rows)``.
    """
    from tqdm import tqdm

    clips_out: list[dict] = []
    failures: list[dict] = []
    for video in tqdm(
        list(videos) if total is None else videos,
        total=total,
        desc="score",
        unit="video",
        disable=not progress,
    ):
        stage = "split-scenes"
        try:
            if clips_of is not None:
                clips = clips_of(video)
            elif splitter is not None:
                clips = list(splitter.process(video))
            else:
                raise ValueError("score_videos needs a splitter or clips_of")
            stage = sampler.stage
            sampled = sampler.sample_video(clips) if clips else []
            stage = scorer.stage
            clips_out.extend(scorer.process_all(sampled))
        except (CurateError, ValueError, OSError) as exc:
            failures.append(
                failure_row(
                    str(video.get("video_id") or video.get("uri")),
                    uri=video.get("uri"),
                    stage=exc.stage if isinstance(exc, CurateError) else stage,
                    error_type=type(exc).__name__,
                    message=str(exc),
                    traceback="".join(traceback.format_exception(exc)[-3:]),
                )
            )
            logger.warning("%s: %s: %s", video.get("video_id"), type(exc).__name__, exc)
    return clips_out, failures
