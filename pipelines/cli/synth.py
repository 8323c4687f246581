"""``curate synth``: generate a shapes-world corpus with exact ground truth.

The command imports the shapes world when it runs, so that ``curate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any

from curate.h264 import X264_PRESETS
from schemas.cli import fraction, positive_int

_EPILOG = """\
writes under OUT:
  videos/<id>.mp4     h264 videos (1-5 scenes, cuts, fades, dissolves)
  videos/<id>.txt     the WebVid-style source caption (correct or noise of a known kind)
  videos/<id>.json    timed per-scene captions, for some videos
  webvid.csv          WebVid columns videoid,contentUrl,duration,page_dir,name
                      (contentUrl relative to the csv's folder)
  manifest.jsonl      video_id, uri, caption[, captions]
  ground_truth.json   scenes, cuts, transitions, caption noise, duplicates

example:
  curate synth --out data/shapes --videos 50 --seed 7 --resolutions 320x240,640x360
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate a shapes-world corpus with exact ground truth",
        description=(
            "Generate a procedural corpus of coloured shapes moving over backgrounds, with "
            "scene cuts, fades and dissolves, WebVid-style source captions with a controlled "
            "share of noise (mismatched, boilerplate, truncated, empty, non-ASCII) and planted "
            "near-duplicates. The same seed gives the same corpus."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--videos", type=positive_int, default=20, help="number of videos (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--noise-rate", type=fraction, default=0.3, help="share of noisy source captions (0.3)"
    )
    p.add_argument(
        "--duplicate-rate",
        type=fraction,
        default=0.1,
        help="share of planted near-duplicates (0.1)",
    )
    p.add_argument(
        "--transition-rate",
        type=fraction,
        default=0.3,
        help="share of scene changes that are fades or dissolves rather than cuts (0.3)",
    )
    p.add_argument(
        "--resolutions",
        default=None,
        help="comma-separated WxH choices, e.g. 320x240,640x360 "
        "(default: mostly 284x160 and 320x240, some 640x360, few 1280x720)",
    )
    p.add_argument(
        "--fps",
        default=None,
        help="comma-separated frame rates, e.g. 24,30000/1001 (default 24,25,29.97,30)",
    )
    p.add_argument(
        "--min-scenes", type=positive_int, default=1, help="fewest scenes a video has (1)"
    )
    p.add_argument("--max-scenes", type=positive_int, default=5, help="most scenes a video has (5)")
    p.add_argument(
        "--scene-seconds",
        default="1.5,5.0",
        help="range of scene lengths in seconds, LOW,HIGH (default 1.5,5.0)",
    )
    p.add_argument(
        "--preset",
        default="veryfast",
        choices=X264_PRESETS,
        metavar="PRESET",
        help="libx264 preset: " + ", ".join(X264_PRESETS) + " (default veryfast; ultrafast "
        "writes about 3x faster, larger files)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that render and encode in parallel (default 0: one per CPU, at most 4)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a corpus already in --out (its videos, sidecars and manifests)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _out_problem(out: Path) -> str | None:
    """Why ``--out`` cannot be the corpus folder (``None``: it can)."""
    for path in [out, *out.parents]:
        if path.exists():
            if not path.is_dir():
                return f"--out {out}: {path} exists and is not a folder"
            break
    return None


def run(args: argparse.Namespace) -> int:
    from curate.shapes import generate_corpus

    problem = _out_problem(Path(args.out))
    if problem:
        print(f"curate synth: {problem}", file=sys.stderr)
        return 2
    try:
        lo, hi = (float(x) for x in args.scene_seconds.split(","))
    except ValueError:
        print(
            f"curate synth: --scene-seconds must be LOW,HIGH, got {args.scene_seconds!r}",
            file=sys.stderr,
        )
        return 2
    try:
        gt = generate_corpus(
            args.out,
            videos=args.videos,
            seed=args.seed,
            noise_rate=args.noise_rate,
            duplicate_rate=args.duplicate_rate,
            transition_rate=args.transition_rate,
            resolutions=_split(args.resolutions),
            fps_choices=_split(args.fps),
            min_scenes=args.min_scenes,
            max_scenes=args.max_scenes,
            scene_seconds=(lo, hi),
            preset=args.preset,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"curate synth: {exc}", file=sys.stderr)
        return 2
    print(summary(gt))
    return 0


def summary(gt: Any) -> str:
    """A short human summary of a generated corpus."""
    videos = gt.videos
    frames = sum(v.num_frames for v in videos)
    seconds = sum(v.duration for v in videos)
    changes = collections.Counter(s.transition_in for v in videos for s in v.scenes[1:])
    noise = collections.Counter(v.caption_noise for v in videos)
    dups = collections.Counter(v.duplicate_kind for v in videos if v.duplicate_of)
    sizes = collections.Counter(f"{v.width}x{v.height}" for v in videos)
    rates = collections.Counter(v.fps_fraction for v in videos)

    def counts(c: collections.Counter) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "none"

    return "\n".join(
        [
            f"shapes world, seed {gt.seed}: {len(videos)} videos, {frames} frames "
            f"({seconds:.1f} s of video)",
            f"  scenes       {sum(len(v.scenes) for v in videos)}; scene changes: "
            f"cut {changes['cut']}, fade {changes['fade']}, dissolve {changes['dissolve']}",
            f"  captions     {counts(noise)}; "
            f"{sum(v.caption_is_noise for v in videos)} count as noise",
            f"  duplicates   {sum(dups.values())} in {len(gt.duplicate_groups)} groups "
            f"({counts(dups)})",
            f"  sizes        {counts(sizes)}",
            f"  fps          {counts(rates)}",
            f"  videos       {gt.videos_dir}/ (sidecars: .txt source caption, .json timed)",
            f"  manifests    {gt.webvid_csv}",
            f"               {gt.manifest_jsonl}",
            f"  truth        {gt.root / 'ground_truth.json'}",
        ]
    )
