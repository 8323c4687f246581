"""storygen: long videos from timed prompt sequences by diffusion over diffusion (NUWA-XL).

The public API, re-exported here: story scripts (:mod:`storygen.script`), the hierarchical
plan (:mod:`storygen.plan`), the models (:mod:`storygen.models`), the pipeline
(:mod:`storygen.pipeline`), the training-free mode (:mod:`storygen.training_free`), the
autoregressive baseline (:mod:`storygen.autoregressive`), video export (:mod:`storygen.export`) and training
(:mod:`storygen.train`). Heavy modules load on first use, so ``import storygen`` stays cheap
and a module that fails to import does not take the others down.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "storygen.script": ("StoryScript", "Segment", "ScriptError", "load_script"),
    "storygen.plan": (
        "Call",
        "Level",
        "Plan",
        "build_plan",
        "plan_story",
        "autoregressive_plan",
    ),
    "storygen.models": ("MaskedUNet3D", "unet3d_forward"),
    "storygen.pipeline": (
        "StoryVideoPipeline",
        "StoryVideoOutput",
        "GenerationStats",
        "CallResult",
    ),
    "storygen.training_free": (
        "TrainingFreeStoryPipeline",
        "load_pipeline",
        "make_scheduler",
        "renoise",
    ),
    "storygen.autoregressive": ("AutoregressiveStoryPipeline", "generate_autoregressive"),
    "storygen.text": ("build_tiny_tokenizer", "build_tiny_text_encoder", "PromptCache"),
    "storygen.presets": ("PRESETS", "build_components", "new_model"),
    "storygen.export": ("VideoWriter", "export_video", "plan_sheet", "preview_sheet"),
    "storygen.train": ("TrainConfig", "train", "evaluate"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'storygen' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise AttributeError(
            f"storygen.{name} is unavailable: {module} failed to import ({exc})"
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
