"""Frame sampling: pick k frames per scene for the caption scorer.

Frames next to a scene boundary often belong half to the neighbouring scene (a fade, a
dissolve, a cut detected a frame late), so sampling keeps ``margin`` frames away from both
ends where the scene is long enough. All scenes of one video are sampled with one decode call.

Strategies:

- ``uniform``: k frames evenly spread over the scene's interior
- ``middle``: k consecutive frames around the scene's middle
- ``keyframes``: the k frames of highest local change, read from a strided set of candidate
  frames (at most ``max_candidates`` per scene) decoded in the same call
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from schemas.tables import DROPPED, TOO_SHORT

from .choices import STRATEGIES
from .step import Step, check_choice, check_positive
from .video import read_frames

logger = logging.getLogger(__name__)


#: ``read_frames(uri, indices, *, width=None, height=None) -> (N, H, W, 3) uint8``; called
#: with ``allow_truncated=True`` as well when the sampler is made with it
FrameReader = Callable[..., np.ndarray]


def interior(start: int, end: int, k: int, margin: int) -> tuple[int, int]:
    """The span ``[a, b)`` of ``[start, end)`` to sample from: ``margin`` frames off each end,
    shrunk as far as needed to leave ``k`` frames (the whole scene if it is shorter than k)."""
    n = end - start
    if n <= k:
        return start, end
    m = min(margin, (n - k) // 2)
    return start + m, end - m


def plan_indices(
    start: int, end: int, k: int, *, strategy: str = "uniform", margin: int = 3
) -> list[int]:
    """Frame indices to sample from the scene ``[start, end)`` (``uniform`` / ``middle``).

    A scene with at most ``k`` frames gives all of them; otherwise exactly ``k`` distinct,
    sorted indices inside the interior.
    """
    check_choice("strategy", strategy, ("uniform", "middle"))
    if end <= start:
        raise ValueError(f"empty scene [{start}, {end})")
    a, b = interior(start, end, k, margin)
    n = b - a
    if n <= k:
        return list(range(a, b))
    if strategy == "middle":
        first = a + (n - k) // 2
        return list(range(first, first + k))
    # centres of k equal bins: symmetric, and never the interior's first or last frame
    return [a + int((2 * i + 1) * n // (2 * k)) for i in range(k)]


def candidate_indices(
    start: int, end: int, k: int, *, margin: int, max_candidates: int
) -> list[int]:
    """Strided candidates for ``keyframes``: every frame of the interior, or every s-th."""
    a, b = interior(start, end, k, margin)
    n = b - a
    if n <= max(k, max_candidates):
        return list(range(a, b))
    idx = np.linspace(a, b - 1, max_candidates).round().astype(int)
    return sorted(set(idx.tolist()))


def pick_keyframes(frames: np.ndarray, k: int) -> list[int]:
    """Positions (into ``frames``) of the k frames around the highest local change.

    Change at frame i is the mean absolute difference to its neighbours (on a 32-px grey
    thumbnail, so sensor noise averages out). Picks are spread: once a frame is chosen its
    immediate neighbours are suppressed, unless fewer than k would remain.
    """
    n = len(frames)
    if n <= k:
        return list(range(n))
    grey = frames.astype(np.float32).mean(axis=-1)
    step = max(1, max(grey.shape[1:]) // 32)
    grey = grey[:, ::step, ::step]
    d = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))  # (n - 1,) change between i and i+1
    change = np.zeros(n, np.float32)
    change[:-1] += d
    change[1:] += d
    change[1:-1] /= 2
    order = np.argsort(-change, kind="stable")
    chosen: list[int] = []
    blocked = np.zeros(n, bool)
    for i in order:
        if not blocked[i]:
            chosen.append(int(i))
            blocked[max(0, i - 1) : i + 2] = True
            if len(chosen) == k:
                break
    for i in order:  # too few after suppression: fill with the next best
        if len(chosen) == k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return sorted(chosen)


class FrameSampler(Step[Any, dict]):
    """Sample ``k`` frames of every scene of a video, decoding the video once.

    ``process`` takes the clip records of one video (a list, or a single record) and yields
    each record with ``frames`` (``(n, H, W, 3)`` uint8, ``n = min(k, scene length)``) and
    ``frame_indices``. A scene with fewer than ``min_frames`` frames is marked dropped with
    reason ``too_short`` (it still gets its frames, for embedding and re-captioning).

    ``size``: ``None`` (native), an int (shortest edge, aspect kept) or ``(height, width)``
    (exact, as a CLIP whose preprocessing squashes frames expects); pass
    :attr:`curate.clip_score.ClipScorer.sample_size`.

    ``allow_truncated``: read a file that ends early as the scene splitter did with the same
    setting (its scenes end where decoding stopped), instead of refusing it.
    """

    stage = "sample-frames"

    def __init__(
        self,
        *,
        k: int = 4,
        strategy: str = "uniform",
        margin: int = 3,
        min_frames: int = 8,
        size: int | tuple[int, int] | None = None,
        max_candidates: int = 48,
        reader: FrameReader | None = None,
        allow_truncated: bool = False,
    ) -> None:
        check_positive("k", k)
        check_choice("strategy", strategy, STRATEGIES)
        check_positive("margin", margin, allow_zero=True)
        check_positive("min_frames", min_frames)
        check_positive("max_candidates", max_candidates)
        if max_candidates < k:
            raise ValueError(f"max_candidates must be >= k ({k}), got {max_candidates!r}")
        if size is not None:
            dims = (size,) if isinstance(size, int) else tuple(size)
            if len(dims) not in (1, 2) or any(int(d) < 1 for d in dims):
                raise ValueError(f"size must be None, an int or (height, width) > 0, got {size!r}")
        self.k = int(k)
        self.strategy = strategy
        self.margin = int(margin)
        self.min_frames = int(min_frames)
        self.size = size
        self.max_candidates = int(max_candidates)
        self._reader = reader
        self.allow_truncated = bool(allow_truncated)

    def setup(self) -> None:
        if self._reader is None:
            self._reader = read_frames

    def _target_size(self, record: Mapping[str, Any]) -> tuple[int | None, int | None]:
        if self.size is None:
            return None, None
        if isinstance(self.size, int):
            # as the HF image processors size it: the short side exact, the long one truncated
            w, h = int(record["width"]), int(record["height"])
            long = max(1, int(self.size * max(w, h) / min(w, h)))
            return (self.size, long) if w <= h else (long, self.size)
        h, w = self.size
        return int(w), int(h)

    def plan(self, record: Mapping[str, Any]) -> list[int]:
        start, end = int(record["start_frame"]), int(record["end_frame"])
        if end <= start:
            raise ValueError(f"clip {record.get('clip_id')!r}: empty span [{start}, {end})")
        if self.strategy == "keyframes":
            return candidate_indices(
                start, end, self.k, margin=self.margin, max_candidates=self.max_candidates
            )
        return plan_indices(start, end, self.k, strategy=self.strategy, margin=self.margin)

    def sample_video(self, clips: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Sample every clip of one video with one ``read_frames`` call."""
        if self._reader is None:
            self.setup()
        if not clips:
            return []
        uris = {c["uri"] for c in clips}
        if len(uris) != 1:
            raise ValueError(f"sample_video takes the clips of one video, got uris {sorted(uris)}")
        uri = uris.pop()
        plans = [self.plan(c) for c in clips]
        wanted = sorted({i for p in plans for i in p})
        width, height = self._target_size(clips[0])
        assert self._reader is not None
        options = {"allow_truncated": True} if self.allow_truncated else {}
        frames = self._reader(uri, wanted, width=width, height=height, **options)
        if len(frames) != len(wanted):
            raise ValueError(
                f"{uri}: asked for {len(wanted)} frames, the reader returned {len(frames)}"
            )
        pos = {idx: j for j, idx in enumerate(wanted)}
        out = []
        for clip, idx in zip(clips, plans):
            rec = dict(clip)
            got = frames[[pos[i] for i in idx]]
            if self.strategy == "keyframes":
                keep = pick_keyframes(got, self.k)
                got, idx = got[keep], [idx[j] for j in keep]
            rec["frames"] = np.ascontiguousarray(got)
            rec["frame_indices"] = list(idx)
            length = int(clip["end_frame"]) - int(clip["start_frame"])
            if length < self.min_frames and rec.get("status") != DROPPED:
                rec["status"], rec["reason"] = DROPPED, TOO_SHORT
                logger.info(
                    "%s: %s frames < min_frames %s: too_short",
                    rec.get("clip_id"),
                    length,
                    self.min_frames,
                )
            rec.setdefault("status", "kept")
            out.append(rec)
        return out

    def process(self, record: Any) -> Iterator[dict]:
        clips = [record] if isinstance(record, Mapping) else list(record)
        yield from self.sample_video(clips)

    def process_all(self, records: Iterable[Any]) -> Iterator[dict]:
        """Group consecutive clips of one video so each video is decoded once."""
        group: list[Mapping[str, Any]] = []
        for rec in records:
            items = [rec] if isinstance(rec, Mapping) else list(rec)
            for clip in items:
                if group and clip["uri"] != group[0]["uri"]:
                    yield from self.sample_video(group)
                    group = []
                group.append(clip)
        if group:
            yield from self.sample_video(group)
