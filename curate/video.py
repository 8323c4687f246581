"""Probing and decoding videos.

Decoding goes through decord (one ``VideoReader`` per open, released as soon as the caller is
done with it). PyAV reads what decord cannot tell: the container's streams, the codec name, the
exact frame rate as a fraction and the *declared* frame size, which is checked before decord is
asked to allocate anything, because a header claiming 100000x100000 must not reach a decoder.

Every failure is one of the :mod:`curate.errors` video exceptions, carrying the uri and a
one-line reason:

==================  ===============================================================
``VideoOpenFailure``  missing, empty, a directory, not a container, demuxer refused it
``NoVideoStream``     the container holds no video stream (audio only, data only)
``ZeroFrames``        a video stream with no frame in it
``TooFewFrames``      fewer frames than the caller asked for (``min_frames``)
``TruncatedVideo``    the file ends before the frames its index declares
``UnsupportedCodec``  no decoder for the stream's codec
``AbsurdSize``        the declared frame size is beyond ``max_side`` / ``max_pixels``
==================  ===============================================================

Detection decodes at a reduced size through decord's own ``width`` / ``height`` arguments. The
decoding itself is no faster, but the colour conversion and the copy out are: on shapes-world
files (2 shared CPUs, loaded) reading 128 px wide RGB frames ran at 113-122 frames/s at 720p
and 355-367 at 360p, against 44-67 and 186-189 for full-size frames and 73 and 235 for
OpenCV's full-size read plus ``cv2.resize``. ``get_batch`` over 16-64 contiguous frames and
frame-by-frame ``next()`` are within noise of each other.

Frame times are exact: for a constant frame rate ``t(i) = i / rate`` with the rate as a
fraction (30000/1001 for 29.97); for a variable frame rate they come from the per-frame
timestamps (decord's ``get_frame_timestamp``, snapped to the stream's time base). Timestamps
that do not advance (all equal, as some broken muxers write them) say nothing about time: the
stream's declared rate is used instead.

A stream with rotation metadata (a phone video held upright: a display matrix turning the
coded frames by 90, 180 or 270 degrees) is decoded as it is meant to be seen: ``width`` and
``height`` are the displayed size, and the frames come turned. decord turns such frames at
their full size but not consistently when asked for a reduced one, so these streams are
decoded with PyAV, at the coded size, and turned here.

PyAV also decodes what decord gets wrong without saying so: MPEG transport streams (``.ts``,
``.m2ts``, ``.mts``; decord returns frames from the wrong place in the stream, an h264 cut at
frame 45 shows nowhere and an MPEG-2 one at frame 33), containers with more than one video
stream (a Matroska file with a thumbnail stream before the video: decord's frames come out
distorted at a reduced size and not at all at the full one), and frame sizes decord cannot
output at all (2x2). Every reader takes the same stream: FFmpeg's best video stream (the one
decord picks), never cover art.

A stream damaged on the way (bytes lost or overwritten inside it) makes a decord batch fail at
a frame that depends on timing, since decord's decoder runs ahead on a thread of its own. The
failed chunk is then decoded again by PyAV on the calling thread, which finds where clean
frames stop from the bytes alone, and decord decodes those frames from a copy of their packets;
the frames kept and ``truncated_at`` are the same whatever the chunk size or the load.

This module is longer than the others (about 1200 lines) on purpose: probing and frame reading
share one error model and one set of private helpers around decord and PyAV (opening with a
size, classifying decord's errors, counting packets, salvaging a damaged stream). Split in
two, those helpers would become a public API of their own for no reader's benefit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from curate.errors import (
    AbsurdSize,
    NoVideoStream,
    TooFewFrames,
    TruncatedVideo,
    UnsupportedCodec,
    VideoError,
    VideoOpenFailure,
    ZeroFrames,
)

log = logging.getLogger(__name__)

#: largest width or height accepted (declared in the header)
DEFAULT_MAX_SIDE = 16384
#: largest number of pixels per frame accepted (8192 x 8192; 8K UHD is 33 Mpx)
DEFAULT_MAX_PIXELS = 8192 * 8192
#: a frame duration may deviate this much (relative) from the median, or by one tick of the
#: stream's time base, before the rate counts as variable; absorbs time-base rounding (29.97
#: fps in Matroska's 1 ms time base is 33 and 34 ms frames)
VFR_TOLERANCE = 0.02
#: demuxers whose streams decord decodes with the wrong frames (FFmpeg's names)
PYAV_CONTAINERS = frozenset({"mpegts", "mpegtsraw"})
#: how many frames :func:`read_frames` asks decord for at a time
READ_CHUNK = 64
#: the highest declared frame rate trusted when the timestamps say nothing
MAX_FPS = 1000

# PyAV routes FFmpeg's log lines into Python only while a level is set; the header probe sets
# one for its own duration to read why FFmpeg refused a stream ("Picture size ... is invalid").
_AV_LOG_LOCK = threading.Lock()
_PICTURE_SIZE = re.compile(r"[Pp]icture size (\d+)\s*x\s*(\d+) is invalid")


def _quiet_decord() -> None:
    import decord

    decord.logging.set_level(decord.logging.QUIET)


# --- what a probe returns --------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learned about one video."""

    uri: str
    num_frames: int
    #: average frames per second (``float(frame_rate)``)
    fps: float
    #: the exact frame rate, e.g. ``Fraction(30000, 1001)``; the average one for VFR
    frame_rate: Fraction
    duration_s: float
    width: int
    height: int
    codec: str
    container: str
    variable_frame_rate: bool = False
    #: presentation time of each frame relative to the first, seconds (VFR only; ``None`` for
    #: a constant rate, whose times are ``i / frame_rate``)
    frame_times: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: the file ends before the frames its index declares (only when probed with
    #: ``allow_truncated=True``; ``num_frames`` then counts the frames that can be read)
    truncated: bool = False
    declared_frames: int | None = None
    has_audio: bool = False
    #: degrees (0, 90, 180, 270, counterclockwise) the coded frames are turned for display;
    #: ``width`` / ``height`` are the displayed size
    rotation: int = 0
    #: the container's index of the video stream described (FFmpeg's best video stream, never
    #: cover art); ``None``: choose it when opening
    stream_index: int | None = None
    #: video streams in the container, cover art included (more than one: read with PyAV)
    video_streams: int = 1

    @property
    def path(self) -> str:
        return local_path(self.uri)

    def frame_time(self, index: int) -> float:
        """Start time of frame ``index`` in seconds; ``index == num_frames`` gives the end."""
        if not 0 <= index <= self.num_frames:
            raise ValueError(f"{self.uri}: frame {index!r} outside [0, {self.num_frames}]")
        if self.frame_times is not None:
            if index == self.num_frames:
                return self.duration_s
            return float(self.frame_times[index])
        return float(Fraction(index) / self.frame_rate)

    def frame_times_array(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectorised :meth:`frame_time`."""
        return np.array([self.frame_time(int(i)) for i in indices], dtype=np.float64)


def local_path(uri: str | os.PathLike[str]) -> str:
    """The filesystem path behind ``uri`` (a path or a ``file://`` uri)."""
    s = os.fspath(uri)
    if s.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(s).path)
    return s


# --- header checks that need no decoder ------------------------------------------------------

_ISO_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"moof"}


def _iso_truncation(path: str, size: int) -> tuple[str, bool] | None:
    """For an ISO-BMFF (mp4/mov) file: ``(box, has_moov)`` when a top-level box runs past the end
    of the file, else ``None``. Reads box headers only."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 8 or head[4:8] != b"ftyp":
            return None
        pos, has_moov = 0, False
        while pos + 8 <= size:
            fh.seek(pos)
            hdr = fh.read(16)
            box_size, kind = struct.unpack(">I4s", hdr[:8])
            if box_size == 1 and len(hdr) >= 16:
                box_size = struct.unpack(">Q", hdr[8:16])[0]
            elif box_size == 0:  # runs to the end of the file by definition
                box_size = size - pos
            if kind == b"moov":
                has_moov = True
            if box_size < 8 or (kind not in _ISO_TOP_LEVEL and not kind.isalnum()):
                return None  # not a box walk we understand; let the demuxer judge
            if pos + box_size > size:
                return kind.decode("latin-1"), has_moov
            pos += box_size
    return None


@dataclass
class _Header:
    width: int
    height: int
    codec: str
    container: str
    frame_rate: Fraction | None
    declared_frames: int
    time_base: Fraction | None
    has_audio: bool
    #: the stream's declared duration in seconds, where the container gives one
    duration_s: float | None = None
    #: counterclockwise degrees of the display matrix (0, 90, 180, 270)
    rotation: int = 0
    stream_index: int | None = None
    video_streams: int = 1

    @property
    def display_size(self) -> tuple[int, int]:
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


def _check_size(uri: str, width: int, height: int, max_side: int, max_pixels: int) -> None:
    if width > max_side or height > max_side or width * height > max_pixels:
        raise AbsurdSize(
            f"declared frame size {width}x{height} exceeds the limit "
            f"(max side {max_side}, max {max_pixels} pixels)",
            uri=uri,
        )


def _read_header(uri: str, path: str, *, max_side: int, max_pixels: int) -> _Header:
    """Open the container with PyAV (no decoding beyond FFmpeg's stream analysis)."""
    import av
    import av.logging

    with _AV_LOG_LOCK:
        previous = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)
        try:
            with av.logging.Capture(local=True) as logs:
                try:
                    # bounded analysis: a broken header must not make FFmpeg read the whole file
                    container = av.open(
                        path,
                        options={"probesize": str(8 << 20), "analyzeduration": str(5_000_000)},
                        metadata_errors="ignore",
                    )
                except av.error.FFmpegError as exc:
                    raise VideoOpenFailure(
                        f"not a readable video container ({_av_reason(exc)})", uri=uri
                    ) from None
                try:
                    return _header_from(uri, container, logs, max_side, max_pixels)
                finally:
                    container.close()
        finally:
            av.logging.set_level(previous)


def _av_reason(exc: Exception) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return str(msg).strip().splitlines()[0] if msg else type(exc).__name__


_ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC


def _video_stream(container: Any, index: int | None = None) -> Any:
    """The video stream to decode: the one at ``index``, or else FFmpeg's best video stream
    (the one decord decodes: more than a single frame wins, so a thumbnail does not), never
    cover art; ``None`` when there is none."""
    if index is not None:
        return container.streams[index]
    # cover art is a one-frame "video" stream in audio files; it is not a video
    videos = [s for s in container.streams.video if not (int(s.disposition) & _ATTACHED_PIC)]
    if not videos:
        return None
    try:
        best = container.streams.best("video")
    except (ValueError, TypeError):
        best = None
    if best is not None and any(s.index == best.index for s in videos):
        return best
    return videos[0]


def _header_from(uri: str, container: Any, logs: list, max_side: int, max_pixels: int) -> _Header:
    fmt = container.format.name if container.format is not None else "?"
    has_audio = any(s.type == "audio" for s in container.streams)
    stream = _video_stream(container)
    if stream is None:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise NoVideoStream(f"no video stream (streams: {', '.join(kinds)})", uri=uri)
    ctx = stream.codec_context
    if ctx is None or ctx.codec is None:
        tag = _sample_entry(container.name) or "unknown"
        raise UnsupportedCodec(f"no decoder for the video codec (tag {tag!r})", uri=uri)
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        for _level, _name, message in logs:
            m = _PICTURE_SIZE.search(message)
            if m:
                w, h = int(m[1]), int(m[2])
                _check_size(uri, w, h, max_side, max_pixels)
                raise AbsurdSize(f"declared frame size {w}x{h} is invalid", uri=uri)
        raise VideoOpenFailure("video stream declares no frame size", uri=uri)
    _check_size(uri, width, height, max_side, max_pixels)
    codec = ctx.name
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    return _Header(
        rotation=_display_rotation(container, stream),
        width=width,
        height=height,
        codec=codec,
        container=fmt,
        frame_rate=Fraction(rate) if rate else None,
        declared_frames=int(stream.frames or 0),
        time_base=Fraction(stream.time_base) if stream.time_base else None,
        has_audio=has_audio,
        duration_s=duration,
        stream_index=stream.index,
        video_streams=len(container.streams.video),
    )


def _display_rotation(container: Any, stream: Any, *, max_packets: int = 32) -> int:
    """The rotation a stream's display matrix asks for (0, 90, 180 or 270 degrees,
    counterclockwise), read from its first decoded frame; 0 when none decodes early on."""
    import av

    try:
        for i, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                angle = float(getattr(frame, "rotation", 0) or 0)
                return int(round(angle / 90.0)) % 4 * 90
            if i >= max_packets:
                break
    except (av.error.FFmpegError, ValueError, TypeError):
        pass
    return 0


def _needs_pyav(info: VideoInfo) -> bool:
    """Frames decord cannot give as they are meant: a truncated file, a rotated stream, an
    MPEG transport stream, a container with more than one video stream."""
    return (
        info.truncated
        or bool(info.rotation)
        or info.container in PYAV_CONTAINERS
        or info.video_streams > 1
    )


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """``(n, h, w, 3)`` coded frames turned ``rotation`` degrees counterclockwise."""
    if not rotation:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=rotation // 90, axes=(1, 2)))


def _coded(size: tuple[int, int], rotation: int) -> tuple[int, int]:
    """The coded (decoder-side) size of a displayed ``(width, height)``, and back."""
    return (size[1], size[0]) if rotation in (90, 270) else size


def _sample_entry(path: str) -> str | None:
    """The codec fourcc of the first sample entry of an mp4/mov file, for error messages."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError:
        return None
    pos = head.find(b"stsd")
    if pos < 0 or pos + 20 > len(head):
        return None
    return head[pos + 16 : pos + 20].decode("latin-1")


def _count_packets(
    uri: str, path: str, *, limit: int | None = None, stream_index: int | None = None
) -> int:
    """Frames whose packets can be read before the file ends (demux only, no decoding);
    stops counting at ``limit``."""
    import av

    count = 0
    try:
        with av.open(path) as container:
            stream = _video_stream(container, stream_index)
            if stream is None:
                return 0
            for packet in container.demux(stream):
                if packet.size > 0:
                    count += 1
                    if limit is not None and count >= limit:
                        break
    except av.error.FFmpegError:
        pass
    return count


# --- decord ------------------------------------------------------------------------------------


def _decord_error_types() -> tuple[type[BaseException], ...]:
    from decord._ffi.base import DECORDError

    return (DECORDError, RuntimeError, AssertionError)


def _open_decord(
    uri: str, path: str, *, width: int = -1, height: int = -1, num_threads: int = 0
) -> Any:
    import decord

    _quiet_decord()
    try:
        return decord.VideoReader(path, width=width, height=height, num_threads=num_threads)
    except _decord_error_types() as exc:
        raise _classify_decord(uri, exc) from None


def _open_decord_sized(
    uri: str, path: str, width: int, height: int, *, num_threads: int = 0
) -> tuple[Any, tuple[int, int]] | None:
    """Open decord at ``width`` x ``height`` and decode one frame to prove the size works;
    ``None`` when decord cannot output frames at that size or near it (PyAV can).

    decord 0.6 fails to copy out frames at a few output widths (16, 24, 48, 72, ...: its
    row padding does not match the array it allocates); the next even width works. At the
    smallest sizes (2x2) none does.
    """
    for attempt in range(4):
        w = width + 2 * attempt
        reader = _open_decord(uri, path, width=w, height=height, num_threads=num_threads)
        try:
            reader.get_batch([0])
            reader.seek(0)
            return reader, (w, height)
        except _decord_error_types() as exc:
            del reader
            if "DECORDArrayCopyFromTo" not in str(exc):
                raise _classify_decord(uri, exc) from None
    log.info("%s: decord cannot decode at %dx%d or near it; using PyAV", uri, width, height)
    return None


def _classify_decord(uri: str, exc: BaseException) -> VideoError:
    text = str(exc)
    first = next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    first = re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", first).strip()
    low = text.lower()
    if "decoder" in low or "codec" in low:
        return UnsupportedCodec(f"decord cannot decode this stream ({first})", uri=uri)
    if "av_read_frame" in low:
        return TruncatedVideo(f"the file ends early: {first}", uri=uri)
    if "invalid frame count" in low:
        return ZeroFrames("the video stream holds no frame", uri=uri)
    return VideoOpenFailure(f"decord cannot open it ({first})", uri=uri)


def _timestamps(reader: Any, num_frames: int) -> np.ndarray:
    """``(num_frames, 2)`` start / end seconds of every frame, as decord reports them."""
    return np.asarray(reader.get_frame_timestamp(list(range(num_frames))), dtype=np.float64)


def _snap(times: np.ndarray, time_base: Fraction | None) -> np.ndarray:
    """decord reports float32 seconds; snap them back onto the stream's time base."""
    if not time_base or time_base <= 0:
        return times
    tb = float(time_base)
    return np.round(times / tb) * tb


# --- probe -------------------------------------------------------------------------------------


def probe(
    uri: str | os.PathLike[str],
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_frames: int = 1,
    allow_truncated: bool = False,
) -> VideoInfo:
    """Read what a stage needs to know about a video, or raise the domain error that says why
    it cannot be used.

    ``min_frames`` raises :class:`TooFewFrames` below it. With ``allow_truncated`` a file that
    ends before its declared frame count is accepted: ``truncated`` is set and ``num_frames``
    counts the frames whose data is present.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels!r}")
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames!r}")
    uri = os.fspath(uri)
    path = local_path(uri)
    cut = _iso_truncation(path, _readable_size(uri, path))
    if cut is not None and not cut[1]:
        raise TruncatedVideo(
            f"the file ends inside its '{cut[0]}' box and has no index ('moov') to read",
            uri=uri,
        )
    header = _read_header(uri, path, max_side=max_side, max_pixels=max_pixels)
    if cut is not None:
        readable = _count_packets(uri, path, stream_index=header.stream_index)
        declared = header.declared_frames
        if not allow_truncated:
            raise TruncatedVideo(
                f"the file ends inside its '{cut[0]}' box: {readable} of {declared} declared "
                "frames present",
                uri=uri,
            )
        return _truncated_info(uri, header, readable, min_frames)

    if (
        header.declared_frames == 0
        and _count_packets(uri, path, limit=1, stream_index=header.stream_index) == 0
    ):
        # containers without a frame count (Matroska, AVI written empty): look for packets
        raise ZeroFrames("the video stream holds no frame", uri=uri)
    times = _frame_times(uri, path, header)
    num_frames = len(times)
    if num_frames < min_frames:
        raise TooFewFrames(f"{num_frames} frame(s), at least {min_frames} needed", uri=uri)
    starts = times[:, 0] - times[0, 0]
    if num_frames > 1 and not float(np.median(np.diff(starts))) > 0:
        # timestamps that do not advance tell nothing about time: the declared rate does
        if header.frame_rate is None or not 0 < header.frame_rate <= MAX_FPS:
            raise VideoOpenFailure(
                "frame timestamps do not advance and the stream declares no usable frame rate",
                uri=uri,
            )
        log.warning("%s: frame timestamps do not advance; using the declared rate", uri)
        return _constant_rate_info(uri, header, num_frames, header.frame_rate)
    vfr = _is_variable(starts, header.time_base)
    duration = float(times[-1, 1] - times[0, 0])
    if vfr and times[-1, 1] <= times[-1, 0]:
        # decord gives the last frame no duration: take the container's, else the median
        last = float(starts[-1])
        if header.duration_s is not None and header.duration_s > last:
            duration = header.duration_s
        else:
            duration = last + float(np.median(np.diff(starts)))
    if not vfr:
        rate = header.frame_rate or Fraction(num_frames) / Fraction(duration).limit_denominator()
        return _constant_rate_info(uri, header, num_frames, rate)
    rate = Fraction(num_frames) / Fraction(duration).limit_denominator(1_000_000)
    return _info(
        uri,
        header,
        num_frames,
        rate,
        duration_s=duration,
        variable_frame_rate=vfr,
        frame_times=starts,
    )


def _info(uri: str, header: _Header, num_frames: int, rate: Fraction, **fields: Any) -> VideoInfo:
    """A probe's result from the stream's header, ``num_frames`` frames at ``rate`` (they
    last ``num_frames / rate`` seconds unless ``fields`` gives ``duration_s``)."""
    width, height = header.display_size
    fields.setdefault("duration_s", float(Fraction(num_frames) / rate))
    return VideoInfo(
        uri=uri,
        num_frames=num_frames,
        fps=float(rate),
        frame_rate=rate,
        width=width,
        height=height,
        codec=header.codec,
        container=header.container,
        declared_frames=header.declared_frames or None,
        has_audio=header.has_audio,
        rotation=header.rotation,
        stream_index=header.stream_index,
        video_streams=header.video_streams,
        **fields,
    )


def _constant_rate_info(uri: str, header: _Header, num_frames: int, rate: Fraction) -> VideoInfo:
    return _info(uri, header, num_frames, rate)


def _readable_size(uri: str, path: str) -> int:
    """The size of a file that exists, is not a folder, is not empty and can be opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoOpenFailure("no such file", uri=uri) from None
    except OSError as exc:
        raise VideoOpenFailure(f"cannot stat the file ({exc.strerror})", uri=uri) from None
    if os.path.isdir(path):
        raise VideoOpenFailure("is a directory, not a video file", uri=uri)
    if st.st_size == 0:
        raise VideoOpenFailure("empty file (0 bytes)", uri=uri)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise VideoOpenFailure(f"cannot read the file ({exc.strerror})", uri=uri) from None
    return st.st_size


def _frame_times(uri: str, path: str, header: _Header) -> np.ndarray:
    """``(n, 2)`` start and end time of every frame, snapped to the stream's time base."""
    reader = _open_decord(uri, path, width=32, height=32)
    try:
        num_frames = len(reader)
        if num_frames == 0:
            raise ZeroFrames("the video stream holds no frame", uri=uri)
        return _snap(_timestamps(reader, num_frames), header.time_base)
    finally:
        del reader


def _is_variable(starts: np.ndarray, time_base: Fraction | None = None) -> bool:
    """Whether frame durations vary by more than :data:`VFR_TOLERANCE` of the median and more
    than one tick of ``time_base`` (a constant rate rounded onto a time base it does not
    divide), where a tick is small beside a frame (a quarter of one at most)."""
    if len(starts) < 3:
        return False
    durations = np.diff(starts)
    median = float(np.median(durations))
    if median <= 0:
        return True
    allowed = VFR_TOLERANCE * median
    tick = float(time_base) if time_base is not None and time_base > 0 else 0.0
    if 0 < tick <= median / 4:
        allowed = max(allowed, tick * (1 + 1e-6))
    return bool(np.max(np.abs(durations - median)) > allowed)


def _truncated_info(uri: str, header: _Header, readable: int, min_frames: int) -> VideoInfo:
    if readable == 0:
        raise ZeroFrames("the file is truncated before its first frame", uri=uri)
    if readable < min_frames:
        raise TooFewFrames(f"{readable} frame(s), at least {min_frames} needed", uri=uri)
    return _info(uri, header, readable, header.frame_rate or Fraction(25), truncated=True)


# --- decoding ----------------------------------------------------------------------------------


def target_size(
    width: int,
    height: int,
    *,
    out_width: int | None = None,
    out_height: int | None = None,
    short_side: int | None = None,
) -> tuple[int, int]:
    """The decode size for a ``width`` x ``height`` video.

    Both ``out_width`` and ``out_height``: exactly that size. One of them, or ``short_side``:
    the other side follows the aspect ratio, never upscaled, sides rounded to even numbers.
    """
    for name, v in (("width", out_width), ("height", out_height), ("short_side", short_side)):
        if v is not None and v < 2:
            raise ValueError(f"{name} must be >= 2, got {v!r}")
    if out_width and out_height:
        return int(out_width), int(out_height)
    w: float
    h: float
    if out_width:
        w, h = out_width, out_width * height / width
    elif out_height:
        w, h = out_height * width / height, out_height
    elif short_side:
        scale = short_side / min(width, height)
        w, h = width * scale, height * scale
    else:
        return width, height
    if w >= width and h >= height:
        return width, height
    return max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)


class FrameReader:
    """Decoded frames of one video in chunks: ``for indices, frames in reader`` with
    ``frames`` of shape ``(n, height, width, 3)`` uint8 RGB and ``indices`` the frame numbers.

    Memory is bounded by ``chunk`` frames at the decode size, whatever the video's length.
    Frames are decoded at the reduced size by decord itself (``width`` / ``height`` /
    ``short_side``); ``stride`` keeps every n-th frame; ``start`` / ``end`` restrict the span.

    A file that ends early raises :class:`TruncatedVideo` when decoding stops, or with
    ``allow_truncated`` ends the iteration there (``truncated_at`` tells where). A stream
    damaged in the middle stops at the same frame whatever ``chunk``, ``num_threads`` or the
    machine's load: the frames decoded before the damage are kept, with the pixels an
    undamaged file gives. (A frame the decoder patches up without refusing the data is kept
    as patched; those pixels depend on what it decoded before, so on where reading started.)

    Use as a context manager; the decoder is released on exit (and by :meth:`close`).
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        width: int | None = None,
        height: int | None = None,
        short_side: int | None = None,
        stride: int = 1,
        chunk: int = 64,
        start: int = 0,
        end: int | None = None,
        allow_truncated: bool = False,
        info: VideoInfo | None = None,
        num_threads: int = 0,
        max_side: int = DEFAULT_MAX_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride!r}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk!r}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start!r}")
        if end is not None and end < start:
            raise ValueError(f"end must be >= start ({start}), got {end!r}")
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads!r}")
        target_size(64, 64, out_width=width, out_height=height, short_side=short_side)
        self.uri = os.fspath(uri)
        self._width, self._height, self._short = width, height, short_side
        self.stride, self.chunk, self.start, self._end = stride, chunk, start, end
        self.allow_truncated = allow_truncated
        self.num_threads = num_threads
        self._limits = (max_side, max_pixels)
        self.info = info
        self.size: tuple[int, int] | None = None
        self.truncated_at: int | None = None
        self._reader: Any = None
        self._pyav = False

    # -- lifetime
    def open(self) -> FrameReader:
        if self.info is None:
            self.info = probe(
                self.uri,
                max_side=self._limits[0],
                max_pixels=self._limits[1],
                allow_truncated=self.allow_truncated,
            )
        info = self.info
        self.size = target_size(
            info.width,
            info.height,
            out_width=self._width,
            out_height=self._height,
            short_side=self._short,
        )
        self._pyav = _needs_pyav(info)
        if not self._pyav and self._reader is None:
            w, h = self.size
            opened = _open_decord_sized(self.uri, info.path, w, h, num_threads=self.num_threads)
            if opened is None:
                self._pyav = True
            else:
                self._reader, self.size = opened
        return self

    def close(self) -> None:
        reader, self._reader = self._reader, None
        del reader  # decord frees the FFmpeg context in __del__; keep no other reference

    def __enter__(self) -> FrameReader:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def end(self) -> int:
        assert self.info is not None
        n = self.info.num_frames
        return n if self._end is None else min(self._end, n)

    @property
    def indices(self) -> np.ndarray:
        """The frame numbers this reader yields."""
        return np.arange(self.start, self.end, self.stride, dtype=np.int64)

    def __len__(self) -> int:
        if self.info is None:
            self.open()
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.info is None or self.size is None or (self._reader is None and not self._pyav):
            self.open()
        assert self.info is not None
        if self._pyav:
            yield from self._iter_pyav()
            return
        indices = self.indices
        for lo in range(0, len(indices), self.chunk):
            idx = indices[lo : lo + self.chunk]
            try:
                frames = self._reader.get_batch(idx.tolist()).asnumpy()
            except _decord_error_types() as exc:
                frames = self._salvage(idx, exc)
                if frames is None:
                    return
            yield idx[: len(frames)], frames
            if len(frames) < len(idx):
                return

    def _salvage(self, idx: np.ndarray, exc: BaseException) -> np.ndarray | None:
        """A batch failed: find where clean frames stop, the same way whatever the chunk size
        or the machine's load, and keep the frames of ``idx`` before it.

        decord cannot tell: its decoder runs on a thread of its own, ahead of the frames asked
        for, and an error there discards the frames it had already decoded, so the frame at
        which decord gives up on a damaged stream depends on timing (on one file, anywhere
        from frame 21 to 39 from run to run, with one decoder thread or several), and the
        error sticks to the reader. Instead the chunk is decoded once more by
        :func:`_clean_run` (one thread, nothing running ahead), and its clean frames are
        decoded by decord from a copy of their packets (:func:`_decode_copy`): the pixels the
        fast path gives, at any size. The next chunk, if any, goes to a fresh decord reader.
        """
        assert self.info is not None and self.size is not None
        run = _clean_run(self.info.path, self.info.stream_index, idx, self.size)
        reason = f"decoding stopped at frame {run.stop} of {self.info.num_frames}"
        if run.stop is not None:
            self.truncated_at = run.stop
            if not self.allow_truncated:
                raise TruncatedVideo(reason, uri=self.uri) from exc
        end = int(idx[-1]) + 1 if run.stop is None else run.stop
        kept = [i for i in idx.tolist() if i < end]
        frames = None
        if kept:
            frames = _decode_copy(
                self.uri, self.info.path, self.info.stream_index, run, kept, self.size
            )
            if frames is None:
                log.info(
                    "%s: decord does not decode the clean copy of frames %d-%d; PyAV's are kept",
                    self.uri,
                    kept[0],
                    kept[-1],
                )
                frames = np.stack([run.frames[i] for i in kept])
        if run.stop is not None:
            log.warning("%s: %s; keeping the %d frames before it", self.uri, reason, len(kept))
            return frames
        # every frame of the chunk decodes: the failed reader keeps its error until it seeks
        self._reader = None
        self._reader = _open_decord(
            self.uri,
            self.info.path,
            width=self.size[0],
            height=self.size[1],
            num_threads=self.num_threads,
        )
        return frames

    def _iter_pyav(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """PyAV decoding: for files whose packets end early (decord refuses them; PyAV reads
        what is there), for rotated streams (turned here) and for the files decord decodes
        wrong (:func:`_needs_pyav`) or not at all."""
        import av

        assert self.info is not None and self.size is not None
        w, h = _coded(self.size, self.info.rotation)
        wanted = self.indices
        if len(wanted) == 0:
            return
        last = int(wanted[-1])
        buf_idx: list[int] = []
        buf: list[np.ndarray] = []
        pos = 0
        with av.open(self.info.path) as container:
            stream = _video_stream(container, self.info.stream_index)
            stream.thread_type = "AUTO"
            try:
                for frame in container.decode(stream):
                    if pos > last:
                        break
                    if pos >= self.start and (pos - self.start) % self.stride == 0:
                        buf_idx.append(pos)
                        buf.append(frame.to_ndarray(width=w, height=h, format="rgb24"))
                        if len(buf) == self.chunk:
                            frames = _rotate(np.stack(buf), self.info.rotation)
                            yield np.asarray(buf_idx, dtype=np.int64), frames
                            buf_idx, buf = [], []
                    pos += 1
            except av.error.FFmpegError:
                self.truncated_at = pos
                log.warning("%s: decoding stopped at frame %d (truncated file)", self.uri, pos)
        if buf:
            yield np.asarray(buf_idx, dtype=np.int64), _rotate(np.stack(buf), self.info.rotation)
        if pos <= last and self.truncated_at is None:
            self.truncated_at = pos


# --- salvaging a damaged stream ----------------------------------------------------------------

#: the container :func:`_decode_copy` copies a run of clean packets into (takes any codec decord
#: decodes and keeps the stream's colour and aspect metadata)
SALVAGE_CONTAINER = "matroska"


def _stamp(packet: Any) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts


@dataclass
class _CleanRun:
    """What :func:`_clean_run` found."""

    #: the key frame the decode started from
    key: int
    #: the first frame that does not decode cleanly; ``None``: every frame asked for does
    stop: int | None
    #: the frames asked for that decoded cleanly, at the reader's size (PyAV's conversion)
    frames: dict[int, np.ndarray]
    #: places, among the stream's packets, of those a copy of the run needs: from the key
    #: frame's to the last one decoded before the run's last frame, pictures that come before
    #: the key frame left out
    copy: list[int]


def _clean_run(
    path: str, stream_index: int | None, wanted: np.ndarray, size: tuple[int, int]
) -> _CleanRun:
    """Decode the stream with PyAV on one thread, from the last key frame at or before
    ``wanted[0]`` up to ``wanted[-1]``: which frames decode cleanly, and where that stops.

    Frames are numbered as decord numbers them: by presentation time among all the stream's
    packets. The decoder runs on the calling thread and is fed one packet at a time, so where
    a damaged stream stops is a property of its bytes: the frames the decoder gives before it
    refuses a packet are kept as decoded (damage it conceals included, as a batch decode keeps
    it); of the frames still inside it (its reordering delay), those before the first it flags
    as corrupt.
    """
    import av

    first, last = int(wanted[0]), int(wanted[-1])
    want = set(wanted.tolist())
    packets: list[tuple[int | None, bool]] = []
    with av.open(path) as container:
        stream = _video_stream(container, stream_index)
        with contextlib.suppress(av.error.FFmpegError):  # the packets before the damage
            for p in container.demux(stream):
                if p.size:
                    packets.append((_stamp(p), bool(p.is_keyframe)))
    # frame number of each packet's picture; without timestamps, the order decoded
    rank: list[int] | None = None
    if packets and all(s is not None for s, _ in packets):
        order = sorted(range(len(packets)), key=lambda j: (packets[j][0], j))
        rank = [0] * len(packets)
        for i, j in enumerate(order):
            rank[j] = i
    key, key_packet = 0, 0
    if rank is not None:
        for pos, (_, is_key) in enumerate(packets):
            if is_key and rank[pos] <= first:
                key, key_packet = rank[pos], pos
    place = {} if rank is None else {packets[j][0]: j for j in range(len(packets))}

    w, h = size
    frames: dict[int, np.ndarray] = {}
    last_packet = key_packet - 1
    expected = key

    def take(frame: Any, damaged: bool) -> bool:
        """Keep ``frame`` if it is the next one; ``False``: the run ends here."""
        nonlocal expected, last_packet
        j = place.get(frame.pts) if rank is not None else None
        i = expected if rank is None else (None if j is None else rank[j])
        if i is not None and i < expected:
            return True  # a picture before the key frame, which needs earlier ones
        if i is None or i > expected or (damaged and frame.is_corrupt):
            return False
        if j is not None:
            last_packet = max(last_packet, j)
        if i in want:
            frames[i] = frame.to_ndarray(width=w, height=h, format="rgb24")
        expected += 1
        return expected <= last

    with av.open(path) as container:
        stream = _video_stream(container, stream_index)
        ctx = stream.codec_context
        ctx.thread_count = 1  # no decoder thread: where decoding stops cannot depend on timing
        going, refused = True, False
        try:
            pos = -1
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                pos += 1
                if pos < key_packet:
                    continue
                for frame in ctx.decode(packet):
                    going = take(frame, False)
                    if not going:
                        break
                if not going:
                    break
        except av.error.FFmpegError:
            refused = True
        if going:  # the frames still inside the decoder
            try:
                tail = ctx.decode(None)
            except av.error.FFmpegError:
                tail = []
            for frame in tail:
                if not take(frame, refused):
                    break
    copy = [j for j in range(key_packet, last_packet + 1) if rank is not None and rank[j] >= key]
    return _CleanRun(key=key, stop=expected if expected <= last else None, frames=frames, copy=copy)


def _decode_copy(
    uri: str,
    path: str,
    stream_index: int | None,
    run: _CleanRun,
    kept: list[int],
    size: tuple[int, int],
) -> np.ndarray | None:
    """decord's frames ``kept`` of a clean run, at ``size``, decoded from a copy of the packets
    the run needs (a :data:`SALVAGE_CONTAINER` file) on one decoder thread; ``None`` when the
    copy cannot be made or decord does not decode every packet of it."""
    import tempfile

    import av

    if not run.copy:
        return None
    needed = set(run.copy)
    failures: tuple[type[BaseException], ...] = (
        av.error.FFmpegError,
        OSError,
        ValueError,
        VideoError,
        *_decord_error_types(),
    )
    with tempfile.TemporaryDirectory(prefix="storyloom-salvage-") as tmp:
        copy = os.path.join(tmp, "run.mkv")
        try:
            with av.open(path) as src, av.open(copy, "w", format=SALVAGE_CONTAINER) as out:
                stream = _video_stream(src, stream_index)
                target = out.add_stream_from_template(stream)
                pos = -1
                for packet in src.demux(stream):
                    if not packet.size:
                        continue
                    pos += 1
                    if pos in needed:
                        packet.stream = target
                        out.mux(packet)
                    if pos >= run.copy[-1]:
                        break
            reader = _open_decord(uri, copy, width=size[0], height=size[1], num_threads=1)
            try:
                if len(reader) != len(run.copy):
                    return None
                at = [i - run.key for i in kept]
                frames: np.ndarray = reader.get_batch(at).asnumpy()
                if at[-1] + 1 < len(reader):
                    # decoding the copy to its end shows any packet decord refuses
                    reader.skip_frames(len(reader) - 1 - at[-1])
            finally:
                del reader
        except failures:
            return None
    if frames.shape[1:3] != (size[1], size[0]):
        return None
    return frames


def read_frames(
    uri: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    *,
    width: int | None = None,
    height: int | None = None,
    short_side: int | None = None,
    info: VideoInfo | None = None,
    allow_truncated: bool = False,
) -> np.ndarray:
    """Random access: the frames at ``indices`` as ``(n, h, w, 3)`` uint8 RGB, in the order
    given (repeats allowed). Decoded at the reduced size when one is given.

    Each distinct frame is decoded once, :data:`READ_CHUNK` at a time in frame order, straight
    into its places in the result: memory beyond the result is one chunk, however many frames
    are asked for. ``allow_truncated`` probes as :func:`probe` does with it (a file that ends
    early gives the frames that are there; asking for one that is not raises
    :class:`TruncatedVideo`).
    """
    uri = os.fspath(uri)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    info = info or probe(uri, allow_truncated=allow_truncated)
    bad = idx[(idx < 0) | (idx >= info.num_frames)]
    if len(bad):
        raise ValueError(f"{uri}: frame index {int(bad[0])!r} outside [0, {info.num_frames})")
    w, h = target_size(
        info.width, info.height, out_width=width, out_height=height, short_side=short_side
    )
    out = np.empty((len(idx), h, w, 3), np.uint8)
    if len(idx) == 0:
        return out
    # the distinct frames in frame order; the places in ``out`` of distinct frame u are
    # slots[bounds[u]:bounds[u + 1]]
    wanted, inverse = np.unique(idx, return_inverse=True)
    inverse = inverse.reshape(-1)
    slots = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[slots], np.arange(len(wanted) + 1))

    def place(first: int, frames: np.ndarray) -> None:
        """Put ``frames``, distinct frames ``first``, ``first + 1``, ..., in their places."""
        for u, frame in enumerate(frames, start=first):
            out[slots[bounds[u] : bounds[u + 1]]] = frame

    opened = None if _needs_pyav(info) else _open_decord_sized(uri, info.path, w, h)
    if opened is None:
        found = np.zeros(len(wanted), bool)
        with FrameReader(
            uri, width=w, height=h, info=info, allow_truncated=True, end=int(wanted[-1]) + 1
        ) as reader:
            for fi, frames in reader:
                pos = np.searchsorted(wanted, fi)
                hit = np.flatnonzero(
                    (pos < len(wanted)) & (wanted[np.minimum(pos, len(wanted) - 1)] == fi)
                )
                for j in hit.tolist():
                    place(int(pos[j]), frames[j : j + 1])
                    found[pos[j]] = True
        if not found.all():
            missing = int(wanted[np.flatnonzero(~found)[0]])
            raise TruncatedVideo(f"frame {missing} cannot be decoded", uri=uri)
        return out
    reader, decoded_size = opened
    opened = None  # the reader alone holds decord's FFmpeg context, released below
    try:
        # decord seeks to the key frame before each index; frame order keeps that monotone
        for lo in range(0, len(wanted), READ_CHUNK):
            part = wanted[lo : lo + READ_CHUNK].tolist()
            try:
                frames = reader.get_batch(part).asnumpy()
            except _decord_error_types() as exc:
                raise TruncatedVideo(f"cannot decode frames {part[:8]}: {exc}", uri=uri) from None
            if decoded_size != (w, h):  # decord could not produce this width (_open_decord_sized)
                import cv2

                frames = np.stack(
                    [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]
                )
            place(lo, frames)
            del frames
    finally:
        del reader
    return out


def describe(info: VideoInfo) -> str:
    """One line about a probed video, for logs and the CLI."""
    rate = f"{info.frame_rate.numerator}/{info.frame_rate.denominator}"
    if info.frame_rate.denominator == 1:
        rate = str(info.frame_rate.numerator)
    vfr = " VFR" if info.variable_frame_rate else ""
    turned = f" rotated {info.rotation}" if info.rotation else ""
    return (
        f"{info.width}x{info.height}{turned} {info.codec} {info.num_frames} frames @ {rate} fps{vfr} "
        f"({info.duration_s:.3f} s)"
    )


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "FrameReader",
    "VideoInfo",
    "describe",
    "local_path",
    "probe",
    "read_frames",
    "target_size",
]
