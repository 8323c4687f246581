"""``storygen``: render long videos from timed prompt sequences by diffusion over diffusion.

Each subcommand lives in its own module, which exposes ``register(subparsers)`` and keeps its
heavy imports (torch, diffusers) inside the functions it runs, so ``storygen --help`` stays fast.
The default model folder and the dtypes the subcommands share live here; argument types and
logging come from :mod:`schemas.cli`, which the ``curate`` command shares.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from schemas.cli import run_command

COMMAND_MODULES = (
    "storygen.plan_cli",  # storygen plan: levels, model calls and rounds of a script
    "storygen.render_cli",  # storygen render: a script into a video
    "storygen.model_cli",  # storygen new-model / train: model folders
)

#: the shipped shapes-world model, beside the packages in the repository
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "shapes-storygen"
#: the dtypes a model can be loaded or written in
DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str | None) -> Any:
    """The torch dtype named ``name`` (one of :data:`DTYPES`), or None."""
    import torch  # only when a command runs: `storygen --help` stays fast

    return None if name is None else getattr(torch, name)


def default_model(value: str | None) -> Path | None:
    """``--model``'s folder: the value given, else the shipped model where it exists."""
    if value is not None:
        return Path(value)
    return DEFAULT_MODEL if DEFAULT_MODEL.is_dir() else None


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


#: the exit code of a command stopped by Ctrl-C (128 + SIGINT, as shells report it)
INTERRUPTED = 130
#: what a command stopped by Ctrl-C leaves behind, by command
INTERRUPT_NOTES = {
    # a render's video writer removed its temporary file on the way out; finished calls stay
    # in --cache-dir, where a rerun resumes from them
    "render": "a render's video appears only once complete; one given --cache-dir resumes "
    "where it stopped when run again",
    # both write a model folder beside the destination and move it into place whole
    "train": "a model folder appears only once complete: --out is as it was",
    "new-model": "a model folder appears only once complete: DIR is as it was",
}


def interrupted_message(argv: list[str]) -> str:
    """The line a command stopped by Ctrl-C prints: what it leaves behind, by command (the
    first word of ``argv`` that is no option: ``storygen`` takes no option with a value)."""
    command = next((word for word in argv if not word.startswith("-")), None)
    note = INTERRUPT_NOTES.get(command or "")
    return f"storygen: interrupted ({note})" if note else "storygen: interrupted"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_command(build_parser(), argv)
    except KeyboardInterrupt:
        print(interrupted_message(argv), file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
