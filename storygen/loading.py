"""Loading a model folder: the pipeline class chosen from its layout, the scheduler by name.

(The folder's recommended sampling settings, ``sampling.json``, are read by
:func:`storygen.settings.read_sampling_json`, which needs no torch.)

A folder in the masked layout (``StoryVideoPipeline.save_pretrained``'s) loads as
:class:`~storygen.pipeline.StoryVideoPipeline`; one in the ModelScope text-to-video layout
(``TextToVideoSDPipeline``'s, see :mod:`storygen.training_free`) as
:class:`~storygen.pipeline.TrainingFreeStoryPipeline`, and so does a masked-layout folder whose
last training run was plain text-to-video (``storygen train --text-to-video 1``: it never
learnt to read known frames), exported to the ModelScope layout as it loads.
"""

from __future__ import annotations

import os
from typing import Any

import diffusers
import torch

from storygen.pipeline import StoryVideoPipeline, TrainingFreeStoryPipeline
from storygen.settings import SCHEDULERS
from storygen.training_free import is_t2v_layout

__all__ = ["SCHEDULERS", "load_pipeline", "make_scheduler", "trained_as_text_to_video"]


def trained_as_text_to_video(path: str | os.PathLike) -> bool:
    """Whether the folder's last UNet training run (its ``training.json``) was plain
    text-to-video: every window global, nothing known (``storygen train --text-to-video 1``)."""
    import json

    report = os.path.join(os.fspath(path), "training.json")
    if not os.path.isfile(report):
        return False
    try:
        with open(report, encoding="utf-8") as fh:
            runs = json.load(fh).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return False
    unet_runs = [r for r in runs if isinstance(r, dict) and r.get("part") == "unet"]
    return bool(unet_runs and unet_runs[-1].get("text_to_video", False))


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
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if not is_t2v_layout(path) and trained_as_text_to_video(path):
        import tempfile

        from storygen.training.folder import to_t2v_folder

        with tempfile.TemporaryDirectory() as tmp:  # the weights are in memory once loaded
            pipe = TrainingFreeStoryPipeline.from_pretrained(
                str(to_t2v_folder(os.fspath(path), os.path.join(tmp, "t2v"))), **kwargs
            )
    else:
        cls = TrainingFreeStoryPipeline if is_t2v_layout(path) else StoryVideoPipeline
        pipe = cls.from_pretrained(str(path), **kwargs)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe
