"""Build, train and save small CLIP models.

The shipped shapes-world scorer (``models/shapes-clip``) is a real ``transformers.CLIPModel``
at toy size, trained here on frames rendered by :func:`curate.synth.render_scene` and their
scene captions. The same builders make the tiny random CLIPs that tests load through the very
code path a real checkpoint takes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: CLIP's published image statistics; kept so any CLIP tooling reads the folder the same way
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_config(
    tokenizer: Any,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 96,
    vision_layers: int = 3,
    text_hidden: int = 96,
    text_layers: int = 3,
    heads: int = 4,
    projection_dim: int = 64,
):
    """A ``CLIPConfig`` whose text side matches ``tokenizer`` (vocab and special ids)."""
    from transformers import CLIPConfig

    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size!r} is not a multiple of patch_size {patch_size!r}")
    for name, value in (("vision_hidden", vision_hidden), ("text_hidden", text_hidden)):
        if value % heads:
            raise ValueError(f"{name} {value!r} is not a multiple of heads {heads!r}")
    return CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden,
            intermediate_size=4 * text_hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=heads,
            max_position_embeddings=int(tokenizer.model_max_length),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=vision_hidden,
            intermediate_size=4 * vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=heads,
        ),
        projection_dim=projection_dim,
    )


def preprocessor_config(image_size: int) -> dict[str, Any]:
    """The ``preprocessor_config.json`` of a CLIP that reads ``image_size`` square frames."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    }


def save_clip_folder(model: Any, tokenizer: Any, out: str | os.PathLike[str]) -> Path:
    """Write a complete CLIP folder: safetensors + config, tokenizer, preprocessor config."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_size = int(model.config.vision_config.image_size)
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(image_size), indent=2) + "\n"
    )
    return out


def make_tiny_clip(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 1,
    projection_dim: int = 16,
    texts: list[str] | None = None,
) -> Path:
    """Save a randomly initialised toy CLIP folder (for tests and throughput runs)."""
    import torch
    from transformers import CLIPModel

    from .tokenizer import train_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = train_clip_tokenizer(texts or [], vocab_size=400)
    cfg = clip_config(
        tokenizer,
        image_size=image_size,
        patch_size=patch_size,
        vision_hidden=hidden,
        vision_layers=layers,
        text_hidden=hidden,
        text_layers=layers,
        heads=2,
        projection_dim=projection_dim,
    )
    return save_clip_folder(CLIPModel(cfg).eval(), tokenizer, out)
