"""Rendering shapes-world scenes: anti-aliased shapes on textured backgrounds."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .vocab import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SceneFacts

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
        amp = round(noise)
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
