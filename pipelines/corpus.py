"""The corpus phase, as plain functions the Beam transforms wrap.

Everything here works on committed per-video records (``curate.shards.WORK_SCHEMA`` rows) and
the corpus-level values computed from all of them: the caption-score cut-off (a percentile
needs every score) and the duplicate map (a duplicate can sit in any other video). None of it
decodes video, so rerunning it over every committed record is cheap, and it is rerun in full
on every ``curate run``: the result does not depend on how the per-video work was split
across runs, and changing ``--threshold`` or ``--dedup-threshold`` needs no re-decoding.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from curate.threshold import Threshold
from schemas.tables import DROPPED, DUPLICATE, KEPT

logger = logging.getLogger(__name__)


# --- the corpus-level steps -------------------------------------------------------------------


def scorable(clip: Mapping[str, Any]) -> bool:
    """A clip whose caption score takes part in the corpus distribution."""
    return clip.get("caption_score") is not None and clip.get("status") != DROPPED


class CorpusSteps:
    """The corpus-phase steps, backed by the ``curate`` library.

    A subclass can replace any of them (another re-captioner, another dedup) and be passed to
    the pipeline as ``Components(corpus=...)``; it must pickle, as Beam ships it to workers.
    Dedup settings (see :class:`curate.dedup.Deduplicator`) other than the threshold are fixed
    here because the signature is computed in the per-video phase and committed.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        prompt_bank: str | None = None,
        captioner: str | None = None,
        relaxed_threshold: float | None = 0.85,
        pixel_weight: float = 0.5,
        thumb_size: int = 8,
        k: int = 4,
    ) -> None:
        self.model = model
        #: a prompt file whose prompts join the corpus' own in the prompt bank
        self.prompt_bank = prompt_bank
        self._user_prompts: list[str] | None = None
        #: a captioner folder: scenes without a usable caption take the bank's prompt or the
        #: captioner's caption, whichever CLIP prefers
        self.captioner = captioner
        self.relaxed_threshold = relaxed_threshold
        self.pixel_weight = pixel_weight
        self.thumb_size = thumb_size
        self.k = k

    def _dedup(self, threshold: float) -> Any:
        from curate.dedup import Deduplicator

        relaxed = self.relaxed_threshold
        if relaxed is not None:
            relaxed = min(relaxed, threshold)
        return Deduplicator(
            threshold=threshold,
            relaxed_threshold=relaxed,
            pixel_weight=self.pixel_weight,
            thumb_size=self.thumb_size,
            k=self.k,
            nprobe=1,
        )

    def signature(self, record: Mapping[str, Any]) -> np.ndarray:
        """The dedup signature of a scored clip that still has its sampled ``frames``."""
        from curate.dedup import clip_signature

        return clip_signature(
            record, pixel_weight=self.pixel_weight, thumb_size=self.thumb_size, k=self.k
        )

    def cutoff(self, scores: Sequence[float], threshold: Threshold) -> float | None:
        """The absolute cut-off: the threshold itself, or the percentile of ``scores``."""
        if not threshold.percentile:
            return threshold.value
        if len(scores) == 0:
            return None
        from curate.threshold import calibrate_threshold

        return calibrate_threshold(scores, percentile=threshold.value)

    def apply_cutoff(self, clips: Iterable[Mapping[str, Any]], cutoff: float | None) -> list[dict]:
        """Final status and reason of every clip (``None``: nothing was scored at all)."""
        from curate.filtering import apply_threshold

        cut = float("-inf") if cutoff is None else cutoff
        return [apply_threshold(c, cut) for c in clips]

    def bank_prompts(self, record: Mapping[str, Any]) -> list[str]:
        """The prompts one committed video adds to the corpus's prompt bank."""
        from curate.recaption import build_prompt_bank

        frag = {e.get("clip_id"): e.get("fragment") for e in record.get("clip_extras") or ()}
        return build_prompt_bank(
            {**c, "fragment": frag.get(c.get("clip_id"))} for c in record.get("clips") or ()
        )

    def recaption(
        self,
        video: Mapping[str, Any],
        clips: Sequence[dict],
        extras: Sequence[Mapping[str, Any]],
        *,
        bank: Sequence[str] | None = None,
    ) -> tuple[list[dict], dict | None]:
        """Prompts for every clip of one video, and its stories row (``None``: nothing kept)."""
        from curate import recaption as rc

        prompts = list(bank or ())
        if self.prompt_bank:
            if self._user_prompts is None:
                self._user_prompts = rc.load_prompt_bank(self.prompt_bank)
            prompts = list(dict.fromkeys(prompts + self._user_prompts))
        return rc.recaption_video(
            video,
            clips,
            extras,
            model=self.model,
            prompt_bank=prompts or None,
            captioner=self.captioner,
        )

    def duplicates(self, rows: Sequence[Mapping[str, Any]], *, threshold: float) -> dict[str, str]:
        """``{clip_id: duplicate_of}`` among ``rows`` (each with its ``dedup_signature``)."""
        if len(rows) < 2:
            return {}
        marked = self._dedup(threshold).dedup_group(list(rows))
        return {r["clip_id"]: r["duplicate_of"] for r in marked if r.get("duplicate_of")}

    def train_centroids(
        self, signatures: Sequence[Sequence[float]], *, clusters: int, seed: int = 0
    ) -> np.ndarray:
        from curate.dedup import train_centroids

        sigs = np.asarray(signatures, np.float32)
        return train_centroids(sigs, n_centroids=min(clusters, len(sigs)), seed=seed)

    def assign(self, signature: Sequence[float], centroids: np.ndarray) -> int:
        from curate.dedup import assign_centroids

        return int(assign_centroids(np.asarray([signature], np.float32), centroids)[0])


def apply_duplicates(clips: Iterable[Mapping[str, Any]], dup_of: Mapping[str, str]) -> list[dict]:
    out = []
    for clip in clips:
        clip = dict(clip)
        original = dup_of.get(clip["clip_id"])
        if original is not None and clip.get("status") == KEPT:
            clip["status"], clip["reason"], clip["duplicate_of"] = DROPPED, DUPLICATE, original
        out.append(clip)
    return out


def story_survives_dedup(story: Mapping[str, Any], dup_of: Mapping[str, str]) -> bool:
    """False when every segment of ``story`` shows a duplicate clip."""
    ids = [seg.get("clip_id") for seg in story.get("segments") or ()]
    return not ids or not all(i in dup_of for i in ids)


# --- counts -----------------------------------------------------------------------------------


def table_counts(table: str, rows: Iterable[Mapping[str, Any]]) -> Counter:
    """The manifest's counts for one shard's rows."""
    counts: Counter = Counter()
    for row in rows:
        counts[table] += 1
        if table == "clips":
            counts[f"clips_{row['status']}"] += 1
            if row.get("reason"):
                counts[f"clips_dropped_{row['reason']}"] += 1
        elif table == "failures":
            counts[f"failures_stage_{row['stage']}"] += 1
    return counts
