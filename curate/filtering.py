"""Caption filtering: every clip leaves with a status and, when dropped, a reason.

The cut-off is absolute (a cosine) or a percentile of the corpus' own scores; how a threshold
is read and turned into a cut-off is :mod:`curate.threshold`'s.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from schemas.tables import (
    DROP_REASONS,
    DROPPED,
    EMPTY_CAPTION,
    INVALID_CAPTION,
    KEPT,
    LOW_CAPTION_SCORE,
)

from .step import Step, check_positive
from .threshold import (
    Calibration,
    Threshold,
    calibrate,
    missing_score,
    scorable,
    valid_scores,
)

logger = logging.getLogger(__name__)


def apply_threshold(record: Mapping[str, Any], threshold: float) -> dict:
    """Give ``record`` its final ``status`` and ``reason``.

    Order of precedence: an earlier drop keeps its reason (empty / invalid caption, too
    short, duplicate); an unscored clip with no drop reason is an empty caption if it has
    none, else an invalid one; a score below ``threshold`` is ``low_caption_score``;
    otherwise kept. A ``low_caption_score`` is no earlier drop but an earlier threshold's
    verdict: it is decided again (a run's clips under another threshold, as ``curate
    calibrate`` reads them).
    """
    out = dict(record)
    if (
        out.get("status") == DROPPED
        and out.get("reason") in DROP_REASONS
        and out.get("reason") != LOW_CAPTION_SCORE
    ):
        return out
    raw: Any = out.get("caption_score")
    score = None if missing_score(raw) else float(raw)
    if score is None:
        caption = out.get("source_caption")
        reason = (
            EMPTY_CAPTION if not (isinstance(caption, str) and caption.strip()) else INVALID_CAPTION
        )
        out["status"], out["reason"] = DROPPED, reason
    elif score < threshold:
        out["status"], out["reason"] = DROPPED, LOW_CAPTION_SCORE
    else:
        out["status"], out["reason"] = KEPT, None
    return out


class CaptionFilter(Step[dict, dict]):
    """Mark clips kept or dropped by caption score; nothing is removed, every row stays.

    ``threshold``: an absolute cosine. ``percentile``: drop the lowest that many percent of
    the scored clips; the threshold comes from :meth:`fit` (or, in :meth:`process_all`,
    from the records themselves, which then are held in memory; records of which none is
    scored keep every scored clip, as :meth:`fitted` with no cut-off does). Give exactly one.

    A run too large to hold in memory (the Beam pipeline's corpus phase) computes the cut-off
    once over every score (:meth:`curate.threshold.Threshold.cutoff`) and filters each video
    with :meth:`fitted`.
    """

    stage = "filter"

    def __init__(self, *, threshold: float | None = None, percentile: float | None = None) -> None:
        if (threshold is None) == (percentile is None):
            raise ValueError(
                f"give exactly one of threshold and percentile, got {threshold!r} and {percentile!r}"
            )
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold!r}")
        if percentile is not None and not 0 <= percentile < 100:
            raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
        self.percentile = percentile
        self.threshold: float | None = None if threshold is None else float(threshold)
        self.counts: Counter[str] = Counter()

    @classmethod
    def for_threshold(cls, threshold: Threshold) -> CaptionFilter:
        """The filter of a parsed :class:`~curate.threshold.Threshold`."""
        if threshold.percentile:
            return cls(percentile=threshold.value)
        return cls(threshold=threshold.value)

    @classmethod
    def fitted(cls, cutoff: float | None) -> CaptionFilter:
        """A filter at a cut-off computed elsewhere; ``None`` (nothing was scored) keeps every
        scored clip."""
        step = cls(threshold=0.0)
        step.threshold = float("-inf") if cutoff is None else float(cutoff)
        return step

    def fit(self, scores: Iterable[Any]) -> Calibration:
        """Set the threshold from a corpus' scores (percentile mode; a no-op count otherwise)."""
        cal = calibrate(
            scores,
            threshold=self.threshold if self.percentile is None else None,
            percentile=self.percentile,
        )
        self.threshold = cal.threshold
        logger.info(
            "caption threshold %.4f (%s%s): %d of %d scored clips below",
            cal.threshold,
            cal.method,
            f" {cal.percentile:g}" if cal.percentile is not None else "",
            cal.dropped,
            cal.scored,
        )
        return cal

    def process(self, record: Mapping[str, Any]) -> Iterator[dict]:
        if self.threshold is None:
            raise RuntimeError("percentile filter has no threshold yet: call fit(scores) first")
        out = apply_threshold(record, self.threshold)
        self.counts[out["reason"] or KEPT] += 1
        yield out

    def process_all(self, records: Iterable[Mapping[str, Any]]) -> Iterator[dict]:
        if self.threshold is None:
            records = list(records)
            scores = [r.get("caption_score") for r in records if scorable(r)]
            if len(valid_scores(scores)):
                self.fit(scores)
            else:
                logger.info("caption threshold: no scored clip to take percentile from")
                self.threshold = float("-inf")
        for record in records:
            yield from self.process(record)


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts per status and reason: ``{"kept": n, "dropped": m, "low_caption_score": k, ...}``."""
    counts: Counter[str] = Counter()
    for r in records:
        counts[r.get("status") or "unknown"] += 1
        if r.get("status") == DROPPED:
            counts[r.get("reason") or "unknown"] += 1
    return dict(counts)


def text_histogram(
    scores: Iterable[Any], *, bins: int = 20, threshold: float | None = None, width: int = 50
) -> str:
    """A histogram drawn with characters, the bin holding ``threshold`` marked with ``<- cut``."""
    check_positive("bins", bins)
    check_positive("width", width)
    arr = valid_scores(scores)
    if arr.size == 0:
        return "(no scored clips)"
    lo, hi = float(arr.min()), float(arr.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-9:
        hi = lo + 1e-3
    counts, edges = np.histogram(arr, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    lines = []
    for i, c in enumerate(counts):
        a, b = edges[i], edges[i + 1]
        bar = "#" * int(round(width * c / top))
        mark = ""
        last = i == len(counts) - 1
        if threshold is not None and (a <= threshold < b or (last and threshold == b)):
            mark = "  <- cut"
        lines.append(f"{a:+.3f} .. {b:+.3f} | {c:6d} {bar}{mark}")
    return "\n".join(lines)
