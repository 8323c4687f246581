"""``storygen new-model`` / ``storygen train``: the commands that make model folders.

``new-model`` writes a randomly initialised model folder of a preset size; ``train`` trains the
small shapes-world model (:mod:`storygen.train`). torch loads inside the ``run_*`` functions,
so that ``storygen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from storygen.cli import DTYPES, torch_dtype

#: the presets of :data:`storygen.presets.PRESETS` (that module imports torch: ``--help`` stays
#: fast with the names written out here)
PRESET_NAMES = ("micro", "micro-latent", "tiny", "tiny-latent", "modelscope")
#: presets in pixel space, which have no VAE and so no ModelScope (t2v) layout
PIXEL_PRESETS = ("micro", "tiny")


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
    n.add_argument("dir", help="output folder (new, or empty; --force to replace one)")
    n.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="tiny",
        help="micro, micro-latent, tiny (default), tiny-latent, modelscope",
    )
    n.add_argument(
        "--mode",
        choices=("masked", "t2v"),
        default="masked",
        help="(default: masked; t2v needs a preset with a VAE: micro-latent, tiny-latent, "
        "modelscope)",
    )
    n.add_argument("--seed", type=int, default=0, help="(default: 0)")
    n.add_argument("--dtype", choices=DTYPES, help="(default: the preset's)")
    n.add_argument(
        "--force",
        action="store_true",
        help="replace a folder that is not empty: the new model is written beside it, then "
        "takes its place whole (nothing of the old folder is kept)",
    )
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


def _refuse(message: str) -> int:
    """A refused request: one message on stderr (no traceback), exit code 2."""
    print(f"storygen new-model: {message}", file=sys.stderr)
    return 2


def _check_destination(out: Path, force: bool) -> str | None:
    """Why the model cannot be written to ``out``, or None."""
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        return f"{out}: {above} is a file, not a folder"
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            return f"{out}: exists and is not a folder"
        if any(out.iterdir()) and not force:
            return (
                f"{out}: the folder is not empty; a model written into it would keep the old "
                "files the new one does not replace (sampling.json, training.json, weight "
                "shards): choose a new folder, or pass --force to replace it whole"
            )
    return None


def run_new_model(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if out.name in ("", ".", ".."):  # "." or "..": the folder's own name, for the one beside it
        out = Path(os.path.abspath(out))
    if args.mode == "t2v" and args.preset in PIXEL_PRESETS:
        return _refuse(
            f"--preset {args.preset} is pixel space and has no VAE; the t2v (ModelScope) "
            "layout needs one: use micro-latent, tiny-latent or modelscope"
        )
    try:
        problem = _check_destination(out, args.force)
    except OSError as exc:
        return _refuse(f"{out}: cannot read the folder ({exc.strerror or exc})")
    if problem:
        return _refuse(problem)

    from storygen.presets import new_model  # torch and diffusers

    # written beside the destination under a temporary name, then moved into place: an
    # interrupted run or a failed write leaves no half-written model folder
    try:
        tmp = scratch_beside(out)
    except OSError as exc:
        return _refuse(f"{out}: cannot create the folder ({exc.strerror or exc})")
    try:
        new_model(
            tmp,
            preset=args.preset,
            mode=args.mode,
            seed=args.seed,
            dtype=torch_dtype(args.dtype),
        )
        swap_in(tmp, out)
    except ValueError as exc:
        return _refuse(str(exc))
    except OSError as exc:
        print(
            f"storygen new-model: writing the model to {out} failed ({exc.strerror or exc})",
            file=sys.stderr,
        )
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote a randomly initialised {args.preset} model ({args.mode} layout) to {out}")
    return 0


def scratch_beside(out: Path) -> Path:
    """A new, empty folder beside ``out`` under a hidden temporary name, for a model folder
    written whole and then moved into place (:func:`swap_in`); ``OSError`` where it cannot be
    made."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def swap_in(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing what is there whole (the old
    folder stays in place until the new one is complete; ``storygen train`` writes its model
    folder the same way)."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)  # the old folder back as it was
        raise
    shutil.rmtree(old, ignore_errors=True)


def run_train(args: argparse.Namespace) -> int:
    from storygen.train import main as train_main

    return int(train_main(args.args) or 0)
