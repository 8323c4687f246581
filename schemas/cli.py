"""The command-line plumbing both commands (``curate`` and ``storygen``) share.

Here because :mod:`schemas` is the one package every other may import. Standard library only.

- Argument types that refuse a bad value at parse time, quoting it (``--steps 0``,
  ``--fps nan``), instead of failing deep inside a run.
- Logging: our own lines at INFO, third-party noise only with ``-v``. Without ``-v`` a run would
  open with lines nobody acted on: Beam's "apitools not found" and BigQuery notices at import,
  faiss trying three CPU builds before the one it loads, a "Loading weights" progress bar per
  model (transformers), Dask's and numba's chatter. They are hidden here, and all of them come
  back with ``-v`` (DEBUG for every logger).
- :func:`run_command`: parse, set up logging, run the chosen subcommand.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable

FORMAT = "%(levelname)s %(name)s: %(message)s"

#: third-party loggers and the least severe level shown without -v
NOISY: dict[str, int] = {
    "apache_beam": logging.WARNING,
    "faiss": logging.WARNING,  # "Could not load library with AVX512 support ..."
    "distributed": logging.WARNING,
    "numba": logging.WARNING,
    "transformers": logging.ERROR,
    "diffusers": logging.ERROR,
    "huggingface_hub": logging.ERROR,
    "urllib3": logging.WARNING,
    "PIL": logging.WARNING,
}

#: notices logged to the root logger while Beam is imported (optional GCP extras missing)
IMPORT_NOTICES = ("apitools not found", "bigquery client libraries")


class _DropImportNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (record.name == "root" and any(n in text for n in IMPORT_NOTICES))


def setup_logging(verbose: bool = False, *, level: int = logging.INFO) -> None:
    """Configure logging once per command: ``level`` for our lines (DEBUG for all with
    ``verbose``), third-party loggers quiet unless ``verbose``. Call it before the heavy
    imports: model-loading progress bars are turned off through the environment, which worker
    processes inherit."""
    root = logging.getLogger()
    logging.basicConfig(level=logging.DEBUG if verbose else level, format=FORMAT)
    for handler in root.handlers:
        # a notice logged at import configured the root logger already, in logging's format
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(logging.Formatter(FORMAT))
    root.setLevel(logging.DEBUG if verbose else level)
    for f in [f for f in root.filters if isinstance(f, _DropImportNotices)]:
        root.removeFilter(f)
    if verbose:
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    root.addFilter(_DropImportNotices())
    for name, least in NOISY.items():
        logging.getLogger(name).setLevel(least)
    # transformers reads it when first imported; "Loading weights" bars stay off
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def hide_import_notices() -> None:
    """Hide Beam's import-time notices in a module run as a program (``python -m
    pipelines.storygen``) that imports Beam before its ``main`` can call
    :func:`setup_logging`; kept when the command line asks for ``-v``."""
    root = logging.getLogger()
    if {"-v", "--verbose"} & set(sys.argv[1:]):
        return
    if not any(isinstance(f, _DropImportNotices) for f in root.filters):
        root.addFilter(_DropImportNotices())


# --------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def auto_or_positive_int(text: str) -> int | str:
    """``auto`` (the tool sizes it) or a positive integer."""
    return "auto" if text == "auto" else positive_int(text)


def positive_float(text: str) -> float:
    """A finite number > 0 (``inf`` and ``nan`` are refused here, not deep in a run)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}")
    return value


def float_in(
    low: float, high: float, what: str, *, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high`` (``high`` itself left out
    where ``high_open``), refused naming ``what`` it stands for ("a percentile")."""
    bounds = f"[{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (low <= value < high if high_open else low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected {what} in {bounds}, got {text!r}")
        return value

    return parse


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


# --------------------------------------------------------------------- entry point
def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv``, set up logging (``-v`` / ``--verbose``), run ``args.func``."""
    args = parser.parse_args(argv)
    setup_logging(bool(getattr(args, "verbose", False)))
    return int(args.func(args) or 0)
