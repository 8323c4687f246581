"""``curate calibrate``: score a corpus' captions and choose the filter's cut-off.

Reads a manifest (WebVid CSV, JSONL, a folder of videos with sidecar captions) or a clips
Parquet file; splits scenes, samples frames and scores each scene's caption with CLIP (or
reuses the ``caption_score`` column of a clips file); prints the score distribution as a text
histogram, the chosen threshold and what it would drop.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="score captions with CLIP and choose the filter threshold",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="manifest (CSV / JSONL / folder) or clips .parquet")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument(
        "--percentile",
        type=float,
        default=None,
        help="drop the lowest PERCENTILE %% of scored clips (default: the model folder's "
        "recommended threshold (scoring.json) if it has one, else percentile 20)",
    )
    cut.add_argument("--threshold", type=float, default=None, help="an absolute cosine cut-off")
    p.add_argument(
        "--model",
        default=None,
        help="CLIP folder or hub id (default: the shipped shapes-world CLIP)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--batch-size", type=int, default=64, help="frames per CLIP forward pass")
    p.add_argument("--k", type=int, default=4, help="frames sampled per scene")
    p.add_argument("--strategy", default="uniform", choices=("uniform", "middle", "keyframes"))
    p.add_argument("--aggregate", default="mean", choices=("mean", "min", "max", "median"))
    p.add_argument("--detector", default="fast", help="scene detector for manifests")
    p.add_argument("--limit", type=int, default=None, help="score at most this many videos")
    p.add_argument("--rescore", action="store_true", help="re-score a clips file from its videos")
    p.add_argument("--bins", type=int, default=20, help="histogram bins")
    p.add_argument("--json", type=Path, default=None, help="also write scores + cut as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def score_videos(
    videos: Iterable[dict[str, Any]],
    *,
    scorer: Any,
    sampler: Any,
    splitter: Any | None = None,
    clips_of: Any | None = None,
    progress: bool = True,
    total: int | None = None,
) -> tuple[list[dict], list[dict]]:
    """Split, sample and score every video; a failing video becomes a failures row.

    ``clips_of(video) -> list[clip dict]`` replaces the scene splitter when given (e.g. scenes
    from ground truth). Returns ``(scored clip records, failures rows)``.
    """
    import traceback

    from tqdm import tqdm

    from schemas.failures import failure_row

    from .errors import CurateError

    clips_out: list[dict] = []
    failures: list[dict] = []
    for video in tqdm(
        list(videos) if total is None else videos,
        total=total,
        desc="score",
        unit="video",
        disable=not progress,
    ):
        stage = "split-scenes"
        try:
            if clips_of is not None:
                clips = clips_of(video)
            elif splitter is not None:
                clips = list(splitter.process(video))
            else:
                raise ValueError("score_videos needs a splitter or clips_of")
            stage = sampler.stage
            sampled = sampler.sample_video(clips) if clips else []
            stage = scorer.stage
            clips_out.extend(scorer.process_all(sampled))
        except (CurateError, ValueError, OSError) as exc:
            failures.append(
                failure_row(
                    str(video.get("video_id") or video.get("uri")),
                    uri=video.get("uri"),
                    stage=exc.stage if isinstance(exc, CurateError) else stage,
                    error_type=type(exc).__name__,
                    message=str(exc),
                    traceback="".join(traceback.format_exception(exc)[-3:]),
                )
            )
            logger.warning("%s: %s: %s", video.get("video_id"), type(exc).__name__, exc)
    return clips_out, failures


def _limited(items: Iterable[Any], limit: int | None) -> Iterator[Any]:
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item


def run(args: argparse.Namespace) -> int:
    from .clip_score import DEFAULT_MODEL, ClipScorer
    from .errors import CurateError
    from .filtering import calibrate, summarize, text_histogram

    percentile, threshold = args.percentile, args.threshold
    if percentile is None and threshold is None:
        # the cut measured for the model where its folder records one, else a percentile
        from .clip_score import recommended_threshold

        model_dir = Path(args.model) if args.model else DEFAULT_MODEL
        threshold = recommended_threshold(model_dir) if model_dir.is_dir() else None
        if threshold is None:
            percentile = 20.0
    path: Path = args.input
    if not path.exists():
        print(f"error: {path}: no such file or folder", file=sys.stderr)
        return 2
    failures: list[dict] = []
    try:
        if path.suffix == ".parquet" and not args.rescore:
            from schemas.io import read_parquet

            rows = read_parquet(path, "clips").to_pylist()
            scores = [r.get("caption_score") for r in rows]
            if all(s is None for s in scores):
                print(f"error: {path} has no caption_score values; use --rescore", file=sys.stderr)
                return 2
            records = rows
        else:
            from .sampling import FrameSampler

            scorer = ClipScorer(
                model=args.model or DEFAULT_MODEL,
                device=args.device,
                dtype=args.dtype,
                batch_size=args.batch_size,
                aggregate=args.aggregate,
            )
            scorer.setup()
            sampler = FrameSampler(k=args.k, strategy=args.strategy, size=scorer.sample_size)
            sampler.setup()
            if path.suffix == ".parquet":
                from itertools import groupby

                from schemas.io import read_parquet

                rows = read_parquet(path, "clips").to_pylist()
                by_video = [list(g) for _, g in groupby(rows, key=lambda r: r["video_id"])]
                videos = [
                    {"video_id": g[0]["video_id"], "uri": g[0]["uri"], "clips": g}
                    for g in _limited(by_video, args.limit)
                ]
                records, failures = score_videos(
                    videos,
                    scorer=scorer,
                    sampler=sampler,
                    clips_of=lambda v: v["clips"],
                    progress=not args.no_progress,
                )
            else:
                from schemas.inputs import read_manifest

                from .scenes import SceneSplitter

                manifest = read_manifest(path)
                failures = list(manifest.failures)
                videos = list(_limited(manifest.videos, args.limit))
                with SceneSplitter(detector=args.detector) as splitter:
                    records, more = score_videos(
                        videos,
                        scorer=scorer,
                        sampler=sampler,
                        splitter=splitter,
                        progress=not args.no_progress,
                    )
                failures += more
            scores = [r.get("caption_score") for r in records]
    except (CurateError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    try:
        cal = calibrate(scores, threshold=threshold, percentile=percentile)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text_histogram(scores, bins=args.bins, threshold=cal.threshold))
    how = f"percentile {cal.percentile:g}" if cal.method == "percentile" else "absolute"
    print(
        f"\nthreshold {cal.threshold:.4f} ({how}): {cal.scored} scored clips, "
        f"{cal.dropped} below the cut, {cal.kept} at or above"
    )
    unscored = sum(1 for s in scores if s is None)
    if unscored:
        print(f"{unscored} clips without a score (empty, invalid or unreadable caption)")
    if failures:
        print(f"{len(failures)} inputs failed:")
        for f in failures[:10]:
            print(f"  {f['input_id']}: {f['stage']}: {f['message']}")
    from .filtering import apply_threshold

    counts = summarize([apply_threshold(r, cal.threshold) for r in records])
    print("would give: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.json:
        payload = {
            "input": str(path),
            "threshold": cal.threshold,
            "method": cal.method,
            "percentile": cal.percentile,
            "scored": cal.scored,
            "dropped": cal.dropped,
            "counts": counts,
            "failures": len(failures),
            "scores": {str(r.get("clip_id")): r.get("caption_score") for r in records},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
