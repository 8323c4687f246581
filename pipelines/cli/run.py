"""``curate run`` and ``curate inspect``: the Beam pipeline and what it wrote.

Heavy imports (Beam, torch, Dask) and the run-folder reader of ``inspect`` stay inside the
command functions so ``curate --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from curate.errors import CurateError
from schemas import SchemaError

from ..settings import RunSettings

logger = logging.getLogger(__name__)

RUN_EPILOG = """\
examples (the corpus make demo writes):
  curate run --input demo-out/corpus/webvid.csv --output out/runs/first
  curate run --input demo-out/corpus/manifest.jsonl --output out/runs/p25 --workers 2 --threshold p25
  curate run --input demo-out/corpus/videos --output out/runs/dask --runner dask --workers 2
  curate run --input demo-out/corpus/webvid.csv --output out/runs/first --threshold 0.70
      # stricter than the shipped CLIP's 0.63; reruns only the corpus phase: seconds

Rerunning into the same --output resumes: a video is done again only when what determines
its result changed (its manifest row: id, uri, caption, timed captions, duration; its file's
size or modification time; the per-video settings or the model files) or when it failed
(--no-retry-failed keeps earlier failures; the failures table counts each input's attempts).
The corpus phase (threshold, dedup, stories) is redone over everything, so changing
--threshold or --dedup-threshold costs seconds. --overwrite starts from scratch.

The output folder is storyloom's: a folder that holds files storyloom did not write is
refused (the message names one) unless --overwrite, and even then only storyloom's own files
are deleted. One run at a time writes a folder: a second one is refused at once, naming the
first (pid, host, start); a lock left by a run that died is taken over.

limits (a manifest row over one becomes a failures row naming the limit):
  caption                    65,536 bytes (--max-caption-bytes); models read 77 tokens of it
  manifest line or sidecar   4,194,304 bytes (--max-manifest-line-bytes)
  JSON nesting               32 levels (--max-json-depth)
  CSV field                  131,072 characters (Python's csv module)
  timed captions             10,000 per video; times finite, 0 to 1,000,000 s
  video frame size           16384 px a side, 67,108,864 pixels (as the header declares it)
  decoding one video         --decode-timeout seconds (default 300)

exit status: 0 done; 2 bad arguments, unusable model or output, output in use or not
storyloom's; 3 stopped by --max-failure-rate (finished work is published); 4 the inputs =
clips + failures invariant does not hold; 130 interrupted (Ctrl-C; rerun to resume).

Dataflow, Flink and Spark: see pipelines/RUNNERS.md (pass Beam flags after "--"). The tuning
options are Beam flags too, e.g. -- --videos_per_shard=100 --commit_every=16 (see
pipelines/settings.py); a run option that has its own flag is refused after "--".
"""


def register(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="curate a manifest of videos into Parquet shards (Apache Beam)",
        description=(
            "Probe and split every video into scenes (in an isolated decoder process), "
            "score each scene's caption with CLIP, drop low scores, re-caption each video as "
            "a timed prompt sequence, drop near-duplicate clips, and write clips, stories and "
            "failures shards plus _manifest.json. Every input ends up with clip rows or a "
            "failures row."
        ),
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    RunSettings.add_cli_arguments(run)
    run.add_argument(
        "beam_args",
        nargs="*",
        metavar="-- BEAM_FLAGS",
        help="extra Beam pipeline flags, after a '--' (e.g. -- --project=... --region=...)",
    )
    run.set_defaults(func=run_command)

    inspect = subparsers.add_parser(
        "inspect",
        help="summarise a curate run folder: counts, failures, scores, example stories",
        description=(
            "Read a run folder's _manifest.json and shards; print counts by status and drop "
            "reason, failures by stage, the caption-score distribution as a histogram with "
            "the threshold marked, and a few example stories."
        ),
    )
    inspect.add_argument("folder", help="the --output folder of a curate run")
    inspect.add_argument("--stories", type=int, default=3, help="example stories to print")
    inspect.add_argument("--bins", type=int, default=20, help="histogram bins")
    inspect.set_defaults(func=inspect_command)


#: seconds ``curate run`` waits for the scheduler at ``--dask-address`` to answer
DASK_CONNECT_TIMEOUT_S = 20.0

INTERRUPTED = "interrupted; committed work is kept; rerun the same command to resume"


def run_command(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # Beam hands a Ctrl-C in a step on as a RuntimeError
        if "KeyboardInterrupt" not in f"{exc!r}":
            raise
    print(f"curate run: {INTERRUPTED}", file=sys.stderr)
    return 130


def _run(args: argparse.Namespace) -> int:
    settings = RunSettings.from_namespace(args)
    if settings.workers < 1:
        print(f"curate run: --workers must be >= 1, got {settings.workers}", file=sys.stderr)
        return 2
    try:
        settings = settings.with_beam_args(args.beam_args or [])
        # the threshold, prompt bank, captioner and device fail here, before a cluster starts
        settings = settings.resolved()
        if settings.on_dask and settings.dask_address is not None:
            check_dask_scheduler(settings.dask_address)
    except (CurateError, ValueError) as exc:
        print(f"curate run: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Beam's own INFO lines (type hints, state caches, batch statistics) drown the progress
        for name in ("apache_beam", "distributed", "curate.captions"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from pipelines.curate import run
    from pipelines.options import runner_flags

    cluster = None
    if settings.on_dask:
        address = settings.dask_address
        if address is None:
            cluster = _local_dask_cluster(settings.workers)
            address = cluster.scheduler_address
        flags = [
            *runner_flags("dask"),
            f"--dask_client_address={address}",
            f"--dask_npartitions={max(2, 2 * settings.workers)}",
        ]
    else:
        flags = runner_flags(settings.runner, workers=settings.workers)
    try:
        summary = run(
            [*flags, *settings.beam_flags(), *(args.beam_args or [])],
            settings=settings,
            progress=not settings.no_progress,
        )
    except (CurateError, SchemaError, ValueError) as exc:
        print(f"curate run: {exc}", file=sys.stderr)
        return 2
    finally:
        if cluster is not None:
            cluster.close()
    print()
    for line in summary.lines():
        print(line)
    if summary.stopped:
        return 3
    return 0 if summary.invariant_ok else 4


def check_dask_scheduler(address: str) -> None:
    """Refuse a ``--dask-address`` where no Dask scheduler answers within
    :data:`DASK_CONNECT_TIMEOUT_S` seconds (or that is not an address), before any work."""
    import asyncio

    from distributed.comm import connect
    from distributed.security import Security

    async def probe() -> None:
        args = Security().get_connection_args("client")
        comm = await connect(address, timeout=DASK_CONNECT_TIMEOUT_S, **args)
        await comm.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"--dask-address {address}: no Dask scheduler answers ({exc})") from None


def _local_dask_cluster(workers: int) -> Any:
    from dask.distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )


def inspect_command(args: argparse.Namespace) -> int:
    from .inspect import report

    try:
        print(report(args.folder, stories=args.stories, bins=args.bins))
    except SchemaError as exc:
        print(f"curate inspect: {exc}", file=sys.stderr)
        return 2
    return 0
