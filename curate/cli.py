"""``curate``: the command line of the curation half.

Each subcommand lives in its own module, which exposes ``register(subparsers)`` and keeps its
heavy imports (torch, Beam) inside the functions it runs, so ``curate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: subcommand modules, in the order ``--help`` lists them
COMMAND_MODULES = (
    "curate.synth_cli",  # curate synth: generate a shapes-world corpus
    "curate.scenes_cli",  # curate scenes: list the scenes of video files
    "curate.calibrate_cli",  # curate calibrate: score distribution and threshold
    "pipelines.run_cli",  # curate run / curate inspect: the Beam pipeline and its outputs
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description=(
            "Turn raw videos with noisy captions into clean training shards: split scenes, "
            "score captions with CLIP, filter, re-caption as timed prompt sequences, "
            "deduplicate, write Parquet."
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
