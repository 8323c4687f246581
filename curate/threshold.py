"""The caption-score threshold: parsing it, what ``auto`` means, and the corpus cut-off.

A threshold is an absolute cosine (``0.22``) or a percentile of the corpus' own scores
(``p20``: drop the lowest 20 %). CLIP cosines depend on the model and the corpus (LAION's 0.28
for ViT-B/32 images means little for video frames or for another checkpoint), so a percentile
is the portable choice, and ``auto`` takes the cut-off the model folder recommends in its
``scoring.json`` (the shipped CLIP's is measured on held-out frames) or ``p20`` without one.

Everything that reads a threshold goes through here: ``curate run``, ``curate calibrate``, the
Beam pipeline's corpus phase and :class:`curate.filtering.CaptionFilter`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.tables import DROPPED

from .models import recommended_threshold, resolve_model_path

#: the threshold that defers to the model folder
AUTO = "auto"
#: what ``auto`` means for a model folder that recommends no cut-off
FALLBACK = "p20"


@dataclass(frozen=True)
class Threshold:
    """A caption-score cut-off: an absolute cosine, or a percentile of the corpus's scores."""

    value: float
    percentile: bool

    def __str__(self) -> str:
        return f"p{self.value:g}" if self.percentile else f"{self.value:g}"

    def cutoff(self, scores: Sequence[Any]) -> float | None:
        """The absolute cut-off for a corpus' ``scores``: the value itself, or the percentile of
        the scored clips (``None`` when a percentile has no score to take it from)."""
        if not self.percentile:
            return self.value
        if not len(valid_scores(scores)):
            return None
        return calibrate_threshold(scores, percentile=self.value)

    def calibrate(self, scores: Iterable[Any]) -> Calibration:
        """The cut-off over ``scores`` and what it drops (see :func:`calibrate`)."""
        if self.percentile:
            return calibrate(scores, percentile=self.value)
        return calibrate(scores, threshold=self.value)


_PERCENTILE = re.compile(r"^\s*(?:p|pct|percentile:?)\s*([0-9.]+)\s*%?\s*$", re.IGNORECASE)


def parse_threshold(text: str | float | Threshold) -> Threshold:
    """``"0.22"`` (absolute cosine) or ``"p20"`` / ``"20%"`` (drop the lowest 20 %)."""
    if isinstance(text, Threshold):
        return text
    if isinstance(text, (int, float)):
        return Threshold(float(text), False)
    raw = str(text).strip()
    m = _PERCENTILE.match(raw)
    if m is None and raw.endswith("%"):
        m = re.match(r"^([0-9.]+)%$", raw)
    if m is not None:
        value = float(m.group(1))
        if not 0.0 <= value < 100.0:
            raise ValueError(f"a percentile threshold must be in [0, 100), got {text!r}")
        return Threshold(value, True)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"threshold must be a cosine such as 0.22 or a percentile such as p20, got {text!r}"
        ) from None
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"an absolute threshold is a cosine in [-1, 1], got {text!r}")
    return Threshold(value, False)


def auto_threshold(model: str | None) -> str:
    """The cut-off ``auto`` means for ``model`` (``None``: the shipped CLIP): the one its
    folder recommends, else :data:`FALLBACK`."""
    path = resolve_model_path(model)
    value = recommended_threshold(path) if Path(path).is_dir() else None
    return FALLBACK if value is None else f"{value:g}"


def is_auto(text: str | float | Threshold | None) -> bool:
    return text is None or (isinstance(text, str) and text.strip().lower() == AUTO)


def resolve_threshold(text: str | float | Threshold | None, *, model: str | None) -> Threshold:
    """The threshold ``text`` means for ``model``: ``auto`` (or ``None``) resolved, then parsed.

    Raises ``ValueError`` naming the value when it is neither.
    """
    if text is None or is_auto(text):
        return parse_threshold(auto_threshold(model))
    return parse_threshold(text)


def scorable(clip: Mapping[str, Any]) -> bool:
    """A clip whose caption score takes part in the corpus distribution."""
    return clip.get("caption_score") is not None and clip.get("status") != DROPPED


@dataclass(frozen=True)
class Calibration:
    """A threshold and how it was chosen (for logs, manifests and the ``calibrate`` CLI)."""

    threshold: float
    method: str  # "absolute" | "percentile"
    percentile: float | None
    scored: int
    dropped: int

    @property
    def kept(self) -> int:
        return self.scored - self.dropped


def valid_scores(values: Iterable[Any]) -> np.ndarray:
    """The scores that count: ``None`` and NaN (unscorable clips) left out."""
    return np.asarray([float(v) for v in values if not missing_score(v)], np.float64)


def missing_score(v: Any) -> bool:
    """``None``, NaN, or not a number at all."""
    if v is None:
        return True
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def calibrate_threshold(scores: Iterable[Any], *, percentile: float) -> float:
    """The cut that drops the lowest ``percentile`` % of the scored clips.

    Uses the "lower" percentile so that a clip scoring exactly the threshold is kept and at
    most ``percentile`` % fall below it. ``None`` / NaN scores (unscorable clips) do not count.
    """
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
    arr = valid_scores(scores)
    if arr.size == 0:
        raise ValueError("cannot calibrate a threshold on zero scored clips")
    return float(np.percentile(arr, percentile, method="lower"))


def calibrate(
    scores: Iterable[Any], *, threshold: float | None = None, percentile: float | None = None
) -> Calibration:
    """Choose the threshold (absolute or percentile) and count what it drops."""
    if (threshold is None) == (percentile is None):
        raise ValueError(
            f"give exactly one of threshold and percentile, got {threshold!r} and {percentile!r}"
        )
    arr = valid_scores(scores)
    if percentile is not None:
        cut = calibrate_threshold(arr, percentile=percentile)
        method = "percentile"
    else:
        cut, method = float(threshold), "absolute"  # type: ignore[arg-type]
    return Calibration(cut, method, percentile, int(arr.size), int((arr < cut).sum()))
