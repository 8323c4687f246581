"""Loading a model folder: the pipeline class chosen from its layout, the scheduler by name.

(The folder's recommended sampling settings, ``sampling.json``, are read by
:func:`storygen.settings.read_sampling_json`, which needs no torch.)

A folder in the masked layout (``StoryVideoPipeline.save_pretrained``'s) loads as
:class:`~storygen.pipeline.StoryVideoPipeline`; one in the ModelScope text-to-video layout
(``TextToVideoSDPipeline``'s, see :mod:`storygen.training_free`) as
:class:`~storygen.pipeline.TrainingFreeStoryPipeline`.
"""

from __future__ import annotations

import os
from typing import Any

import diffusers
import torch

from storygen.pipeline import StoryVideoPipeline, TrainingFreeStoryPipeline
from storygen.settings import SCHEDULERS
from storygen.training_free import is_t2v_layout

__all__ = ["SCHEDULERS", "load_pipeline", "make_scheduler"]


def make_scheduler(name: str, config: Any) -> Any:
    """The scheduler ``SCHEDULERS[name]`` built from ``config`` (another scheduler's)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def load_pipeline(
    path: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    scheduler: str | None = None,
) -> StoryVideoPipeline:
    """Load a model folder in either layout, choosing the pipeline class from it.

    ``scheduler``: ``"ddim"``, ``"dpm"`` (DPM-Solver++ multistep) or ``"euler"`` to replace
    the saved scheduler, keeping its noise schedule.
    """
    cls = TrainingFreeStoryPipeline if is_t2v_layout(path) else StoryVideoPipeline
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    pipe = cls.from_pretrained(str(path), **kwargs)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe
