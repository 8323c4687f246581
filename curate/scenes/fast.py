"""The fast path: hard cuts, fades and dissolves from one numba pass over downscaled frames.

Per frame ``t`` one compiled kernel computes, on frames about 128 px wide:

* ``d[t]``, the mean absolute RGB difference to frame ``t-1`` (0-255);
* ``y[t]``, the mean level over all pixels and channels (fades are found as runs of black
  frames);
* for a few half-widths ``k``, the *linearity residual* of the window centred on ``t``:
  ``e_k[t] = mean|f[t] - (f[t-k] + f[t+k]) / 2|`` next to the window's change
  ``D_k[t] = mean|f[t+k] - f[t-k]|``.

The decisions come after the stream ends, from these scalars only (so memory does not grow
with the frame size or the chunking):

* **Hard cut** at ``t``: ``d[t]`` is at least ``cut_threshold`` *and* at least ``cut_ratio``
  times the mean of its ``window`` neighbours on each side. Motion raises every neighbour
  alike, so a moving shape never stands out; a cut is a lone spike.
* **Fade** (through black): a run of frames whose mean level is below ``black_level``, not at
  either end of the video, entered by a falling level or left by a rising one. The new scene starts
  in the middle of the black run.
* **Dissolve**: during a cross-dissolve every pixel moves on a straight line between the two
  scenes, so the middle of a window is the mean of its ends: ``e_k`` is near 0 while ``D_k``
  is large. Motion and cuts give ``e_k / D_k`` of about 0.5 (the middle frame matches one end,
  not their mean). Frames where ``e_k <= dissolve_linearity * D_k`` and
  ``D_k >= dissolve_threshold`` for some ``k`` are grouped; a group becomes a dissolve whose
  new scene starts at the group's centre, provided the window across it changes
  ``dissolve_contrast`` times more than the windows just before and after it: a smooth pan over
  smooth content is linear too, but it changes at the same rate all along.

A cut within a detected gradual transition is dropped (a short dissolve can look like a
spike at its edge).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numba
import numpy as np

from curate.scenes.base import Boundary, Detector, StreamInfo, check_frames

log = logging.getLogger(__name__)

#: half-widths (frames) of the linearity windows; transitions of 4 to ~40 frames are covered
DEFAULT_WINDOWS: tuple[int, ...] = (3, 6, 10)


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _chunk_features(buf, first_new, ks, d, y, e, dd):  # pragma: no cover - compiled
    """Features of frames ``buf[first_new:]``; ``buf[:first_new]`` is the tail of the previous
    chunk. ``e`` / ``dd`` rows are indexed by the *newest* frame of each window (its centre is
    ``k`` frames earlier). Missing values are NaN.

    Integer sums over each frame's bytes as one contiguous run, so the loops vectorise.
    """
    m, h, w, ch = buf.shape
    n = h * w * ch
    flat = buf.reshape(m, n)
    for j in range(first_new, m):
        o = j - first_new
        cur = flat[j]
        # mean level of all channels: a fade to black takes it to ~0
        total = np.int64(0)
        for c in range(n):
            total += np.int32(cur[c])
        y[o] = total / n
        if j > 0:
            prev = flat[j - 1]
            diff = np.int64(0)
            for c in range(n):
                x = np.int32(cur[c]) - np.int32(prev[c])
                diff += x if x >= 0 else -x
            d[o] = diff / n
        else:
            d[o] = np.nan
        # linearity of the windows that end at j (one flat loop: it vectorises, a loop over
        # every other row does not and is slower despite doing half the work)
        for ki in range(ks.shape[0]):
            k = ks[ki]
            a = j - 2 * k
            if a < 0:
                e[ki, o] = np.nan
                dd[ki, o] = np.nan
                continue
            fa_ = flat[a]
            fm_ = flat[j - k]
            res = np.int64(0)
            chg = np.int64(0)
            for c in range(n):
                fa = np.int32(fa_[c])
                fb = np.int32(cur[c])
                x = 2 * np.int32(fm_[c]) - fa - fb
                res += x if x >= 0 else -x
                z = fb - fa
                chg += z if z >= 0 else -z
            e[ki, o] = res / (2.0 * n)
            dd[ki, o] = chg / n


class _Growable:
    """A float array that grows by chunks (the frame count of a stream is only a hint)."""

    def __init__(self, rows: int, capacity: int) -> None:
        self.data = np.full((rows, max(capacity, 16)), np.nan, dtype=np.float32)
        self.size = 0

    def put(self, start: int, values: np.ndarray) -> None:
        end = start + values.shape[1]
        if end > self.data.shape[1]:
            grown = np.full(
                (self.data.shape[0], max(end, 2 * self.data.shape[1])), np.nan, dtype=np.float32
            )
            grown[:, : self.size] = self.data[:, : self.size]
            self.data = grown
        self.data[:, start:end] = values
        self.size = max(self.size, end)

    def view(self) -> np.ndarray:
        return self.data[:, : self.size]


class FastDetector(Detector):
    """Hard cuts, fades and dissolves from a numba kernel over downscaled frames.

    Settings (keyword-only; the defaults suit frames about 96-160 px wide):

    * ``cut_threshold``: least mean absolute RGB change (0-255) of a hard cut.
    * ``cut_ratio``: how many times the neighbours' mean change a cut must exceed.
    * ``window``: neighbours on each side for that mean.
    * ``black_level``: mean level (0-255) below which a frame is black (fades).
    * ``dissolve_threshold``: least change across a dissolve window (0-255).
    * ``dissolve_linearity``: largest residual / change ratio of a dissolve window.
    * ``windows``: half-widths of the dissolve windows, frames.
    * ``min_dissolve_frames`` / ``max_dissolve_frames``: the range of linear window centres
      a dissolve spans.
    * ``dissolve_contrast``: how many times more a dissolve's window must change than the
      windows of the same length before and after it (smooth camera motion changes alike).
    * ``gradual``: look for fades and dissolves at all.
    """

    name: ClassVar[str] = "fast"

    def __init__(
        self,
        *,
        cut_threshold: float = 12.0,
        cut_ratio: float = 3.0,
        window: int = 3,
        black_level: float = 8.0,
        dissolve_threshold: float = 12.0,
        dissolve_linearity: float = 0.2,
        windows: tuple[int, ...] = DEFAULT_WINDOWS,
        min_dissolve_frames: int = 3,
        max_dissolve_frames: int = 90,
        dissolve_contrast: float = 2.0,
        gradual: bool = True,
    ) -> None:
        for name, v in (
            ("cut_threshold", cut_threshold),
            ("cut_ratio", cut_ratio),
            ("dissolve_threshold", dissolve_threshold),
            ("dissolve_linearity", dissolve_linearity),
        ):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        if not 0 <= black_level < 255:
            raise ValueError(f"black_level must be in [0, 255), got {black_level!r}")
        if not windows or any(int(k) < 1 for k in windows):
            raise ValueError(f"windows must be positive frame counts, got {windows!r}")
        if min_dissolve_frames < 1:
            raise ValueError(f"min_dissolve_frames must be >= 1, got {min_dissolve_frames!r}")
        if max_dissolve_frames < min_dissolve_frames:
            raise ValueError(
                f"max_dissolve_frames must be >= min_dissolve_frames ({min_dissolve_frames}), "
                f"got {max_dissolve_frames!r}"
            )
        if not dissolve_contrast > 0:
            raise ValueError(f"dissolve_contrast must be > 0, got {dissolve_contrast!r}")
        self.cut_threshold = float(cut_threshold)
        self.cut_ratio = float(cut_ratio)
        self.window = int(window)
        self.black_level = float(black_level)
        self.dissolve_threshold = float(dissolve_threshold)
        self.dissolve_linearity = float(dissolve_linearity)
        self.windows = np.asarray(sorted({int(k) for k in windows}), dtype=np.int64)
        self.min_dissolve_frames = int(min_dissolve_frames)
        self.max_dissolve_frames = int(max_dissolve_frames)
        self.dissolve_contrast = float(dissolve_contrast)
        self.gradual = bool(gradual)
        self._tail: np.ndarray | None = None
        self._indices: list[np.ndarray] = []
        self._pos = 0
        self._scal = _Growable(2, 0)
        self._lin = _Growable(2 * len(self.windows), 0)

    # -- streaming
    def reset(self, stream: StreamInfo) -> None:
        super().reset(stream)
        self._tail = None
        self._indices = []
        self._pos = 0
        self._scal = _Growable(2, stream.num_samples)
        self._lin = _Growable(2 * len(self.windows), stream.num_samples)

    def process(self, indices: np.ndarray, frames: np.ndarray) -> list[Boundary]:
        if len(frames) == 0:
            return []
        check_frames(frames, "fast")
        frames = np.ascontiguousarray(frames)
        buf = frames if self._tail is None else np.concatenate([self._tail, frames])
        first_new = 0 if self._tail is None else len(self._tail)
        n = len(frames)
        nk = len(self.windows)
        d = np.empty(n, np.float32)
        y = np.empty(n, np.float32)
        e = np.empty((nk, n), np.float32)
        dd = np.empty((nk, n), np.float32)
        if self.gradual:
            _chunk_features(buf, first_new, self.windows, d, y, e, dd)
        else:
            _chunk_features(buf, first_new, self.windows[:0], d, y, e[:0], dd[:0])
            e[:] = np.nan
            dd[:] = np.nan
        self._scal.put(self._pos, np.stack([d, y]))
        self._lin.put(self._pos, np.concatenate([e, dd]))
        self._indices.append(np.asarray(indices, dtype=np.int64))
        self._pos += n
        keep = 2 * int(self.windows.max()) if self.gradual else 1
        self._tail = buf[-keep:].copy()
        return []

    def flush(self) -> list[Boundary]:
        if not self._indices:
            return []
        idx = np.concatenate(self._indices)
        d, y = (r.astype(np.float64) for r in self._scal.view())
        lin = self._lin.view().astype(np.float64)
        nk = len(self.windows)
        # re-index the window rows by their centre: value at column t belongs to t - k
        e = np.full((nk, len(d)), np.nan)
        dd = np.full((nk, len(d)), np.nan)
        for ki, k in enumerate(self.windows.tolist()):
            if k < len(d):
                e[ki, :-k] = lin[ki, k:]
                dd[ki, :-k] = lin[nk + ki, k:]
        self._tail = None
        self._indices = []
        gradual = self._fades(y) + self._dissolves(e, dd) if self.gradual else []
        gradual = _drop_overlaps(gradual)
        cuts = self._cuts(d, gradual)
        out = []
        for pos, kind, score, a, b in sorted(cuts + gradual):
            if kind == "cut":
                out.append(Boundary(int(idx[pos]), "cut", float(score)))
            else:
                end = int(idx[b - 1]) + 1 if b - 1 < len(idx) else int(idx[-1]) + 1
                out.append(Boundary(int(idx[pos]), kind, float(score), int(idx[a]), end))
        return out

    # -- decisions (positions are sample numbers, not frame numbers)
    def _cuts(self, d: np.ndarray, gradual: list) -> list:
        w = self.window
        dz = np.nan_to_num(d, nan=0.0)
        padded = np.pad(dz, w, mode="edge")
        sums = np.convolve(padded, np.ones(2 * w + 1), mode="valid")
        neighbours = (sums - dz) / (2 * w)
        # a small floor: static footage has near-zero neighbours and codec noise must not count
        ratio = dz / np.maximum(neighbours, 1.0)
        cand = np.flatnonzero((dz >= self.cut_threshold) & (ratio >= self.cut_ratio))
        cuts: list = []
        for t in cand.tolist():
            if t == 0 or any(a - 1 <= t <= b for _, _, _, a, b in gradual):
                continue
            # of adjacent candidates keep the larger spike
            if cuts and t - cuts[-1][0] <= w and dz[t] <= dz[cuts[-1][0]]:
                continue
            if cuts and t - cuts[-1][0] <= w:
                cuts.pop()
            cuts.append((t, "cut", float(dz[t]), t, t + 1))
        return cuts

    def _fades(self, y: np.ndarray) -> list:
        n = len(y)
        black = np.nan_to_num(y, nan=255.0) < self.black_level
        out = []
        t = 0
        while t < n:
            if not black[t]:
                t += 1
                continue
            a = t
            while t < n and black[t]:
                t += 1
            b = t  # black run [a, b)
            if a == 0 or b >= n:
                continue  # fading in at the start or out at the end enters no new scene
            lo = a
            while lo > 0 and y[lo - 1] > y[lo] + 0.5:
                lo -= 1
            hi = b
            while hi < n - 1 and y[hi + 1] > y[hi] + 0.5:
                hi += 1
            if a - lo < 2 and hi - b < 1:
                continue  # no ramp on either side: a black scene cut to another, not a fade
            score = float(max(y[lo], y[min(hi, n - 1)]) - np.min(y[a:b]))
            # the new scene starts in the middle of the black run (its second half)
            out.append((a + (b - a) // 2, "fade", score, lo, hi + 1))
        return out

    def _dissolves(self, e: np.ndarray, dd: np.ndarray) -> list:
        n = e.shape[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (dd >= self.dissolve_threshold) & (e <= self.dissolve_linearity * dd)
        ok &= np.isfinite(e)
        hit: np.ndarray = np.asarray(ok.any(axis=0))
        strength = np.where(ok, dd, 0.0).max(axis=0)
        out = []
        t = 0
        while t < n:
            if not hit[t]:
                t += 1
                continue
            a = t
            gap = 0
            last = t
            while t < n and gap <= 1:
                if hit[t]:
                    last = t
                    gap = 0
                else:
                    gap += 1
                t += 1
            b = last + 1  # window centres [a, b)
            if not self.min_dissolve_frames <= b - a <= self.max_dissolve_frames:
                continue
            # linear windows sit symmetrically around the dissolve's middle
            centre = (a + b) // 2
            contrast = self._contrast(dd, centre)
            if contrast < self.dissolve_contrast:
                continue  # as much change before and after: smooth motion, not a dissolve
            out.append((centre, "dissolve", float(strength[a:b].max()), max(0, a - 1), b + 1))
        return out

    def _contrast(self, dd: np.ndarray, centre: int) -> float:
        """How much more the window across ``centre`` changes than the windows of the same
        length just before and just after it (best over the window sizes).

        A smooth pan or zoom changes frames at a steady rate, so every window changes alike
        (about 1); a dissolve joins two scenes that each change little on their own.
        """
        n = dd.shape[1]
        best = 0.0
        for ki, k in enumerate(self.windows.tolist()):
            here = dd[ki, centre]
            around = [dd[ki, c] for c in (centre - 2 * k, centre + 2 * k) if 0 <= c < n]
            around = [v for v in around if np.isfinite(v)]
            if not np.isfinite(here):
                continue
            if not around:
                return float("inf")  # nothing to compare with (a very short video)
            # a floor of codec noise, so static scenes do not divide by ~0
            best = max(best, here / max(max(around), 1.0))
        return best


def _drop_overlaps(gradual: list) -> list:
    """A fade's ramps are linear too: a dissolve overlapping a fade is that fade."""
    fades = [g for g in gradual if g[1] == "fade"]
    out = list(fades)
    for g in gradual:
        if g[1] == "fade":
            continue
        if any(g[3] < f[4] and f[3] < g[4] for f in fades):
            continue
        out.append(g)
    return sorted(out)


__all__ = ["DEFAULT_WINDOWS", "FastDetector"]
