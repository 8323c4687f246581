"""Reproducible h264: exact frame rates, and an x264 stream that encodes the same frames to the
same bytes.

Shared by the shapes world's video writer (:func:`curate.shapes.write_video`) and the export's
sample encoder (:func:`curate.export.encode_mp4`). PyAV and OpenCV load when a frame is
encoded, so that importing this module (and the export's settings, which check presets against
it) costs neither.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


def parse_fps(value: float | str | Fraction) -> Fraction:
    """An exact frame rate: ``29.97`` and ``"30000/1001"`` both mean 30000/1001."""
    if isinstance(value, Fraction):
        fps = value
    elif isinstance(value, str):
        fps = Fraction(value.strip())
    else:
        fps = Fraction(value).limit_denominator(1001)
    if abs(float(fps) - 29.97) < 0.005:
        fps = Fraction(30000, 1001)
    elif abs(float(fps) - 23.976) < 0.005:
        fps = Fraction(24000, 1001)
    elif abs(float(fps) - 59.94) < 0.005:
        fps = Fraction(60000, 1001)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {value!r}")
    return fps


def add_h264_stream(
    container: Any,
    *,
    rate: Fraction,
    width: int,
    height: int,
    crf: int,
    preset: str,
    pix_fmt: str = "yuv420p",
) -> Any:
    """A libx264 stream on the PyAV ``container``: single-threaded, without macroblock-tree
    rate control, with the time base ``1 / rate`` exactly (1001/30000 for 29.97)."""
    stream = container.add_stream(
        "libx264",
        rate=rate,
        # libx264's macroblock-tree rate control made the same frames encode to different
        # bitstreams within one process (seen at 96x64 and 284x160, single-threaded); without
        # it the output is byte-reproducible
        options={
            "crf": str(crf),
            "preset": preset,
            "threads": "1",
            "x264-params": "mbtree=0",
        },
    )
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.codec_context.time_base = 1 / rate
    stream.codec_context.thread_count = 1
    return stream


def rgb_frame(rgb: np.ndarray, *, pts: int, rate: Fraction, pix_fmt: str = "yuv420p") -> Any:
    """One uint8 RGB frame (H, W, 3) as a PyAV frame at ``pts`` in ``pix_fmt``.

    yuv420p goes through OpenCV's BT.601 limited-range conversion, which is what decoders
    assume for an untagged stream and is ~20x faster than PyAV's swscale path.
    """
    import av
    import cv2

    arr = np.ascontiguousarray(rgb)
    if pix_fmt == "yuv420p":
        yuv = np.asarray(cv2.cvtColor(arr, cv2.COLOR_RGB2YUV_I420), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    else:
        frame = av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format=pix_fmt)
    frame.pts = pts
    frame.time_base = 1 / rate
    return frame
