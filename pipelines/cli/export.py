"""``curate export``: training shards (WebDataset-style tar files) from a curate run folder.

The export library (:mod:`curate.export`) is imported when the command runs, so that
``curate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from curate.errors import CurateError
from schemas import SchemaError
from schemas.cli import positive_float, positive_int

_EPILOG = """\
writes under OUT:
  shard-NNNNNN.tar    samples: KEY.mp4 (h264, SIZE at FPS, FRAMES frames) + KEY.json
                      (timed prompts as stories segments, ids, source span, scores)
  _index.parquet      one row per sample: shard, key, clip_id, prompt, frames, segments, ...
  _failures.parquet   every selected clip that is in no sample, with the reason
  _export.json        settings, source run, counts, shards (bytes, sha256); written last

examples:
  curate export runs/first --out shards/first --size 64 --fps 8 --frames 16
  curate export runs/first --out shards/raw --raw          # every video, manifest captions
  curate export runs/first --out shards/all --include-dropped --shard-bytes 64MB

Rerunning into the same --out resumes: finished shards are kept, the rest is redone, and the
shards come out byte-identical. Other settings into the same folder need --overwrite.
Read the shards with webdataset (wds.WebDataset("OUT/shard-{000000..000009}.tar")), tarfile,
or `storygen train --shards OUT`.

A video whose frame rate is below --fps is not exported (its clips are UpsampledSource rows
in _failures.parquet: its samples would repeat source frames) unless --allow-upsample; NTSC
rates pass for their round ones (29.97 for 30, 23.976 for 24: 0.2 % slower or less). A
video whose clips rows give a frame rate or span no window fits (InvalidValue) is a failures
row too, and so, with --raw, is a video without a manifest caption (NoPrompt).

exit status: 0 done; 2 bad arguments, an unreadable run folder or another export in OUT;
3 the export holds no sample (it is published; the message and _failures.parquet say why);
130 interrupted (Ctrl-C; rerun the same command to resume).
"""

INTERRUPTED = "interrupted; finished shards are kept; rerun the same command to resume"


def _bytes(text: str) -> int:
    from curate.export import parse_bytes  # the export library: only when the flag is given

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="write training shards (WebDataset tar + index Parquet) from a run folder",
        description=(
            "Cut each video's kept, non-duplicate scenes into windows of --frames frames "
            "(a window may span consecutive kept scenes, so its frames carry per-frame "
            "prompts), re-encode them at --size and --fps as h264 mp4, and write them as "
            "WebDataset-style tar shards with a JSON per sample and an index Parquet. Every "
            "selected clip ends up in a sample or in _failures.parquet with the reason."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="a curate run folder (the --output of curate run)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--size", default="64", help="frame size: N (square) or WxH (default 64)")
    p.add_argument(
        "--fps",
        type=positive_float,
        default=8.0,
        help="frames per second (default 8; at most 1000, and no more than a video's own "
        "unless --allow-upsample)",
    )
    p.add_argument("--frames", type=positive_int, default=16, help="frames per sample (default 16)")
    p.add_argument(
        "--resize",
        choices=("scale", "crop"),
        default="scale",
        help="scale: whole frame to the size, aspect not kept (default); crop: centre crop",
    )
    p.add_argument("--crf", type=int, default=23, help="h264 quality, 0-51 (default 23)")
    p.add_argument(
        "--pix-fmt",
        choices=("yuv420p", "yuv444p"),
        default="yuv420p",
        help="yuv420p (default, what players expect) or yuv444p (full-resolution colour)",
    )
    p.add_argument(
        "--samples-per-shard",
        type=positive_int,
        default=None,
        help="most samples in one shard (default 1000 unless --shard-bytes is given)",
    )
    p.add_argument(
        "--shard-bytes", type=_bytes, default=None, help="most bytes in one shard, e.g. 64MB"
    )
    p.add_argument(
        "--include-dropped",
        action="store_true",
        help="export dropped clips too (low score, duplicates...): for ablations",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="ignore curation: windows over every input video, every frame prompted with "
        "its manifest caption (the raw arm of an ablation)",
    )
    p.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        help="stop after this many samples (whole videos, in the export's hashed order)",
    )
    p.add_argument(
        "--allow-upsample",
        action="store_true",
        help="export videos slower than --fps by repeating their frames (default: such a "
        "video's clips are UpsampledSource failures rows)",
    )
    p.add_argument(
        "--workers", type=positive_int, default=1, help="processes that decode and encode (1)"
    )
    p.add_argument(
        "--decode-timeout",
        type=positive_float,
        default=600.0,
        help="seconds one video may take before its decoder is killed and it fails (600)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an export in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"curate export: {INTERRUPTED}", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from curate.export import ExportSettings, export_run, parse_size

    try:
        width, height = parse_size(args.size)
        per_shard = args.samples_per_shard
        if per_shard is None and args.shard_bytes is None:
            per_shard = 1000
        settings = ExportSettings(
            width=width,
            height=height,
            fps=args.fps,
            frames=args.frames,
            resize=args.resize,
            crf=args.crf,
            pix_fmt=args.pix_fmt,
            samples_per_shard=per_shard,
            shard_bytes=args.shard_bytes,
            include_dropped=args.include_dropped,
            raw=args.raw,
            max_samples=args.max_samples,
            allow_upsample=args.allow_upsample,
        )
        summary = export_run(
            args.run,
            args.out,
            settings,
            workers=args.workers,
            timeout_s=args.decode_timeout,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, CurateError, SchemaError) as exc:
        print(f"curate export: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    if not summary.samples:
        print(f"curate export: no sample written: {summary.why_empty()}", file=sys.stderr)
        return 3
    return 0
