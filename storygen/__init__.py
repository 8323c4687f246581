"""storygen: long videos from timed prompt sequences by diffusion over diffusion (NUWA-XL).

Module map (a script flows top to bottom: parse -> plan -> levels -> frames -> mp4)::

    script/          story scripts: StoryScript and its checks (story), one module per format
                     (yaml_json, subtitles for SRT / WebVTT, parquet for stories tables),
                     load_script / save_script (files), and the bounds every reader keeps
                     (limits: size, nesting, YAML aliases, segments)
    plan             the hierarchical plan: which model call makes which frames, per level
    text             per-frame prompt embeddings; PromptCache (each distinct prompt once)
    models           MaskedUNet3D and per-frame prompt conditioning for any 3D UNet
    pipeline         StoryVideoPipeline (diffusers-shaped: check_inputs, encode_prompt,
                     prepare_latents, denoise, decode, __call__) and TrainingFreeStoryPipeline
    settings         RenderSettings: one frozen object with a render's resolved settings;
                     sampling.json (a model's recommended settings) read, written, and
                     resolved against flags and built-in defaults
    runner           PlanRunner: levels in order, calls batched and spread over devices
    sampling         the denoising loop of one batch: replacement of known frames, RePaint
                     resampling, reconstruction guidance
    cache            the disk cache of finished calls (run key, save / load), for resuming
    sink             FrameSink: final frames decoded in order, streamed to a file or kept
    export           VideoWriter (mp4 / mkv / webm / gif) and preview sheets
    training_free    model folders: the ModelScope text-to-video layout, file checks
    loading          load_pipeline (class from the folder's layout), make_scheduler
    autoregressive   the sliding-window baseline on the same machinery
    presets          model sizes and randomly initialised model folders (their tokenizer
                     trained by curate.training.tokenizer, as the shapes-world models' are)
    training/        the shapes-world model: story windows (training data), the autoencoder,
                     the UNet trainer, the pixel probe (held-out stories read from pixels)
    train            ``storygen train``: the trainer's command line
    cli, plan_cli, render_cli, model_cli
                     the ``storygen`` command

The public API is re-exported here. Heavy modules load on first use, so ``import storygen``
stays cheap and a module that fails to import does not take the others down.
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
        "TrainingFreeStoryPipeline",
    ),
    "storygen.runner": ("GenerationStats", "CallResult"),
    "storygen.settings": ("RenderSettings",),
    "storygen.sampling": ("renoise",),
    "storygen.loading": ("load_pipeline", "make_scheduler"),
    "storygen.autoregressive": ("AutoregressiveStoryPipeline", "generate_autoregressive"),
    "storygen.text": ("PromptCache",),
    "storygen.presets": ("PRESETS", "build_components", "build_tiny_text_encoder", "new_model"),
    "storygen.export": ("VideoWriter", "export_video", "plan_sheet", "preview_sheet"),
    "storygen.training.unet": ("TrainConfig", "train"),
    "storygen.training.probe": ("held_out_stories", "evaluate", "evaluate_folder"),
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
