"""One video of the corpus phase: its committed record under the corpus cut-off, then
re-captioned; a video that fails moves to the failures table whole. Used by the streamed phase
(:meth:`curate.corpus.CorpusPhase.recaption_chunk`) and by the record-level Beam transforms
(:mod:`pipelines.transforms.corpus`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..filtering import CaptionFilter
from ..isolation import traceback_tail
from ..work import failure_from_exception, rows_problem


def filter_and_recaption(
    step: Any,
    record: Mapping[str, Any],
    cutoff: float | None,
    *,
    bank_error: BaseException | None = None,
) -> dict[str, Any]:
    """One committed record under the corpus cut-off, then re-captioned by ``step`` (a
    :class:`curate.recaption.Recaptioner`, its corpus bank set): ``{**record, "clips",
    "story", "failures"}``. A video that fails re-captioning (or whose rows no table takes)
    moves to the failures table whole: no video is in both (``bank_error``: the corpus bank
    could not be set, which fails every video that needed it: see
    :func:`recaption_filtered`)."""
    if not record["clips"]:
        return {**record, "story": None}
    clips = list(CaptionFilter.fitted(cutoff).process_all(record["clips"]))
    return recaption_filtered(step, {**record, "clips": clips}, bank_error=bank_error)


def recaption_filtered(
    step: Any, record: Mapping[str, Any], *, bank_error: BaseException | None = None
) -> dict[str, Any]:
    """Re-caption one record whose clips are filtered (see :func:`filter_and_recaption`).

    With ``bank_error`` the video fails with it only where it needed the bank: a scene took a
    bank prompt (from whatever bank the step held), or was left to a fallback that searches
    the bank. A video whose scenes all keep their own caption's words is re-captioned."""
    if not record["clips"]:
        return {**record, "story": None}
    video = record["video"]
    try:
        clips, story = step.recaption_record(video, record["clips"])
        if bank_error is not None and _needed_bank(step, clips):
            raise bank_error
    except Exception as exc:
        row = failure_from_exception(video, exc, stage="recaption", traceback=traceback_tail(exc))
        return {**record, "clips": [], "failures": [row], "story": None}
    problem = rows_problem(video, clips, story)
    if problem is not None:  # a value no table takes fails this video, not the shards
        row = failure_from_exception(
            video, None, stage="validate", error_type="InvalidValue", message=problem
        )
        return {**record, "clips": [], "failures": [row], "story": None}
    return {**record, "clips": clips, "story": story}


#: where a scene's prompt came from when it kept its own caption's words
_OWN_CAPTION = ("source", "source_fragment")


def _needed_bank(step: Any, clips: Sequence[Mapping[str, Any]]) -> bool:
    """Whether re-captioning ``clips`` drew on the prompt bank, or would have."""
    searched = getattr(step, "fallback", "prompt_bank") in ("prompt_bank", "best")
    return any(
        c.get("recaption_source") == "prompt_bank"
        or (searched and c.get("recaption_source") not in _OWN_CAPTION)
        for c in clips
    )
