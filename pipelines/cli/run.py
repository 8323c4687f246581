"""``curate run`` and ``curate inspect``: the Beam pipeline and what it wrote.

Heavy imports (Beam, torch, Dask) stay inside the command functions so ``curate --help``
answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from curate.choices import DETECTORS, KEYFRAME_FORMATS

logger = logging.getLogger(__name__)

RUN_EPILOG = """\
examples:
  curate run --input corpus/webvid.csv --output runs/first
  curate run --input corpus/manifest.jsonl --output runs/first --workers 2 --threshold p25
  curate run --input corpus/videos --output runs/dask --runner dask --workers 2
  curate run --input corpus/webvid.csv --output runs/first --threshold 0.24   # corpus phase only

Rerunning into the same --output resumes: videos already committed are skipped, and the
corpus phase (threshold, dedup, stories) is redone over everything, so changing --threshold or
--dedup-threshold costs seconds. --overwrite starts from scratch.

exit status: 0 done; 2 bad arguments or unusable output; 3 stopped by --max-failure-rate
(finished work is published); 4 the inputs = clips + failures invariant does not hold.

Dataflow, Flink and Spark: see pipelines/RUNNERS.md (pass Beam flags after "--").
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
    run.add_argument(
        "--input",
        required=True,
        help="manifest: a WebVid CSV, a JSONL file, or a folder of videos with sidecar captions "
        "(recognised from the content)",
    )
    run.add_argument("--output", required=True, help="run folder (created if needed)")
    run.add_argument(
        "--model", help="CLIP model folder (default: the shipped shapes-world CLIP, models/)"
    )
    run.add_argument(
        "--prompt-bank",
        metavar="FILE",
        help="prompts, one per line, added to the corpus' own kept captions as the bank that "
        "scenes without a usable caption are re-captioned from",
    )
    run.add_argument(
        "--captioner",
        default="auto",
        metavar="FOLDER|auto|none",
        help="image-to-text (BLIP-class) model folder that captions every scene; a scene "
        "without a usable caption takes its caption or the bank's prompt, whichever CLIP "
        "prefers. auto (default): the shipped shapes-world captioner when the CLIP is the "
        "shipped one, else none",
    )
    run.add_argument(
        "--runner",
        default="local",
        help="local (Beam's FnApiRunner, the default), dask, or any Beam runner name",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (local: FnApiRunner multi-processing; dask: LocalCluster workers)",
    )
    run.add_argument(
        "--dask-address",
        help="scheduler address of a running Dask cluster (default: start a local one)",
    )
    run.add_argument(
        "--threshold",
        default="auto",
        help="caption-score cut-off: an absolute cosine (0.22), a corpus percentile (p20 drops "
        "the lowest 20%%), or auto: the cut-off the model folder recommends in its "
        "scoring.json (the shipped CLIP's does), else p20; default %(default)s",
    )
    run.add_argument(
        "--detector",
        default="fast",
        choices=DETECTORS,
        help="scene detector: the numba fast path or a PySceneDetect detector (default fast)",
    )
    run.add_argument("--samples-per-scene", type=int, default=4, help="frames CLIP sees per scene")
    run.add_argument("--sample-size", type=int, default=224, help="short side of sampled frames")
    run.add_argument(
        "--min-scene-frames", type=int, default=15, help="shortest scene the splitter keeps"
    )
    run.add_argument(
        "--dedup-threshold",
        type=float,
        default=0.95,
        help="signature cosine (CLIP embedding + pixel thumbnails) at or above which two kept "
        "clips are duplicates (default 0.95)",
    )
    run.add_argument(
        "--keyframes",
        default="none",
        choices=KEYFRAME_FORMATS,
        help="store the sampled frames, encoded, in the clips shard (so it can train alone)",
    )
    run.add_argument("--keyframe-size", type=int, default=256, help="longest side of keyframes")
    run.add_argument(
        "--max-failure-rate",
        type=float,
        default=1.0,
        help="stop when more than this fraction of videos fail (after at least 20); what is "
        "done is published (default 1.0: never stop)",
    )
    run.add_argument(
        "--decode-timeout", type=float, default=300.0, help="seconds one video may take to decode"
    )
    run.add_argument("--device", default="cpu", help="CLIP device: cpu, cuda, cuda:1")
    run.add_argument(
        "--share-model",
        action="store_true",
        help="one CLIP per machine shared by all worker processes (large models on a GPU)",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="discard the output folder's previous run"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
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


def beam_argv(args: argparse.Namespace) -> list[str]:
    """The Beam flags for the parsed ``curate run`` arguments (runner flags not included)."""
    flags = [
        f"--input={args.input}",
        f"--output={args.output}",
        f"--threshold={args.threshold}",
        f"--detector={args.detector}",
        f"--samples_per_scene={args.samples_per_scene}",
        f"--sample_size={args.sample_size}",
        f"--min_scene_frames={args.min_scene_frames}",
        f"--dedup_threshold={args.dedup_threshold}",
        f"--keyframes={args.keyframes}",
        f"--keyframe_size={args.keyframe_size}",
        f"--max_failure_rate={args.max_failure_rate}",
        f"--decode_timeout={args.decode_timeout}",
        f"--device={args.device}",
        f"--share_model={args.share_model}",
        f"--overwrite={args.overwrite}",
    ]
    if args.model:
        flags.append(f"--model={args.model}")
    if args.prompt_bank:
        flags.append(f"--prompt_bank={args.prompt_bank}")
    flags.append(f"--captioner={args.captioner}")
    return flags + list(args.beam_args or [])


def run_command(args: argparse.Namespace) -> int:
    from curate.errors import CurateError
    from curate.threshold import parse_threshold
    from pipelines.options import runner_flags
    from schemas import SchemaError

    if args.workers < 1:
        print(f"curate run: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        if args.threshold.strip().lower() != "auto":  # resolved against the model folder later
            parse_threshold(args.threshold)
    except ValueError as exc:
        print(f"curate run: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Beam's own INFO lines (type hints, state caches, batch statistics) drown the progress
        for name in ("apache_beam", "distributed", "curate.captions"):
            logging.getLogger(name).setLevel(logging.WARNING)
    cluster = None
    flags = beam_argv(args)
    runner = args.runner
    if runner.lower() in ("dask", "daskrunner"):
        address = args.dask_address
        if address is None:
            cluster = _local_dask_cluster(args.workers)
            address = cluster.scheduler_address
        flags = [
            *runner_flags("dask"),
            f"--dask_client_address={address}",
            f"--dask_npartitions={max(2, 2 * args.workers)}",
            *flags,
        ]
    else:
        flags = [*runner_flags(runner, workers=args.workers), *flags]
    from pipelines.curate import run

    try:
        summary = run(flags, progress=not args.no_progress)
    except (CurateError, SchemaError, ValueError) as exc:
        print(f"curate run: {exc}", file=sys.stderr)
        return 2
    finally:
        if cluster is not None:
            cluster.close()
    print()
    for line in summary.lines():
        print(line)
    if summary.stage_s:
        total = sum(summary.stage_s.values()) or 1.0
        print(
            "time per stage (summed over workers): "
            + ", ".join(
                f"{k} {v:.1f} s ({v / total:.0%})"
                for k, v in sorted(summary.stage_s.items(), key=lambda kv: -kv[1])
            )
        )
    if summary.stopped:
        return 3
    return 0 if summary.invariant_ok else 4


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
    from schemas import SchemaError

    from .inspect import report

    try:
        print(report(args.folder, stories=args.stories, bins=args.bins))
    except SchemaError as exc:
        print(f"curate inspect: {exc}", file=sys.stderr)
        return 2
    return 0
