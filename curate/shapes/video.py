"""Writing h264 mp4 files reproducibly, with exact rational frame rates."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np


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
            arr = np.ascontiguousarray(arr)
            if stream is None:
                h, w = arr.shape[:2]
                if w % 2 or h % 2:
                    raise ValueError(f"h264 yuv420p needs even width and height, got {w}x{h}")
                stream = container.add_stream(
                    "libx264",
                    rate=rate,
                    # libx264's macroblock-tree rate control made the same frames encode to
                    # different bitstreams within one process (seen at 96x64 and 284x160,
                    # single-threaded); without it the output is byte-reproducible
                    options={
                        "crf": str(crf),
                        "preset": preset,
                        "threads": "1",
                        "x264-params": "mbtree=0",
                    },
                )
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.codec_context.time_base = 1 / rate
                stream.codec_context.thread_count = 1
            # OpenCV's BT.601 limited-range conversion is what decoders assume for an untagged
            # stream, and is ~20x faster than PyAV's swscale path
            yuv = np.asarray(cv2.cvtColor(arr, cv2.COLOR_RGB2YUV_I420), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = count
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
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
