"""Model folders, and the ModelScope text-to-video layout that the training-free mode loads.

Any checkpoint in the ModelScope layout (``UNet3DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel``, ``CLIPTokenizer``, a scheduler, and ``model_index.json``, as
``TextToVideoSDPipeline`` saves it) serves as both models, training-free:

- global: keyframes by ordinary sampling, each keyframe cross-attending to its own prompt
  (:func:`storygen.models.unet3d_forward`);
- local: the known end frames' latents, noised to the current step, replace their positions
  before every step, with RePaint resampling and optional reconstruction guidance to blend the
  seams (:mod:`storygen.sampling`, the loop the masked model uses too).

The pieces: this module tells the layout apart (:func:`is_t2v_layout`) and checks that a folder
of either layout holds its files (:func:`check_model_files`);
:class:`~storygen.pipeline.TrainingFreeStoryPipeline` (its defaults: resampling on) sits beside
:class:`~storygen.pipeline.StoryVideoPipeline`, whose ``from_pretrained`` returns it for such a
folder; :func:`storygen.loading.load_pipeline` picks the class from the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: pipeline classes whose saved folders are in the ModelScope text-to-video layout
T2V_PIPELINES = ("TextToVideoSDPipeline", "TextToVideoZeroPipeline", "VideoToVideoSDPipeline")


def read_model_index(path: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``model_index.json``, with a clear error naming what is missing or damaged
    (``ValueError`` naming the file: not JSON, or no object with ``_class_name``)."""
    folder = Path(path)
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} is missing: {folder} is not a diffusers pipeline folder "
            "(create one with `storygen new-model` or `python -m storygen.train`)"
        )
    try:
        with open(index, encoding="utf-8") as fh:
            info = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{index}: not valid JSON ({exc.msg}, line {exc.lineno}); the model folder is damaged"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{index}: not UTF-8 text ({exc.reason}); the model folder is damaged"
        ) from exc
    if not isinstance(info, dict) or not isinstance(info.get("_class_name"), str):
        got = (
            f"a JSON {type(info).__name__}"
            if not isinstance(info, dict)
            else "an object without '_class_name'"
        )
        raise ValueError(
            f"{index}: expected a JSON object naming the pipeline class in '_class_name' "
            f"(as save_pretrained writes it), got {got}; the model folder is damaged"
        )
    return info


def is_t2v_layout(path: str | os.PathLike) -> bool:
    """True for a ModelScope-layout text-to-video folder (a plain ``UNet3DConditionModel``)."""
    info = read_model_index(path)
    unet = info.get("unet") or [None, None]
    return info.get("_class_name") in T2V_PIPELINES or unet[1] == "UNet3DConditionModel"


def check_model_files(path: str | os.PathLike) -> None:
    """Raise FileNotFoundError naming the first missing config or weight file of a folder."""
    folder = Path(path)
    info = read_model_index(folder)
    for name, spec in info.items():
        if name.startswith("_") or not isinstance(spec, (list, tuple)) or spec[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise FileNotFoundError(f"{sub} is missing (model_index.json lists {name!r})")
        if name == "tokenizer":
            if not any((sub / f).is_file() for f in ("tokenizer.json", "vocab.json")):
                raise FileNotFoundError(f"{sub / 'tokenizer.json'} is missing")
            continue
        if name == "scheduler":
            if not (sub / "scheduler_config.json").is_file():
                raise FileNotFoundError(f"{sub / 'scheduler_config.json'} is missing")
            continue
        if not (sub / "config.json").is_file():
            raise FileNotFoundError(f"{sub / 'config.json'} is missing")
        weights = list(sub.glob("*.safetensors")) + list(sub.glob("*.bin"))
        if not weights:
            raise FileNotFoundError(
                f"{sub} has no weights (expected diffusion_pytorch_model.safetensors or "
                "model.safetensors)"
            )
