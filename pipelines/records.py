"""The elements that flow through the curate pipeline, and failures rows built from errors.

Beam-free on purpose: the isolated decoder child and the plain-library code paths use them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from curate.clip_score import TRANSIENT_KEYS
from curate.errors import CurateError
from schemas.failures import video_failure_row

#: keys a clip record carries between stages that are not columns of the clips table
TRANSIENT_CLIP_KEYS = (*TRANSIENT_KEYS, "dedup_signature", "generated_caption")


@dataclass
class VideoWork:
    """One input video on its way through the per-video stages.

    ``clips`` are clips-table rows (plus transient keys such as ``frames``); ``failures`` holds
    the failures rows of a video that failed. A failed video has no clips: a stage that fails
    after the split moves the whole video to the failures table, so that every input lands in
    exactly one of the two.
    """

    video: dict[str, Any]
    clips: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: seconds spent per stage, for the progress line and the benchmark
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def video_id(self) -> str:
        return self.video["video_id"]

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def fail(self, row: dict[str, Any]) -> VideoWork:
        """The same video, now failed: its clips are withdrawn and ``row`` recorded."""
        return VideoWork(video=self.video, clips=[], failures=[row], timings=dict(self.timings))

    def frame_bytes(self) -> int:
        total = 0
        for clip in self.clips:
            frames = clip.get("frames")
            total += int(getattr(frames, "nbytes", 0) or 0)
        return total


class VideoBatch:
    """Videos batched by hand for ``RunInference`` (a list would be flattened by some runners)."""

    def __init__(self, items: list[VideoWork]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, i: int) -> VideoWork:
        return self.items[i]


def failure_row(
    video: Mapping[str, Any],
    *,
    stage: str,
    error_type: str,
    message: str,
    traceback: str | None = None,
) -> dict[str, Any]:
    """A failures row about ``video`` (a videos row)."""
    return video_failure_row(
        video, stage=stage, error_type=error_type, message=message, traceback=traceback
    )


def failure_from_exception(
    video: Mapping[str, Any],
    exc: BaseException | None,
    *,
    stage: str,
    error_type: str | None = None,
    message: str | None = None,
    traceback: str | None = None,
) -> dict[str, Any]:
    """A failures row from a raised exception: domain errors keep their own stage and reason."""
    if isinstance(exc, CurateError):
        stage = exc.stage or stage
        message = exc.reason
    etype = error_type or (type(exc).__name__ if exc is not None else "Error")
    text = message if message is not None else (str(exc) if exc is not None else "unknown error")
    uri = video.get("uri")
    # name the input in the message itself: failures rows are read one at a time
    if uri and uri not in text:
        text = f"{uri}: {text}"
    return failure_row(video, stage=stage, error_type=etype, message=text, traceback=traceback)
