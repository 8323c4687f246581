"""Shapes-world videos and corpora: plans, caption noise, duplicates, manifests."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .render import SceneRenderer
from .truth import GroundTruth, SceneTruth, TransitionTruth, VideoTruth
from .video import parse_fps, write_video
from .vocab import (
    BACKGROUNDS,
    BOILERPLATE,
    COLORS,
    DUPLICATE_KINDS,
    MOTIONS,
    NOISE_KINDS,
    NON_ASCII,
    SHAPES,
    TRANSITION_KINDS,
    SceneFacts,
    compatible,
    join_captions,
    parse_caption,
)

log = logging.getLogger(__name__)

#: smallest corpus frame size (shapes stay readable from pixels down to about this size)
MIN_WIDTH, MIN_HEIGHT = 64, 48
DEFAULT_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (284, 160),
    (320, 240),
    (640, 360),
    (1280, 720),
)
#: sampling weights of DEFAULT_RESOLUTIONS: mostly small, 720p a minority
DEFAULT_RESOLUTION_WEIGHTS: tuple[float, ...] = (0.4, 0.4, 0.15, 0.05)
DEFAULT_FPS: tuple[Fraction, ...] = (
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
)

# --- video plans ----------------------------------------------------------------------------


@dataclass
class _ScenePlan:
    facts: SceneFacts
    num_frames: int
    seed: int
    transition_in: str = "start"  # kind of the transition that enters this scene
    transition_len: int = 0  # frames of that transition (gradual only)


@dataclass
class VideoPlan:
    """Everything needed to render one video; rendering it is a pure function of the plan."""

    video_id: str
    width: int
    height: int
    fps: Fraction
    crf: int
    scenes: list[_ScenePlan]
    trim: tuple[int, int] = (0, 0)  # frames dropped at (start, end): trimmed duplicates
    render_size: tuple[int, int] | None = None  # (w, h) rendered before resizing, if resized

    @property
    def full_frames(self) -> int:
        return sum(s.num_frames for s in self.scenes)

    def layout(self) -> tuple[list[int], list[tuple[str, int, int, int]]]:
        """Scene starts (untrimmed) and gradual transitions as (kind, start, end, boundary)."""
        starts, transitions, pos = [], [], 0
        for s in self.scenes:
            starts.append(pos)
            if s.transition_in in TRANSITION_KINDS:
                t0 = pos - s.transition_len // 2
                transitions.append((s.transition_in, t0, t0 + s.transition_len, pos))
            pos += s.num_frames
        return starts, transitions

    def frames(self) -> Iterator[np.ndarray]:
        """Render the video frame by frame (uint8 RGB, at the output size)."""
        w, h = self.render_size or (self.width, self.height)
        starts, _ = self.layout()
        n = self.full_frames
        # each scene renders over its own span plus what it lends to gradual transitions
        spans = []
        for i, s in enumerate(self.scenes):
            pre = s.transition_len // 2 if s.transition_in in TRANSITION_KINDS else 0
            nxt = self.scenes[i + 1] if i + 1 < len(self.scenes) else None
            post = (
                nxt.transition_len - nxt.transition_len // 2
                if nxt is not None and nxt.transition_in in TRANSITION_KINDS
                else 0
            )
            spans.append((starts[i] - pre, starts[i] + s.num_frames + post))
        renderers: dict[int, SceneRenderer] = {}

        def scene_frame(i: int, f: int) -> np.ndarray:
            if i not in renderers:
                a, b = spans[i]
                renderers[i] = SceneRenderer(
                    self.scenes[i].facts,
                    num_frames=b - a,
                    width=w,
                    height=h,
                    seed=self.scenes[i].seed,
                )
                renderers.pop(i - 2, None)  # scenes are visited in order
            return renderers[i].frame(f - spans[i][0])

        cur = 0
        first, last = self.trim[0], n - self.trim[1]
        for f in range(first, last):
            while f >= starts[cur] + self.scenes[cur].num_frames:
                cur += 1
            img = self._mix(f, cur, starts, scene_frame)
            if self.render_size is not None:
                img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
            yield img

    def _mix(
        self,
        f: int,
        cur: int,
        starts: list[int],
        scene_frame: Callable[[int, int], np.ndarray],
    ) -> np.ndarray:
        # is f inside a gradual transition into the current scene, or out of it into the next?
        for nxt in (cur, cur + 1):
            if nxt == 0 or nxt >= len(self.scenes):
                continue
            s = self.scenes[nxt]
            if s.transition_in not in TRANSITION_KINDS:
                continue
            boundary = starts[nxt]
            length = s.transition_len
            t0 = boundary - length // 2
            if not t0 <= f < t0 + length:
                continue
            k = f - t0
            if s.transition_in == "dissolve":
                a = (k + 1) / (length + 1)
                out_f = scene_frame(nxt - 1, f).astype(np.float32)
                in_f = scene_frame(nxt, f).astype(np.float32)
                return np.clip(out_f + (in_f - out_f) * a + 0.5, 0, 255).astype(np.uint8)
            # fade through black: out to pure black at boundary - 1, in from black at boundary
            half_out, half_in = length // 2, length - length // 2
            if f < boundary:
                gain = 1.0 - (k + 1) / half_out
                img = scene_frame(nxt - 1, f)
            else:
                gain = (f - boundary) / half_in
                img = scene_frame(nxt, f)
            return np.clip(img.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
        return scene_frame(cur, f)

    def truth(self, file: str, caption_file: str) -> VideoTruth:
        """Ground truth of the rendered (trimmed) video; captions are filled in by the caller."""
        starts, transitions = self.layout()
        off = self.trim[0]
        n = self.full_frames - self.trim[0] - self.trim[1]
        scenes: list[SceneTruth] = []
        cuts: list[int] = []
        for s, a in zip(self.scenes, starts, strict=True):
            start = max(0, a - off)
            end = min(n, a + s.num_frames - off)
            if end <= start:
                continue
            kind = "start" if not scenes else s.transition_in
            scenes.append(
                SceneTruth(
                    start_frame=start,
                    end_frame=end,
                    caption=s.facts.caption,
                    color=s.facts.color,
                    shape=s.facts.shape,
                    motion=s.facts.motion,
                    background=s.facts.background,
                    transition_in=kind,
                    start_s=round(float(start / self.fps), 6),
                    end_s=round(float(end / self.fps), 6),
                )
            )
            if kind == "cut":
                cuts.append(start)
        trans = [
            TransitionTruth(kind, t0 - off, t1 - off, b - off)
            for kind, t0, t1, b in transitions
            if t0 - off >= 0 and t1 - off <= n
        ]
        return VideoTruth(
            video_id=self.video_id,
            file=file,
            fps=float(self.fps),
            fps_fraction=f"{self.fps.numerator}/{self.fps.denominator}",
            width=self.width,
            height=self.height,
            num_frames=n,
            duration=round(float(n / self.fps), 6),
            crf=self.crf,
            scenes=scenes,
            cuts=cuts,
            transitions=trans,
            source_caption="",
            clean_caption="",
            caption_noise="clean",
            caption_is_noise=False,
            caption_file=caption_file,
        )


def random_facts(rng: np.random.Generator, *, avoid: SceneFacts | None = None) -> SceneFacts:
    """Random scene facts whose colour suits the background; differs from ``avoid`` in both
    background and colour, so a hard cut between them changes every pixel region visibly."""
    while True:
        color = _choice(rng, tuple(COLORS))
        background = _choice(rng, tuple(BACKGROUNDS))
        if not compatible(color, background):
            continue
        if avoid is not None and (color == avoid.color or background == avoid.background):
            continue
        return SceneFacts(color, _choice(rng, SHAPES), _choice(rng, MOTIONS), background)


def _choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def plan_video(
    video_id: str,
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    fps: Fraction,
    num_scenes: int,
    scene_seconds: tuple[float, float],
    transition_rate: float,
    crf: int = 23,
) -> VideoPlan:
    scenes: list[_ScenePlan] = []
    prev: SceneFacts | None = None
    for i in range(num_scenes):
        facts = random_facts(rng, avoid=prev)
        # long enough for two 16-frame transitions plus a clean middle
        n = max(40, round(rng.uniform(*scene_seconds) * float(fps)))
        kind, length = "start", 0
        if i > 0:
            kind = _choice(rng, TRANSITION_KINDS) if rng.random() < transition_rate else "cut"
            length = int(rng.integers(8, 17)) if kind != "cut" else 0
        scenes.append(_ScenePlan(facts, n, int(rng.integers(2**31)), kind, length))
        prev = facts
    return VideoPlan(video_id, width, height, fps, crf, scenes)


# --- captions -------------------------------------------------------------------------------


def clean_caption(facts: Sequence[SceneFacts], rng: np.random.Generator | None = None) -> str:
    return join_captions([f.caption for f in facts], rng)


def truncate_caption(text: str, rng: np.random.Generator) -> str:
    """Cut ``text`` inside a word somewhere in its middle, so it loses its tail."""
    inside = [
        i
        for i in range(int(len(text) * 0.25), max(int(len(text) * 0.9), 2))
        if text[i - 1].isalpha() and text[i].isalpha()
    ]
    if not inside:
        return text[: max(1, len(text) // 2)]
    return text[: inside[int(rng.integers(len(inside)))]]


def truncated_is_noise(text: str, first: SceneFacts) -> bool:
    """A truncated caption is usable while it still names the first scene's colour and shape."""
    return re.search(rf"\b{first.color}\s+{first.shape}\b", text, re.IGNORECASE) is None


def _facts_overlap(a: Sequence[SceneFacts], b: Sequence[SceneFacts]) -> bool:
    pairs = {(f.color, f.shape) for f in a}
    return any((f.color, f.shape) in pairs for f in b)


# --- the corpus -----------------------------------------------------------------------------


def _parse_resolution(value: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if not m:
            raise ValueError(f"resolution must look like 320x240, got {value!r}")
        w, h = int(m[1]), int(m[2])
    else:
        w, h = (int(v) for v in value)
    if w < MIN_WIDTH or h < MIN_HEIGHT or w % 2 or h % 2:
        raise ValueError(
            f"resolution must be even and at least {MIN_WIDTH}x{MIN_HEIGHT}, got {w}x{h}"
        )
    return w, h


def iso_duration(seconds: float) -> str:
    """WebVid's duration format: whole seconds as ``PT00H00M12S``."""
    s = int(seconds)
    return f"PT{s // 3600:02d}H{s % 3600 // 60:02d}M{s % 60:02d}S"


def generate_corpus(
    out_dir: str | os.PathLike[str],
    *,
    videos: int = 20,
    seed: int = 0,
    noise_rate: float = 0.3,
    duplicate_rate: float = 0.1,
    transition_rate: float = 0.3,
    resolutions: Sequence[str | tuple[int, int]] | None = None,
    fps_choices: Sequence[float | str | Fraction] | None = None,
    min_scenes: int = 1,
    max_scenes: int = 5,
    scene_seconds: tuple[float, float] = (1.5, 5.0),
    timed_caption_rate: float = 0.5,
    ensure_variety: bool = False,
    preset: str = "veryfast",
    overwrite: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> GroundTruth:
    """Write a shapes-world corpus under ``out_dir`` and return its ground truth.

    The same ``seed`` and settings give byte-identical ground truth and identical frames.
    ``ensure_variety`` forces at least one of each gradual transition, a 29.97 fps video,
    one video per caption-noise kind and a duplicate (as far as ``videos`` allows), for
    fixtures that must rely on them. ``preset`` is libx264's speed preset (``ultrafast`` is
    about three times faster to write than the default ``veryfast``, with larger files).

    Layout: ``videos/<id>.mp4`` with sidecars ``<id>.txt`` (the source caption) and, for some,
    ``<id>.json`` (timed captions); ``webvid.csv``, ``manifest.jsonl``, ``ground_truth.json``.
    ``workers`` processes render and encode videos in parallel (0: one per CPU, at most 4;
    1: in this process); the output does not depend on it.
    A folder that already holds a corpus is refused unless ``overwrite``; then the old corpus's
    files are removed first, so ``videos/`` never mixes two corpora.
    """
    # -- validate settings
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos!r}")
    for name, rate in (
        ("noise_rate", noise_rate),
        ("duplicate_rate", duplicate_rate),
        ("transition_rate", transition_rate),
        ("timed_caption_rate", timed_caption_rate),
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate!r}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers!r}")
    if not 1 <= min_scenes <= max_scenes:
        raise ValueError(f"need 1 <= min_scenes <= max_scenes, got {min_scenes!r}, {max_scenes!r}")
    lo_s, hi_s = scene_seconds
    if not 0 < lo_s <= hi_s:
        raise ValueError(
            f"scene_seconds must be (low, high) with 0 < low <= high, got {scene_seconds!r}"
        )
    if resolutions:
        res = [_parse_resolution(r) for r in resolutions]
        res_p = np.full(len(res), 1.0 / len(res))
    else:
        res = list(DEFAULT_RESOLUTIONS)
        res_p = np.asarray(DEFAULT_RESOLUTION_WEIGHTS)
    fps_list = [parse_fps(f) for f in (fps_choices or DEFAULT_FPS)]

    root = Path(out_dir)
    vdir = root / "videos"
    _prepare_out_dir(root, overwrite)
    vdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x5A4E])
    ntsc = Fraction(30000, 1001)

    # -- plan: which videos are duplicates, the originals' content, caption noise kinds
    dup_of: dict[int, tuple[int, str]] = {}
    for i in range(1, videos):
        if rng.random() < duplicate_rate:
            originals = [j for j in range(i) if j not in dup_of]
            dup_of[i] = (_choice(rng, originals), _choice(rng, DUPLICATE_KINDS))
    if ensure_variety:
        # keep enough originals for every noise kind plus a clean one, and one duplicate
        keep = min(videos - 1, len(NOISE_KINDS) + 1)
        while len(dup_of) > max(1, videos - keep):
            dup_of.pop(min(dup_of))
        if not dup_of and videos >= 2:
            dup_of[videos - 1] = (0, "trim")
    originals = [i for i in range(videos) if i not in dup_of]

    plans: dict[int, VideoPlan] = {}
    noise: dict[int, str] = {}
    for i in originals:
        w, h = res[int(rng.choice(len(res), p=res_p))]
        fps = _choice(rng, fps_list)
        k = int(rng.integers(min_scenes, max_scenes + 1))
        plans[i] = plan_video(
            f"shapes_{seed}_{i:04d}",
            rng,
            width=w,
            height=h,
            fps=fps,
            num_scenes=k,
            scene_seconds=scene_seconds,
            transition_rate=transition_rate,
            crf=int(rng.integers(20, 27)),
        )
        noise[i] = _choice(rng, NOISE_KINDS[1:]) if rng.random() < noise_rate else "clean"
    if ensure_variety:
        _force_variety(plans, noise, originals, ntsc, max_scenes, rng)

    for i, (j, kind) in sorted(dup_of.items()):
        src = plans[j]
        plan = dataclasses.replace(src, video_id=f"shapes_{seed}_{i:04d}")
        if kind == "reencode":
            plan.crf = min(51, src.crf + int(rng.integers(8, 15)))
        elif kind == "resize":
            # shrink what is large, enlarge what is small: a copy stays readable either way
            scale = float(rng.choice([0.5, 0.75] if src.height >= 240 else [1.5, 2.0]))
            nw = round(src.width * scale / 2) * 2
            nh = round(src.height * scale / 2) * 2
            plan.render_size = (src.width, src.height)
            plan.width, plan.height = nw, nh
        else:  # trim: a few frames off the start and the end
            plan.trim = (int(rng.integers(2, 11)), int(rng.integers(0, 11)))
        plans[i] = plan
        noise[i] = noise[j]

    # -- captions (mismatched ones borrow another original's clean caption)
    cap_rng = np.random.default_rng([seed, 0xCA97])
    clean: dict[int, str] = {
        i: clean_caption([s.facts for s in plans[i].scenes], cap_rng) for i in originals
    }
    captions: dict[int, str] = {}
    for i in originals:
        facts = [s.facts for s in plans[i].scenes]
        kind = noise[i]
        if kind == "mismatched":
            others = [
                j
                for j in originals
                if j != i and not _facts_overlap(facts, [s.facts for s in plans[j].scenes])
            ]
            if others:
                captions[i] = clean[_choice(cap_rng, others)]
            else:
                other = [random_facts(cap_rng) for _ in range(len(facts))]
                while _facts_overlap(facts, other):
                    other = [random_facts(cap_rng) for _ in range(len(facts))]
                captions[i] = clean_caption(other, cap_rng)
        elif kind == "boilerplate":
            captions[i] = _choice(cap_rng, BOILERPLATE)
        elif kind == "truncated":
            captions[i] = truncate_caption(clean[i], cap_rng)
        elif kind == "empty":
            captions[i] = _choice(cap_rng, ("", " ", "\n", "  \t"))
        elif kind == "non_ascii":
            captions[i] = _choice(cap_rng, NON_ASCII)
        else:
            captions[i] = clean[i]
    for i, (j, _) in dup_of.items():
        captions[i] = captions[j]
    timed = {i: bool(cap_rng.random() < timed_caption_rate) for i in range(videos)}

    # -- render and encode (videos are independent: spread over processes), write sidecars
    written = _encode_all(
        [(plans[i], vdir / f"{plans[i].video_id}.mp4") for i in range(videos)],
        preset=preset,
        workers=workers,
        progress=progress,
        desc=f"shapes world (seed {seed})",
    )
    truths: list[VideoTruth] = []
    for i in range(videos):
        plan = plans[i]
        vid = plan.video_id
        truth = plan.truth(f"videos/{vid}.mp4", f"videos/{vid}.txt")
        if written[i] != truth.num_frames:
            raise RuntimeError(f"{vid}: wrote {written[i]} frames, planned {truth.num_frames}")
        truth.source_caption = captions[i]
        truth.clean_caption = clean[i if i not in dup_of else dup_of[i][0]]
        truth.caption_noise = noise[i]
        truth.caption_is_noise = _is_noise(noise[i], captions[i], truth.scenes[0].facts)
        if i in dup_of:
            j, kind = dup_of[i]
            truth.duplicate_of, truth.duplicate_kind = plans[j].video_id, kind
            truth.duplicate_offset = plan.trim[0]
        (vdir / f"{vid}.txt").write_text(captions[i], encoding="utf-8")
        if timed[i]:
            truth.timed_captions_file = f"videos/{vid}.json"
            sidecar = {"caption": captions[i], "captions": truth.timed_captions()}
            (vdir / f"{vid}.json").write_text(
                json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n",
                encoding="utf-8",
            )
        truth.root = root.resolve()
        truths.append(truth)

    groups: dict[str, list[str]] = {}
    for t in truths:
        if t.duplicate_of is not None:
            groups.setdefault(t.duplicate_of, [t.duplicate_of]).append(t.video_id)
    gt = GroundTruth(
        seed=seed,
        params={
            "videos": videos,
            "noise_rate": noise_rate,
            "duplicate_rate": duplicate_rate,
            "transition_rate": transition_rate,
            "resolutions": [f"{w}x{h}" for w, h in res],
            "fps_choices": [f"{f.numerator}/{f.denominator}" for f in fps_list],
            "min_scenes": min_scenes,
            "max_scenes": max_scenes,
            "scene_seconds": [lo_s, hi_s],
            "timed_caption_rate": timed_caption_rate,
            "ensure_variety": ensure_variety,
        },
        videos=truths,
        duplicate_groups=list(groups.values()),
        root=root.resolve(),
    )
    write_manifests(gt, root)
    gt.to_json(root / GroundTruth.FILE_NAME)
    log.info(
        "shapes world seed %s: %s videos, %s scenes, %s noisy captions, %s duplicates in %s",
        seed,
        len(truths),
        sum(len(t.scenes) for t in truths),
        sum(t.caption_is_noise for t in truths),
        sum(t.duplicate_of is not None for t in truths),
        root,
    )
    return gt


def _prepare_out_dir(root: Path, overwrite: bool) -> None:
    vdir = root / "videos"
    old_truth = root / GroundTruth.FILE_NAME
    present = old_truth.exists() or (vdir.is_dir() and any(vdir.iterdir()))
    if not present:
        return
    if not overwrite:
        raise ValueError(
            f"{root}: already holds a shapes corpus or files in videos/; "
            "choose an empty folder or pass overwrite=True (--overwrite)"
        )
    owned: set[Path] = set()
    if old_truth.exists():
        try:
            old = json.loads(old_truth.read_text(encoding="utf-8"))
            for v in old.get("videos", []):
                stem = Path(v["file"]).stem
                owned |= {vdir / f"{stem}{ext}" for ext in (".mp4", ".txt", ".json")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{old_truth}: cannot read the old ground truth: {exc}") from exc
    for f in owned:
        f.unlink(missing_ok=True)
    for name in ("webvid.csv", "manifest.jsonl", GroundTruth.FILE_NAME):
        (root / name).unlink(missing_ok=True)
    left = sorted(p.name for p in vdir.iterdir()) if vdir.is_dir() else []
    if left:
        raise ValueError(
            f"{vdir}: holds files that are not part of a shapes corpus ({', '.join(left[:5])}"
            f"{', ...' if len(left) > 5 else ''}); the folder manifest would pick them up"
        )


def _is_noise(kind: str, caption: str, first: SceneFacts) -> bool:
    if kind == "clean":
        return False
    if kind == "truncated":
        return truncated_is_noise(caption, first)
    return True


def _force_variety(
    plans: dict[int, VideoPlan],
    noise: dict[int, str],
    originals: list[int],
    ntsc: Fraction,
    max_scenes: int,
    rng: np.random.Generator,
) -> None:
    """Patch a random plan so it holds a cut, a fade, a dissolve, a 29.97 fps video and every
    caption-noise kind plus a clean caption, as far as the number of videos allows."""
    for kind in ("cut", *TRANSITION_KINDS):
        entries = [(p, k) for p in plans.values() for k in range(1, len(p.scenes))]
        count = collections.Counter(p.scenes[k].transition_in for p, k in entries)
        if count[kind]:
            continue
        spare = [(p, k) for p, k in entries if count[p.scenes[k].transition_in] > 1]
        if spare:
            plan, k = spare[-1]
        else:
            growable = [p for p in plans.values() if len(p.scenes) < max_scenes]
            if not growable:
                continue
            plan = min(growable, key=lambda p: len(p.scenes))
            facts = random_facts(rng, avoid=plan.scenes[-1].facts)
            plan.scenes.append(_ScenePlan(facts, max(48, plan.scenes[-1].num_frames), 0))
            plan.scenes[-1].seed = int(rng.integers(2**31))
            k = len(plan.scenes) - 1
        plan.scenes[k].transition_in = kind
        plan.scenes[k].transition_len = int(rng.integers(8, 17)) if kind != "cut" else 0
    if ntsc not in {p.fps for p in plans.values()}:
        plans[originals[-1]].fps = ntsc
    # every noise kind and a clean caption: take videos from kinds that have more than one
    for kind in (*NOISE_KINDS[1:], "clean"):
        count = collections.Counter(noise[i] for i in originals)
        if count[kind]:
            continue
        donors = [i for i in originals if count[noise[i]] > 1]
        if donors:
            noise[donors[-1]] = kind


def _encode_one(plan: VideoPlan, path: Path, preset: str) -> int:
    return write_video(path, plan.frames(), fps=plan.fps, crf=plan.crf, preset=preset)


def _encode_all(
    jobs: list[tuple[VideoPlan, Path]],
    *,
    preset: str,
    workers: int,
    progress: bool,
    desc: str,
) -> list[int]:
    """Render and encode every plan; frame counts in job order."""
    if workers == 0:
        workers = min(4, os.cpu_count() or 1)
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_encode_one(plan, path, preset) for plan, path in _progress(jobs, progress, desc)]
    import concurrent.futures as cf
    import multiprocessing

    # spawn, not fork: the caller may hold threads (torch, Beam) that fork would orphan
    ctx = multiprocessing.get_context("spawn")
    counts: list[int] = [0] * len(jobs)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # biggest first, so a late 720p video does not leave the other workers idle
        order = sorted(
            range(len(jobs)),
            key=lambda k: jobs[k][0].full_frames * jobs[k][0].width * jobs[k][0].height,
            reverse=True,
        )
        futures = {pool.submit(_encode_one, jobs[k][0], jobs[k][1], preset): k for k in order}
        for fut in _progress(cf.as_completed(futures), progress, desc, total=len(jobs)):
            k = futures[fut]
            try:
                counts[k] = fut.result()
            except Exception as exc:
                raise RuntimeError(f"{jobs[k][1]}: rendering or encoding failed: {exc}") from exc
    return counts


def _progress(
    items: Iterable[Any], enabled: bool, desc: str, total: int | None = None
) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="video", total=total)


def write_manifests(gt: GroundTruth, root: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``webvid.csv`` and ``manifest.jsonl`` (paths relative to ``root``)."""
    root = Path(root)
    out = {"webvid": root / "webvid.csv", "jsonl": root / "manifest.jsonl"}
    tmp = out["webvid"].with_name(".webvid.csv.part")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        for v in gt.videos:
            page_dir = f"shapes_world/seed_{gt.seed}"
            writer.writerow(
                [
                    v.video_id,
                    v.file,
                    iso_duration(v.duration),
                    page_dir,
                    v.source_caption,
                ]
            )
    os.replace(tmp, out["webvid"])
    tmp = out["jsonl"].with_name(".manifest.jsonl.part")
    with tmp.open("w", encoding="utf-8") as fh:
        for v in gt.videos:
            row: dict[str, Any] = {
                "video_id": v.video_id,
                "uri": v.file,
                "caption": v.source_caption,
            }
            if v.timed_captions_file is not None:
                row["captions"] = v.timed_captions()
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out["jsonl"])
    return out


def make_video(
    path: str | os.PathLike[str],
    scenes: Sequence[SceneFacts | str],
    *,
    scene_frames: int | Sequence[int] = 48,
    fps: float | str | Fraction = 25,
    width: int = 160,
    height: int = 120,
    transitions: Sequence[str] | None = None,
    transition_frames: int = 12,
    crf: int = 23,
    seed: int = 0,
) -> VideoTruth:
    """Write one shapes-world video with the given scenes; returns its ground truth.

    ``scenes`` are :class:`SceneFacts` or captions; ``transitions`` gives the kind ("cut",
    "fade", "dissolve") entering each scene after the first (default: all cuts).
    """
    path = Path(path)
    facts = []
    for s in scenes:
        f = parse_caption(s) if isinstance(s, str) else s
        if f is None:
            raise ValueError(f"cannot parse scene caption {s!r}")
        facts.append(f)
    if not facts:
        raise ValueError("need at least one scene")
    counts = [scene_frames] * len(facts) if isinstance(scene_frames, int) else list(scene_frames)
    kinds = list(transitions) if transitions is not None else ["cut"] * (len(facts) - 1)
    if len(counts) != len(facts) or len(kinds) != len(facts) - 1:
        raise ValueError(
            f"{len(facts)} scenes need {len(facts)} scene_frames and {len(facts) - 1} transitions, "
            f"got {len(counts)} and {len(kinds)}"
        )
    for k in kinds:
        if k not in ("cut", *TRANSITION_KINDS):
            raise ValueError(f"unknown transition {k!r}; expected cut, fade or dissolve")
    if any(c < 2 for c in counts) or any(
        k != "cut" and min(counts[i], counts[i + 1]) < transition_frames
        for i, k in enumerate(kinds)
    ):
        raise ValueError(f"scenes too short for their transitions: {counts!r}")
    rng = np.random.default_rng(seed)
    plan = VideoPlan(
        path.stem,
        width,
        height,
        parse_fps(fps),
        crf,
        [
            _ScenePlan(
                f,
                c,
                int(rng.integers(2**31)),
                "start" if i == 0 else kinds[i - 1],
                transition_frames if i > 0 and kinds[i - 1] != "cut" else 0,
            )
            for i, (f, c) in enumerate(zip(facts, counts, strict=True))
        ],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, plan.frames(), fps=plan.fps, crf=crf)
    truth = plan.truth(path.name, "")
    truth.source_caption = truth.clean_caption = clean_caption(facts)
    truth.root = path.parent.resolve()
    return truth
