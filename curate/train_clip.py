"""``python -m curate.train_clip --out models/shapes-clip``: train and ship the shapes-world CLIP.

Renders shapes-world frames with :func:`curate.shapes.render_scene`'s renderer, trains a small
``transformers.CLIPModel`` on them and their scene captions (contrastive, with hard negatives
that change one visible slot: colour, shape or background), measures it on frames from a seed
the training never saw, and writes a complete model folder with a ``README.md`` model card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .clip_train import (
    TRAIN_RENDER_SIZES,
    TrainSettings,
    evaluate_shapes_clip,
    resolve_device,
    train_shapes_clip,
    write_scoring,
)

logger = logging.getLogger("curate.train_clip")


def build_parser() -> argparse.ArgumentParser:
    d = TrainSettings()
    p = argparse.ArgumentParser(
        prog="python -m curate.train_clip",
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
        action="store_true",
        help="train on single frames only (the model then cannot read motion)",
    )
    return p


def add_training_args(p: argparse.ArgumentParser, d: Any, *, item: str) -> None:
    """The flags every shapes-world training command shares; ``d`` holds their defaults and
    ``item`` names what a step batches ("frames", "storyboards")."""
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--seed", type=int, default=d.seed, help="training data and init seed")
    p.add_argument("--scenes", type=int, default=d.scenes, help="scenes rendered for training")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the {item}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"{item} per step")
    p.add_argument(
        "--lr", type=float, default=d.lr, help="peak learning rate (warm-up, then cosine)"
    )
    p.add_argument("--image-size", type=int, default=d.image_size, help="input side in pixels")
    p.add_argument("--patch-size", type=int, default=d.patch_size, help="ViT patch side")
    p.add_argument("--hidden", type=int, default=d.hidden, help="width of the model")
    p.add_argument("--vision-layers", type=int, default=d.vision_layers)
    p.add_argument("--text-layers", type=int, default=d.text_layers)
    p.add_argument(
        "--device",
        default=d.device,
        help="cpu, cuda[:N] or auto (CUDA when available; default %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=d.workers, help="processes rendering training scenes"
    )
    p.add_argument("--init", default=None, help="continue training from this model folder")
    p.add_argument(
        "--eval-seed",
        type=int,
        default=d.eval_seed,
        help="seed of the held-out evaluation scenes (must differ from --seed)",
    )
    p.add_argument("--eval-scenes", type=int, default=d.eval_scenes)
    p.add_argument(
        "--time-budget",
        type=float,
        default=d.time_budget_s,
        metavar="SECONDS",
        help="stop training after this long; the learning-rate schedule follows the "
        "clock, so a busy machine trains fewer steps but still anneals "
        "(default %(default)s; 0 trains all --epochs)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch CPU threads (1 on a machine shared with other jobs: OpenMP "
        "threads that wait for a busy core slow every step down)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _runs(report: dict) -> list[dict]:
    """The training runs behind a model, first to last (``continued_from`` chains them)."""
    earlier = report.get("continued_from")
    return (_runs(earlier) if earlier else []) + [report]


def _run_row(i: int, r: dict) -> str:
    s = r["settings"]
    init = "from scratch" if not s.get("init") else f"run {i - 1}'s weights"
    negs = r.get("board_negatives", "shape, colour or background")
    return (
        f"| {i} | {init} | {r.get('device', 'cpu')} | {r['steps']:,} | {s['batch_size']} + "
        f"{s['batch_size'] if s.get('storyboards') else 0} | {s['lr']} | "
        f"{s['hard_negatives']} ({negs}) | {r['train_seconds']:.0f} s | {r['final_loss']:.3f} |"
    )


def model_card(report: dict, metrics: dict) -> str:
    s = report["settings"]
    pct = {k: f"{100 * v:.1f} %" for k, v in metrics.items() if k.endswith("_acc")}
    scale = s["image_size"] / 64
    sizes = ", ".join(
        f"{round(w * scale / 2) * 2}×{round(h * scale / 2) * 2}" for w, h in TRAIN_RENDER_SIZES
    )
    from . import shapes

    n_captions = (
        len(shapes.COLORS) * len(shapes.SHAPES) * len(shapes.MOTIONS) * len(shapes.BACKGROUNDS)
    )
    runs = _runs(report)
    rows = "\n".join(_run_row(i + 1, r) for i, r in enumerate(runs))
    total_s = sum(r["train_seconds"] for r in runs)
    seen = sum(r.get("images_seen", r["steps"] * r["settings"]["batch_size"]) for r in runs)
    boards = s.get("storyboards")
    board_text = ""
    if boards:
        board_text = f"""- Storyboards: per scene one more image, the four frames the curate sampler takes
  (uniform over the scene, a few frames off each end) squashed and tiled 2×2 in time order
  (`curate.storyboard.storyboard`): {report.get("train_storyboards", 0):,} storyboards. Their
  captions must match in motion too; each storyboard's first hard negative is the *opposite*
  motion (left/right, up/down, growing/shrinking), so direction is learned and not only axis.
"""
    scene_rows = ""
    if "scene_motion_acc" in metrics:
        scene_rows = f"""
Per scene (the four sampled frames; mean frame embedding averaged with the storyboard's, as
re-captioning ranks prompts), zero-shot against all {n_captions:,} captions:

| metric | value |
|---|---|
| colour | {pct["scene_color_acc"]} |
| shape | {pct["scene_shape_acc"]} |
| motion | {pct["scene_motion_acc"]} |
| background | {pct["scene_background_acc"]} |
| all four right | {pct["scene_all_acc"]} |
"""
    motion_limit = (
        "- Motion is read from storyboards only (`scoring.json` declares the grid, and the scorer "
        "then embeds one per scene); a single frame still carries no motion."
        if boards
        else "- Motion words carry no signal from one frame; score motion with several frames elsewhere."
    )
    return f"""# shapes-clip

A small [CLIP](https://arxiv.org/abs/2103.00020) (`transformers.CLIPModel`) trained from
scratch on the procedural *shapes world* of storyloom (`curate/shapes/`). It is the default
caption scorer of `curate` (`curate.models.DEFAULT_MODEL`), so that the demo and the tests
score captions meaningfully without downloading weights. It knows nothing but shapes world.

Rebuild with `make train-clip` (`python -m curate.train_clip --out models/shapes-clip`; add
`--device cuda --workers 15` on a GPU machine, and `--init` to continue from a folder).

## Model

| | |
|---|---|
| vision tower | ViT, {s["image_size"]}×{s["image_size"]} px input, patch {s["patch_size"]}, hidden {s["hidden"]}, {s["vision_layers"]} layers, {s["heads"]} heads |
| text tower | hidden {s["hidden"]}, {s["text_layers"]} layers, context 77 tokens |
| tokenizer | byte-level BPE ({s["vocab_size"]} merges+symbols, CLIP's `</w>` suffix) trained offline with `tokenizers` on the grammar and common stock-footage words (`curate/tokenizer.py`) |
| embedding | {s["projection_dim"]} dimensions |
| parameters | {report["parameters"]:,} |
| files | {report["size_bytes"] / 1e6:.1f} MB (fp32 safetensors) |

Frames are squashed (not cropped) to {s["image_size"]}×{s["image_size"]}: `preprocessor_config.json`
resizes to exact height and width so a shape near the edge of a 16:9 frame is never cut off.

## Training data

- {s["scenes"]:,} random scenes (seed {s["seed"]}; `shapes.random_facts`, the corpus' colour /
  background contrast rule), 40–120 frames long, rendered at small sizes of the corpus' aspect
  ratios ({sizes}) with the renderer's background texture and sensor noise, squashed to the
  input size as the sampler reads frames; {s["frames_per_scene"]} random frames per scene:
  {report["train_frames"]:,} frames.
{board_text}- Captions: the grammar's caption of the scene (10 % of them cut after the shape word, as a
  truncated caption that still names the shape). A single frame cannot show motion, so for a
  frame captions that differ only in motion count as positives of each other.
- Negatives: the other captions of the batch, {s["hard_negatives"]} hard negatives per image
  that change exactly one slot (for a frame the shape first, then colour or background),
  generic stock-footage phrases and random text in ten other scripts (so the byte-level tokens
  of a foreign caption are trained to match nothing). The corpus generator's own boilerplate
  and foreign-language noise captions are *not* used.
- AdamW (weight decay {s["weight_decay"]}, linear warm-up then cosine decay; with a time
  budget the schedule follows the clock). Runs, each continuing the one before:

| run | start | device | steps | batch (frames + storyboards) | peak lr | hard negatives | time (rendering included) | final loss |
|---|---|---|---|---|---|---|---|---|
{rows}

  In all {seen:,} images seen in {total_s:.0f} s of training ({total_s / 60:.1f} min).

## Held-out evaluation

{metrics["scenes"]:,} scenes rendered from seed {s["eval_seed"]} (never seen in training); per
frame ({metrics["frames"]:,} frames), zero-shot against every caption of the grammar (best
over the seven motions):

| metric | value |
|---|---|
| colour accuracy | {pct["color_acc"]} |
| shape accuracy | {pct["shape_acc"]} |
| background accuracy | {pct["background_acc"]} |
| all three right | {pct["all_acc"]} |
| AUROC, true caption vs a mismatched one (other colour and shape) | {metrics["noise_auroc"]:.4f} |
| recommended caption threshold (`scoring.json`) | {metrics["recommended_threshold"]:.4f} |
| mean cosine, true caption / mismatched caption | {metrics["true_caption_cos_mean"]:.3f} / {metrics["mismatched_caption_cos_mean"]:.3f} |
| lowest true / highest mismatched cosine | {metrics["true_caption_cos_min"]:.3f} / {metrics["mismatched_caption_cos_max"]:.3f} |
{scene_rows}
Corpus-level numbers (noisy-caption detection on whole videos, re-captioning, dedup) are
measured by `benchmarks/quality.py`.

## Limits

{motion_limit}
- Text outside the grammar (other scripts, boilerplate) embeds far from every frame, which is
  what a noise filter wants, but the model has no notion of real-world content.
"""


def finish(out: Path, report: dict, settings: TrainSettings, *, device: str | None = None) -> dict:
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
    (out / "README.md").write_text(model_card(report, metrics))
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_scoring(
        out,
        {
            "caption_threshold": round(metrics["recommended_threshold"], 4),
            "measured_on": f"{metrics['frames']} held-out frames, seed {settings.eval_seed}",
            "rule": "maximises TPR - FPR of true vs mismatched captions, per frame; the middle of the best range",
        },
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = TrainSettings(
            seed=args.seed,
            scenes=args.scenes,
            frames_per_scene=args.frames_per_scene,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            image_size=args.image_size,
            patch_size=args.patch_size,
            hidden=args.hidden,
            storyboards=not args.no_storyboards,
            device=args.device,
            workers=args.workers,
            vision_layers=args.vision_layers,
            text_layers=args.text_layers,
            hard_negatives=args.hard_negatives,
            eval_seed=args.eval_seed,
            eval_scenes=args.eval_scenes,
            threads=args.threads,
            time_budget_s=args.time_budget or None,
            init=args.init,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report = train_shapes_clip(args.out, settings, progress=not args.no_progress)
    earlier = Path(settings.init or "") / "training_report.json"
    if settings.init and earlier.is_file():
        report["continued_from"] = json.loads(earlier.read_text())
    metrics = finish(args.out, report, settings)
    logger.info("settings: %s", dataclasses.asdict(settings))
    print(
        f"saved {args.out} ({report['size_bytes'] / 1e6:.1f} MB, {report['parameters']:,} parameters)"
    )
    print(f"trained in {report['train_seconds']:.0f} s; total {time.perf_counter() - t0:.0f} s")
    for k, v in metrics.items():
        print(f"  {k:30s} {v:.4f}" if isinstance(v, float) else f"  {k:30s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
