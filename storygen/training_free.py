"""Training-free diffusion over diffusion with an off-the-shelf text-to-video model.

Any checkpoint in the ModelScope layout (``UNet3DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel``, ``CLIPTokenizer``, a scheduler, and ``model_index.json``, as
``TextToVideoSDPipeline`` saves it) serves as both models:

- global: keyframes by ordinary sampling, each keyframe cross-attending to its own prompt
  (:func:`storygen.models.unet3d_forward`);
- local: the known end frames' latents, noised to the current step with
  ``scheduler.add_noise``, replace their positions before every step (RePaint). Plain
  replacement leaves seams (Ho et al. 2022, §3.1), so every window of ``jump_length`` steps is
  repeated ``resample_steps`` times: noise back to the window's start (:func:`renoise`) and
  denoise again, which lets the unknown frames settle towards the known ones.

The sampling loop itself lives in :meth:`StoryVideoPipeline.denoise`: the masked model uses
the same replacement, so both modes share one code path and one seeding scheme.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from storygen.pipeline import StoryVideoPipeline

#: pipeline classes whose saved folders are in the ModelScope text-to-video layout
T2V_PIPELINES = ("TextToVideoSDPipeline", "TextToVideoZeroPipeline", "VideoToVideoSDPipeline")


def _is_variance_exploding(scheduler: Any) -> bool:
    """Euler-type schedulers keep samples as x0 + σ·ε (σ up to ~15), not √ᾱ·x0 + √(1−ᾱ)·ε."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0 + 1e-6


def _sigma_at(scheduler: Any, t: torch.Tensor | None) -> float:
    if t is None:
        return 0.0
    index = scheduler.index_for_timestep(t.to(scheduler.timesteps.device))
    return float(scheduler.sigmas[index])


def _alpha_bar_at(scheduler: Any, t: torch.Tensor | None) -> float:
    if t is None:  # past the last step: a clean sample
        return 1.0
    return float(scheduler.alphas_cumprod[int(t)])


def renoise(
    scheduler: Any,
    x: torch.Tensor,
    *,
    t_from: torch.Tensor | None,
    t_to: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Take a sample at noise level ``t_from`` (None: clean) back up to ``t_to`` ≥ ``t_from``.

    Variance preserving: x_to = √(ᾱ_to/ᾱ_from)·x_from + √(1 − ᾱ_to/ᾱ_from)·ε.
    Variance exploding (Euler): x_to = x_from + √(σ_to² − σ_from²)·ε.
    """
    if _is_variance_exploding(scheduler):
        s_from, s_to = _sigma_at(scheduler, t_from), _sigma_at(scheduler, t_to)
        return x + max(s_to**2 - s_from**2, 0.0) ** 0.5 * noise.to(x.dtype)
    ratio = _alpha_bar_at(scheduler, t_to) / _alpha_bar_at(scheduler, t_from)
    ratio = min(ratio, 1.0)
    return ratio**0.5 * x + (1.0 - ratio) ** 0.5 * noise.to(x.dtype)


def predict_x0(scheduler: Any, x: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean sample the model's output implies at step ``t`` (x: the unscaled sample)."""
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return out
    if _is_variance_exploding(scheduler):
        s = _sigma_at(scheduler, t)
        if kind == "epsilon":
            return x - s * out
        if kind == "v_prediction":
            return out * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)
    else:
        a = _alpha_bar_at(scheduler, t)
        if kind == "epsilon":
            return (x - (1 - a) ** 0.5 * out) / a**0.5
        if kind == "v_prediction":
            return a**0.5 * x - (1 - a) ** 0.5 * out
    raise ValueError(f"reconstruction guidance does not support prediction_type {kind!r}")


def shift_x0(
    scheduler: Any, out: torch.Tensor, delta_x0: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The model output whose implied clean sample moves by ``delta_x0`` (x held fixed)."""
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return out + delta_x0
    if _is_variance_exploding(scheduler):
        s = max(_sigma_at(scheduler, t), 1e-8)
        scale = 1 / s if kind == "epsilon" else (s**2 + 1) ** 0.5 / s
    else:
        a = _alpha_bar_at(scheduler, t)
        scale = a**0.5 / (1 - a) ** 0.5 if kind == "epsilon" else 1 / (1 - a) ** 0.5
    return out - scale * delta_x0


def reconstruction_step(
    scheduler: Any,
    x: torch.Tensor,
    t: torch.Tensor,
    known: torch.Tensor,
    known_mask: torch.Tensor,
    weight: float,
    model: Any,
) -> torch.Tensor:
    """Model output with reconstruction guidance (Ho et al. 2022, §3.1).

    ``model(x_in)`` returns the (guided) model output for the scaled input. The implied clean
    sample is pulled towards the known frames with a gradient step through the model:
    x̃0 = x̂0 − (w·α_t / 2)·∇_x ‖known − x̂0[known]‖², which moves the unknown frames too, so
    they agree with the given ends instead of only sitting next to them.
    """
    with torch.enable_grad():
        x_req = x.detach().requires_grad_(True)
        out = model(scheduler.scale_model_input(x_req, t))
        x0 = predict_x0(scheduler, x_req, out, t)
        err = ((x0 - known) * known_mask).square().sum()
        (grad,) = torch.autograd.grad(err, x_req)
    alpha = 1.0 if _is_variance_exploding(scheduler) else _alpha_bar_at(scheduler, t) ** 0.5
    return shift_x0(scheduler, out.detach(), -0.5 * weight * alpha * grad, t)


def read_model_index(path: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``model_index.json``, with a clear error naming what is missing."""
    folder = Path(path)
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} is missing: {folder} is not a diffusers pipeline folder "
            "(create one with `storygen new-model` or `python -m storygen.train`)"
        )
    with open(index) as fh:
        return json.load(fh)


def is_t2v_layout(path: str | os.PathLike) -> bool:
    """True for a ModelScope-layout text-to-video folder (a plain ``UNet3DConditionModel``)."""
    info = read_model_index(path)
    unet = info.get("unet") or [None, None]
    return info.get("_class_name") in T2V_PIPELINES or unet[1] == "UNet3DConditionModel"


class TrainingFreeStoryPipeline(StoryVideoPipeline):
    """:class:`StoryVideoPipeline` over an off-the-shelf text-to-video UNet.

    Differs only in its defaults: RePaint resampling is on (each step denoised twice).
    Load with ``TrainingFreeStoryPipeline.from_pretrained(folder)`` on a folder that
    ``TextToVideoSDPipeline.save_pretrained`` wrote (e.g. ModelScope's ``text-to-video-ms-1.7b``).
    """

    default_resample_steps = 2
    default_jump_length = 1

    @property
    def masked(self) -> bool:
        return False


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


SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def make_scheduler(name: str, config: Any) -> Any:
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


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
