"""Writing generated frames: streamed video files (mp4 / mkv / mov / webm / GIF) and preview sheets.

::

    with VideoWriter("story.mp4", fps=8) as writer:
        for level_frames in frames_in_chunks:       # (N, H, W, 3) uint8, any number of chunks
            writer.write(level_frames)

    preview_sheet([(0, 0.0, "a red circle", img0), ...], "story_preview.png")

Video files are encoded with PyAV (FFmpeg): H.264 (libx264, yuv420p) by default, frames
encoded as they arrive, so memory does not grow with the video's length. Odd widths or heights
are padded to even (4:2:0 needs them) by repeating the last row / column. GIF goes through
Pillow, which writes a GIF only once all frames are known: the writer keeps each frame
palettised (one byte per pixel) until it closes; use mp4 for long videos. Files are written
under a temporary name and renamed when complete, so a crash never leaves a truncated video
under the final name.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "CODECS",
    "CONTAINERS",
    "MAX_GIF_FPS",
    "ExportError",
    "SheetEntry",
    "VideoWriter",
    "export_video",
    "plan_sheet",
    "preview_sheet",
    "sheet_entries",
]

#: container (FFmpeg muxer) by file extension; ".gif" is written by Pillow
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
#: codec name -> (FFmpeg encoder, pixel format, encoder options)
CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "h264": ("libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    "hevc": (
        "libx265",
        "yuv420p",
        {"crf": "20", "preset": "medium", "x265-params": "log-level=error"},
    ),
    "mpeg4": ("mpeg4", "yuv420p", {"qscale": "3"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"crf": "30", "b": "0"}),
}
_CODEC_ALIASES = {"h265": "hevc", "x264": "h264", "avc": "h264", "vpx": "vp9"}
_WEBM_CODECS = ("vp9",)
#: the fastest frame rate a GIF plays at: its delays are whole centiseconds, and browsers slow
#: a delay under 2 cs (20 ms) down to 100 ms
MAX_GIF_FPS = 50
#: the NTSC rates (N × 1000/1001), by their nominal N: 29.97 is 30000/1001
_NTSC_BASES = (15, 24, 30, 48, 60, 120, 240)


class ExportError(RuntimeError):
    """Writing a video or sheet failed; the message names the file and the reason."""


def _rate(fps: float | Fraction) -> Fraction:
    """The frame rate as a fraction: an NTSC rate written to two or three decimals (23.976,
    23.98, 29.97, 59.94, ...) and its exact fraction both become N×1000/1001 (30000/1001), the
    rate players and ffprobe report; any other rate its nearest fraction with a denominator of
    at most 1001 (12.5 is 25/2)."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    for base in _NTSC_BASES:
        ntsc = Fraction(base * 1000, 1001)
        if fps == ntsc or any(abs(fps - round(float(ntsc), d)) < 1e-9 for d in (2, 3)):
            return ntsc
    return Fraction(fps).limit_denominator(1001)


def check_video_path(path: str | os.PathLike[str], fps: float | None = None) -> str:
    """The kind of video ``path`` names (``"gif"`` or ``"ffmpeg"``) from its extension;
    ``ValueError`` for an extension :class:`VideoWriter` does not write, or a GIF faster than
    :data:`MAX_GIF_FPS` (``fps``, where given)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext != ".gif" and ext not in CONTAINERS:
        raise ValueError(
            f"{path}: unknown video extension {ext!r}; expected one of "
            f"{sorted([*CONTAINERS, '.gif'])}"
        )
    if ext == ".gif" and fps is not None and float(_rate(fps)) > MAX_GIF_FPS:
        raise ValueError(
            f"{path}: a GIF plays at most {MAX_GIF_FPS} fps (its frame delays are whole "
            f"centiseconds, and browsers slow delays under 20 ms down to 100 ms), asked for "
            f"{fps:g} fps; write .mp4, .mkv or .webm, or lower the frame rate"
        )
    return "gif" if ext == ".gif" else "ffmpeg"


def gif_durations(count: int, fps: float | Fraction) -> list[int]:
    """The delays, in milliseconds, of ``count`` GIF frames at ``fps``: whole centiseconds, the
    rounding carried from frame to frame so that frame ``k`` starts within 5 ms of ``k / fps``
    and the whole runs ``count / fps`` seconds to the nearest centisecond (8 fps: 130, 120,
    130, 120, ... ms)."""
    rate = _rate(fps)
    # frame k starts at k / rate seconds: 100 k / rate centiseconds, rounded half up
    starts = [math.floor(Fraction(100 * k) / rate + Fraction(1, 2)) for k in range(count + 1)]
    return [10 * (b - a) for a, b in zip(starts, starts[1:])]


def as_uint8_frames(frames: Any, *, where: str = "frames") -> np.ndarray:
    """``(N, H, W, 3)`` uint8 from uint8 or float-in-[0, 1] arrays, one frame or many, or a PIL
    image; ``ValueError`` naming the shape or range otherwise."""
    if hasattr(frames, "convert") and hasattr(frames, "size"):  # a PIL image
        frames = np.asarray(frames.convert("RGB"))
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"{where}: expected (N, H, W, 3) or (H, W, 3) RGB frames, got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        if lo < -1e-3 or hi > 1 + 1e-3 or not math.isfinite(lo + hi):
            raise ValueError(
                f"{where}: float frames must lie in [0, 1], got values from {lo:g} to {hi:g}"
            )
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"{where}: expected uint8 or float frames, got dtype {arr.dtype}")


class VideoWriter:
    """Stream frames into a video file; the format follows the extension.

    ``codec`` applies to FFmpeg containers (``h264``, ``hevc``, ``mpeg4``, ``vp9``; ``.webm``
    uses ``vp9``); ``quality`` overrides the encoder's CRF (lower is better). The file appears
    under ``path`` only when the writer closes without error.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float,
        codec: str = "h264",
        quality: int | None = None,
        loop: int = 0,
    ) -> None:
        self.path = Path(path)
        self.rate = _rate(fps)
        self.fps = float(self.rate)
        ext = self.path.suffix.lower()
        self.kind = check_video_path(self.path, fps)
        codec = _CODEC_ALIASES.get(codec, codec)
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
        if ext == ".webm" and codec not in _WEBM_CODECS:
            codec = "vp9"
        if quality is not None and (
            isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 63
        ):
            raise ValueError(f"quality must be an integer CRF in [0, 63], got {quality!r}")
        if isinstance(loop, bool) or not isinstance(loop, int) or loop < 0:
            raise ValueError(f"loop must be an integer >= 0 (0 loops forever), got {loop!r}")
        self.codec = codec
        self.quality = quality
        self.loop = loop
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the input frames
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{ext}")
        self._container: Any = None
        self._stream: Any = None
        self._gif_frames: list[Any] = []
        self._closed = False

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (width, height)
        if self.kind == "gif":
            return
        import av

        encoder, pix_fmt, options = CODECS[self.codec]
        options = dict(options)
        if self.quality is not None:
            options["crf"] = str(self.quality)
        try:
            self._container = av.open(
                str(self._tmp), "w", format=CONTAINERS[self.path.suffix.lower()]
            )
            stream = self._container.add_stream(encoder, rate=self.rate, options=options)
        except Exception as exc:  # FFmpeg errors come in many types; name the file
            self._cleanup()
            raise ExportError(f"{self.path}: cannot open a {encoder} encoder ({exc})") from exc
        # 4:2:0 chroma needs even sizes: pad by one repeated row / column where odd
        stream.width = width + width % 2
        stream.height = height + height % 2
        stream.pix_fmt = pix_fmt
        self._stream = stream

    def write(self, frames: Any) -> None:
        """Append frames: ``(N, H, W, 3)`` or ``(H, W, 3)``, uint8 or float in [0, 1]."""
        if self._closed:
            raise ExportError(f"{self.path}: writer is closed")
        batch = as_uint8_frames(frames, where=str(self.path))
        if batch.shape[0] == 0:
            return
        height, width = batch.shape[1:3]
        if self.size is None:
            self._open(width, height)
        elif (width, height) != self.size:
            raise ValueError(
                f"{self.path}: frame {self.frames_written} is {width}x{height}, earlier frames "
                f"are {self.size[0]}x{self.size[1]}"
            )
        if self.kind == "gif":
            from PIL import Image

            for frame in batch:
                # palettise now so a held frame costs one byte per pixel
                self._gif_frames.append(
                    Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT)
                )
            self.frames_written += len(batch)
            return
        import av

        pad_h, pad_w = height % 2, width % 2
        for frame in batch:
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            try:
                for packet in self._stream.encode(video_frame):
                    self._container.mux(packet)
            except Exception as exc:
                self.abort()
                raise ExportError(
                    f"{self.path}: encoding frame {self.frames_written} failed ({exc})"
                ) from exc
            self.frames_written += 1

    def close(self) -> Path:
        """Finish the file and move it to ``path``; returns the path."""
        if self._closed:
            return self.path
        self._closed = True
        if self.frames_written == 0:
            self._cleanup()
            raise ExportError(f"{self.path}: no frames were written")
        try:
            if self.kind == "gif":
                first, *rest = self._gif_frames
                # GIF delays are whole centiseconds: one delay for all (Pillow truncates 125 ms
                # to 120) would run 8 fps 4 % fast; per frame, 8 fps is 130, 120, 130, ... ms
                first.save(
                    self._tmp,
                    save_all=True,
                    append_images=rest,
                    duration=gif_durations(len(self._gif_frames), self.rate),
                    loop=self.loop,
                    optimize=False,
                    disposal=1,
                )
                self._gif_frames = []
            else:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._container.close()
                self._container = None
            os.replace(self._tmp, self.path)
        except Exception as exc:
            self._cleanup()
            raise ExportError(f"{self.path}: finishing the file failed ({exc})") from exc
        log.info(
            "wrote %s: %d frames, %dx%d at %s fps",
            self.path,
            self.frames_written,
            self.size[0] if self.size else 0,
            self.size[1] if self.size else 0,
            f"{self.fps:g}",
        )
        return self.path

    def abort(self) -> None:
        """Stop without producing the file (the temporary file is removed)."""
        self._closed = True
        self._cleanup()

    def _cleanup(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # already failing; the temporary file goes either way
                log.debug("closing %s after an error failed", self._tmp, exc_info=True)
            self._container = None
        self._gif_frames = []
        self._tmp.unlink(missing_ok=True)


def export_video(
    frames: Iterable[Any],
    path: str | os.PathLike[str],
    fps: float,
    *,
    codec: str = "h264",
    quality: int | None = None,
    progress: bool = False,
    total: int | None = None,
) -> Path:
    """Write an iterable of frames or frame batches to ``path``; returns the path."""
    items: Iterable[Any] = frames
    if progress:
        from tqdm.auto import tqdm

        if total is None and hasattr(frames, "__len__"):
            total = len(frames)  # type: ignore[arg-type]
        items = tqdm(frames, total=total, desc=f"writing {Path(path).name}", unit="batch")
    with VideoWriter(path, fps=fps, codec=codec, quality=quality) as writer:
        for item in items:
            writer.write(item)
    return Path(path)


# --------------------------------------------------------------------- preview sheets
@dataclass(frozen=True)
class SheetEntry:
    """One tile of a preview sheet: the frame's index, its time, its prompt and its pixels."""

    index: int
    time_s: float
    prompt: str
    image: Any


def sheet_entries(
    frames: Any,
    indices: Sequence[int],
    *,
    fps: float,
    prompts: Sequence[str] | None = None,
) -> list[SheetEntry]:
    """Tiles for the frames at ``indices`` of a ``(N, H, W, 3)`` video, with their prompts."""
    rate = float(_rate(fps))
    out = []
    for i in indices:
        if not 0 <= i < len(frames):
            raise IndexError(f"frame {i} out of range: the video has {len(frames)} frames")
        prompt = prompts[i] if prompts is not None else ""
        out.append(SheetEntry(int(i), i / rate, prompt, frames[i]))
    return out


def plan_sheet(
    frames: Any,
    plan: Any,
    path: str | os.PathLike[str] | None,
    *,
    level: int = 0,
    title: str | None = None,
    **kwargs: Any,
) -> Any:
    """The preview sheet of a rendered plan: the frames one level made (default: the global
    keyframes), each with its time and prompt. ``frames``: the video, ``(N, H, W, 3)`` or a
    sequence / mapping of frames by index. Extra keyword arguments go to :func:`preview_sheet`.
    """
    if not 0 <= level < len(plan.levels):
        raise ValueError(f"level must lie in [0, {len(plan.levels) - 1}], got {level!r}")
    fps = plan.fps or 1.0
    indices = sorted(
        {f for call in plan.levels[level].calls for f in call.new_frames if f < plan.num_frames}
    )
    prompts = plan.prompts or [""] * plan.num_frames
    entries = [SheetEntry(i, i / fps, prompts[i], frames[i]) for i in indices]
    if title is None:
        seconds = f" ({plan.num_frames / plan.fps:.1f} s at {plan.fps:g} fps)" if plan.fps else ""
        title = (
            f"level {level}{' (global keyframes)' if level == 0 else ''} of {plan.rounds} "
            f"levels: {len(entries)} of {plan.num_frames} frames"
            f"{seconds}, {plan.model_calls} model calls"
        )
    return preview_sheet(entries, path, title=title, **kwargs)


def _font(size: int, font_path: str | os.PathLike[str] | None) -> Any:
    from PIL import ImageFont

    if font_path is not None:
        return ImageFont.truetype(str(font_path), size)
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap measured in pixels; the last line ends in '...' when text is cut."""
    words = text.split()
    lines: list[str] = []
    line = ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            # a single word wider than the tile is cut by characters below
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    out = []
    for piece in lines:
        while font.getlength(piece) > width and len(piece) > 1:
            piece = piece[:-1]
        out.append(piece)
    if len(out) > max_lines:
        out = out[:max_lines]
        last = out[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        out[-1] = last.rstrip() + "..."
    return out


def preview_sheet(
    frames: Iterable[SheetEntry | tuple[int, float, str, Any]],
    path: str | os.PathLike[str] | None,
    *,
    columns: int = 4,
    thumb_width: int = 256,
    title: str | None = None,
    font_size: int = 14,
    max_prompt_lines: int = 3,
    font_path: str | os.PathLike[str] | None = None,
) -> Any:
    """A PNG grid of keyframes, each labelled with its frame index, time and prompt.

    ``frames``: ``(index, time_s, prompt, image)`` tuples or :class:`SheetEntry`; images are
    ``(H, W, 3)`` arrays (uint8 or float in [0, 1]) or PIL images. Long prompts wrap to
    ``max_prompt_lines`` lines. Returns the ``PIL.Image``; saves it to ``path`` when given.
    """
    from PIL import Image, ImageDraw

    for name, value, lo in (
        ("columns", columns, 1),
        ("thumb_width", thumb_width, 16),
        ("font_size", font_size, 6),
        ("max_prompt_lines", max_prompt_lines, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    entries = [e if isinstance(e, SheetEntry) else SheetEntry(*e) for e in frames]
    if not entries:
        raise ValueError("preview_sheet needs at least one frame")

    font = _font(font_size, font_path)
    title_font = _font(round(font_size * 1.3), font_path)
    thumbs = []
    for e in entries:
        arr = as_uint8_frames(e.image, where=f"frame {e.index}")[0]
        img = Image.fromarray(arr)
        height = max(1, round(img.height * thumb_width / img.width))
        thumbs.append(img.resize((thumb_width, height), Image.Resampling.LANCZOS))

    pad = max(6, font_size // 2)
    line_h = round(font_size * 1.25)
    label_h = line_h * (1 + max_prompt_lines)
    cell_h = max(t.height for t in thumbs) + pad + label_h
    cell_w = thumb_width
    cols = min(columns, len(entries))
    rows = math.ceil(len(entries) / cols)
    title_text = title if title is not None else f"{len(entries)} keyframes"
    title_lines = _wrap(title_text, title_font, cols * (cell_w + pad) - pad, 2)
    title_h = round(font_size * 1.3 * 1.3) * len(title_lines) + pad
    width = pad + cols * (cell_w + pad)
    height = pad + title_h + rows * (cell_h + pad)

    sheet = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for line in title_lines:
        draw.text((pad, y), line, fill=(20, 20, 20), font=title_font)
        y += round(font_size * 1.3 * 1.3)
    for k, (entry, thumb) in enumerate(zip(entries, thumbs)):
        r, c = divmod(k, cols)
        x0 = pad + c * (cell_w + pad)
        y0 = pad + title_h + r * (cell_h + pad)
        sheet.paste(thumb, (x0, y0))
        ty = y0 + thumb.height + pad // 2
        draw.text((x0, ty), f"#{entry.index}  {entry.time_s:.2f} s", fill=(90, 90, 90), font=font)
        # a prompt that continues from the tile before is greyed, so the cuts stand out
        changed = k == 0 or entry.prompt != entries[k - 1].prompt
        if changed and k > 0:
            draw.rectangle(
                (x0 - pad // 2 - 1, y0, x0 - pad // 2 + 1, y0 + cell_h), fill=(214, 80, 40)
            )
        colour = (20, 20, 20) if changed else (150, 150, 150)
        for line in _wrap(entry.prompt, font, cell_w, max_prompt_lines):
            ty += line_h
            draw.text((x0, ty), line, fill=colour, font=font)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
        try:
            sheet.save(tmp, format="PNG")
            os.replace(tmp, path)
        finally:  # nothing left under the temporary name, written or not
            tmp.unlink(missing_ok=True)
    return sheet
