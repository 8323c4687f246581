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
``--init`` continues from a folder this command wrote, or one ``storygen new-model`` wrote with
a VAE (keeping its autoencoder, so at its frame size), and appends the run to its
``training.json``; ``--out`` may name the ``--init`` folder itself, which is then rewritten in
place (keeping what the run does not write: a model card written by hand, logs). Any other
``--out`` folder that is not empty is refused unless ``--force``. The folder is written in the
pipeline layout with a ``sampling.json`` of recommended sampling settings (the frames per
call and frame size trained at) and a ``README.md`` model card, under a temporary name beside
``--out``, which it replaces only once complete; ``--eval-stories N`` probes N held-out
stories at the end (colour, shape, background, motion, identity, flicker, seams). Ctrl-C
during the UNet's steps stops the run and saves the moving average of the steps done.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields

from storygen.training.unet import RunRefused, TrainConfig, train

#: the exit code of a run stopped by Ctrl-C (128 + SIGINT, as shells report it)
INTERRUPTED = 130

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
    "out": "model folder to write: a new or empty folder, the --init folder (rewritten in "
    "place), or, with --force, one to replace",
    "init": "continue from this model folder (written by this command, or by storygen "
    "new-model with a VAE), keeping its autoencoder: --size must be the folder's frame size, "
    "--vae is refused",
    "steps": "most UNet optimizer steps",
    "max_minutes": "UNet time budget in minutes (> 0), from the first step; the learning-rate "
    "schedule and the progress bar follow whichever ends first",
    "batch_size": "windows per step",
    "frames": "frames per call (L); the folder's sampling.json recommends it",
    "size": "frame size in pixels (square)",
    "lr": "peak learning rate (warm-up, then cosine to zero)",
    "ema": "decay of the weights' moving average that is saved",
    "seed": "seed of initialisation and data",
    "device": "cpu, cuda, cuda:1 or auto",
    "workers": "DataLoader processes drawing windows",
    "text_encoder": "CLIP folder whose text tower is used (default: the shipped "
    "models/shapes-clip, or, where that folder is missing, a new small one trained along, with "
    "a warning); a folder given here must exist",
    "preset": "network sizes: shapes (the shipped model) or micro (smoke runs)",
    "train_text": "1: fine-tune the text encoder along (0: keep it frozen)",
    "text_lr": "peak learning rate of the text encoder",
    "frame_lr": "peak learning rate of the per-frame conditioning (segment progress, prompt and "
    "progress, frame positions: zero when --init adds them, and slow to grow at --lr); "
    "default: --lr",
    "vae_steps": "autoencoder steps (from scratch only: --init and --vae keep their autoencoder)",
    "vae_minutes": "autoencoder time budget in minutes (> 0; from scratch only)",
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
        epilog="Runs are recorded in OUT/training.json; OUT/README.md is the model card. "
        "Ctrl-C stops the run and saves the steps done (exit code 130).",
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an --out folder that is not empty: the new model is written beside it, "
        "then takes its place whole (nothing of the old folder is kept; the --init folder "
        "needs no --force, and keeps what the run does not write)",
    )
    return parser


def _fail(message: str, code: int = 2) -> int:
    """A refused run (exit code 2) or one that failed (1): one line on stderr, no traceback."""
    print(f"storygen train: {message}", file=sys.stderr)
    return code


def _as_flag(message: str) -> str:
    """A :class:`TrainConfig` message, which opens with the field's name, as the flag's."""
    name, space, rest = message.partition(" ")
    if space and name in {f.name for f in fields(TrainConfig)}:
        return f"--{name.replace('_', '-')} {rest}"
    return message


def main(argv: list[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    force = options.pop("force")
    out = options["out"]
    try:
        report = train(TrainConfig(**options), force=force)
    except RunRefused as exc:
        return _fail(_as_flag(str(exc)))
    except KeyboardInterrupt:
        return _fail(f"interrupted before the model was saved: {out} is as it was", INTERRUPTED)
    except OSError as exc:  # a disk that fills up, a folder removed meanwhile
        why = exc.strerror or str(exc)
        return _fail(f"the run failed: {f'{exc.filename}: ' if exc.filename else ''}{why}", 1)
    summary = {k: report[k] for k in ("steps_done", "unet_time_s", "unet_parameters")}
    print(json.dumps(summary | {"eval": report.get("eval")}, indent=2))
    run = report["runs"][-1]
    if run["interrupted"]:
        return _fail(
            f"interrupted after {run['steps']} steps: saved their moving average to {out} "
            f"(training.json records the run as interrupted; --init {out} trains it on)",
            INTERRUPTED,
        )
    if report.get("probe_interrupted"):
        return _fail(
            f"interrupted during the probe (--eval-stories): the model is saved in {out}, "
            "without the probe's numbers",
            INTERRUPTED,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
