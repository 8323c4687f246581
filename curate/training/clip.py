"""The shapes-world CLIP: building CLIP folders, and training the shipped scorer.

``python -m curate.training.clip --out models/shapes-clip`` renders shapes-world frames and
storyboards, trains a small ``transformers.CLIPModel`` on them and their scene captions
(contrastive, with hard negatives that change one slot: colour, shape, background, or for a
storyboard the motion), measures it on scenes from a seed the training never saw, and writes a
complete model folder with a ``README.md`` model card and the ``scoring.json`` the scorer
reads. The same builders make the tiny random CLIPs that tests load through the code path a
real checkpoint takes.
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
from typing import Any, ClassVar

import numpy as np

from curate.clip_score import projected_features
from curate.models import CLIP_MEAN, CLIP_STD, write_scoring
from curate.storyboard import STORYBOARD_GRID

from .cards import clip_card
from .data import (
    FILLER_NEGATIVES,
    CaptionSampler,
    all_scene_texts,
    match_matrix,
    random_script_text,
    render_training_data,
)
from .evaluate import evaluate_shapes_clip
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
from .tokenizer import train_clip_tokenizer

# --- CLIP folders -------------------------------------------------------------------------------


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
        raise ValueError(
            f"image_size {image_size!r} is not a multiple of patch_size {patch_size!r}"
        )
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


def preprocessor_config(image_size: int, *, squash: bool = True) -> dict[str, Any]:
    """The ``preprocessor_config.json`` of a CLIP that reads ``image_size`` square frames.

    ``squash`` resizes the whole frame to the square (no centre crop), so nothing near the
    left and right edges of a wide frame is lost; otherwise CLIP's shortest-edge + crop.
    """
    size = {"height": image_size, "width": image_size} if squash else {"shortest_edge": image_size}
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": size,
        "resample": 3,
        "do_center_crop": not squash,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    }


def save_clip_folder(
    model: Any, tokenizer: Any, out: str | os.PathLike[str], *, squash: bool = True
) -> Path:
    """Write a complete CLIP folder: safetensors + config, tokenizer, preprocessor config."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_size = int(model.config.vision_config.image_size)
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(image_size, squash=squash), indent=2) + "\n"
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
    squash: bool = False,
) -> Path:
    """Save a randomly initialised toy CLIP folder (for tests and throughput runs)."""
    import torch
    from transformers import CLIPModel

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
    return save_clip_folder(CLIPModel(cfg).eval(), tokenizer, out, squash=squash)


# --- training ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSettings(TrainingSettings):
    """Everything that determines a shapes-world CLIP run (written into the model card)."""

    scenes: int = 80000
    frames_per_scene: int = 2
    #: also train on scene storyboards (sampled frames tiled in time order), so that the
    #: model reads motion from a scene; single frames still train caption scoring
    storyboards: bool = True
    lr: float = 2e-3
    projection_dim: int = 128
    vocab_size: int = 1024
    hard_negatives: int = 2
    time_budget_s: float | None = 1200.0

    POSITIVE: ClassVar[tuple[str, ...]] = (*TrainingSettings.POSITIVE, "frames_per_scene")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.hard_negatives <= 3:
            raise ValueError(f"hard_negatives must be in [0, 3], got {self.hard_negatives!r}")


class ContrastiveStep:
    """The loss of one CLIP training batch: ``batch_size`` frames and as many storyboards,
    against their captions (10 % truncated), hard negatives, fillers and text in other scripts.

    Several images and captions of one batch can show the same facts: all of them are
    positives (and a single frame matches its caption under every motion).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        data: Any,
        settings: ClipSettings,
        rng: np.random.Generator,
        device: str,
    ) -> None:
        import torch

        self.model, self.tokenizer, self.data, self.s = model, tokenizer, data, settings
        self.rng, self.device = rng, device
        self.captions = CaptionSampler(rng)
        # every caption of the grammar, tokenised once
        table = tokenizer(
            self.captions.all_captions(),
            padding=True,
            truncation=True,
            max_length=77,
            return_tensors="pt",
        )
        self.table_ids = table["input_ids"].to(device)
        self.table_mask = table["attention_mask"].to(device)
        # the images stay uint8 on the device; each step gathers its batch there
        self.frames = torch.from_numpy(data.frames).to(device)
        self.boards = torch.from_numpy(data.boards).to(device)
        self.n_boards = len(data.boards)
        # a step takes batch_size frames and (with storyboards) batch_size storyboards
        self.b_boards = settings.batch_size if self.n_boards else 0

    def images(self, idx: np.ndarray, bidx: np.ndarray) -> tuple[Any, np.ndarray]:
        """The batch's frames and storyboards as pixels, and their codes."""
        import torch

        data, device = self.data, self.device
        images = self.frames[torch.from_numpy(idx).to(device)]
        codes = data.frame_codes[idx].astype(np.int64)
        codes[:, 2] = -1  # one frame cannot show motion
        if self.b_boards:
            images = torch.cat([images, self.boards[torch.from_numpy(bidx).to(device)]])
            codes = np.concatenate([codes, data.board_codes[bidx].astype(np.int64)])
        return training_pixels(images), codes

    def texts(self, idx: np.ndarray, bidx: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
        """Text embeddings ``(T, D)``, their codes, and which of them are the positives."""
        import torch

        data, rng, captions, device = self.data, self.rng, self.captions, self.device
        pos_codes = np.concatenate([data.frame_codes[idx], data.board_codes[bidx]]).astype(np.int64)
        cut = rng.random(len(pos_codes)) < 0.1
        neg_codes = np.concatenate(
            [
                captions.negatives(data.frame_codes[idx], self.s.hard_negatives, board=False),
                captions.negatives(data.board_codes[bidx], self.s.hard_negatives, board=True),
            ]
        )
        full_codes = np.concatenate([pos_codes[~cut], neg_codes])
        free_texts = [captions.truncated(c) for c in pos_codes[cut]]
        free_codes = [(int(c[0]), int(c[1]), -1, -1) for c in pos_codes[cut]]
        free_texts += [
            FILLER_NEGATIVES[int(j)] for j in rng.integers(len(FILLER_NEGATIVES), size=8)
        ] + [random_script_text(rng) for _ in range(8)]
        free_codes += [(-2, -2, -2, -2)] * 16
        text_codes = np.concatenate([full_codes, np.array(free_codes, np.int64)])
        # positives in text order: the uncut ones lead the full block, the cut ones lead
        # the free block
        n_full_pos, n_cut = int((~cut).sum()), int(cut.sum())
        positives = np.concatenate([np.arange(n_full_pos), len(full_codes) + np.arange(n_cut)])
        rows, inverse = np.unique(captions.index(full_codes), return_inverse=True)
        rows_t = torch.from_numpy(rows).to(device)
        full_emb = projected_features(
            self.model.get_text_features(
                input_ids=self.table_ids[rows_t], attention_mask=self.table_mask[rows_t]
            )
        )[torch.from_numpy(inverse.reshape(-1)).to(device)]
        enc = self.tokenizer(
            free_texts, padding=True, truncation=True, max_length=77, return_tensors="pt"
        ).to(device)
        free_emb = projected_features(
            self.model.get_text_features(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            )
        )
        return torch.cat([full_emb, free_emb]), text_codes, positives

    def __call__(self, idx: np.ndarray) -> Any:
        import torch
        import torch.nn.functional as F

        rng, device, model = self.rng, self.device, self.model
        bidx = (
            rng.integers(self.n_boards, size=self.b_boards) if self.b_boards else np.zeros(0, int)
        )
        x, img_codes = self.images(idx, bidx)
        txt_emb, text_codes, positives = self.texts(idx, bidx)
        img = F.normalize(projected_features(model.get_image_features(pixel_values=x)), dim=-1)
        txt = F.normalize(txt_emb, dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # (I, T)
        match = match_matrix(
            torch.from_numpy(img_codes).to(device), torch.from_numpy(text_codes).to(device)
        ).float()
        loss_i = -(F.log_softmax(logits, dim=1) * match / match.sum(1, keepdim=True)).sum(1).mean()
        pos_t = torch.from_numpy(positives).to(device)
        pos_logits = logits[:, pos_t].T  # (positive texts, images)
        pmatch = match[:, pos_t].T
        loss_t = (
            -(F.log_softmax(pos_logits, dim=1) * pmatch / pmatch.sum(1, keepdim=True)).sum(1).mean()
        )
        return (loss_i + loss_t) / 2


def train_shapes_clip(
    out: str | os.PathLike[str],
    settings: ClipSettings = ClipSettings(),
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the shapes-world CLIP, save it under ``out`` and return its training report."""
    from transformers import AutoTokenizer, CLIPModel

    s = settings
    device, rng = start_run(s, stream=0x7EA1, tf32=True)
    t0 = time.perf_counter()
    # continuing from a saved folder: its tokenizer and weights, a fresh schedule
    if s.init:
        tokenizer = AutoTokenizer.from_pretrained(s.init)
    else:
        tokenizer = train_clip_tokenizer(all_scene_texts(), vocab_size=s.vocab_size)
    data = render_training_data(
        s.scenes,
        seed=s.seed,
        frames_per_scene=s.frames_per_scene,
        image_size=s.image_size,
        storyboards=s.storyboards,
        workers=s.workers,
        progress=progress,
    )
    t_data = time.perf_counter() - t0
    model: Any = CLIPModel.from_pretrained(s.init) if s.init else CLIPModel(_config(tokenizer, s))
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    step = ContrastiveStep(model, tokenizer, data, s, rng, device)
    done = train_loop(
        model,
        step,
        settings=s,
        items=len(data.frames),
        steps_per_epoch=len(data.frames) // s.batch_size,
        rng=rng,
        progress=progress,
    )
    train_s = time.perf_counter() - t0
    folder = save_clip_folder(model.to("cpu").eval(), tokenizer, out)
    if s.storyboards:
        write_scoring(folder, {"storyboard": {"grid": list(STORYBOARD_GRID)}})
    return {
        "settings": dataclasses.asdict(s),
        "device": device_name(device),
        "parameters": n_params,
        "train_frames": int(len(data.frames)),
        "train_storyboards": int(step.n_boards),
        "board_negatives": (
            "storyboards: opposite motion, another motion, shape" if step.n_boards else "none"
        ),
        "steps": done.steps,
        "images_seen": done.steps * (s.batch_size + step.b_boards),
        "final_loss": float(np.mean(done.losses[-50:])),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(train_s, 1),
        "size_bytes": folder_size(folder),
    }


def _config(tokenizer: Any, s: ClipSettings) -> Any:
    return clip_config(
        tokenizer,
        image_size=s.image_size,
        patch_size=s.patch_size,
        vision_hidden=s.hidden,
        vision_layers=s.vision_layers,
        text_hidden=s.hidden,
        text_layers=s.text_layers,
        heads=s.heads,
        projection_dim=s.projection_dim,
    )


# --- evaluation, model card, command line -------------------------------------------------------


def finish(out: Path, report: dict, settings: ClipSettings, *, device: str | None = None) -> dict:
    """Evaluate a trained folder on held-out frames; write the card, report and scoring.json.

    ``device`` runs the evaluation elsewhere than the training (default: the same device).
    """
    metrics = evaluate_shapes_clip(
        out,
        seed=settings.eval_seed,
        scenes=settings.eval_scenes,
        progress=False,
        device=device or resolve_device(settings.device),
    )
    report["heldout"] = metrics
    write_report(out, report, clip_card(report, metrics))
    write_scoring(
        out,
        {
            "caption_threshold": round(metrics["recommended_threshold"], 4),
            "measured_on": f"{metrics['frames']} held-out frames, seed {settings.eval_seed}",
            "rule": "maximises TPR - FPR of true vs mismatched captions, per frame; the middle of the best range",
        },
    )
    return metrics


def build_parser() -> argparse.ArgumentParser:
    d = ClipSettings()
    p = argparse.ArgumentParser(
        prog="python -m curate.training.clip",
        description=(
            "Train the small shapes-world CLIP that curate uses as its default caption scorer, "
            "evaluate it on held-out frames and save it (safetensors, config, tokenizer, "
            "preprocessor config, README.md model card)."
        ),
    )
    add_training_args(p, d, item="frames")
    p.add_argument(
        "--frames-per-scene", type=int, default=d.frames_per_scene, help="frames taken per scene"
    )
    p.add_argument(
        "--hard-negatives",
        type=int,
        default=d.hard_negatives,
        help="captions per frame that change one visible slot (0-3)",
    )
    p.add_argument(
        "--no-storyboards",
        dest="storyboards",
        action="store_false",
        help="train on single frames only (the model then cannot read motion)",
    )
    return p


TRAINER = Trainer(
    parser=build_parser,
    settings=lambda args: settings_from_args(ClipSettings, args),
    train=train_shapes_clip,
    finish=finish,
)


def main(argv: list[str] | None = None) -> int:
    return training_command(TRAINER, argv)


if __name__ == "__main__":
    sys.exit(main())
