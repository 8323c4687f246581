"""Train the shapes-world storygen model (``storygen train``, ``make train-storygen``).

    python -m storygen.train --out models/shapes-storygen --device cuda --workers 14 \\
        --max-minutes 8                                     # from scratch: autoencoder, then UNet
    python -m storygen.train --out next --init models/shapes-storygen --max-minutes 8
    python -m storygen.train --out /tmp/m --steps 5 --vae-steps 5 --size 32 --eval-stories 0
    python -m storygen.train --out m --shards shards/first     # from `curate export` shards

A run from scratch trains the frame autoencoder first (``--vae-steps`` / ``--vae-minutes``),
then the latent UNet on shapes-world story windows drawn on the fly (see
:mod:`storygen.training`), or, with ``--shards DIR``, on windows of a ``curate export``'s
samples (:mod:`storygen.training.shards`; the autoencoder still learns from rendered frames).
``--init`` continues from a folder this command wrote (keeping its autoencoder, so at its
frame size) and appends the run to its ``training.json``. The folder is written in the
pipeline layout with a ``sampling.json`` of recommended sampling settings (the frames per
call and frame size trained at); ``--eval-stories N`` probes N held-out stories at the end
(colour, shape, background, motion, identity, flicker, seams).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields

from storygen.training.unet import TrainConfig, train

_FLOATS = {
    "max_minutes",
    "vae_minutes",
    "lr",
    "text_lr",
    "frame_lr",
    "ema",
    "high_noise",
    "boundary_weight",
}
_HELP = {
    "out": "model folder to write",
    "init": "continue from this model folder (written by this command), keeping its "
    "autoencoder: --size must be the folder's frame size, --vae is refused",
    "steps": "most UNet optimizer steps",
    "max_minutes": "UNet time budget, from the first step; the learning-rate schedule follows "
    "whichever ends first",
    "batch_size": "windows per step",
    "frames": "frames per call (L); the folder's sampling.json recommends it",
    "size": "frame size in pixels (square)",
    "lr": "peak learning rate (warm-up, then cosine to zero)",
    "ema": "decay of the weights' moving average that is saved",
    "seed": "seed of initialisation and data",
    "device": "cpu, cuda, cuda:1 or auto",
    "workers": "DataLoader processes drawing windows",
    "text_encoder": "CLIP folder whose text tower is used (a new one is trained if missing)",
    "preset": "network sizes: shapes (the shipped model) or micro (smoke runs)",
    "train_text": "1: fine-tune the text encoder along (0: keep it frozen)",
    "text_lr": "peak learning rate of the text encoder",
    "frame_lr": "peak learning rate of the per-frame conditioning (segment progress, prompt and "
    "progress, frame positions: zero when --init adds them, and slow to grow at --lr); "
    "default: --lr",
    "vae_steps": "autoencoder steps (from scratch only: --init and --vae keep their autoencoder)",
    "vae_minutes": "autoencoder time budget (from scratch only)",
    "eval_stories": "held-out stories to probe at the end (0: none)",
    "log_every": "steps between log lines",
    "shards": "train from this `curate export` folder's shards instead of the shapes renderer",
    "vae": "use this autoencoder (a model folder, or its vae/ folder), frozen, instead of "
    "training one (runs that differ only in their data share it; not with --init)",
    "compile": "1: torch.compile the UNet for training (one graph per call length, compiled "
    "in the first minutes; for GPU runs, whose small steps are bound by kernel launches)",
    "loss_weight": "how the loss weighs diffusion times: min-snr (Min-SNR-5: the noisiest "
    "times, where layout and motion are decided, weigh little), v (the plain v error: at "
    "least as much as a clean-image error at every time, far more at the cleanest) or "
    "min-snr-floor (Min-SNR-5 whose noisiest times weigh as much as snr 1); the held-out loss "
    "reads min-snr",
    "high_noise": "share of windows drawn at the noisiest diffusion times (the last fifth, "
    "where the prompt alone decides where the shape stands) instead of uniformly; the "
    "held-out loss draws uniformly",
    "high_noise_from": "the first diffusion time --high-noise draws from (to 999): 800, the last "
    "fifth; 990, where the input holds nothing readable and the prompt alone sets the mean video "
    "the first sampling step draws towards",
    "frame_positions": "1: the temporal attention knows each frame's index in its call (a "
    "zero-started embedding; --init adds it to a model without one); 0: no frame positions, "
    "as diffusers' 3D UNet",
    "coordinates": "1: two input channels hold each latent pixel's x and y, so the network "
    "can say where a shape stands at each point of its segment (zero-started; --init adds "
    "them); 0: none, as diffusers' 3D UNet",
    "text_to_video": "1: train the plain text-to-video backbone the training-free mode runs "
    "(ModelScope-style): every window a global one with nothing known, no spacing, progress, "
    "frame-position or coordinate input; to_t2v_folder / storygen_quality.py --t2v-model export "
    "it to the ModelScope layout exactly; --init must be a model without per-frame inputs",
    "boundary_weight": "loss weight of a frame next to a given one (where a call joins its "
    "keyframes and seams show), against 1 for the others; the held-out loss weighs all alike",
    "heldout_windows": "windows of the held-out loss (fixed windows, diffusion times and noise) "
    "recorded in training.json at the run's start and end, comparable across runs (0: none)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storygen train",
        description=__doc__.split("\n\n")[0],
        epilog="Runs are recorded in OUT/training.json; OUT/README.md is the model card.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = TrainConfig(out="")
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kind = float if f.name in _FLOATS else int if isinstance(default, int) else str
        help_text = _HELP[f.name] + ("" if default in (None, "") else f" (default: {default})")
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=default,
            required=f.name == "out",
            help=help_text,
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = train(TrainConfig(**vars(args)))
    summary = {k: report[k] for k in ("steps_done", "unet_time_s", "unet_parameters")}
    print(json.dumps(summary | {"eval": report.get("eval")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
