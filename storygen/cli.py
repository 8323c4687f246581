"""``storygen``: render long videos from timed prompt sequences by diffusion over diffusion.

Each subcommand lives in its own module, which exposes ``register(subparsers)`` and keeps its
heavy imports (torch, diffusers) inside the functions it runs, so ``storygen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "storygen.plan_cli",  # storygen plan: levels, model calls and rounds of a script
    "storygen.render_cli",  # storygen render / new-model / train
)


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
