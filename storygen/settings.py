"""The settings of one render, resolved once by the pipeline and read by everything after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: the settings that determine the frames (a run's cache key hashes exactly these)
OUTPUT_FIELDS = (
    "seed",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "resample_steps",
    "jump_length",
    "reconstruction_guidance",
)


@dataclass(frozen=True)
class RenderSettings:
    """What :meth:`StoryVideoPipeline.__call__ <storygen.pipeline.StoryVideoPipeline.__call__>`
    was asked for, with the model's defaults filled in and the seed drawn.

    The first group determines the frames; the second only how the work runs (the same seed
    gives the same frames whatever the micro-batch or the devices).
    """

    seed: int
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    resample_steps: int
    jump_length: int
    reconstruction_guidance: float

    micro_batch: int = 16
    devices: tuple[str | torch.device, ...] | None = None
    progress: bool = True

    def output_fields(self) -> dict[str, Any]:
        """The settings the frames depend on, by name (as given: the cache key hashes them)."""
        return {name: getattr(self, name) for name in OUTPUT_FIELDS}
