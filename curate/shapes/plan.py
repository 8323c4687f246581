"""Shapes-world video plans: what each video shows, scene by scene, before it is rendered.

A :class:`VideoPlan` holds everything needed to render one video (rendering is a pure function
of the plan) and gives its ground truth; :func:`plan_video` draws one at random. The caption
helpers make the clean caption of a plan and the kinds of noise a corpus plants.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

from .render import SceneRenderer
from .truth import SceneTruth, TransitionTruth, VideoTruth
from .vocab import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    NOISE_KINDS,
    SHAPES,
    TRANSITION_KINDS,
    SceneFacts,
    compatible,
    join_captions,
)

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
class ScenePlan:
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
    scenes: list[ScenePlan]
    trim: tuple[int, int] = (0, 0)  # frames dropped at (start, end): trimmed duplicates
    render_size: tuple[int, int] | None = None  # (w, h) rendered before resizing, if resized
    #: frames of a fade in from black at the video's start and out to black at its end (the
    #: first frame, and the last, are black); part of the first and last scenes, not cuts
    fade_in: int = 0
    fade_out: int = 0

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
            gain = self._edge_gain(f - first, last - first)
            if gain < 1.0:
                img = np.clip(img.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
            if self.render_size is not None:
                img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
            yield img

    def _edge_gain(self, k: int, n: int) -> float:
        """Brightness of output frame ``k`` of ``n`` under the fades at the video's ends."""
        gain = 1.0
        if k < self.fade_in:
            gain = k / self.fade_in
        if n - 1 - k < self.fade_out:
            gain = min(gain, (n - 1 - k) / self.fade_out)
        return gain

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
        color = choice(rng, tuple(COLORS))
        background = choice(rng, tuple(BACKGROUNDS))
        if not compatible(color, background):
            continue
        if avoid is not None and (color == avoid.color or background == avoid.background):
            continue
        return SceneFacts(color, choice(rng, SHAPES), choice(rng, MOTIONS), background)


def choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
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
    scenes: list[ScenePlan] = []
    prev: SceneFacts | None = None
    for i in range(num_scenes):
        facts = random_facts(rng, avoid=prev)
        # long enough for two 16-frame transitions plus a clean middle
        n = max(40, round(rng.uniform(*scene_seconds) * float(fps)))
        kind, length = "start", 0
        if i > 0:
            kind = choice(rng, TRANSITION_KINDS) if rng.random() < transition_rate else "cut"
            length = int(rng.integers(8, 17)) if kind != "cut" else 0
        scenes.append(ScenePlan(facts, n, int(rng.integers(2**31)), kind, length))
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


def facts_overlap(a: Sequence[SceneFacts], b: Sequence[SceneFacts]) -> bool:
    pairs = {(f.color, f.shape) for f in a}
    return any((f.color, f.shape) in pairs for f in b)


# --- corpus settings and variety --------------------------------------------------------------


def parse_resolution(value: str | tuple[int, int]) -> tuple[int, int]:
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


def is_noise(kind: str, caption: str, first: SceneFacts) -> bool:
    if kind == "clean":
        return False
    if kind == "truncated":
        return truncated_is_noise(caption, first)
    return True


def force_variety(
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
            plan.scenes.append(ScenePlan(facts, max(48, plan.scenes[-1].num_frames), 0))
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
