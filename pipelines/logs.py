"""Logging for the command lines: our own lines at INFO, third-party noise only with ``-v``.

Without ``-v`` a run would open with lines nobody acted on: Beam's "apitools not found" and
BigQuery notices at import, faiss trying three CPU builds before the one it loads, a
"Loading weights" progress bar per model (transformers), Dask's and numba's chatter. They are
hidden here, and all of them come back with ``-v`` (DEBUG for every logger).
"""

from __future__ import annotations

import logging
import os
import sys

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
