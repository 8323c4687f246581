"""Sampling one batch of model calls: the denoising loop both kinds of UNet share.

Known frames, noised to the current step with ``scheduler.add_noise``, replace their positions
before every model evaluation. For :class:`~storygen.models.MaskedUNet3D` that is what it saw
in training (the known frames and their mask are extra input channels as well); for a stock
text-to-video UNet (the training-free mode) it is the whole condition. Plain replacement leaves
seams (Ho et al. 2022, §3.1), so two remedies are offered:

- RePaint resampling: every window of ``jump_length`` steps is repeated ``resample_steps``
  times: noise back to the window's start (:func:`renoise`) and denoise again, which lets the
  unknown frames settle towards the known ones;
- reconstruction guidance (:func:`reconstruction_step`): a gradient step through the UNet pulls
  the implied clean sample towards the known frames.

After the last step the exact known frames replace their positions, so a frame made at one
level reaches every later call bit for bit. Nothing here knows about plans, devices or caches:
:mod:`storygen.runner` decides which calls form a batch and where it runs.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from storygen.accel import (
    applied_speedups,
    compiled_call,
    compiled_rows,
    eager_blocks,
    is_compiled,
    tuned_rows,
    tuning_compiles,
)
from storygen.attention import ContextTable
from storygen.models import MaskedUNet3D, unet3d_forward

#: the model's (guided) output for a scaled input at a timestep
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CallInputs:
    """A batch of B model calls of F frames each, ready to sample."""

    #: (B, C, F, h, w): each call's starting noise, drawn from its own generator
    noise: torch.Tensor
    #: (B, C, F, h, w): the given frames, zero elsewhere
    known: torch.Tensor
    #: (B, F): 1 where a frame is given
    mask: torch.Tensor
    #: (B, F, S, D): each frame's prompt embedding
    context: torch.Tensor
    #: (B,): distance between neighbouring frames of a call, in output frames
    spacing: torch.Tensor
    #: one per call, for the noise drawn while sampling (stays on the CPU)
    generators: list[torch.Generator] = field(default_factory=list)
    #: (B, F): how far each frame is into its prompt's segment (0 to 1); None: not known
    progress: torch.Tensor | None = None
    #: the render's distinct prompt embeddings (P, S, D), the same for each of its batches,
    #: and each frame's row in them (B, F): ``context`` is that table gathered; None: not known
    table: ContextTable | None = None

    def to(self, device: torch.device | str) -> CallInputs:
        return replace(
            self,
            noise=self.noise.to(device),
            known=self.known.to(device),
            mask=self.mask.to(device),
            context=self.context.to(device),
            spacing=self.spacing.to(device),
            progress=None if self.progress is None else self.progress.to(device),
            table=None if self.table is None else ContextTable(*(t.to(device) for t in self.table)),
        )


# ----------------------------------------------------------------------------- the model
def guided_output(
    unet: Any,
    x: torch.Tensor,
    t: torch.Tensor,
    inputs: CallInputs,
    guidance_scale: float,
    negative: torch.Tensor | None,
) -> torch.Tensor:
    """The model's output for x (B, C, F, h, w), with classifier-free guidance.

    ``negative``: the unconditional prompt embedding, broadcastable to ``inputs.context``
    (None: no guidance, one forward pass).
    """
    context, known, mask, spacing = inputs.context, inputs.known, inputs.mask, inputs.spacing
    progress = inputs.progress
    if progress is None:
        progress = mask.new_zeros(mask.shape)
    # cross-attention that reads a table (xkv): each distinct embedding once, a row per frame
    tabled = _context_table(unet, inputs, negative)
    if negative is not None:  # the unconditional branch drops the text, keeps the timing
        x = torch.cat([x, x])
        context = torch.cat([negative.expand_as(context), context])
        known, mask = torch.cat([known, known]), torch.cat([mask, mask])
        spacing, progress = spacing.repeat(2), torch.cat([progress, progress])
    x = x.to(unet.dtype)
    rows = x.shape[0]
    bucket = compiled_rows(unet).get(rows)
    compiled = bucket is not None
    if bucket is not None:  # static shapes: pad to the level's row bucket, drop it after
        pad = bucket - rows
        if pad:
            x, context, known, mask, spacing, progress = (
                torch.cat([v, v[-1:].expand(pad, *v.shape[1:])])
                for v in (x, context, known, mask, spacing, progress)
            )
            if tabled is not None:
                extra = tabled.rows[-1:].expand(pad, -1)
                tabled = tabled._replace(rows=torch.cat([tabled.rows, extra]))
    # the tensors a compiled graph depends on: a table and its rows, not their gather
    states: Any = context if tabled is None else tabled
    parts = (context,) if tabled is None else tuple(tabled)
    # a bucket a compiled UNet leaves eager: its forward, and compiled blocks (regional) eager
    eager = is_compiled(unet) and not compiled
    # the bucket that carries the render compiles with the kernel-tuning options (cdt, mat)
    tuning = tuning_compiles(compiled and bucket in tuned_rows(unet))
    if runs_whole_forward(unet):
        # a compiled UNet runs its graph through __call__; a bucket it leaves eager calls
        # forward (an uncompiled UNet is called as usual, hooks and all)
        known = known.to(unet.dtype)
        signature = (x, t, *parts, known, mask, spacing, progress)
        with tuning, compiled_call(unet, *signature) if compiled else eager_blocks():
            out = (unet.forward if eager else unet)(
                x, t, states, known=known, mask=mask, spacing=spacing, progress=progress
            )
    else:
        with tuning, eager_blocks() if eager else contextlib.nullcontext():
            out = unet3d_forward(unet, x, t, states)
    # a compiled graph replayed as a CUDA graph (cgraph) hands out its own buffer, which the
    # next pass overwrites: a compiled pass's output is copied (a bf16 one is by the cast)
    out = out[:rows].to(torch.float32, copy=compiled)
    if negative is not None:
        uncond, cond = out.chunk(2)
        out = uncond + guidance_scale * (cond - uncond)
    return out


def runs_whole_forward(unet: Any) -> bool:
    """Whether :func:`guided_output` calls ``unet`` itself (a :class:`MaskedUNet3D`, whose
    compiled forward runs then) rather than its blocks one by one, as it does a diffusers
    text-to-video UNet (:func:`storygen.models.unet3d_forward`, a prompt per frame)."""
    return isinstance(unet, MaskedUNet3D)


#: a context table's rows are padded to a multiple of this (at least this many), so stories
#: with a few prompts more or less share a compiled graph
TABLE_ROWS = 8


def _context_table(
    unet: Any, inputs: CallInputs, negative: torch.Tensor | None
) -> ContextTable | None:
    """The :class:`ContextTable` a UNet whose cross-attention reads one gets for ``inputs``
    (under guidance, the unconditional embedding is its row 0), or None: a UNet that does not,
    or inputs without a table."""
    if inputs.table is None:
        return None
    # read from the speed-ups record: a walk over the UNet's modules would cost each call
    if not applied_speedups(unet).get("xkv"):
        return None
    table, index = inputs.table
    if negative is not None:
        row = negative.reshape(1, *table.shape[1:]).to(table)
        table, index = torch.cat([row, table]), torch.cat([torch.zeros_like(index), index + 1])
    rows = max(TABLE_ROWS, -(-table.shape[0] // TABLE_ROWS) * TABLE_ROWS)
    if rows > table.shape[0]:  # padded with its last row, which no frame reads
        table = torch.cat([table, table[-1:].expand(rows - table.shape[0], *table.shape[1:])])
    return ContextTable(table.to(unet.dtype), index)


# ----------------------------------------------------------------------------- the loop
def sample_calls(
    scheduler: Any,
    model: ModelFn,
    inputs: CallInputs,
    *,
    num_inference_steps: int,
    resample_steps: int,
    jump_length: int,
    reconstruction_guidance: float = 0.0,
    callback_on_step_end: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """Denoise ``inputs.noise``; returns the clean samples and the number of UNet evaluations.

    ``scheduler`` is changed (timesteps set, state stepped): hand over a copy. ``inputs`` lie
    on the model's device, its generators on the CPU. ``callback_on_step_end`` is called after
    every denoising step (each RePaint repeat too), e.g. to move a progress bar.
    """
    noise, known, mask, generators = inputs.noise, inputs.known, inputs.mask, inputs.generators
    device = noise.device
    check_scheduler(scheduler)
    step_noise = _step_noise(scheduler, generators)
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = list(scheduler.timesteps)
    x = noise * scheduler.init_noise_sigma
    known_mask = mask[:, None, :, None, None].to(torch.bool)
    any_known = bool(mask.any())
    forwards = 0

    def fresh_noise() -> torch.Tensor:
        draws = [torch.randn(noise.shape[1:], generator=g) for g in generators]
        return torch.stack(draws).to(device)

    def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal forwards
        if any_known:
            noised = scheduler.add_noise(known, fresh_noise(), t.reshape(1))
            x = torch.where(known_mask, noised.to(x.dtype), x)
        if reconstruction_guidance > 0 and any_known:
            out = reconstruction_step(
                scheduler,
                x,
                t,
                known,
                known_mask.to(x.dtype),
                reconstruction_guidance,
                lambda x_in: model(x_in, t),
            )
        else:
            out = model(scheduler.scale_model_input(x, t), t)
        forwards += 1
        x = scheduler.step(out, t, x, **step_noise).prev_sample
        if callback_on_step_end is not None:
            callback_on_step_end()
        return x

    # RePaint: denoise a window of `jump_length` steps; then, resample_steps - 1 times,
    # noise back to the window's start and denoise it again (only with known frames)
    resample = resample_steps if any_known else 1
    for i in range(0, len(timesteps), jump_length):
        window = timesteps[i : i + jump_length]
        t_end = timesteps[i + jump_length] if i + jump_length < len(timesteps) else None
        for r in range(resample):
            last = r == resample - 1
            snapshot = None if last else copy.deepcopy(scheduler)
            for t in window:
                x = step(x, t)
            if snapshot is not None:
                x = renoise(scheduler, x, t_from=t_end, t_to=window[0], noise=fresh_noise())
                scheduler = snapshot
    x = torch.where(known_mask, known.to(x.dtype), x)
    return x, forwards


#: schedulers whose step draws its noise for the whole batch from one seed of their own
#: (DPM-Solver SDE's Brownian tree), which no call's generator reaches: a call's frames would
#: depend on the calls batched with it
UNSEEDABLE_SCHEDULERS = ("DPMSolverSDEScheduler",)


def check_scheduler(scheduler: Any) -> None:
    """Refuse a scheduler whose step noise cannot come from each call's own generator."""
    name = type(scheduler).__name__
    if name in UNSEEDABLE_SCHEDULERS:
        raise ValueError(
            f"scheduler {name} draws its step noise for a whole batch from a seed of its own, "
            "so the same seed would not give the same video; use one that draws it from a "
            "generator (DDPM, Euler ancestral, DPM-Solver++ with algorithm_type "
            "'sde-dpmsolver++') or a deterministic one (DDIM, DPM-Solver++, Euler)"
        )


def _step_noise(scheduler: Any, generators: Any) -> dict[str, Any]:
    """What ``scheduler.step`` takes to draw its noise (DDPM, Euler ancestral, DDIM with
    eta > 0, DPM-Solver's SDE variants) from each call's generator, one row each: the same
    seed then gives the same video, whatever the batching."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": list(generators)}
    return {}


# ----------------------------------------------------------------------------- noise levels
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


# ----------------------------------------------------------------------------- reconstruction
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
    model: Callable[[torch.Tensor], torch.Tensor],
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
