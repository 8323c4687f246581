"""``storygen new-model`` / ``storygen train``: the commands that make model folders.

``new-model`` writes a randomly initialised model folder of a preset size; ``train`` trains the
small shapes-world model (:mod:`storygen.train`). torch loads inside the ``run_*`` functions,
so that ``storygen --help`` stays fast.
"""

from __future__ import annotations

import argparse

from storygen.cli import DTYPES, torch_dtype


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_new_model(subparsers)
    _add_train(subparsers)


def _add_new_model(subparsers: argparse._SubParsersAction) -> None:
    n = subparsers.add_parser(
        "new-model",
        help="write a randomly initialised model folder",
        description=(
            "Write a randomly initialised model folder: --mode masked (StoryVideoPipeline with "
            "a mask-conditioned UNet) or t2v (the ModelScope text-to-video layout, used "
            "training-free). Presets: micro / tiny (pixel space, for tests and CPU runs), "
            "micro-latent / tiny-latent (with a tiny VAE), modelscope (the real 1.41 B "
            "UNet shape, SD VAE, 1024-wide text encoder: GPU benchmarks only)."
        ),
        epilog="example:\n  storygen new-model demo-out/tiny-model --preset micro",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    n.add_argument("dir", help="output folder")
    n.add_argument(
        "--preset",
        default="tiny",
        help="micro, micro-latent, tiny (default), tiny-latent, modelscope",
    )
    n.add_argument("--mode", choices=("masked", "t2v"), default="masked", help="(default: masked)")
    n.add_argument("--seed", type=int, default=0, help="(default: 0)")
    n.add_argument("--dtype", choices=DTYPES, help="(default: the preset's)")
    n.set_defaults(func=run_new_model)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    # every argument, --help included, goes to storygen.train's own parser (which imports
    # torch): no character counts as an option prefix here
    t = subparsers.add_parser(
        "train",
        help="train the small shapes-world storygen model (storygen train --help)",
        description=(
            "Train the latent shapes-world model (autoencoder + MaskedUNet3D) on story "
            "windows; `storygen train --help` lists its options."
        ),
        add_help=False,
        prefix_chars="\x00",
    )
    t.add_argument("args", nargs=argparse.REMAINDER, help="the options of storygen train")
    t.set_defaults(func=run_train)


def run_new_model(args: argparse.Namespace) -> int:
    from storygen.presets import new_model

    out = new_model(
        args.dir, preset=args.preset, mode=args.mode, seed=args.seed, dtype=torch_dtype(args.dtype)
    )
    print(f"wrote a randomly initialised {args.preset} model ({args.mode} layout) to {out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from storygen.train import main as train_main

    return int(train_main(args.args) or 0)
