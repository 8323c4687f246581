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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from curate.choices import AGGREGATES, DTYPES, STRATEGIES
from curate.errors import CurateError
from schemas.cli import float_in, positive_int

logger = logging.getLogger(__name__)

# The command's functions import curate's modules where they need them (scoring, CLIP, the
# threshold, the filter), so that ``curate --help`` does not load them.

DESCRIPTION = """\
Score a corpus' captions with CLIP and choose the filter's cut-off: splits scenes, samples
frames, scores each scene's caption (or reuses a clips file's caption_score), prints the score
distribution, the chosen threshold and what it would drop. Thresholds belong to a model: the
shipped shapes-world CLIP recommends 0.63 (its scoring.json); another CLIP needs its own.
"""

EPILOG = """\
examples:
  curate calibrate demo-out/corpus/webvid.csv                  # the shipped CLIP's cut-off
  curate calibrate demo-out/corpus/webvid.csv --percentile 25  # what p25 would drop
  curate calibrate demo-out/curated/clips/part-00000-of-00001.parquet --threshold 0.70
      # a curated run's own scores, at another cut-off
  curate calibrate my-videos/manifest.jsonl --model ~/models/clip-vit-base-patch32

--model takes a folder on disk (config.json, weights, tokenizer files,
preprocessor_config.json), e.g. a downloaded openai/clip-vit-base-patch32; a hub id works
only where this machine can reach the hub.
"""


#: argparse types of the cut-off's two forms
_percentile = float_in(0.0, 100.0, "a percentile", high_open=True)
_cosine = float_in(-1.0, 1.0, "a cosine")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="score captions with CLIP and choose the filter threshold",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input",
        help="manifest (CSV / JSONL / folder) or clips .parquet, on this machine (remote URLs "
        "such as gs://, s3:// or https:// are not read)",
    )
    cut = p.add_mutually_exclusive_group()
    cut.add_argument(
        "--percentile",
        type=_percentile,
        default=None,
        help="drop the lowest PERCENTILE %% of scored clips (default: the model folder's "
        "recommended threshold (scoring.json) if it has one, else percentile 20)",
    )
    cut.add_argument("--threshold", type=_cosine, default=None, help="an absolute cosine cut-off")
    p.add_argument(
        "--model",
        default=None,
        metavar="FOLDER",
        help="CLIP model folder (default: the shipped shapes-world CLIP, models/shapes-clip)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="frames per CLIP forward pass"
    )
    p.add_argument("--k", type=positive_int, default=4, help="frames sampled per scene")
    p.add_argument("--strategy", default="uniform", choices=STRATEGIES)
    p.add_argument("--aggregate", default="mean", choices=AGGREGATES)
    p.add_argument("--detector", default="fast", help="scene detector for manifests")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="score at most this many videos"
    )
    p.add_argument("--rescore", action="store_true", help="re-score a clips file from its videos")
    p.add_argument("--bins", type=positive_int, default=20, help="histogram bins")
    p.add_argument("--json", type=Path, default=None, help="also write scores + cut as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _threshold(args: argparse.Namespace) -> Any:
    from curate.threshold import AUTO, Threshold, resolve_threshold

    if args.percentile is not None:
        return Threshold(args.percentile, True)
    if args.threshold is not None:
        return Threshold(args.threshold, False)
    return resolve_threshold(AUTO, model=args.model)


def _measure(path: Path, args: argparse.Namespace) -> Any:
    """The scored clips of ``path``: a manifest's, a clips file's own, or re-scored ones."""
    from curate import scoring
    from curate.clip_score import ClipScorer
    from curate.models import resolve_model_path
    from curate.sampling import FrameSampler

    if path.suffix == ".parquet" and not args.rescore:
        return scoring.read_scores(path)
    scorer = ClipScorer(
        model=resolve_model_path(args.model),
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        aggregate=args.aggregate,
    )
    scorer.setup()
    sampler = FrameSampler(k=args.k, strategy=args.strategy, size=scorer.sample_size)
    sampler.setup()
    progress = not args.no_progress
    if path.suffix == ".parquet":
        return scoring.score_clips_file(
            path, scorer=scorer, sampler=sampler, limit=args.limit, progress=progress
        )
    return scoring.score_manifest(
        path,
        scorer=scorer,
        sampler=sampler,
        detector=args.detector,
        limit=args.limit,
        progress=progress,
    )


def _report(scored: Any, cal: Any, bins: int) -> dict[str, int]:
    """Print the histogram, the cut-off and what it drops; return the counts it would give."""
    from curate.filtering import apply_threshold, summarize, text_histogram

    scores = scored.scores
    print(text_histogram(scores, bins=bins, threshold=cal.threshold))
    how = f"percentile {cal.percentile:g}" if cal.method == "percentile" else "absolute"
    print(
        f"\nthreshold {cal.threshold:.4f} ({how}): {cal.scored} scored clips, "
        f"{cal.dropped} below the cut, {cal.kept} at or above"
    )
    unscored = sum(1 for s in scores if s is None)
    if unscored:
        print(f"{unscored} clips without a score (empty, invalid or unreadable caption)")
    if scored.failures:
        print(f"{len(scored.failures)} inputs failed:")
        for f in scored.failures[:10]:
            print(f"  {f['input_id']}: {f['stage']}: {f['message']}")
    counts = summarize([apply_threshold(r, cal.threshold) for r in scored.records])
    print("would give: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return counts


def _write_json(target: Path, path: Path, scored: Any, cal: Any, counts: dict) -> None:
    payload = {
        "input": str(path),
        "threshold": cal.threshold,
        "method": cal.method,
        "percentile": cal.percentile,
        "scored": cal.scored,
        "dropped": cal.dropped,
        "counts": counts,
        "failures": len(scored.failures),
        "scores": {str(r.get("clip_id")): r.get("caption_score") for r in scored.records},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {target}")


def _json_target_problem(target: Path) -> str | None:
    """Why ``--json`` cannot be written (``None``: it can), found before any scoring."""
    if target.is_dir():
        return f"--json {target}: is a folder; give a file name"
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"--json {target}: {parent} exists and is not a folder"
            break
    return None


def _is_remote(text: str) -> bool:
    """Whether ``text`` is a URL other than ``file:`` (``gs://``, ``s3://``, ``https://``...);
    a one-letter scheme is a Windows drive letter (``C:``): a path."""
    scheme = urlsplit(text).scheme
    return len(scheme) > 1 and scheme.lower() != "file"


def run(args: argparse.Namespace) -> int:

    given: str = args.input
    if _is_remote(given):
        print(
            f"error: {given}: remote paths are not supported by curate calibrate; copy "
            "the file to this machine and give its local path",
            file=sys.stderr,
        )
        return 2
    path = Path(given)
    if not path.exists():
        print(f"error: {path}: no such file or folder", file=sys.stderr)
        return 2
    problem = _json_target_problem(args.json) if args.json else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        threshold = _threshold(args)
        scored = _measure(path, args)
        cal = threshold.calibrate(scored.scores)
    except (CurateError, ValueError, OSError) as exc:
        stage = f"{exc.stage}: " if isinstance(exc, CurateError) else ""
        print(f"error: {stage}{exc}", file=sys.stderr)
        return 2
    counts = _report(scored, cal, args.bins)
    if args.json:
        _write_json(args.json, path, scored, cal, counts)
    return 0
