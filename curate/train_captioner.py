"""``python -m curate.train_captioner --out models/shapes-captioner``: train and ship the
shapes-world captioner.

Renders shapes-world scenes, trains a small ``transformers.BlipForConditionalGeneration`` to
write each scene's caption from its storyboard, measures it on scenes from a seed the training
never saw (the caption's colour, shape, motion and background read back with the grammar's
parser) and writes a complete model folder with a ``README.md`` model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .captioner_train import CaptionerSettings, evaluate_shapes_captioner, train_shapes_captioner
from .clip_train import resolve_device
from .train_clip import _runs, add_training_args

logger = logging.getLogger("curate.train_captioner")


def build_parser() -> argparse.ArgumentParser:
    d = CaptionerSettings()
    p = argparse.ArgumentParser(
        prog="python -m curate.train_captioner",
        description=(
            "Train the small shapes-world captioner that curate's re-captioner uses for scenes "
            "whose caption was dropped, evaluate it on held-out scenes and save it "
            "(safetensors, config, tokenizer, processor config, captioning.json, README.md)."
        ),
    )
    add_training_args(p, d, item="storyboards")
    return p


def model_card(report: dict, metrics: dict) -> str:
    s = report["settings"]
    pct = {
        k: f"{100 * metrics[k]:.1f} %"
        for k in ("color", "shape", "motion", "background", "color_shape_motion", "exact")
    }
    runs = _runs(report)
    rows = "\n".join(
        f"| {i + 1} | {'from scratch' if not r['settings'].get('init') else 'previous run'} | "
        f"{r['settings']['seed']} | {r.get('device', 'cpu')} | {r['steps']:,} | "
        f"{r['settings']['batch_size']} | {r['settings']['lr']} | {r['train_seconds']:.0f} s | "
        f"{r['final_loss']:.3g} |"
        for i, r in enumerate(runs)
    )
    examples = "\n".join(
        f"| {e['truth']} | {e['caption']} |" for e in metrics.get("examples", [])[:6]
    )
    return f"""---
library_name: transformers
pipeline_tag: image-to-text
tags: [blip, shapes-world, storyloom, storyboard]
---

# shapes-captioner

A small `BlipForConditionalGeneration` ({report["parameters"]:,} parameters,
{report["size_bytes"] / 1e6:.1f} MB) that writes the caption of a shapes-world scene from its
storyboard: the scene's four sampled frames tiled 2×2 in time order
({s["image_size"]}×{s["image_size"]} px, see `captioning.json`). curate's re-captioner uses it
for scenes whose own caption was dropped; `curate run --captioner PATH` takes any BLIP-class
folder instead (one without `captioning.json` is given each scene's middle frame).

```python
from curate.recaption import Captioner
cap = Captioner("models/shapes-captioner")
cap.caption_scenes([frames])  # frames: (N, H, W, 3) uint8, time order
```

## Training

- Data: {report["train_storyboards"]:,} random shapes-world scenes (seed {s["seed"]}), each as
  the storyboard of the four frames curate's sampler takes (uniform, up to five frames off
  each end), with photometric jitter; the target is the scene's caption in the grammar
  ({report["distinct_captions"]:,} distinct captions seen).
- Tokenizer: lower-casing WordPiece trained offline on the grammar's captions with the
  `tokenizers` library; `[DEC]` starts a caption.
- Model: ViT encoder {s["vision_layers"]} layers, BERT decoder with cross-attention
  {s["text_layers"]} layers, width {s["hidden"]}, patch {s["patch_size"]}.
- Teacher-forced cross-entropy, AdamW, cosine schedule, bf16 autocast on GPU.

| run | start | data seed | device | steps | batch | lr | time | final loss |
|---|---|---|---|---|---|---|---|---|
{rows}

Each run renders its own scenes (its data seed) and follows its own warm-up and cosine
schedule. Command: `make train-captioner` (`python -m curate.train_captioner --out
models/shapes-captioner`; on a GPU machine `CAPTIONER_TRAIN_ARGS="--device cuda --workers 15"`,
and `--init FOLDER --seed N` continues a run on fresh scenes).

## Held-out accuracy

{metrics["scenes"]:,} scenes from seed {metrics["seed"]} (never seen in training), greedy
decoding; each caption's facts read back with the grammar's parser:

| colour | shape | motion | background | colour+shape+motion | whole caption |
|---|---|---|---|---|---|
| {pct["color"]} | {pct["shape"]} | {pct["motion"]} | {pct["background"]} | {pct["color_shape_motion"]} | {pct["exact"]} |

| truth | caption |
|---|---|
{examples}

## Limits

- It knows the shapes-world grammar only: on real video it writes shapes-world sentences.
- Motion comes from four frames: a scene that moves and comes back between two samples reads
  as still.
"""


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
    (out / "README.md").write_text(model_card(report, metrics))
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = CaptionerSettings(
            seed=args.seed,
            scenes=args.scenes,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            image_size=args.image_size,
            patch_size=args.patch_size,
            hidden=args.hidden,
            vision_layers=args.vision_layers,
            text_layers=args.text_layers,
            device=args.device,
            workers=args.workers,
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
    report = train_shapes_captioner(args.out, settings, progress=not args.no_progress)
    earlier = Path(settings.init or "") / "training_report.json"
    if settings.init and earlier.is_file():
        report["continued_from"] = json.loads(earlier.read_text())
    metrics = finish(args.out, report, settings)
    print(
        f"saved {args.out} ({report['size_bytes'] / 1e6:.1f} MB, {report['parameters']:,} parameters)"
    )
    print(f"trained in {report['train_seconds']:.0f} s; total {time.perf_counter() - t0:.0f} s")
    for k, v in metrics.items():
        if k != "examples":
            print(f"  {k:20s} {v:.4f}" if isinstance(v, float) else f"  {k:20s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
