"""Ground truth of a shapes-world corpus: dataclasses that round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from .vocab import SceneFacts


@dataclass
class SceneTruth:
    start_frame: int
    end_frame: int  # exclusive
    caption: str
    color: str
    shape: str
    motion: str
    background: str
    transition_in: str  # "start" | "cut" | "fade" | "dissolve"
    start_s: float = 0.0  # start_frame / fps
    end_s: float = 0.0  # end_frame / fps

    @property
    def facts(self) -> SceneFacts:
        return SceneFacts(self.color, self.shape, self.motion, self.background)

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


@dataclass
class TransitionTruth:
    kind: str  # "fade" | "dissolve"
    start_frame: int
    end_frame: int  # exclusive
    boundary_frame: int  # first frame of the incoming scene


@dataclass
class VideoTruth:
    video_id: str
    file: str  # relative to the corpus root
    fps: float
    fps_fraction: str  # exact, e.g. "30000/1001"
    width: int
    height: int
    num_frames: int
    duration: float  # seconds
    crf: int
    scenes: list[SceneTruth]
    cuts: list[int]
    transitions: list[TransitionTruth]
    source_caption: str
    clean_caption: str  # the correct description (what a clean source caption would be)
    caption_noise: str
    caption_is_noise: bool
    caption_file: str
    timed_captions_file: str | None = None
    duplicate_of: str | None = None
    duplicate_kind: str | None = None
    #: frame i of a duplicate shows frame i + duplicate_offset of its original
    duplicate_offset: int | None = None
    root: Path | None = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> Path:
        """Absolute path of the video file (needs the corpus root)."""
        if self.root is None:
            raise ValueError(f"{self.video_id}: ground truth has no root; load it from a file")
        return self.root / self.file

    @property
    def fps_exact(self) -> Fraction:
        return Fraction(self.fps_fraction)

    @property
    def boundaries(self) -> list[int]:
        """First frame of every scene after the first (cuts and gradual boundaries)."""
        return [s.start_frame for s in self.scenes[1:]]

    def scene_at(self, frame: int) -> SceneTruth:
        for s in self.scenes:
            if s.start_frame <= frame < s.end_frame:
                return s
        raise IndexError(f"{self.video_id}: frame {frame} outside [0, {self.num_frames})")

    def frame_time(self, frame: int) -> float:
        return float(frame / self.fps_exact)

    def timed_captions(self) -> list[dict[str, Any]]:
        """Per-scene truth as ``[{start, end, text}]`` in seconds."""
        return [
            {
                "start": round(self.frame_time(s.start_frame), 6),
                "end": round(self.frame_time(s.end_frame), 6),
                "text": s.caption,
            }
            for s in self.scenes
        ]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("root")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path | None = None) -> VideoTruth:
        d = dict(d)
        d["scenes"] = [SceneTruth(**s) for s in d["scenes"]]
        d["transitions"] = [TransitionTruth(**t) for t in d["transitions"]]
        return cls(**d, root=root)


class _IdIndex(dict[str, VideoTruth]):
    """``gt.by_id["x"]`` and ``gt.by_id("x")`` both work."""

    def __call__(self, video_id: str) -> VideoTruth:
        try:
            return self[video_id]
        except KeyError:
            raise KeyError(f"no video {video_id!r} in the shapes corpus") from None


@dataclass
class GroundTruth:
    seed: int
    params: dict[str, Any]
    videos: list[VideoTruth]
    duplicate_groups: list[list[str]]
    root: Path | None = field(default=None, repr=False, compare=False)

    FILE_NAME = "ground_truth.json"

    @property
    def by_id(self) -> _IdIndex:
        return _IdIndex((v.video_id, v) for v in self.videos)

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self) -> Iterator[VideoTruth]:
        return iter(self.videos)

    @property
    def webvid_csv(self) -> Path:
        return self._under("webvid.csv")

    @property
    def manifest_jsonl(self) -> Path:
        return self._under("manifest.jsonl")

    @property
    def videos_dir(self) -> Path:
        return self._under("videos")

    def _under(self, name: str) -> Path:
        if self.root is None:
            raise ValueError("ground truth has no root; load it from a file")
        return self.root / name

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "storyloom-shapes-world/1",
            "seed": self.seed,
            "params": self.params,
            "videos": [v.to_dict() for v in self.videos],
            "duplicate_groups": self.duplicate_groups,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The ground truth as JSON (stable key order); also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False, sort_keys=False) + "\n"
        if path is not None:
            path = Path(path)
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        return text

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GroundTruth:
        """Load ``ground_truth.json`` (or the corpus folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / cls.FILE_NAME
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read shapes-world ground truth: {exc}") from exc
        root = path.resolve().parent
        return cls(
            seed=d["seed"],
            params=d["params"],
            videos=[VideoTruth.from_dict(v, root) for v in d["videos"]],
            duplicate_groups=d["duplicate_groups"],
            root=root,
        )
