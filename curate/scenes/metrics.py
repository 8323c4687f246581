"""Scoring detected scene boundaries against ground truth.

* **Hard cuts**: a detected cut matches a true cut at most ``tolerance`` frames away (one to
  one, nearest first). A detected cut inside a true *gradual* transition (its span widened by
  ``tolerance``) is neither right nor wrong for this score: it found a real boundary, just not a
  hard one; it is scored by the other two measures.
* **Gradual transitions**: a detected fade / dissolve matches a true one when its span overlaps
  the true span (or, without a span, its boundary frame lies inside it). The kind is not
  required to match for F1; ``kind_accuracy`` reports how often it does.
* **All boundaries**: every detected scene start against every true one, cuts at ``tolerance``
  frames, gradual transitions anywhere in their span; what matters to a user cutting clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from curate.scenes.base import GRADUAL, Boundary


@dataclass
class PRF:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __iadd__(self, other: PRF) -> PRF:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        for k, v in other.extra.items():
            self.extra[k] = self.extra.get(k, 0) + v
        return self

    def as_dict(self) -> dict:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            **self.extra,
        }


def _match(pred: Sequence[int], true: Sequence[int], tolerance: int) -> tuple[set[int], set[int]]:
    """One-to-one matching by nearest distance; returns matched (pred, true) index sets."""
    pairs = sorted(
        (abs(p - t), i, j)
        for i, p in enumerate(pred)
        for j, t in enumerate(true)
        if abs(p - t) <= tolerance
    )
    mp: set[int] = set()
    mt: set[int] = set()
    for _, i, j in pairs:
        if i not in mp and j not in mt:
            mp.add(i)
            mt.add(j)
    return mp, mt


def score_cuts(
    detected: Sequence[Boundary],
    true_cuts: Sequence[int],
    true_gradual: Sequence[tuple[str, int, int]] = (),
    *,
    tolerance: int = 1,
) -> PRF:
    cuts = [b.frame for b in detected if b.kind == "cut"]
    mp, mt = _match(cuts, list(true_cuts), tolerance)
    fp = 0
    for i, f in enumerate(cuts):
        if i in mp:
            continue
        if any(a - tolerance <= f < b + tolerance for _, a, b in true_gradual):
            continue
        fp += 1
    return PRF(tp=len(mt), fp=fp, fn=len(true_cuts) - len(mt))


def score_gradual(
    detected: Sequence[Boundary], true_gradual: Sequence[tuple[str, int, int]]
) -> PRF:
    pred = [b for b in detected if b.kind in GRADUAL]
    used: set[int] = set()
    tp = kind_ok = 0
    matched_pred: set[int] = set()
    for j, (kind, a, b) in enumerate(true_gradual):
        for i, p in enumerate(pred):
            if i in matched_pred:
                continue
            pa, pb = p.span
            if pa < b and a < pb:
                matched_pred.add(i)
                used.add(j)
                tp += 1
                kind_ok += p.kind == kind
                break
    return PRF(
        tp=tp,
        fp=len(pred) - len(matched_pred),
        fn=len(true_gradual) - len(used),
        extra={"kind_ok": kind_ok},
    )


def score_boundaries(
    detected: Sequence[Boundary],
    true_cuts: Sequence[int],
    true_gradual: Sequence[tuple[str, int, int]],
    *,
    tolerance: int = 1,
) -> PRF:
    """Every scene start, whatever its kind."""
    targets = [(c - tolerance, c + tolerance + 1) for c in true_cuts]
    targets += [(a - tolerance, b + tolerance) for _, a, b in true_gradual]
    used: set[int] = set()
    tp = 0
    for p in sorted(detected, key=lambda b: b.frame):
        hit = next(
            (j for j, (a, b) in enumerate(targets) if j not in used and a <= p.frame < b), None
        )
        if hit is not None:
            used.add(hit)
            tp += 1
    return PRF(tp=tp, fp=len(detected) - tp, fn=len(targets) - tp)


__all__ = ["PRF", "score_boundaries", "score_cuts", "score_gradual"]
