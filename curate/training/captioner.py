"""The shapes-world captioner: a small ``BlipForConditionalGeneration`` trained on storyboards.

``python -m curate.training.captioner --out models/shapes-captioner`` renders shapes-world
scenes, trains the captioner to write each scene's caption from its storyboard (the sampler's
frames tiled in time order, as the shipped CLIP reads scenes, so it names the motion as well as
the colour, shape and background), measures it on scenes from a seed the training never saw
(the caption's facts read back with the grammar's parser) and writes a complete model folder
with a ``README.md`` model card. The re-captioner uses it for scenes whose own caption was
dropped. Everything is built offline: the WordPiece tokenizer is trained on the grammar's
captions, the model is a small config of the real transformers class, and the folder loads
with ``BlipProcessor`` / ``BlipForConditionalGeneration.from_pretrained``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate import shapes
from curate.models import CAPTIONING_FILE, CLIP_MEAN, CLIP_STD
from curate.storyboard import STORYBOARD_GRID

from .cards import captioner_card
from .data import caption_of_codes, render_training_data
from .evaluate import evaluate_shapes_captioner
from .loop import (
    Trainer,
    TrainingSettings,
    add_training_args,
    device_name,
    folder_size,
    resolve_device,
    settings_from_args,
    start_run,
    train_loop,
    training_command,
    training_pixels,
    write_report,
)
from .tokenizer import train_caption_tokenizer


@dataclass(frozen=True)
class CaptionerSettings(TrainingSettings):
    """Everything that determines a shapes-world captioner run (written into the model card)."""

    max_length: int = 24

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )


# --- the folder -----------------------------------------------------------------------------------


def blip_config(tokenizer: Any, settings: CaptionerSettings) -> Any:
    from transformers import BlipConfig

    s = settings
    return BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=s.hidden,
            intermediate_size=4 * s.hidden,
            num_hidden_layers=s.text_layers,
            num_attention_heads=s.heads,
            encoder_hidden_size=s.hidden,
            max_position_embeddings=max(32, s.max_length),
            bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=s.hidden,
            intermediate_size=4 * s.hidden,
            num_hidden_layers=s.vision_layers,
            num_attention_heads=s.heads,
            image_size=s.image_size,
            patch_size=s.patch_size,
        ),
        projection_dim=s.hidden,
    )


def image_processor(image_size: int) -> Any:
    import transformers

    # the PIL processor where the installed transformers has it: the default one may need
    # torchvision
    cls = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
    return cls(
        size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )


def save_captioner_folder(
    model: Any, tokenizer: Any, out: str | os.PathLike[str], image_size: int
) -> Path:
    """Write ``model``, its processor and ``captioning.json`` (storyboard input) to ``out``."""
    from transformers import BlipProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    BlipProcessor(image_processor=image_processor(image_size), tokenizer=tokenizer).save_pretrained(
        out
    )
    (out / CAPTIONING_FILE).write_text(
        json.dumps({"storyboard": {"grid": list(STORYBOARD_GRID)}}, indent=2) + "\n"
    )
    return out


# --- training -------------------------------------------------------------------------------------


class CaptioningStep:
    """The loss of one captioner batch: teacher-forced cross-entropy of the storyboards'
    captions (bf16 autocast on a GPU). Every distinct caption is tokenised once; each
    storyboard points at its row."""

    def __init__(self, model: Any, tokenizer: Any, data: Any, max_length: int, device: str):
        import torch

        self.model, self.device = model, device
        self.autocast = device.startswith("cuda")
        self.pad = model.config.text_config.pad_token_id
        uniq, inverse = np.unique(data.board_codes, axis=0, return_inverse=True)
        self.distinct_captions = len(uniq)
        enc = tokenizer(
            caption_of_codes(uniq),
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        ids = enc["input_ids"].clone()
        ids[:, 0] = model.config.text_config.bos_token_id
        self.ids, self.mask = ids.to(device), enc["attention_mask"].to(device)
        self.target_of = torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(device)
        self.boards = torch.from_numpy(data.boards).to(device)

    def __call__(self, indices: np.ndarray) -> Any:
        import torch

        idx = torch.from_numpy(indices).to(self.device)
        x = training_pixels(self.boards[idx])
        ids = self.ids[self.target_of[idx]]
        mask = self.mask[self.target_of[idx]]
        labels = ids.masked_fill(ids == self.pad, -100)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(
                pixel_values=x, input_ids=ids, attention_mask=mask, labels=labels
            ).loss


def train_shapes_captioner(
    out: str | os.PathLike[str],
    settings: CaptionerSettings = CaptionerSettings(),
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the shapes-world captioner, save it under ``out`` and return its training report."""
    from transformers import BertTokenizer, BlipForConditionalGeneration

    s = settings
    device, rng = start_run(s, stream=0xCA97)
    t0 = time.perf_counter()
    if s.init:
        tokenizer = BertTokenizer.from_pretrained(s.init)
        model: Any = BlipForConditionalGeneration.from_pretrained(s.init)
    else:
        tokenizer = train_caption_tokenizer(shapes.all_captions(), max_length=s.max_length)
        model = BlipForConditionalGeneration(blip_config(tokenizer, s))
    data = render_training_data(
        s.scenes,
        seed=s.seed,
        frames_per_scene=1,
        image_size=s.image_size,
        storyboards=True,
        workers=s.workers,
        progress=progress,
    )
    t_data = time.perf_counter() - t0
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    step = CaptioningStep(model, tokenizer, data, s.max_length, device)
    done = train_loop(
        model,
        step,
        settings=s,
        items=len(data.boards),
        steps_per_epoch=max(1, len(data.boards) // s.batch_size),
        rng=rng,
        progress=progress,
    )
    train_s = time.perf_counter() - t0
    folder = save_captioner_folder(model.to("cpu").eval(), tokenizer, out, s.image_size)
    losses = done.losses
    return {
        "settings": dataclasses.asdict(s),
        "device": device_name(device),
        "parameters": n_params,
        "train_storyboards": int(len(data.boards)),
        "distinct_captions": int(step.distinct_captions),
        "steps": done.steps,
        "storyboards_seen": done.steps * s.batch_size,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "first_loss": float(np.mean(losses[:20])) if losses else None,
        "data_seconds": round(t_data, 1),
        "train_seconds": round(train_s, 1),
        "size_bytes": folder_size(folder),
    }


# --- model card, command line ---------------------------------------------------------------------


def finish(
    out: Path, report: dict, settings: CaptionerSettings, *, device: str | None = None
) -> dict:
    """Evaluate a trained folder on held-out scenes; write the model card and report."""
    metrics = evaluate_shapes_captioner(
        out,
        seed=settings.eval_seed,
        scenes=settings.eval_scenes,
        image_size=settings.image_size,
        workers=settings.workers,
        progress=False,
        device=device or resolve_device(settings.device),
    )
    report["heldout"] = metrics
    write_report(out, report, captioner_card(report, metrics))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m curate.training.captioner",
        description=(
            "Train the small shapes-world captioner that curate's re-captioner uses for scenes "
            "whose caption was dropped, evaluate it on held-out scenes and save it "
            "(safetensors, config, tokenizer, processor config, captioning.json, README.md)."
        ),
    )
    add_training_args(p, CaptionerSettings(), item="storyboards")
    return p


TRAINER = Trainer(
    parser=build_parser,
    settings=lambda args: settings_from_args(CaptionerSettings, args),
    train=train_shapes_captioner,
    finish=finish,
    key_width=20,
    hidden_metrics=("examples",),
)


def main(argv: list[str] | None = None) -> int:
    return training_command(TRAINER, argv)


if __name__ == "__main__":
    sys.exit(main())
