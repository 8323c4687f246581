"""The bounds every plan builder keeps (see the package docstring's table), and their checks:
each refuses, with a ``ValueError`` naming the value, what a plan cannot honour exactly."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

#: the most output frames a plan holds unless :func:`frame_limit` says otherwise
MAX_FRAMES = 1_000_000
#: the frame rates a story is planned at, inclusive
FPS_RANGE = (0.1, 240.0)
#: frames one model call may make, inclusive (sliding windows may use 2)
FRAMES_PER_CALL_RANGE = (3, 256)
#: the most levels a hierarchical plan may have
MAX_DEPTH = 32

_FRAME_LIMIT: ContextVar[int] = ContextVar("storygen_frame_limit", default=MAX_FRAMES)


@contextmanager
def frame_limit(limit: int) -> Iterator[int]:
    """Plans built inside the block may hold up to ``limit`` frames (``--max-frames``).

    The pipeline builds its plan inside ``__call__``, so this is how a caller raises the cap
    for one render::

        with frame_limit(5_000_000):
            pipe(script, fps=240)
    """
    check_int("frame limit", limit, 1)
    token = _FRAME_LIMIT.set(limit)
    try:
        yield limit
    finally:
        _FRAME_LIMIT.reset(token)


def current_frame_limit() -> int:
    """The frame cap in force: :data:`MAX_FRAMES` unless a :func:`frame_limit` block sets one."""
    return _FRAME_LIMIT.get()


def frame_count(num_frames: int | float) -> str:
    """A frame count for a message: in full with thousands separators up to a trillion, past
    that (``end: 1e300`` at 8 fps) as ``about 8.0e+300``."""
    if isinstance(num_frames, int):
        if num_frames < 10**12:
            return f"{num_frames:,}"
        # no float of an integer past 1e308, and no str() of one past 4,300 digits
        power = int(math.log10(num_frames))
        return f"about {num_frames // 10 ** (power - 1) / 10:.1f}e+{power:02d}"
    if not math.isfinite(num_frames):
        return f"{num_frames:g}"
    return f"about {num_frames:.1e}" if num_frames >= 1e12 else f"{num_frames:,.0f}"


def check_length(num_frames: int | float, what: str | None = None) -> None:
    """``ValueError`` when ``num_frames`` (``what``: how it was reached) exceeds the limit."""
    limit = current_frame_limit()
    if not num_frames <= limit:  # also catches nan
        count = frame_count(num_frames)
        head = f"num_frames={count}" if what is None else f"{what} is {count} frames,"
        raise ValueError(
            f"{head} more than the limit of {limit:,} frames "
            "(raise it with --max-frames, or storygen.plan.frame_limit)"
        )


def check_fps(fps: float, source: str | None = None) -> float:
    """``fps`` if it lies in :data:`FPS_RANGE`, else ``ValueError`` naming where it came from."""
    lo, hi = FPS_RANGE
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not (lo <= fps <= hi)  # also catches nan
    ):
        shown = f"{fps:g}" if isinstance(fps, (int, float)) else repr(fps)[:40]
        where = f" (from {source})" if source else ""
        raise ValueError(
            f"fps {shown}{where} is out of range: frame rates go from {lo:g} to {hi:g}"
        )
    return float(fps)


def check_frames_per_call(value: Any, minimum: int) -> int:
    lo, hi = minimum, FRAMES_PER_CALL_RANGE[1]
    frames = check_int("frames_per_call", value, lo)
    if frames > hi:
        raise ValueError(f"frames_per_call must be between {lo} and {hi}, got {frames!r}")
    return frames


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_depth(depth: Any) -> int:
    check_int("depth", depth, 1)
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be between 1 and {MAX_DEPTH}, got {depth!r}")
    return depth
