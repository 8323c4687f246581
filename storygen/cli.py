"""``storygen``: render long videos from timed prompt sequences by diffusion over diffusion.

Each subcommand lives in its own module, which exposes ``register(subparsers)`` and keeps its
heavy imports (torch, diffusers) inside the functions it runs, so ``storygen --help`` stays fast.
The argument types and the default model folder the subcommands share live here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
from pathlib import Path

COMMAND_MODULES = (
    "storygen.plan_cli",  # storygen plan: levels, model calls and rounds of a script
    "storygen.render_cli",  # storygen render / new-model / train
)

#: the shipped shapes-world model, beside the packages in the repository
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "shapes-storygen"


def default_model(value: str | None) -> Path | None:
    """``--model``'s folder: the value given, else the shipped model where it exists."""
    if value is not None:
        return Path(value)
    return DEFAULT_MODEL if DEFAULT_MODEL.is_dir() else None


# --------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (``inf`` and ``nan`` are refused here, not deep in a render)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


# --------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storygen",
        description=(
            "Turn a timed prompt sequence (a curated story, or a YAML / JSON / SRT script) into "
            "a long video: a global model draws keyframes over the whole story, local models "
            "fill between keyframe pairs, level by level."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
