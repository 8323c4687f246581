"""Model sizes, and freshly initialised model folders in either of the two layouts.

Two layouts, both plain diffusers pipeline folders (``model_index.json`` + one folder per
component):

- ``masked``: a :class:`~storygen.pipeline.StoryVideoPipeline` with a
  :class:`~storygen.models.MaskedUNet3D` (trained for masked conditioning).
- ``t2v``: the ModelScope text-to-video layout as ``TextToVideoSDPipeline`` saves it
  (``UNet3DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``, ``CLIPTokenizer``, DDIM),
  used training-free.

Presets: ``micro`` (pixel space, 16 px, 8-16 channels: tests and CPU benchmarks),
``micro-latent`` (the same UNet on 16×16 latents of a tiny VAE, 32 px video), ``tiny`` (pixel
space, 32 px, 16-32 channels: the shipped shapes-world model), ``tiny-latent`` and ``modelscope`` (the real ModelScope shapes:
1.41 B-parameter UNet, SD 1.x VAE, 1024-wide text encoder; random weights, for GPU benchmarks).
Nothing here reaches the hub.

diffusers, transformers and the storygen modules built on them (the models, the pipeline) load
inside the builders: importing this module (the preset table) costs torch only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from curate.training.tokenizer import train_clip_tokenizer

logger = logging.getLogger(__name__)

MODES = ("masked", "t2v")


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict[str, Any]
    #: AutoencoderKL kwargs; None for a pixel-space model
    vae: dict[str, Any] | None
    text: dict[str, Any]
    height: int
    width: int
    #: per-level frame spacing conditioning (masked mode)
    spacing_dim: int | None = None
    scheduler: dict[str, Any] = field(default_factory=dict)


# attention only below full resolution: 1,024-token self-attention per frame dominates the
# cost of a 32 px model on a CPU
_TINY_UNET = {
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}

_MICRO_UNET = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D"),
    "up_block_types": ("CrossAttnUpBlock3D", "UpBlock3D"),
    "cross_attention_dim": 16,
    "attention_head_dim": 2,
    "norm_num_groups": 4,
}

_DDIM = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _small_vae(block_out_channels: tuple[int, int]) -> dict[str, Any]:
    """A two-block ``AutoencoderKL`` for 32 px frames: 4 latent channels at 16 x 16."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": block_out_channels,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 32,
    }


PRESETS: dict[str, Preset] = {
    "micro": Preset(
        name="micro",
        unet=_MICRO_UNET,
        vae=None,
        text={"hidden_size": 16, "num_layers": 1, "num_heads": 2},
        height=16,
        width=16,
        spacing_dim=8,
        scheduler=_DDIM,
    ),
    "micro-latent": Preset(
        name="micro-latent",
        unet=_MICRO_UNET,
        vae=_small_vae((8, 8)),
        text={"hidden_size": 16, "num_layers": 1, "num_heads": 2},
        height=32,
        width=32,
        spacing_dim=8,
        scheduler=_DDIM,
    ),
    "tiny": Preset(
        name="tiny",
        unet=_TINY_UNET,
        vae=None,
        text={"hidden_size": 32, "num_layers": 2, "num_heads": 4},
        height=32,
        width=32,
        spacing_dim=16,
        scheduler=_DDIM,
    ),
    "tiny-latent": Preset(
        name="tiny-latent",
        unet=_TINY_UNET,
        vae=_small_vae((8, 16)),
        text={"hidden_size": 32, "num_layers": 2, "num_heads": 4},
        height=32,
        width=32,
        spacing_dim=16,
        scheduler=_DDIM,
    ),
    # damo-vilab/text-to-video-ms-1.7b: UNet3DConditionModel() defaults, SD 1.x VAE,
    # OpenCLIP-H text tower (1024 wide, 23 layers)
    "modelscope": Preset(
        name="modelscope",
        unet={},
        vae={
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "block_out_channels": (128, 256, 512, 512),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "sample_size": 256,
            "scaling_factor": 0.18215,
        },
        text={"hidden_size": 1024, "num_layers": 23, "num_heads": 16, "intermediate": 4096},
        height=256,
        width=256,
        spacing_dim=None,
        scheduler=_DDIM,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def build_tiny_text_encoder(
    tokenizer: Any,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Any:
    """A randomly initialised :class:`transformers.CLIPTextModel` sized for ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def build_components(
    preset: str | Preset,
    *,
    mode: str = "masked",
    texts: list[str] | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    text_encoder: Any = None,
) -> dict[str, Any]:
    """Randomly initialised components (unet, vae, text_encoder, tokenizer, scheduler)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_3d_condition import UNet3DConditionModel
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from storygen.models import MaskedUNet3D

    p = get_preset(preset) if isinstance(preset, str) else preset
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if tokenizer is None:
        tokenizer = train_clip_tokenizer(
            texts or [], vocab_size=49408 if p.name == "modelscope" else 512
        )
    if text_encoder is None:
        if "intermediate" in p.text:
            torch.manual_seed(seed)
            config = CLIPTextConfig(
                vocab_size=max(len(tokenizer), 49408),
                hidden_size=p.text["hidden_size"],
                intermediate_size=p.text["intermediate"],
                num_hidden_layers=p.text["num_layers"],
                num_attention_heads=p.text["num_heads"],
                max_position_embeddings=77,
                hidden_act="gelu",
                projection_dim=1024,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            text_encoder = CLIPTextModel(config).eval()
        else:
            text_encoder = build_tiny_text_encoder(
                tokenizer,
                hidden_size=p.text["hidden_size"],
                num_layers=p.text["num_layers"],
                num_heads=p.text["num_heads"],
                seed=seed,
            )
    unet_kwargs = dict(p.unet)
    unet_kwargs["cross_attention_dim"] = text_encoder.config.hidden_size
    vae = None
    channels = 3
    scale = 1
    if p.vae is not None:
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**p.vae).eval()
        channels = vae.config.latent_channels
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_kwargs.setdefault("sample_size", p.height // scale)
    torch.manual_seed(seed + 2)
    if mode == "masked":
        unet = MaskedUNet3D(
            sample_channels=channels, time_cond_proj_dim=p.spacing_dim, **unet_kwargs
        )
    else:
        if vae is None:
            unet = UNet3DConditionModel(in_channels=3, out_channels=3, **unet_kwargs)
        else:
            unet = UNet3DConditionModel(**unet_kwargs)
    scheduler = DDIMScheduler(**p.scheduler)
    return {
        "unet": unet.eval(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def new_model(
    out_dir: str | Path,
    *,
    preset: str = "tiny",
    mode: str = "masked",
    texts: list[str] | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a randomly initialised model folder of ``preset``'s size in ``mode``'s layout."""
    out = Path(out_dir)
    parts = build_components(preset, mode=mode, texts=texts, seed=seed)
    if dtype is not None:
        for key in ("unet", "vae", "text_encoder"):
            if parts[key] is not None:
                parts[key].to(dtype)
    if mode == "t2v":
        if parts["vae"] is None:
            raise ValueError(
                f"preset {preset!r} is pixel space; the t2v (ModelScope) layout needs a VAE: "
                "use tiny-latent or modelscope"
            )
        from diffusers import TextToVideoSDPipeline

        pipe: Any = TextToVideoSDPipeline(**parts)
    else:
        from storygen.pipeline import StoryVideoPipeline

        pipe = StoryVideoPipeline(**parts)
    pipe.save_pretrained(str(out))
    n = sum(p.numel() for p in parts["unet"].parameters())
    logger.info("wrote a %s %s model (%s UNet parameters) to %s", preset, mode, n, out)
    return out
