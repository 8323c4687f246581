"""Train the small shapes-world captioner (a ``BlipForConditionalGeneration``) on storyboards.

The captioner writes a scene's caption from its storyboard (the sampler's frames tiled in time
order, as the shipped CLIP reads scenes), so it names the motion as well as the colour, shape
and background. It fills the scenes whose own caption was dropped and whose facts the corpus'
kept captions do not cover. Everything is built offline: the WordPiece tokenizer is trained on
the grammar's captions with the ``tokenizers`` library, the model is a small config of the real
transformers class, and the folder loads with ``BlipProcessor`` /
``BlipForConditionalGeneration.from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .clip_train import (
    CLIP_MEAN,
    CLIP_STD,
    SLOTS,
    ClockCosineSchedule,
    _vocabularies,
    render_training_data,
)
from .models import CAPTIONING_FILE

#: the special tokens of the captioner's vocabulary; ``[DEC]`` starts every generated caption
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


@dataclass(frozen=True)
class CaptionerSettings:
    """Everything that determines a shapes-world captioner run (written into the model card)."""

    seed: int = 0
    scenes: int = 60000
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int = 128
    patch_size: int = 16
    hidden: int = 128
    vision_layers: int = 6
    text_layers: int = 3
    heads: int = 4
    max_length: int = 24
    #: held-out scenes (a seed the training never sees) for the accuracy in the model card
    eval_seed: int = 1_000_003
    eval_scenes: int = 1500
    threads: int = 2
    #: processes that render the training scenes
    workers: int = 1
    #: "cpu", "cuda", or "auto" (CUDA when available)
    device: str = "auto"
    #: stop after this many seconds of training (the learning-rate schedule follows the
    #: clock); ``None`` trains the full ``epochs``
    time_budget_s: float | None = 900.0
    #: a captioner folder to continue training from (``None``: from scratch)
    init: str | None = None

    def __post_init__(self) -> None:
        for name in ("scenes", "epochs", "batch_size", "eval_scenes", "threads", "workers"):
            value = getattr(self, name)
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")
        if self.eval_seed == self.seed:
            raise ValueError(f"eval_seed must differ from seed, got {self.eval_seed!r} for both")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda[:N]' or 'auto', got {self.device!r}")


# --- the folder -----------------------------------------------------------------------------------


def train_caption_tokenizer(texts: list[str], *, max_length: int = 24) -> Any:
    """A lower-casing WordPiece tokenizer (``BertTokenizer``) trained on ``texts``; ``[DEC]``
    is its beginning-of-caption token, as BLIP's decoder expects."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(
        texts, vocab_size=512, min_frequency=1, special_tokens=list(SPECIAL_TOKENS)
    )
    return BertTokenizer(
        vocab=tok.get_vocab(), bos_token="[DEC]", model_max_length=max_length, do_lower_case=True
    )


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

    from .storyboard import STORYBOARD_GRID

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


def caption_of_codes(codes: np.ndarray) -> list[str]:
    """The grammar's caption of each ``(colour, shape, motion, background)`` code row."""
    from . import shapes

    vocab = _vocabularies()
    order = [SLOTS.index(k) for k in ("color", "shape", "motion", "background")]
    return [shapes.caption_for(*(vocab[k][int(c[k])] for k in order)) for c in codes]


# --- training -------------------------------------------------------------------------------------


def train_shapes_captioner(
    out: str | os.PathLike[str],
    settings: CaptionerSettings = CaptionerSettings(),
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the shapes-world captioner, save it under ``out`` and return its training report."""
    import time

    import torch
    from einops import rearrange
    from tqdm import tqdm
    from transformers import BertTokenizer, BlipForConditionalGeneration

    from . import shapes
    from .clip_train import resolve_device

    s = settings
    device = resolve_device(s.device)
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng([s.seed, 0xCA97])
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
    bos = model.config.text_config.bos_token_id
    pad = model.config.text_config.pad_token_id

    # every distinct caption of the data, tokenised once; each board points at its row
    uniq, inverse = np.unique(data.board_codes, axis=0, return_inverse=True)
    enc = tokenizer(
        caption_of_codes(uniq),
        padding="max_length",
        truncation=True,
        max_length=s.max_length,
        return_tensors="pt",
    )
    ids_table = enc["input_ids"].clone()
    ids_table[:, 0] = bos
    ids_table, mask_table = ids_table.to(device), enc["attention_mask"].to(device)
    target_of = torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(device)
    boards = torch.from_numpy(data.boards).to(device)
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    steps_per_epoch = max(1, len(data.boards) // s.batch_size)
    total = steps_per_epoch * s.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    autocast = device.startswith("cuda")
    schedule = ClockCosineSchedule(opt, s.lr, total, s.time_budget_s)

    model.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    done = 0
    for _epoch in range(s.epochs):
        if schedule.finished(done):
            break
        order = torch.from_numpy(rng.permutation(len(data.boards))).to(device)
        for step in range(steps_per_epoch):
            if schedule.finished(done):
                break
            schedule.apply(done)
            idx = order[step * s.batch_size : (step + 1) * s.batch_size]
            x = rearrange(boards[idx].float(), "b h w c -> b c h w") / 255.0
            # photometric jitter the decoder and resizer of real videos would add
            n = len(idx)
            x = x * (1 + 0.06 * torch.randn(n, 1, 1, 1, device=device)) + 0.02 * torch.randn_like(x)
            x = (x.clamp(0, 1) - mean) / std
            ids = ids_table[target_of[idx]]
            mask = mask_table[target_of[idx]]
            labels = ids.masked_fill(ids == pad, -100)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss = model(pixel_values=x, input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    train_s = time.perf_counter() - t0
    model = model.to("cpu").eval()
    folder = save_captioner_folder(model, tokenizer, out, s.image_size)
    return {
        "settings": dataclasses.asdict(s),
        "device": device if device == "cpu" else torch.cuda.get_device_name(device),
        "parameters": n_params,
        "train_storyboards": int(len(data.boards)),
        "distinct_captions": int(len(uniq)),
        "steps": done,
        "storyboards_seen": done * s.batch_size,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "first_loss": float(np.mean(losses[:20])) if losses else None,
        "data_seconds": round(t_data, 1),
        "train_seconds": round(train_s, 1),
        "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
    }


# --- evaluation -----------------------------------------------------------------------------------


def evaluate_shapes_captioner(
    folder: str | os.PathLike[str],
    *,
    scenes: int = 1500,
    seed: int = 1_000_003,
    image_size: int = 128,
    workers: int = 1,
    batch_size: int = 128,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Caption the storyboards of ``scenes`` held-out scenes and compare each caption's facts
    (read back with the grammar's parser) with the scene's truth, slot by slot."""
    from tqdm import tqdm

    from . import shapes
    from .captioner import Captioner

    data = render_training_data(
        scenes,
        seed=seed,
        frames_per_scene=1,
        image_size=image_size,
        storyboards=True,
        keep_board_frames=True,
        workers=workers,
        progress=progress,
    )
    assert data.board_frames is not None
    cap = Captioner(folder, device=device)
    texts: list[str] = []
    for a in tqdm(range(0, scenes, batch_size), desc="caption", disable=not progress):
        texts += cap.caption_scenes(list(data.board_frames[a : a + batch_size]))
    truth = caption_of_codes(data.board_codes)
    got = [shapes.parse_caption(t) for t in texts]
    want = [shapes.parse_caption(t) for t in truth]
    out: dict[str, Any] = {"scenes": scenes, "seed": seed}
    for slot in ("color", "shape", "motion", "background"):
        out[slot] = float(
            np.mean(
                [g is not None and getattr(g, slot) == getattr(w, slot) for g, w in zip(got, want)]
            )
        )
    out["color_shape_motion"] = float(
        np.mean(
            [
                g is not None
                and w is not None
                and (g.color, g.shape, g.motion) == (w.color, w.shape, w.motion)
                for g, w in zip(got, want)
            ]
        )
    )
    out["exact"] = float(np.mean([t == w for t, w in zip(texts, truth)]))
    out["grammatical"] = float(np.mean([g is not None for g in got]))
    out["examples"] = [{"truth": w, "caption": t} for w, t in list(zip(truth, texts))[:6]]
    return out
