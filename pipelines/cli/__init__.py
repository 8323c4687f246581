"""``curate``: the command line of the curation half.

One module per subcommand, each exposing ``register(subparsers)``. They keep their heavy
imports (torch, Beam, Dask) inside the functions they run, so that ``curate --help`` and every
``curate COMMAND --help`` answer at once.
"""

from __future__ import annotations

import argparse
import sys

from schemas.cli import run_command

from . import calibrate, export, report, run, scenes, synth

#: subcommand modules, in the order ``--help`` lists them
COMMANDS = (
    synth,  # curate synth: generate a shapes-world corpus
    scenes,  # curate scenes: list the scenes of video files
    calibrate,  # curate calibrate: score distribution and threshold
    run,  # curate run / curate inspect: the Beam pipeline and its outputs
    export,  # curate export: training shards (WebDataset tar + index) from a run
    report,  # curate report: the run's HTML report
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
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log at DEBUG level, third-party libraries' lines included",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
