"""``curate scenes``: list the scenes of video files.

The command imports curate's modules when it runs, so that ``curate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from curate.choices import DETECTORS
from curate.errors import CurateError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "scenes",
        help="list the scenes of video files",
        description=(
            "Decode each file once at low resolution, find its scene boundaries and print them: "
            "a table per file, or with --json one JSON object per line and file. 'fast' (the "
            "default) finds hard cuts, fades and dissolves; 'content', 'adaptive' and "
            "'histogram' are PySceneDetect's detectors and report hard cuts. A file that "
            "cannot be read prints its error and the others go on; the exit status is 1 if "
            "any file failed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="video files")
    parser.add_argument(
        "--detector",
        choices=DETECTORS,
        default="fast",
        help="fast: cuts, fades, dissolves; content / adaptive / histogram: PySceneDetect's",
    )
    parser.add_argument(
        "--min-scene-len",
        type=_positive(int),
        default=15,
        metavar="N",
        help="shortest scene in frames; closer boundaries are dropped",
    )
    parser.add_argument(
        "--max-scene-len",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="re-cut scenes longer than this into equal parts (transition 'recut')",
    )
    parser.add_argument(
        "--width", type=_positive(int), default=128, metavar="PX", help="decode width for detection"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.add_argument(
        "--allow-truncated",
        action="store_true",
        help="split the frames a truncated file still has instead of failing it",
    )
    parser.set_defaults(func=run)
    return parser


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def _scene_json(s: Any) -> dict[str, Any]:
    d = {
        "index": s.index,
        "start_frame": s.start_frame,
        "end_frame": s.end_frame,
        "start_s": round(s.start_s, 6),
        "end_s": round(s.end_s, 6),
        "transition": s.transition,
        "score": None if s.score is None or s.score != s.score else round(s.score, 4),
    }
    if s.transition_start is not None:
        d["transition_frames"] = [s.transition_start, s.transition_end]
    return d


def file_result(info: Any, scenes: list[Any], detector: str) -> dict[str, Any]:
    """The JSON object printed for one file."""
    later = scenes[1:]
    return {
        "file": info.uri,
        "ok": True,
        "detector": detector,
        "num_frames": info.num_frames,
        "fps": info.fps,
        "frame_rate": f"{info.frame_rate.numerator}/{info.frame_rate.denominator}",
        "variable_frame_rate": info.variable_frame_rate,
        "width": info.width,
        "height": info.height,
        "duration_s": round(info.duration_s, 6),
        "cuts": [s.start_frame for s in later],
        "cut_times": [round(s.start_s, 6) for s in later],
        "transitions": [s.transition for s in later],
        "scenes": [_scene_json(s) for s in scenes],
    }


def _table(info: Any, scenes: list[Any]) -> str:
    from curate.video import describe

    lines = [f"{info.uri}: {describe(info)}, {len(scenes)} scene(s)"]
    lines.append(f"  {'#':>3}  {'frames':>15}  {'seconds':>21}  {'transition':<10}  score")
    for s in scenes:
        score = "" if s.score is None or s.score != s.score else f"{s.score:.2f}"
        lines.append(
            f"  {s.index:>3}  {s.start_frame:>7}-{s.end_frame:<7}  "
            f"{s.start_s:>10.3f}-{s.end_s:<10.3f}  {s.transition:<10}  {score}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from curate.scenes import detect_scenes

    failed = 0
    total_scenes = 0
    files = tqdm(args.files, desc="scenes", unit="file", disable=args.json or len(args.files) < 3)
    for path in files:
        try:
            info, (scenes,) = detect_scenes(
                path,
                [args.detector],
                min_scene_len=args.min_scene_len,
                max_scene_len_s=args.max_scene_len,
                width=args.width,
                allow_truncated=args.allow_truncated,
            )
        except CurateError as exc:
            failed += 1
            if args.json:
                print(
                    json.dumps(
                        {
                            "file": path,
                            "ok": False,
                            "error": type(exc).__name__,
                            "stage": exc.stage,
                            "message": exc.reason,
                        }
                    ),
                    flush=True,
                )
            else:
                tqdm.write(f"{path}: {type(exc).__name__}: {exc.reason}", file=sys.stderr)
            continue
        total_scenes += len(scenes)
        if args.json:
            print(json.dumps(file_result(info, scenes, args.detector)), flush=True)
        else:
            tqdm.write(_table(info, scenes), file=sys.stdout)
    ok = len(args.files) - failed
    summary = f"{ok} file(s) split into {total_scenes} scene(s), {failed} failed"
    if args.json:
        log.info("%s", summary)
    else:
        print(summary, file=sys.stderr)
    return 1 if failed else 0
