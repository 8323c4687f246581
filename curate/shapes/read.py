"""Reading a shapes-world frame back from its pixels: no learned model needed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .vocab import BACKGROUNDS, COLORS


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
    x0, y0, x1, y1 = (
        max(0, x - 1),
        max(0, y - 1),
        min(w, x + bw + 1),
        min(h, y + bh + 1),
    )
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
