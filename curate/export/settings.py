"""What an export is asked for and what it writes: :class:`ExportSettings`, the names of its
files, the index schema, and the stages and error types of its failures rows."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from schemas.tables import SEGMENT

from ..errors import CurateError
from ..h264 import X264_PRESETS

#: a sample's timed prompts have the stories table's segment fields, in its order
SEGMENT_FIELDS = tuple(field.name for field in SEGMENT)

INDEX_NAME = "_index.parquet"
FAILURES_NAME = "_failures.parquet"
EXPORT_NAME = "_export.json"
PARTS_DIR = "_parts"
SETTINGS_NAME = "_settings.json"
EXPORT_FORMAT = "storyloom-shards/1"
RESIZE_MODES = ("scale", "crop")
#: the highest export fps: far above any training clip's, low enough that a window's frame
#: numbers stay small (``--fps 1e12`` would plan arrays of terabytes)
MAX_FPS = 1000.0
PIX_FMTS = ("yuv420p", "yuv444p")
#: header fields of every tar member: fixed, so the same samples give the same bytes
TAR_MTIME = 0
TAR_MODE = 0o444

#: failures stages and error types written by the export
STAGE_PLAN = "export-plan"
STAGE_DECODE = "export-decode"
STAGE_ENCODE = "export-encode"
STAGE_RUN = "curate-run"
RUN_TOO_SHORT = "RunTooShort"
OUTSIDE_WINDOWS = "OutsideWindows"
NO_PROMPT = "NoPrompt"
SAMPLE_CAP = "SampleCap"
UPSAMPLED_SOURCE = "UpsampledSource"
INVALID_VALUE = "InvalidValue"

#: one row of ``_index.parquet`` per sample
INDEX_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        # the clip holding most of the sample's frames, and its prompt
        pa.field("clip_id", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("clip_ids", pa.list_(pa.string())),
        # the source span: first source frame, one past the last
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("segments", pa.list_(SEGMENT), nullable=False),
        # where the mp4 lies inside the tar (random access without reading the tar)
        pa.field("mp4_offset", pa.int64(), nullable=False),
        pa.field("mp4_bytes", pa.int64(), nullable=False),
    ]
)


class ExportError(CurateError):
    """The run folder cannot be exported, or the output folder holds another export."""

    stage = "export"


def parse_size(text: str | int) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"96x64"`` -> (96, 64) (width x height, even sides)."""
    s = str(text).strip().lower()
    try:
        parts = s.split("x", 1) if "x" in s else [s, s]
        w, h = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"size must be N or WxH, got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise ValueError(f"size must have even sides of at least 16 pixels, got {text!r}")
    return w, h


def parse_bytes(text: str | int) -> int:
    """``"64MB"``, ``"500KB"``, ``"1GiB"`` or a plain number of bytes."""
    s = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)(i?)B?", s, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"expected a size such as 64MB or 500KB, got {text!r}")
    base = 1024 if m[3] else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3}[m[2].upper()]
    value = int(float(m[1]) * base**power)
    if value < 1:
        raise ValueError(f"expected a positive size, got {text!r}")
    return value


@dataclass(frozen=True)
class ExportSettings:
    """What ``curate export`` writes. Every field enters the shards, so a resumed export must
    use the same settings."""

    width: int = 64
    height: int = 64
    fps: float = 8.0
    #: frames per sample
    frames: int = 16
    #: "scale": the whole frame resized (aspect not kept); "crop": scaled to cover, centre crop
    resize: str = "scale"
    crf: int = 23
    preset: str = "veryfast"
    #: "yuv420p" (what players expect) or "yuv444p" (full-resolution colour: at 64 px the
    #: chroma subsampling of yuv420p blurs thin details, e.g. a ring's hole, away)
    pix_fmt: str = "yuv420p"
    samples_per_shard: int | None = 1000
    shard_bytes: int | None = None
    include_dropped: bool = False
    raw: bool = False
    #: stop planning after this many samples (videos in plan order; the rest become failures)
    max_samples: int | None = None
    #: export a video whose fps is below ``fps`` by repeating its frames; by default such a
    #: video is not exported (its clips become UpsampledSource failures rows)
    allow_upsample: bool = False

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16 or v % 2:
                raise ValueError(f"{name} must be an even integer >= 16, got {v!r}")
        if (
            isinstance(self.fps, bool)
            or not isinstance(self.fps, int | float)
            or not (self.fps > 0 and math.isfinite(self.fps))
        ):
            raise ValueError(f"fps must be a finite number > 0, got {self.fps!r}")
        if self.fps > MAX_FPS:
            raise ValueError(f"fps must be at most {MAX_FPS:g}, got {self.fps!r}")
        # 8 and 8.0 must write the same JSON, or a resumed export would differ
        object.__setattr__(self, "fps", float(self.fps))
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise ValueError(f"frames must be a positive integer, got {self.frames!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.pix_fmt not in PIX_FMTS:
            raise ValueError(f"pix_fmt must be one of {PIX_FMTS}, got {self.pix_fmt!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf!r}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {X264_PRESETS}, got {self.preset!r}")
        if self.samples_per_shard is None and self.shard_bytes is None:
            raise ValueError("give samples_per_shard or shard_bytes (or both)")
        for name in ("samples_per_shard", "shard_bytes", "max_samples"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.raw and self.include_dropped:
            raise ValueError("raw exports every input video already; drop include_dropped")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
