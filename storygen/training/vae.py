"""The frame autoencoder: a small diffusers ``AutoencoderKL`` trained on shapes-world frames.

The UNet works on its latents (4 channels at a quarter of the frame size: 16×16 for 64 px), so
a call of 16 frames costs what 16 frames of a 16 px video would. Loss: L1 + MSE of the
reconstruction (flat colours and hard edges: no perceptual or adversarial term is needed in
this world) plus a very small KL term that keeps the latent space smooth. After training, the
latents' scaling factor is set to 1 / their standard deviation, as Stable Diffusion's VAE
does, so the diffusion model sees unit-variance inputs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from storygen.training.windows import ShapeFrames, random_frames

logger = logging.getLogger(__name__)

#: AutoencoderKL config of the shipped model: 64 px frames -> 4 × 16 × 16 latents
SHAPES_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 2,
    "norm_num_groups": 16,
}

#: a tiny autoencoder of the same shape (tests, CPU smoke runs)
MICRO_VAE: dict[str, Any] = SHAPES_VAE | {
    "block_out_channels": (8, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
VAES = {"shapes": SHAPES_VAE, "micro": MICRO_VAE}


@dataclass
class VaeRun:
    steps: int
    time_s: float
    final_loss: float
    psnr_db: float
    scaling_factor: float


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    x = frames.float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def build_vae(size: int, seed: int = 0, preset: str = "shapes") -> Any:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(sample_size=size, **VAES[preset])


def expected_steps(clock: Any, step: int, steps: int) -> int:
    """The steps a run will have taken when it ends, for its progress bar: ``steps``, or, with a
    time budget, as many as the clock leaves at the pace so far, whichever is fewer."""
    fraction = clock.fraction(step)
    if not clock.time_budget_s or step < 1 or fraction <= 0:
        return steps
    return max(step, min(steps, round(step / fraction)))


def train_vae(
    vae: Any,
    *,
    size: int,
    device: torch.device,
    max_steps: int,
    max_minutes: float | None,
    batch_size: int = 128,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    workers: int = 2,
    seed: int = 0,
    log_every: int = 200,
) -> VaeRun:
    """Train ``vae`` in place; returns what the run did (and sets its scaling factor)."""
    from tqdm.auto import tqdm

    from curate.training.loop import ClockCosineSchedule

    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    clock = ClockCosineSchedule(opt, lr, max_steps, max_minutes * 60 if max_minutes else None)
    loader = torch.utils.data.DataLoader(
        ShapeFrames(batch_size=batch_size, size=size, seed=seed),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        # a forked copy of a process running threads (torch, decoders) can deadlock
        multiprocessing_context="forkserver" if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )
    amp = device.type == "cuda"
    losses: list[float] = []
    bar = tqdm(total=max_steps, desc="autoencoder", unit="step", mininterval=5)
    step = 0
    for frames in loader:
        x = to_unit(frames.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        recon = recon.float()
        kl = posterior.kl().mean() / (x.shape[1] * x.shape[2] * x.shape[3])
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        clock.apply(step)
        opt.step()
        losses.append(loss.item())
        step += 1
        bar.total = expected_steps(clock, step, max_steps)
        bar.update(1)
        if step % log_every == 0:
            logger.info("autoencoder step %s loss %.4f", step, float(np.mean(losses[-log_every:])))
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4f}")
        if clock.finished(step):
            break
    bar.close()
    vae.eval()
    scale = latent_scale(vae, size=size, device=device, seed=seed + 1)
    vae.register_to_config(scaling_factor=scale)
    psnr = reconstruction_psnr(vae, size=size, device=device, seed=seed + 2)
    logger.info("autoencoder: %s steps, PSNR %.1f dB, scaling factor %.4f", step, psnr, scale)
    return VaeRun(
        steps=step,
        time_s=time.perf_counter() - started,
        final_loss=float(np.mean(losses[-100:])) if losses else math.nan,
        psnr_db=psnr,
        scaling_factor=scale,
    )


@torch.no_grad()
def encode(vae: Any, frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) on any device -> scaled latents (N, C, h, w), the latents' mode."""
    x = to_unit(frames.to(vae.device)).to(vae.dtype)
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


@torch.no_grad()
def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (N, C, h, w) -> uint8 (N, H, W, 3) on the CPU."""
    x = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu()


@torch.no_grad()
def latent_scale(
    vae: Any, *, size: int, device: torch.device, seed: int, count: int = 512
) -> float:
    """1 / standard deviation of the latents of ``count`` random frames."""
    frames = torch.from_numpy(random_frames(np.random.default_rng(seed), count, size))
    z = torch.cat(
        [
            vae.encode(to_unit(chunk.to(device)).to(vae.dtype)).latent_dist.mode().float()
            for chunk in frames.split(128)
        ]
    )
    return float(1.0 / z.std().clamp(min=1e-6))


@torch.no_grad()
def reconstruction_psnr(
    vae: Any, *, size: int, device: torch.device, seed: int, count: int = 256
) -> float:
    """Mean PSNR (dB, uint8 frames) of encode → decode on ``count`` held-out random frames."""
    frames = torch.from_numpy(random_frames(np.random.default_rng(seed), count, size))
    psnrs = []
    for chunk in frames.split(128):
        back = decode(vae, encode(vae, chunk.to(device)))
        mse = ((back.float() - chunk.float()) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-3)
        psnrs.append(10 * torch.log10(255.0**2 / mse))
    return float(torch.cat(psnrs).mean())
