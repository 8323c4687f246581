"""Train the small shapes-world storygen model (a pixel-space MaskedUNet3D).

    python -m storygen.train --out models/shapes-storygen            # a GPU makes it worthwhile
    python -m storygen.train --out /tmp/m --steps 20 --device cpu    # a smoke run

Clips are rendered on the fly from the shapes world (:mod:`curate.synth`): one to three
scenes per clip of ``L`` frames, each frame captioned with its scene's prompt, so the model
learns per-frame prompts and the cuts between them. Each sample gets one of three conditions,
so one network serves every role:

- global (no known frame): level 0 of the hierarchical plan;
- local (first and last frame known): every later level;
- autoregressive (the first 1-4 frames known): the sliding-window baseline.

The per-call frame spacing the pipeline passes is drawn at random here (log-uniform 1..400):
clips of this world look alike at every spacing, so the model learns not to depend on it and
stays in distribution at every level. Loss: epsilon MSE over the unknown frames; the known
frames enter both as condition channels and, noised, in the sample (as the pipeline feeds
them). The text encoder is ``models/shapes-clip``'s text tower when present (frozen), else a
small CLIP text model trained along. 10 % of clips drop their prompts for classifier-free
guidance. Weights are an EMA of the trained ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: the network trained by default: about 2 M parameters, 32 px, 16 frames per call
SHAPES_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
    "up_block_types": ("CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"),
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": True,
    "set_alpha_to_one": True,
    "prediction_type": "epsilon",
}


@dataclass
class TrainConfig:
    out: str
    steps: int = 4000
    batch_size: int = 48
    frames: int = 16
    size: int = 32
    lr: float = 3e-4
    warmup: int = 200
    ema: float = 0.998
    seed: int = 0
    device: str = "auto"
    workers: int = 6
    text_encoder: str | None = "models/shapes-clip"
    text_width: int = 64
    #: continue from a model folder this script wrote (its UNet, text encoder and tokenizer)
    init: str | None = None
    max_minutes: float | None = None
    eval_stories: int = 24
    eval_steps: int = 25
    log_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "frames", "size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.frames < 3:
            raise ValueError(f"frames must be >= 3, got {self.frames!r}")
        if self.size < 32 or self.size % 4:
            raise ValueError(f"size must be a multiple of 4, >= 32, got {self.size!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema!r}")


# ----------------------------------------------------------------------------- data
def all_captions() -> list[str]:
    from curate.shapes import BACKGROUNDS, COLORS, MOTIONS, SHAPES, caption_for, compatible

    return [
        caption_for(c, s, m, b)
        for c in COLORS
        for s in SHAPES
        for m in MOTIONS
        for b in BACKGROUNDS
        if compatible(c, b)
    ]


def random_facts(rng: np.random.Generator):
    from curate.shapes import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SceneFacts, compatible

    while True:
        color = str(rng.choice(list(COLORS)))
        background = str(rng.choice(list(BACKGROUNDS)))
        if compatible(color, background):
            return SceneFacts(
                color, str(rng.choice(list(SHAPES))), str(rng.choice(list(MOTIONS))), background
            )


def render_clip(
    rng: np.random.Generator, frames: int, size: int, *, max_scenes: int = 3
) -> tuple[np.ndarray, list[str]]:
    """One clip of ``frames`` frames with 1..max_scenes scenes: uint8 (F, H, W, 3), prompts."""
    from curate.shapes import render_scene

    weights = np.array([0.5, 0.35, 0.15][:max_scenes])
    n_scenes = min(int(rng.choice(np.arange(1, max_scenes + 1), p=weights / weights.sum())), frames)
    cuts = sorted(rng.choice(np.arange(1, frames), size=n_scenes - 1, replace=False).tolist())
    bounds = [0, *cuts, frames]
    clip, prompts = [], []
    for a, b in zip(bounds, bounds[1:]):
        facts = random_facts(rng)
        clip.append(
            render_scene(
                facts, num_frames=b - a, width=size, height=size, seed=int(rng.integers(1 << 31))
            )
        )
        prompts += [facts.caption] * (b - a)
    return np.concatenate(clip), prompts


class ShapesClips(torch.utils.data.IterableDataset):
    """An endless stream of (clip (3, F, H, W) in [-1, 1], prompts, mask (F,), spacing)."""

    def __init__(self, frames: int, size: int, seed: int) -> None:
        self.frames, self.size, self.seed = frames, size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, worker])
        f = self.frames
        while True:
            clip, prompts = render_clip(rng, f, self.size)
            x = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1.0
            mask = torch.zeros(f)
            role = rng.random()
            if role < 0.5:  # local: both ends known
                mask[0] = mask[-1] = 1.0
            elif role < 0.7:  # autoregressive: the first few known
                mask[: int(rng.integers(1, 5))] = 1.0
            spacing = float(np.exp(rng.uniform(0.0, math.log(400.0))))
            if rng.random() < 0.1:  # unconditional, for classifier-free guidance
                prompts = [""] * f
            yield x, prompts, mask, spacing


def _collate(items):
    xs, prompts, masks, spacing = zip(*items)
    return torch.stack(xs), list(prompts), torch.stack(masks), torch.tensor(spacing)


# ----------------------------------------------------------------------------- model
def load_or_build_text(config: TrainConfig, captions: list[str]) -> tuple[Any, Any, bool]:
    """(tokenizer, text_encoder, trainable): shapes-clip's text tower if present, else new."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from storygen.text import build_tiny_text_encoder, build_tiny_tokenizer

    path = Path(config.text_encoder) if config.text_encoder else None
    if path is not None and path.is_dir():
        tok_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path
        enc_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else path
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
        encoder = CLIPTextModel.from_pretrained(str(enc_dir)).eval()
        logger.info("text encoder: %s (frozen)", path)
        return tokenizer, encoder, False
    tokenizer = build_tiny_tokenizer(captions, vocab_size=600)
    encoder = build_tiny_text_encoder(
        tokenizer, hidden_size=config.text_width, num_layers=2, num_heads=4, seed=config.seed
    )
    logger.info("text encoder: a new %s-wide CLIP text model, trained along", config.text_width)
    return tokenizer, encoder, True


def build_unet(config: TrainConfig, cross_attention_dim: int):
    from storygen.models import MaskedUNet3D

    torch.manual_seed(config.seed)
    return MaskedUNet3D(
        sample_channels=3,
        sample_size=config.size,
        cross_attention_dim=cross_attention_dim,
        time_cond_proj_dim=32,
        **SHAPES_UNET,
    )


# ----------------------------------------------------------------------------- training
def train(config: TrainConfig) -> dict[str, Any]:
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from tqdm.auto import tqdm

    from storygen.pipeline import StoryVideoPipeline

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu")
        if config.device == "auto"
        else config.device
    )
    torch.manual_seed(config.seed)
    captions = all_captions()
    if config.init:
        from transformers import CLIPTextModel, CLIPTokenizer

        from storygen.models import MaskedUNet3D

        init = Path(config.init)
        previous = json.loads((init / "training.json").read_text())
        tokenizer = CLIPTokenizer.from_pretrained(str(init / "tokenizer"))
        text_encoder = CLIPTextModel.from_pretrained(str(init / "text_encoder"))
        text_trainable = bool(previous.get("text_encoder_trained", True))
        unet = MaskedUNet3D.from_pretrained(str(init / "unet"), torch_dtype=torch.float32)
        logger.info("continuing from %s (%s steps done)", init, previous.get("steps_done"))
    else:
        previous = {}
        tokenizer, text_encoder, text_trainable = load_or_build_text(config, captions)
        unet = build_unet(config, text_encoder.config.hidden_size)
    unet.to(device).train()
    text_encoder.to(device)  # type: ignore[arg-type]
    text_encoder.train(text_trainable)
    text_encoder.requires_grad_(text_trainable)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).eval().requires_grad_(False)
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k != "set_alpha_to_one"})
    alphas = noise_sched.alphas_cumprod.to(device)

    params = list(unet.parameters()) + (list(text_encoder.parameters()) if text_trainable else [])
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / config.warmup)
            * (0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)) * 0.9 + 0.1)
        ),
    )
    loader = torch.utils.data.DataLoader(
        ShapesClips(config.frames, config.size, config.seed),
        batch_size=config.batch_size,
        num_workers=config.workers,
        collate_fn=_collate,
        persistent_workers=config.workers > 0,
        prefetch_factor=4 if config.workers > 0 else None,
    )
    n_params = sum(p.numel() for p in unet.parameters())
    logger.info(
        "training a %s-parameter MaskedUNet3D on %s for %s steps", n_params, device, config.steps
    )
    amp = device.type == "cuda"
    started = time.perf_counter()
    losses: list[float] = []
    history: list[dict[str, float]] = []
    bar = tqdm(total=config.steps, desc="train", unit="step", mininterval=5)
    step = 0
    for x, prompts, mask, spacing in loader:
        x, mask, spacing = x.to(device), mask.to(device), spacing.to(device)
        b, c, f, h, w = x.shape
        flat = [p for clip in prompts for p in clip]
        uniq = sorted(set(flat))
        ids = tokenizer(
            uniq,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            with torch.set_grad_enabled(text_trainable):
                table = text_encoder(ids).last_hidden_state
            index = torch.tensor([uniq.index(p) for p in flat], device=device)
            context = table[index].reshape(b, f, *table.shape[1:])
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), device=device)
            noise = torch.randn_like(x)
            a = alphas[t].view(b, 1, 1, 1, 1)
            noisy = a.sqrt() * x + (1 - a).sqrt() * noise
            pred = unet(noisy, t, context, known=x, mask=mask, spacing=spacing)
        unknown = (1 - mask)[:, None, :, None, None].expand_as(x)
        loss = ((pred.float() - noise) ** 2 * unknown).sum() / (unknown.sum() * 1.0).clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(config.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
            if text_trainable:
                for e, p in zip(ema_text.parameters(), text_encoder.parameters()):
                    e.lerp_(p, 1 - decay)
        losses.append(float(loss))
        step += 1
        bar.update(1)
        if step % config.log_every == 0:
            mean = float(np.mean(losses[-config.log_every :]))
            history.append({"step": step, "loss": mean, "time_s": time.perf_counter() - started})
            bar.set_postfix(loss=f"{mean:.4f}")
            logger.info("step %s loss %.4f (%.0f s)", step, mean, time.perf_counter() - started)
        out_of_time = (
            config.max_minutes is not None
            and time.perf_counter() - started > config.max_minutes * 60
        )
        if step >= config.steps or out_of_time:
            if out_of_time:
                logger.info(
                    "stopping at step %s: --max-minutes %s reached", step, config.max_minutes
                )
            break
    bar.close()
    train_time = time.perf_counter() - started

    scheduler = DDIMScheduler(**SCHEDULER)
    pipe = StoryVideoPipeline(
        unet=ema.float(), scheduler=scheduler, text_encoder=ema_text.float(), tokenizer=tokenizer
    )
    out = Path(config.out)
    pipe.save_pretrained(str(out))
    report = {
        "config": asdict(config),
        "unet_parameters": n_params,
        "text_encoder_parameters": sum(p.numel() for p in ema_text.parameters()),
        "text_encoder_trained": text_trainable,
        "steps_done": step + int(previous.get("steps_done", 0)),
        "train_time_s": train_time + float(previous.get("train_time_s", 0.0)),
        "runs": [
            *previous.get(
                "runs",
                [{"steps": previous["steps_done"], "time_s": previous["train_time_s"]}]
                if previous
                else [],
            ),
            {"steps": step, "time_s": train_time},
        ],
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "history": history,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if config.eval_stories:
        pipe.to(device)
        report["eval"] = evaluate(
            pipe, stories=config.eval_stories, steps=config.eval_steps, seed=config.seed + 1
        )
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return report


# ----------------------------------------------------------------------------- evaluation
def evaluate(
    pipe: Any,
    *,
    stories: int = 24,
    steps: int = 25,
    seed: int = 1,
    num_frames: int = 46,
    frames_per_call: int = 16,
    guidance_scale: float = 3.0,
) -> dict[str, Any]:
    """Render random two-scene stories; read colour, shape and background back from pixels.

    Reports, per mode (hierarchical, autoregressive), the fraction of frames whose read
    colour / shape / background match the prompt active at that frame, and the same against
    the *other* scene's prompt (what a model ignoring per-frame prompts would score).
    """
    from curate.shapes import read_frame

    results: dict[str, Any] = {}
    for mode in ("hierarchical", "autoregressive"):
        hits = {"color": 0, "shape": 0, "background": 0, "all": 0}
        other = {"color": 0, "background": 0}
        total = 0
        rng_mode = np.random.default_rng(seed)
        started = time.perf_counter()
        for i in range(stories):
            a, b = random_facts(rng_mode), random_facts(rng_mode)
            while (a.color, a.background) == (b.color, b.background):
                b = random_facts(rng_mode)
            cut = int(rng_mode.integers(num_frames // 3, 2 * num_frames // 3))
            prompts = [a.caption] * cut + [b.caption] * (num_frames - cut)
            out = pipe(
                prompts,
                num_frames,
                frames_per_call=frames_per_call,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=seed * 1000 + i,
                policy="autoregressive" if mode == "autoregressive" else "stretch",
                progress=False,
            )
            for k, frame in enumerate(out.frames):
                want, wrong = (a, b) if k < cut else (b, a)
                seen = read_frame(frame)
                ok_c = seen.color == want.color
                ok_s = seen.shape == want.shape
                ok_b = seen.background == want.background
                hits["color"] += ok_c
                hits["shape"] += ok_s
                hits["background"] += ok_b
                hits["all"] += ok_c and ok_s and ok_b
                other["color"] += seen.color == wrong.color
                other["background"] += seen.background == wrong.background
                total += 1
        results[mode] = {
            "frames": total,
            "match": {k: v / total for k, v in hits.items()},
            "match_other_scene": {k: v / total for k, v in other.items()},
            "wall_time_s": time.perf_counter() - started,
        }
    results["settings"] = {
        "stories": stories,
        "num_frames": num_frames,
        "frames_per_call": frames_per_call,
        "steps": steps,
        "guidance_scale": guidance_scale,
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m storygen.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = TrainConfig(out="")
    parser.add_argument("--out", required=True, help="model folder to write")
    for name in (
        "steps",
        "batch_size",
        "frames",
        "size",
        "workers",
        "seed",
        "eval_stories",
        "eval_steps",
        "log_every",
        "warmup",
        "text_width",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    for name in ("lr", "ema", "max_minutes"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name)
        )
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--init", default=None, help="continue from this model folder")
    parser.add_argument(
        "--text-encoder",
        default=defaults.text_encoder,
        help="CLIP folder whose text tower is used frozen; a new one is trained if missing",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = TrainConfig(**{k: v for k, v in vars(args).items()})
    report = train(config)
    summary = {
        k: report[k] for k in ("steps_done", "train_time_s", "final_loss", "unet_parameters")
    }
    print(json.dumps(summary | {"eval": report.get("eval")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
