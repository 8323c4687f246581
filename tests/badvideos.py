"""Broken and hostile video files, each paired with the error :func:`curate.video.probe` (and
every stage built on it) must raise for it.

``make_bad_videos(out_dir)`` writes them; ``EXPECTED_ERRORS`` maps each name to its exception.
Tests of the probe, the scene splitter and the Beam pipeline share them, so a failure is
classified the same way everywhere.

==================  ==================================================  ======================
name                what it is                                          error
==================  ==================================================  ======================
``zero_byte``       an empty ``.mp4``                                   ``VideoOpenFailure``
``missing``         a path that does not exist                          ``VideoOpenFailure``
``text``            a text file named ``.mp4``                          ``VideoOpenFailure``
``directory``       a folder named ``.mp4``                             ``VideoOpenFailure``
``symlink_loop``    a symbolic link to a link back to itself            ``VideoOpenFailure``
``truncated``       a good mp4 (index first) cut in half                ``TruncatedVideo``
``truncated_tail``  a good mp4 (index last) cut in half: no index       ``TruncatedVideo``
``audio_only``      AAC audio in an mp4                                 ``NoVideoStream``
``no_frames``       an AVI with a video stream but no frame             ``ZeroFrames``
``one_frame``       a valid one-frame video                             ``TooFewFrames``
``absurd_size``     a raw-video AVI whose header claims 100000x100000   ``AbsurdSize``
``huge_size``       a raw-video AVI whose header claims 16000x16000     ``AbsurdSize``
``unknown_codec``   a valid mp4 whose codec tag is patched to ``zzzz``  ``UnsupportedCodec``
==================  ==================================================  ======================

``one_frame`` is a valid video: it fails only where a stage needs two frames or more
(``probe(..., min_frames=2)``, the scene splitter's default).

Two odd but valid files are made from a good mp4 by patching its boxes: :func:`rotated` (a
display matrix that turns the frames, as phones write) and :func:`stalled_timestamps` (every
frame at time 0 and no declared duration, as broken muxers write).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import (
    AbsurdSize,
    NoVideoStream,
    TooFewFrames,
    TruncatedVideo,
    UnsupportedCodec,
    VideoOpenFailure,
    ZeroFrames,
)

EXPECTED_ERRORS: dict[str, type[Exception]] = {
    "zero_byte": VideoOpenFailure,
    "missing": VideoOpenFailure,
    "text": VideoOpenFailure,
    "directory": VideoOpenFailure,
    "symlink_loop": VideoOpenFailure,
    "truncated": TruncatedVideo,
    "truncated_tail": TruncatedVideo,
    "audio_only": NoVideoStream,
    "no_frames": ZeroFrames,
    "one_frame": TooFewFrames,
    "absurd_size": AbsurdSize,
    "huge_size": AbsurdSize,
    "unknown_codec": UnsupportedCodec,
}

#: the frame count a stage needs for ``one_frame`` to fail
MIN_FRAMES = 2


def _noise_frames(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    # noise compresses badly, so half the file really is half the frames
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def write_h264(
    path: Path,
    frames: list[np.ndarray],
    *,
    fps: int = 25,
    faststart: bool = False,
) -> Path:
    import av

    h, w = frames[0].shape[:2] if frames else (48, 64)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        encoded = []
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            encoded.append(frame)
        encode_into(container, stream, encoded)
    return path


def encode_into(container: Any, stream: Any, frames: Iterable[Any]) -> None:
    """Encode ``frames`` (PyAV frames) on ``stream`` and mux them, then flush the encoder."""
    for frame in frames:
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def _write_audio_only(path: Path) -> Path:
    import av

    rate = 44100
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(rate // 2) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        samples = np.stack([tone, tone])  # (channels, samples) for planar float
        frame_size = 1024
        chunks = []
        for i in range(0, samples.shape[1] - frame_size, frame_size):
            chunk = np.ascontiguousarray(samples[:, i : i + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = i
            chunks.append(frame)
        encode_into(container, stream, chunks)
    return path


def _write_raw_avi(path: Path, width: int, height: int) -> Path:
    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frames = _noise_frames(3, width, height)
        encode_into(
            container, stream, [av.VideoFrame.from_ndarray(a, format="rgb24") for a in frames]
        )
    return path


def patch_avi_size(path: Path, width: int, height: int) -> Path:
    """Rewrite the frame size an AVI declares (main header and the stream's bitmap header)."""
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    strf = data.find(b"strf")
    if avih < 0 or strf < 0:
        raise ValueError(f"{path}: no 'avih' / 'strf' chunk to patch")
    # avih: cb, then 8 dwords before dwWidth, dwHeight
    struct.pack_into("<II", data, avih + 8 + 32, width, height)
    # strf (BITMAPINFOHEADER): biSize, biWidth, biHeight
    struct.pack_into("<ii", data, strf + 8 + 4, width, height)
    path.write_bytes(bytes(data))
    return path


def _patch_codec_tag(path: Path, old: bytes = b"avc1", new: bytes = b"zzzz") -> Path:
    data = bytearray(path.read_bytes())
    stsd = data.find(b"stsd")
    pos = data.find(old, stsd if stsd >= 0 else 0)
    if pos < 0:
        raise ValueError(f"{path}: no {old!r} sample entry to patch")
    data[pos : pos + 4] = new
    path.write_bytes(bytes(data))
    return path


def _write_empty_video_stream(path: Path) -> Path:
    import av

    # mp4 drops a track without samples; AVI keeps the stream header
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


def make_bad_videos(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write every bad input under ``out_dir``; returns name -> path (``missing`` is a path
    that is not created). Names match :data:`EXPECTED_ERRORS`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    paths["zero_byte"] = out / "zero_byte.mp4"
    paths["zero_byte"].write_bytes(b"")

    paths["missing"] = out / "missing.mp4"
    paths["missing"].unlink(missing_ok=True)

    paths["text"] = out / "text.mp4"
    paths["text"].write_text("This is not a video.\nIt is a text file named .mp4.\n")

    paths["directory"] = out / "directory.mp4"
    paths["directory"].mkdir(exist_ok=True)

    paths["symlink_loop"] = out / "symlink_loop.mp4"
    other = out / "symlink_loop_back.mp4"
    for link, target in ((paths["symlink_loop"], other), (other, paths["symlink_loop"])):
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    frames = _noise_frames(48, 96, 64)
    good = write_h264(out / ".good_faststart.mp4", frames, faststart=True)
    data = good.read_bytes()
    paths["truncated"] = out / "truncated.mp4"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    good.unlink()

    good = write_h264(out / ".good.mp4", frames, faststart=False)
    data = good.read_bytes()
    paths["truncated_tail"] = out / "truncated_tail.mp4"
    paths["truncated_tail"].write_bytes(data[: len(data) // 2])
    good.unlink()

    paths["audio_only"] = _write_audio_only(out / "audio_only.mp4")
    paths["no_frames"] = _write_empty_video_stream(out / "no_frames.avi")
    paths["one_frame"] = write_h264(out / "one_frame.mp4", _noise_frames(1, 64, 48))

    paths["absurd_size"] = patch_avi_size(
        _write_raw_avi(out / "absurd_size.avi", 32, 32), 100_000, 100_000
    )
    paths["huge_size"] = patch_avi_size(
        _write_raw_avi(out / "huge_size.avi", 32, 32), 16_000, 16_000
    )
    paths["unknown_codec"] = _patch_codec_tag(
        write_h264(out / "unknown_codec.mp4", _noise_frames(8, 64, 48))
    )
    missing = set(EXPECTED_ERRORS) - set(paths)
    assert not missing, missing
    return paths


# --- odd but valid files ------------------------------------------------------------------------


def _box(data: bytes | bytearray, kind: bytes) -> int:
    pos = data.find(kind)
    if pos < 4:
        raise ValueError(f"no {kind!r} box")
    return pos - 4  # the box starts with its size


def rotated(src: Path, dst: Path, degrees_clockwise: int) -> Path:
    """A copy of the mp4 ``src`` whose track header's display matrix turns the frames
    ``degrees_clockwise`` (90, 180, 270) for display; the coded frames are unchanged."""
    one = 0x10000  # 16.16 fixed point
    # (a, b, c, d) of the matrix {a b 0; c d 0; 0 0 1}
    matrices = {90: (0, one, -one, 0), 180: (-one, 0, 0, -one), 270: (0, -one, one, 0)}
    data = bytearray(src.read_bytes())
    tkhd = _box(data, b"tkhd")
    version = data[tkhd + 8]
    # size, type, version+flags, times and ids, duration, reserved, layer .. volume, reserved
    matrix = tkhd + 12 + (32 if version == 1 else 20) + 8 + 8
    a, b, c, d = matrices[degrees_clockwise]
    struct.pack_into(">9i", data, matrix, a, b, 0, c, d, 0, 0, 0, 0x40000000)
    dst.write_bytes(bytes(data))
    return dst


def stalled_timestamps(src: Path, dst: Path) -> Path:
    """A copy of the mp4 ``src`` in which every frame has time 0 (the sample durations are
    zero) and no duration is declared."""
    data = bytearray(src.read_bytes())
    stts = _box(data, b"stts")
    for k in range(struct.unpack_from(">I", data, stts + 12)[0]):
        struct.pack_into(">I", data, stts + 16 + 8 * k + 4, 0)
    for kind in (b"mvhd", b"mdhd"):  # the duration follows the times and the time scale
        box = _box(data, kind)
        wide = data[box + 8] == 1
        struct.pack_into(">Q" if wide else ">I", data, box + 12 + (16 if wide else 8) + 4, 0)
    tkhd = _box(data, b"tkhd")
    wide = data[tkhd + 8] == 1
    struct.pack_into(">Q" if wide else ">I", data, tkhd + 12 + (16 if wide else 8) + 8, 0)
    dst.write_bytes(bytes(data))
    return dst


__all__ = [
    "EXPECTED_ERRORS",
    "MIN_FRAMES",
    "make_bad_videos",
    "patch_avi_size",
    "rotated",
    "stalled_timestamps",
    "write_h264",
]
