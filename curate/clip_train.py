"""Build, train and save small CLIP models.

The shipped shapes-world scorer (``models/shapes-clip``) is a real ``transformers.CLIPModel``
at toy size, trained here on frames rendered by :func:`curate.synth.render_scene` and their
scene captions. The same builders make the tiny random CLIPs that tests load through the very
code path a real checkpoint takes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange

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
    return save_clip_folder(CLIPModel(cfg).eval(), tokenizer, out, squash=squash)


# --- training on shapes world -----------------------------------------------------------------

#: the frame sizes a training frame is rendered at before it is squashed to the model's input,
#: covering the corpus' aspect ratios (16:9, 4:3, 71:40) at a tenth to a quarter of their size
TRAIN_RENDER_SIZES: tuple[tuple[int, int], ...] = ((142, 80), (128, 72), (96, 72), (160, 90))

#: random non-scene text used only as negatives, so that boilerplate scores low without
#: training on the corpus generator's own boilerplate sentences
_FILLER_NEGATIVES = (
    "stock footage",
    "hd video",
    "4k background loop",
    "royalty free clip",
    "abstract animation",
    "beautiful sunset over the sea",
    "city street at night",
    "time lapse of clouds",
    "aerial view of a forest",
    "close up of a dog",
    "people walking in a park",
    "seamless loop motion graphics",
    "editorial use only",
    "slow motion water",
)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a shapes-world CLIP run (written into the model card)."""

    seed: int = 0
    scenes: int = 12000
    frames_per_scene: int = 2
    epochs: int = 3
    batch_size: int = 96
    lr: float = 3e-3
    weight_decay: float = 0.05
    image_size: int = 96
    patch_size: int = 12
    hidden: int = 64
    vision_layers: int = 4
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    vocab_size: int = 1024
    eval_seed: int = 1_000_003
    eval_scenes: int = 1500
    threads: int = 2
    hard_negatives: int = 2
    #: stop after this many seconds of training (the learning-rate schedule follows the
    #: clock); ``None`` trains the full ``epochs``
    time_budget_s: float | None = 1200.0
    #: a model folder to continue training from (``None``: from scratch)
    init: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "scenes",
            "frames_per_scene",
            "epochs",
            "batch_size",
            "eval_scenes",
            "threads",
        ):
            value = getattr(self, name)
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if not 0 <= self.hard_negatives <= 3:
            raise ValueError(f"hard_negatives must be in [0, 3], got {self.hard_negatives!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")
        if self.eval_seed == self.seed:
            raise ValueError(f"eval_seed must differ from seed, got {self.eval_seed!r} for both")


#: Unicode blocks of other scripts; random text from them trains the byte-level tokens a
#: caption in another language falls back to, which would otherwise keep their random
#: initial embeddings and match frames by chance
_SCRIPTS = (
    (0x4E00, 0x9FFF),  # CJK ideographs
    (0x3041, 0x3096),  # hiragana
    (0x30A1, 0x30FA),  # katakana
    (0xAC00, 0xD7A3),  # hangul
    (0x0410, 0x044F),  # cyrillic
    (0x0391, 0x03C9),  # greek
    (0x0627, 0x064A),  # arabic
    (0x05D0, 0x05EA),  # hebrew
    (0x0E01, 0x0E2E),  # thai
    (0x0905, 0x0939),  # devanagari
)


def random_script_text(rng: np.random.Generator) -> str:
    """A few random 'words' in one randomly chosen non-Latin script."""
    lo, hi = _SCRIPTS[int(rng.integers(len(_SCRIPTS)))]
    words = [
        "".join(chr(int(c)) for c in rng.integers(lo, hi + 1, size=int(rng.integers(1, 7))))
        for _ in range(int(rng.integers(1, 6)))
    ]
    sep = "" if lo >= 0x3000 and rng.random() < 0.5 else " "
    return sep.join(words)


def all_scene_texts() -> list[str]:
    """Every caption of the grammar plus multi-scene joins: the tokenizer's training text."""
    from . import synth

    texts = [
        synth.caption_for(c, s, m, b)
        for c in synth.COLORS
        for s in synth.SHAPES
        for m in synth.MOTIONS
        for b in synth.BACKGROUNDS
    ]
    joins = [", then ", ", followed by ", "; ", ". Then ", " and then ", ". After that, "]
    texts += [
        texts[i] + joins[i % len(joins)] + texts[(i * 7 + 3) % len(texts)]
        for i in range(0, len(texts), 5)
    ]
    return texts + list(_FILLER_NEGATIVES)


def render_training_frames(
    n_scenes: int,
    *,
    seed: int,
    frames_per_scene: int,
    image_size: int,
    progress: bool = True,
) -> tuple[np.ndarray, list[Any]]:
    """Render ``n_scenes`` random scenes, ``frames_per_scene`` random frames each, squashed to
    ``image_size`` square as the sampler reads them. Returns ``(frames, facts per frame)``."""
    import cv2
    from tqdm import tqdm

    from . import synth

    rng = np.random.default_rng([seed, 0xC11F])
    frames = np.empty((n_scenes * frames_per_scene, image_size, image_size, 3), np.uint8)
    facts: list[Any] = []
    k = 0
    for _ in tqdm(range(n_scenes), desc="render", unit="scene", disable=not progress):
        f = synth.random_facts(rng)
        w, h = TRAIN_RENDER_SIZES[int(rng.integers(len(TRAIN_RENDER_SIZES)))]
        # the base sizes suit a 64-px model; keep about the same downscale for other inputs
        scale = image_size / 64
        w, h = max(32, round(w * scale / 2) * 2), max(32, round(h * scale / 2) * 2)
        n = int(rng.integers(20, 90))
        renderer = synth.SceneRenderer(
            f, num_frames=n, width=w, height=h, seed=int(rng.integers(2**31))
        )
        for t in rng.choice(n, size=frames_per_scene, replace=False):
            img = renderer.frame(int(t))
            frames[k] = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
            facts.append(f)
            k += 1
    return frames, facts


def _caption_variants(
    facts: Any, rng: np.random.Generator, n_negatives: int = 1
) -> tuple[str, list[str]]:
    """A positive caption for ``facts`` and hard negatives that change one visible slot."""
    from . import synth

    pos = facts.caption
    r = rng.random()
    if r < 0.1:
        # a caption cut after the shape word still names what is visible
        cut = pos.index(facts.shape) + len(facts.shape)
        pos = pos[: int(rng.integers(cut, len(pos) + 1))]
    slots = (
        ("color", tuple(synth.COLORS)),
        ("shape", synth.SHAPES),
        ("background", tuple(synth.BACKGROUNDS)),
    )
    # shape is the slot a frame shows least plainly (a few pixels at the input size), so the
    # first hard negative always swaps the shape; further ones swap colour or background
    order = [1] + [int(k) + (k >= 1) for k in rng.permutation(2)]
    negs = []
    for k in order[:n_negatives]:
        slot, vocab = slots[k]
        other = [v for v in vocab if v != getattr(facts, slot)]
        alt = dataclasses.replace(facts, **{slot: other[int(rng.integers(len(other)))]})
        negs.append(alt.caption)
    return pos, negs


def train_shapes_clip(
    out: str | os.PathLike[str],
    settings: TrainSettings = TrainSettings(),
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the shapes-world CLIP, save it under ``out`` and return its training report."""
    import time

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm
    from transformers import CLIPModel

    from .tokenizer import train_clip_tokenizer

    s = settings
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng([s.seed, 0x7EA1])
    t0 = time.perf_counter()

    if s.init:
        # continue from a saved folder: its tokenizer and weights, a fresh schedule
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(s.init)
    else:
        tokenizer = train_clip_tokenizer(all_scene_texts(), vocab_size=s.vocab_size)
    frames, facts = render_training_frames(
        s.scenes,
        seed=s.seed,
        frames_per_scene=s.frames_per_scene,
        image_size=s.image_size,
        progress=progress,
    )
    t_data = time.perf_counter() - t0
    cfg = clip_config(
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
    model = CLIPModel.from_pretrained(s.init) if s.init else CLIPModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    steps_per_epoch = len(frames) // s.batch_size
    total = steps_per_epoch * s.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    warmup = max(1, min(30, total // 10))
    t_train = time.perf_counter()

    def progress_fraction(step_done: int) -> float:
        # with a time budget the schedule follows the clock, so a busy machine trains fewer
        # steps but still anneals fully; otherwise it follows the step count
        frac = step_done / total
        if s.time_budget_s:
            frac = max(frac, (time.perf_counter() - t_train) / s.time_budget_s)
        return min(frac, 1.0)

    def set_lr(step_done: int) -> None:
        if step_done < warmup:
            lr = s.lr * (step_done + 1) / warmup
        else:
            lr = 0.5 * s.lr * (1 + math.cos(math.pi * progress_fraction(step_done)))
        for group in opt.param_groups:
            group["lr"] = lr

    keys = [(f.color, f.shape, f.background) for f in facts]
    model.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    done = 0
    for _epoch in range(s.epochs):
        order = rng.permutation(len(frames))
        if progress_fraction(done) >= 1.0:
            break
        for step in range(steps_per_epoch):
            if progress_fraction(done) >= 1.0:
                break
            set_lr(done)
            idx = order[step * s.batch_size : (step + 1) * s.batch_size]
            x = torch.from_numpy(frames[idx]).float()
            x = rearrange(x, "b h w c -> b c h w") / 255.0
            # photometric jitter the decoder and resizer of real videos would add
            x = x * (1 + 0.06 * torch.randn(len(idx), 1, 1, 1)) + 0.02 * torch.randn_like(x)
            x = (x.clamp(0, 1) - mean) / std
            pos, neg, text_keys = [], [], []
            for i in idx:
                p, ns = _caption_variants(facts[i], rng, s.hard_negatives)
                pos.append(p)
                neg.extend(ns)
            fillers = [
                _FILLER_NEGATIVES[int(j)] for j in rng.integers(len(_FILLER_NEGATIVES), size=8)
            ] + [random_script_text(rng) for _ in range(8)]
            texts = pos + neg + fillers
            batch_keys = [keys[i] for i in idx]
            text_keys = batch_keys + [None] * (len(neg) + len(fillers))
            enc = tokenizer(
                texts, padding=True, truncation=True, max_length=77, return_tensors="pt"
            )
            img = F.normalize(_features(model.get_image_features(pixel_values=x)), dim=-1)
            txt = F.normalize(
                _features(
                    model.get_text_features(
                        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                    )
                ),
                dim=-1,
            )
            scale = model.logit_scale.exp().clamp(max=100)
            logits = scale * img @ txt.T  # (B, T)
            # several images and captions of one batch can show the same colour, shape and
            # background: all of them are positives (motion is invisible in one frame)
            match = torch.tensor(
                [[tk is not None and tk == bk for tk in text_keys] for bk in batch_keys],
                dtype=torch.float32,
            )
            loss_i = (
                -(F.log_softmax(logits, dim=1) * match / match.sum(1, keepdim=True)).sum(1).mean()
            )
            pos_logits = logits[:, : len(idx)].T  # (B texts, B images)
            pmatch = match[:, : len(idx)].T
            loss_t = (
                -(F.log_softmax(pos_logits, dim=1) * pmatch / pmatch.sum(1, keepdim=True))
                .sum(1)
                .mean()
            )
            loss = (loss_i + loss_t) / 2
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
    model.eval()
    out = save_clip_folder(model, tokenizer, out)
    report = {
        "settings": dataclasses.asdict(s),
        "parameters": n_params,
        "train_frames": int(len(frames)),
        "steps": done,
        "final_loss": float(np.mean(losses[-50:])),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(train_s, 1),
        "size_bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file()),
    }
    return report


def _features(out: Any):
    return out.pooler_output if hasattr(out, "pooler_output") else out


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def evaluate_shapes_clip(
    model: str | os.PathLike[str],
    *,
    seed: int,
    scenes: int = 1000,
    frames_per_scene: int = 1,
    progress: bool = False,
) -> dict[str, float]:
    """Held-out accuracy of a CLIP on shapes-world frames rendered from ``seed``.

    - ``color_acc`` / ``shape_acc`` / ``background_acc`` / ``all_acc``: zero-shot
      classification of each frame against every caption of the grammar (the best caption
      over the seven motions of each colour, shape and background)
    - ``noise_auroc``: the true caption against a caption of other facts (another colour and
      shape, as a mismatched caption from another video is), per frame
    """
    from . import synth
    from .clip_score import ClipScorer

    rng = np.random.default_rng([seed, 0xE7A1])
    combos = [(c, s, b) for c in synth.COLORS for s in synth.SHAPES for b in synth.BACKGROUNDS]
    with ClipScorer(model=model, batch_size=256) as scorer:
        h, w = scorer.input_size
        frames, facts = render_training_frames(
            scenes, seed=seed, frames_per_scene=frames_per_scene, image_size=h, progress=progress
        )
        if (h, w) != frames.shape[1:3]:
            import cv2

            frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
        img = scorer.embed_images(frames)
        texts = [synth.caption_for(c, s, m, b) for (c, s, b) in combos for m in synth.MOTIONS]
        txt = scorer.embed_texts(texts)
        sims = (img @ txt.T).reshape(len(img), len(combos), len(synth.MOTIONS)).max(-1)
        pred = [combos[i] for i in sims.argmax(1)]
        truth = [(f.color, f.shape, f.background) for f in facts]
        mismatched = []
        for f in facts:
            while True:
                g = synth.random_facts(rng)
                if (g.color, g.shape) != (f.color, f.shape):
                    break
            mismatched.append(g.caption)
        true_cos = np.einsum("nd,nd->n", img, scorer.embed_texts([f.caption for f in facts]))
        wrong_cos = np.einsum("nd,nd->n", img, scorer.embed_texts(mismatched))
    acc = {
        name: float(np.mean([p[k] == t[k] for p, t in zip(pred, truth)]))
        for k, name in enumerate(("color_acc", "shape_acc", "background_acc"))
    }
    acc["all_acc"] = float(np.mean([p == t for p, t in zip(pred, truth)]))
    acc["noise_auroc"] = auroc(true_cos, wrong_cos)
    # the cut that best separates true from mismatched captions (Youden's J)
    cuts = np.unique(np.concatenate([true_cos, wrong_cos]))
    j = [(true_cos >= c).mean() - (wrong_cos >= c).mean() for c in cuts]
    acc["recommended_threshold"] = float(cuts[int(np.argmax(j))])
    acc["true_caption_cos_mean"] = float(true_cos.mean())
    acc["mismatched_caption_cos_mean"] = float(wrong_cos.mean())
    acc["frames"] = int(len(frames))
    return acc
