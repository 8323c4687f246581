"""Shapes world: a procedural video corpus with exact ground truth.

Coloured shapes move over plain backgrounds; a video is a sequence of 1-5 scenes joined by hard
cuts or gradual transitions (fade through black, dissolve). Each scene is described by a small
grammar (``"a red circle moving right on a navy background"``) and every video carries a
WebVid-style source caption that is correct or, at a controlled rate, noise of a known kind.
Because every pixel is known, cut detection, caption scoring, re-captioning, dedup and generated
videos can all be checked against ground truth, and :func:`read_frame` / :func:`read_motion`
read a frame's content back from pixels without any learned model.

Conventions of the ground truth (``ground_truth.json``, see :class:`GroundTruth`):

* Frame indices are 0-based decode order; spans are half-open ``[start_frame, end_frame)``.
  The scenes of a video are contiguous and cover ``[0, num_frames)``.
* ``cuts`` lists the first frame of every scene entered through a hard cut.
* A gradual transition of length ``L`` spans ``[start_frame, end_frame)`` with
  ``end_frame - start_frame == L``; every frame in it mixes both scenes. The *scene boundary*
  is ``boundary_frame = start_frame + L // 2``: the outgoing scene ends there (exclusive) and
  the incoming one starts there. In a fade the outgoing scene darkens to pure black at
  ``boundary_frame - 1`` and the incoming one rises from pure black at ``boundary_frame``; in a
  dissolve the incoming scene's weight is ``(k + 1) / (L + 1)`` at ``start_frame + k``, so it
  passes one half at the boundary frame.
* ``caption_noise`` is one of :data:`NOISE_KINDS`. ``caption_is_noise`` is true for
  ``mismatched``, ``boilerplate``, ``empty`` and ``non_ascii``. A ``truncated`` caption (a
  correct caption cut mid-word) counts as noise only when what is left no longer names the
  colour and shape of the first scene; otherwise it is a usable, if incomplete, description.
* Paths in the manifests and the ground truth are relative to the corpus root (the folder that
  holds ``ground_truth.json``, ``webvid.csv`` and ``manifest.jsonl``); readers resolve them
  against the manifest's folder.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

# --- vocabulary -----------------------------------------------------------------------------

#: shape colours, RGB; far apart so pixel reading is unambiguous after h264 4:2:0 encoding
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (40, 220, 230),
}

#: background colours, RGB (flat colour with a faint static texture and sensor noise)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "navy": (20, 30, 90),
    "beige": (220, 205, 170),
    "brown": (100, 65, 30),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")

MOTIONS: tuple[str, ...] = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "growing",
    "shrinking",
    "still",
)

#: caption noise kinds; "clean" is the correct description
NOISE_KINDS: tuple[str, ...] = (
    "clean",
    "mismatched",
    "boilerplate",
    "truncated",
    "empty",
    "non_ascii",
)

TRANSITION_KINDS: tuple[str, ...] = ("fade", "dissolve")
DUPLICATE_KINDS: tuple[str, ...] = ("reencode", "resize", "trim")

#: minimum RGB distance between a shape colour and the background it is drawn on
MIN_CONTRAST = 120.0

#: smallest corpus frame size (shapes stay readable from pixels down to about this size)
MIN_WIDTH, MIN_HEIGHT = 64, 48
DEFAULT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((284, 160), (320, 240), (640, 360), (1280, 720))
#: sampling weights of DEFAULT_RESOLUTIONS: mostly small, 720p a minority
DEFAULT_RESOLUTION_WEIGHTS: tuple[float, ...] = (0.4, 0.4, 0.15, 0.05)
DEFAULT_FPS: tuple[Fraction, ...] = (
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
)

#: motion names as a caption spells them (only "still" reads better with a verb)
_MOTION_PHRASES: dict[str, str] = {m: m for m in MOTIONS} | {"still": "standing still"}

BOILERPLATE: tuple[str, ...] = (
    "Stock footage: beautiful 4k background loop. royalty free",
    "HD video clip",
    "Abstract motion background. Seamless loop. 4K UHD",
    "Royalty-free stock video footage, editorial use only",
    "Video footage of abstract background, 1080p HD",
    "Animation. Loopable. Motion graphics element for your project",
    "stock video - shutterstock",
    "Creative background for presentations and titles, high quality footage",
)

NON_ASCII: tuple[str, ...] = (
    "美丽的海上日落，高清视频素材",
    "城市夜景延时摄影 4K",
    "Красивый закат над морем, видео в высоком качестве",
    "Абстрактный фон для презентаций",
    "美しい桜の花が風に揺れる",
    "東京の夜景、タイムラプス映像",
    "아름다운 해변의 일몰 풍경",
    "Ηλιοβασίλεμα πάνω από τη θάλασσα",
)

_CONNECTORS: tuple[str, ...] = (", then ", ", followed by ", "; ", ". Then ")


def _rgb_distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(math.dist(a, b))


def compatible(color: str, background: str) -> bool:
    """Whether ``color`` shapes may be drawn on ``background`` (far enough apart to read)."""
    return _rgb_distance(COLORS[color], BACKGROUNDS[background]) >= MIN_CONTRAST


# --- grammar --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneFacts:
    """What one scene shows: the grammar's four slots."""

    color: str
    shape: str
    motion: str
    background: str

    def __post_init__(self) -> None:
        for value, vocab, what in (
            (self.color, COLORS, "color"),
            (self.shape, SHAPES, "shape"),
            (self.motion, MOTIONS, "motion"),
            (self.background, BACKGROUNDS, "background"),
        ):
            if value not in vocab:
                raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(vocab)}")

    @property
    def caption(self) -> str:
        return caption_for(self.color, self.shape, self.motion, self.background)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(color: str, shape: str, motion: str, background: str) -> str:
    """The grammar's caption, e.g. ``"a red circle moving right on a navy background"``."""
    SceneFacts(color, shape, motion, background)  # validates the vocabulary
    return (
        f"{_article(color)} {color} {shape} {_MOTION_PHRASES[motion]} "
        f"on {_article(background)} {background} background"
    )


def _alternation(words: Iterable[str]) -> str:
    # longest first so "moving up" never loses to a prefix
    return "|".join(
        re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True)
    )


_PHRASE_TO_MOTION = {phrase: m for m, phrase in _MOTION_PHRASES.items()} | {"still": "still"}
_CAPTION_RE = re.compile(
    rf"\b(?:an?\s+)?(?P<color>{_alternation(COLORS)})\s+(?P<shape>{_alternation(SHAPES)})\s+"
    rf"(?P<motion>{_alternation(_PHRASE_TO_MOTION)})\s+on\s+(?:an?\s+)?"
    rf"(?P<background>{_alternation(BACKGROUNDS)})\s+background\b",
    re.IGNORECASE,
)


def _facts_from_match(m: re.Match[str]) -> SceneFacts:
    motion = _PHRASE_TO_MOTION[" ".join(m["motion"].lower().split())]
    return SceneFacts(m["color"].lower(), m["shape"].lower(), motion, m["background"].lower())


def parse_caption(text: str | None) -> SceneFacts | None:
    """The first scene description found in ``text`` (any case and spacing), or ``None``."""
    if not text:
        return None
    m = _CAPTION_RE.search(text)
    return _facts_from_match(m) if m else None


def parse_captions(text: str | None) -> list[SceneFacts]:
    """Every scene description in ``text``, in order (a multi-scene source caption)."""
    if not text:
        return []
    return [_facts_from_match(m) for m in _CAPTION_RE.finditer(text)]


def join_captions(captions: Sequence[str], rng: np.random.Generator | None = None) -> str:
    """Join per-scene captions into one sentence with varied connectors."""
    if not captions:
        return ""
    out = captions[0]
    for cap in captions[1:]:
        conn = _CONNECTORS[int(rng.integers(len(_CONNECTORS)))] if rng is not None else ", then "
        out += conn + cap
    return out


# --- rendering ------------------------------------------------------------------------------

_SUBPIXEL_BITS = 4
_SUBPIXEL = 1 << _SUBPIXEL_BITS


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> np.ndarray | None:
    """Outline of a polygonal shape centred at (cx, cy) with circumradius r, as float (N, 2)."""
    if shape == "square":
        h = r * 0.8  # side 1.6 r: about the area of a circle of radius r * 0.9
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "triangle":
        # equilateral, pointing up; its centroid is (cx, cy) so growing keeps the centroid still
        pts = [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in np.radians([90, 210, 330])]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = math.radians(90 + 36 * k)
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
    else:
        return None
    return np.asarray(pts, dtype=np.float64)


def draw_shape_mask(mask: np.ndarray, shape: str, cx: float, cy: float, r: float) -> None:
    """Draw ``shape`` into a uint8 alpha ``mask`` (anti-aliased, sub-pixel positioned)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    aa = cv2.LINE_AA
    c = (round(cx * _SUBPIXEL), round(cy * _SUBPIXEL))
    if shape in ("circle", "ring"):
        cv2.circle(mask, c, round(r * _SUBPIXEL), 255, -1, aa, _SUBPIXEL_BITS)
        if shape == "ring":
            cv2.circle(mask, c, round(r * 0.55 * _SUBPIXEL), 0, -1, aa, _SUBPIXEL_BITS)
        return
    poly = _shape_polygon(shape, cx, cy, r)
    assert poly is not None
    pts = np.round(poly * _SUBPIXEL).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, aa, _SUBPIXEL_BITS)


@dataclass(frozen=True)
class ShapeTrack:
    """Where the shape is over a scene: linear in centre and radius from first to last frame."""

    x0: float
    y0: float
    r0: float
    x1: float
    y1: float
    r1: float

    def at(self, t: int, n: int) -> tuple[float, float, float]:
        u = t / (n - 1) if n > 1 else 0.0
        return (
            self.x0 + (self.x1 - self.x0) * u,
            self.y0 + (self.y1 - self.y0) * u,
            self.r0 + (self.r1 - self.r0) * u,
        )


def plan_track(motion: str, width: int, height: int, rng: np.random.Generator) -> ShapeTrack:
    """A random start and end for ``motion`` that keeps the whole shape inside the frame.

    Moving shapes travel 35-70 % of the free space; growing and shrinking change the radius
    1.6-2.2 times; so every motion is plain to see and to read back from pixels.
    """
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")
    side = min(width, height)
    margin = 0.03 * side + 2
    if motion in ("growing", "shrinking"):
        small = rng.uniform(0.07, 0.10) * side
        big = small * rng.uniform(1.6, 2.2)
        x = rng.uniform(big + margin, width - big - margin)
        y = rng.uniform(big + margin, height - big - margin)
        r0, r1 = (small, big) if motion == "growing" else (big, small)
        return ShapeTrack(x, y, r0, x, y, r1)
    r = rng.uniform(0.10, 0.17) * side
    lo_x, hi_x = r + margin, width - r - margin
    lo_y, hi_y = r + margin, height - r - margin
    x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    if motion == "still":
        return ShapeTrack(x, y, r, x, y, r)
    horizontal = motion in ("moving left", "moving right")
    lo, hi = (lo_x, hi_x) if horizontal else (lo_y, hi_y)
    dist = rng.uniform(0.35, 0.7) * (hi - lo)
    start = rng.uniform(lo, hi - dist)
    a, b = (
        (start + dist, start) if motion in ("moving left", "moving up") else (start, start + dist)
    )
    if horizontal:
        return ShapeTrack(a, y, r, b, y, r)
    return ShapeTrack(x, a, r, x, b, r)


class SceneRenderer:
    """Renders the frames of one scene one at a time (a video never sits in memory whole).

    ``num_frames`` is the span the motion is spread over, which for a scene that takes part in
    a gradual transition includes the frames it contributes beyond its own boundaries.
    """

    def __init__(
        self,
        facts: SceneFacts,
        *,
        num_frames: int,
        width: int,
        height: int,
        seed: int | np.random.Generator,
        noise: float = 2.0,
        texture: float = 4.0,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames!r}")
        if width < 32 or height < 32:
            raise ValueError(f"frame size must be at least 32x32, got {width}x{height}")
        if noise < 0 or texture < 0:
            raise ValueError(f"noise and texture must be >= 0, got {noise!r}, {texture!r}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.facts = facts
        self.num_frames = num_frames
        self.width, self.height = width, height
        self.track = plan_track(facts.motion, width, height, rng)
        self.color = np.asarray(COLORS[facts.color], dtype=np.float32)
        bg = np.asarray(BACKGROUNDS[facts.background], dtype=np.float32)
        # a faint low-frequency texture so the background is not a single flat value
        coarse = rng.standard_normal((height // 16 + 2, width // 16 + 2)).astype(np.float32)
        tex = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * texture
        background = bg[None, None, :] + tex[..., None]
        # sensor noise: a small bank of noised backgrounds, cycled, is as good as fresh noise
        # per frame for what the frames are used for, and many times cheaper at 720p
        amp = int(round(noise))
        self._noise = [
            rng.integers(-amp, amp + 1, size=(height, width, 1), dtype=np.int8)
            for _ in range(4 if amp > 0 else 1)
        ]
        base = background.astype(np.int16)
        self._backgrounds = []
        for n in self._noise:
            plane = base + n
            np.clip(plane, 0, 255, out=plane)
            self._backgrounds.append(plane.astype(np.uint8))
        self._order = rng.integers(0, len(self._backgrounds), size=num_frames)
        self._mask = np.zeros((height, width), dtype=np.uint8)

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` of the scene: uint8 (H, W, 3) RGB."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside the scene's {self.num_frames} frames")
        cx, cy, r = self.track.at(t, self.num_frames)
        k = int(self._order[t])
        out = self._backgrounds[k].copy()
        # composite only inside the shape's bounding box
        x0, x1 = max(0, int(cx - r) - 2), min(self.width, int(cx + r) + 3)
        y0, y1 = max(0, int(cy - r) - 2), min(self.height, int(cy + r) + 3)
        mask = self._mask
        draw_shape_mask(mask, self.facts.shape, cx, cy, r)
        alpha = mask[y0:y1, x0:x1, None].astype(np.float32) * (1.0 / 255.0)
        mask[y0:y1, x0:x1] = 0
        region = out[y0:y1, x0:x1].astype(np.float32)
        shape = self.color + self._noise[k][y0:y1, x0:x1]
        out[y0:y1, x0:x1] = np.clip(region + (shape - region) * alpha + 0.5, 0, 255)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(self.num_frames):
            yield self.frame(t)


def render_scene(
    facts: SceneFacts,
    *,
    num_frames: int,
    width: int,
    height: int,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    noise: float = 2.0,
    texture: float = 4.0,
) -> np.ndarray:
    """All frames of one scene as uint8 ``(F, H, W, 3)`` RGB.

    The shape keeps a constant speed (or growth rate) over the scene; its start position and
    size are random per scene (from ``rng`` or ``seed``) and it stays wholly inside the frame.
    """
    if rng is not None and seed is not None:
        raise ValueError("pass rng or seed, not both")
    source: int | np.random.Generator = rng if rng is not None else (seed or 0)
    renderer = SceneRenderer(
        facts,
        num_frames=num_frames,
        width=width,
        height=height,
        seed=source,
        noise=noise,
        texture=texture,
    )
    return np.stack(list(renderer))


# --- reading pixels back --------------------------------------------------------------------


@dataclass(frozen=True)
class FrameFacts:
    """What :func:`read_frame` sees in one frame. Shape fields are ``None`` if none is found."""

    background: str
    color: str | None
    shape: str | None
    centroid: tuple[float, float] | None  # (x, y), normalised to [0, 1]
    area: float  # fraction of the frame the shape covers


_BG_NAMES = tuple(BACKGROUNDS)
_BG_RGB = np.asarray([BACKGROUNDS[n] for n in _BG_NAMES], dtype=np.float32)
_COLOR_NAMES = tuple(COLORS)
_COLOR_RGB = np.asarray([COLORS[n] for n in _COLOR_NAMES], dtype=np.float32)


def _nearest(rgb: np.ndarray, names: tuple[str, ...], table: np.ndarray) -> str:
    return names[int(np.argmin(np.linalg.norm(table - rgb[None, :], axis=1)))]


def classify_contour(contour: np.ndarray, filled_area: float, pixel_area: float) -> str:
    """Shape name from one outer contour's geometry.

    A ring has a hole (pixels cover well under the outline's area); a star is far from convex;
    among convex shapes, the fraction of the minimum-area bounding rectangle that is covered
    separates squares (1.0), circles (pi/4) and triangles (1/2).
    """
    if filled_area <= 0:
        return "circle"
    if pixel_area / filled_area < 0.85:
        return "ring"
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    if hull_area > 0 and filled_area / hull_area < 0.85:
        return "star"
    (_, _), (w, h), _ = cv2.minAreaRect(contour)
    extent = filled_area / max(w * h, 1e-6)
    if extent > 0.9:
        return "square"
    if extent < 0.64:
        return "triangle"
    return "circle"


def read_frame(frame: np.ndarray, *, threshold: int = 30) -> FrameFacts:
    """Read background, shape colour, shape, centroid and area from one RGB frame.

    The background is the median colour of the frame's border (shapes never touch it); shape
    pixels differ from it by more than ``threshold`` in some channel (shape and background
    colours differ by at least ``MIN_CONTRAST / sqrt(3)`` ~ 69 in their largest channel); the
    largest connected blob is the shape. The area counts anti-aliased edge pixels by their
    coverage, so it matches the drawn shape's area, not its thresholded outline.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {frame.dtype} {frame.shape}")
    if not 0 < threshold < 255:
        raise ValueError(f"threshold must be in (0, 255), got {threshold!r}")
    h, w = frame.shape[:2]
    b = max(1, min(h, w) // 64)
    border = np.concatenate(
        [
            frame[:b].reshape(-1, 3),
            frame[-b:].reshape(-1, 3),
            frame[:, :b].reshape(-1, 3),
            frame[:, -b:].reshape(-1, 3),
        ]
    )
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb.astype(np.float32), _BG_NAMES, _BG_RGB)
    bg_scalar = (*(float(c) for c in np.round(bg_rgb)), 0.0)
    diff = cv2.absdiff(frame, bg_scalar)  # type: ignore[call-overload]
    dist = cv2.max(cv2.max(diff[..., 0], diff[..., 1]), diff[..., 2])  # (H, W) uint8
    _, mask = cv2.threshold(dist, threshold, 1, cv2.THRESH_BINARY)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    none = FrameFacts(background, None, None, None, 0.0)
    if not contours:
        return none
    outer = [i for i in range(len(contours)) if hierarchy[0][i][3] < 0]
    best = max(outer, key=lambda i: cv2.contourArea(contours[i]))
    contour = contours[best]
    filled = cv2.contourArea(contour)
    if filled < 12:  # a few stray pixels: no shape
        return none
    # everything below works inside the blob's bounding box (plus a pixel of edge)
    x, y, bw, bh = cv2.boundingRect(contour)
    x0, y0, x1, y1 = max(0, x - 1), max(0, y - 1), min(w, x + bw + 1), min(h, y + bh + 1)
    blob = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.drawContours(blob, [contour - np.array([x0, y0])], 0, 1, -1)
    blob &= mask[y0:y1, x0:x1]  # keep holes as holes
    pixels = int(blob.sum())
    crop = frame[y0:y1, x0:x1]
    # the colour from the blob's interior: anti-aliased and chroma-subsampled edges blend
    interior = cv2.erode(blob, np.ones((3, 3), np.uint8)) if pixels > 60 else blob
    sel = interior.astype(bool) if interior.any() else blob.astype(bool)
    shape_rgb = np.median(crop[sel], axis=0).astype(np.float32)
    color = _nearest(shape_rgb, _COLOR_NAMES, _COLOR_RGB)
    shape = classify_contour(contour, filled, pixels)
    # soft coverage: an edge pixel halfway between background and shape counts one half
    contrast = float(np.abs(shape_rgb - bg_rgb).max())
    near = cv2.dilate(blob, np.ones((3, 3), np.uint8)).astype(bool)
    cover = np.clip(dist[y0:y1, x0:x1].astype(np.float32) / max(contrast, 1.0), 0.0, 1.0)
    cover[~near] = 0.0
    total = float(cover.sum())
    ys, xs = np.mgrid[y0:y1, x0:x1]
    centroid = (
        float(((xs + 0.5) * cover).sum() / total) / w,
        float(((ys + 0.5) * cover).sum() / total) / h,
    )
    return FrameFacts(background, color, shape, centroid, total / float(h * w))


def read_motion(
    frames: np.ndarray | Sequence[np.ndarray] | Sequence[FrameFacts],
    *,
    min_shift: float = 0.06,
    min_scale: float = 1.35,
    aspect: float | None = None,
) -> str:
    """The motion name of a scene from its frames (or from their :class:`FrameFacts`).

    Fits a line through the centroids and log areas over time: an area that changes by more
    than ``min_scale`` times is growing or shrinking; otherwise a centroid that travels more
    than ``min_shift`` of the frame's shorter side is moving along its larger axis; else still.
    ``aspect`` (width / height) is taken from the frames; pass it with :class:`FrameFacts`,
    whose centroids are normalised per axis (square frames are assumed otherwise).
    """
    if len(frames) < 2:
        raise ValueError(f"need at least 2 frames to read a motion, got {len(frames)}")
    if min_shift <= 0 or min_scale <= 1:
        raise ValueError(f"need min_shift > 0 and min_scale > 1, got {min_shift!r}, {min_scale!r}")
    facts: list[FrameFacts]
    if isinstance(frames[0], FrameFacts):
        facts = [f for f in frames if isinstance(f, FrameFacts)]
        times = np.arange(len(facts), dtype=np.float64)
        aspect = aspect or 1.0
    else:
        n = len(frames)
        # two dozen frames spread over the scene pin down a constant-speed line
        picks = np.unique(np.linspace(0, n - 1, min(n, 24)).round().astype(int))
        facts = [read_frame(np.asarray(frames[i])) for i in picks]
        times = picks.astype(np.float64)
        h, w = np.asarray(frames[0]).shape[:2]
        aspect = w / h
    seen = [(tt, f.centroid, f.area) for tt, f in zip(times, facts, strict=True) if f.centroid]
    if len(seen) < 2:
        return "still"
    t = np.asarray([s[0] for s in seen])
    xs = np.asarray([s[1][0] for s in seen])
    ys = np.asarray([s[1][1] for s in seen])
    la = np.log(np.maximum(np.asarray([s[2] for s in seen]), 1e-9))
    span = t[-1] - t[0]
    dlog = np.polyfit(t, la, 1)[0] * span
    if dlog > math.log(min_scale):
        return "growing"
    if dlog < -math.log(min_scale):
        return "shrinking"
    # centroid shifts in units of the shorter side
    short = min(aspect, 1.0)
    dx = np.polyfit(t, xs, 1)[0] * span * aspect / short
    dy = np.polyfit(t, ys, 1)[0] * span / short
    if max(abs(dx), abs(dy)) < min_shift:
        return "still"
    if abs(dx) >= abs(dy):
        return "moving right" if dx > 0 else "moving left"
    return "moving down" if dy > 0 else "moving up"


# --- video files ----------------------------------------------------------------------------


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


# --- ground truth ---------------------------------------------------------------------------


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
            nw = int(round(src.width * scale / 2)) * 2
            nh = int(round(src.height * scale / 2)) * 2
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

    # -- render, encode, write sidecars
    truths: list[VideoTruth] = []
    bar = _progress(range(videos), progress, f"shapes world (seed {seed})")
    for i in bar:
        plan = plans[i]
        vid = plan.video_id
        written = write_video(
            vdir / f"{vid}.mp4", plan.frames(), fps=plan.fps, crf=plan.crf, preset=preset
        )
        truth = plan.truth(f"videos/{vid}.mp4", f"videos/{vid}.txt")
        if written != truth.num_frames:
            raise RuntimeError(f"{vid}: wrote {written} frames, planned {truth.num_frames}")
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
                json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
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


def _progress(items: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="video")


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
                [v.video_id, v.file, iso_duration(v.duration), page_dir, v.source_caption]
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
