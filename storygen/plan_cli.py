"""``storygen plan``: show what rendering a script would cost before running any model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from schemas.cli import positive_float, positive_int
from storygen.cli import default_model
from storygen.plan import (
    AUTOREGRESSIVE,
    FPS_RANGE,
    FRAMES_PER_CALL_RANGE,
    MAX_DEPTH,
    MAX_FRAMES,
    POLICIES,
    Plan,
    autoregressive_plan,
    check_fps,
    frame_limit,
    plan_story,
)
from storygen.plan.limits import frame_count
from storygen.settings import resolve_sampling

if TYPE_CHECKING:
    from storygen.script import StoryScript

log = logging.getLogger(__name__)

DESCRIPTION = """\
Read a story script (YAML, JSON, SRT / WebVTT, or a curated stories.parquet) and print its
diffusion-over-diffusion plan: the levels (model calls, frames per call, frame spacing in
frames and seconds), the total model calls, the sequential rounds, the frames generated, and
where the prompt changes. Nothing is rendered and no model is loaded.

With L frames per call and depth m the regular structure makes (L-1)^m + 1 frames
(16 -> 226 -> 3376 for L = 16); other lengths are stretched (uneven spacing, exact length) or
trimmed (regular spacing, extra frames dropped). The sliding-window baseline's cost is printed
for comparison.

The frame rate and the frames per call default as `storygen render` sets them: the flag, else
the script's fps (for a curated story, the model's fps first: its source video's rate is no
choice), else the model folder's sampling.json, else 16 frames per call.
"""

EPILOG = f"""\
examples:
  storygen plan examples/shapes_story.yaml
  storygen plan examples/shapes_story.srt --fps 8 --frames 3376 --policy trim
  storygen plan demo-out/curated/stories --story-id v0007 --json > demo-out/plan.json

limits (each refused with a one-line error, never clamped): at most {MAX_FRAMES:,} frames
(--max-frames), {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g} fps, {FRAMES_PER_CALL_RANGE[0]} to \
{FRAMES_PER_CALL_RANGE[1]} frames per call, depth 1 to {MAX_DEPTH} and no more levels than
the length can use; scripts of at most 2 MiB.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plan",
        help="print the levels, model calls and rounds a script needs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "script", help="a .yaml / .yml / .json / .srt / .vtt script or a stories .parquet"
    )
    p.add_argument("--story-id", help="which story of a stories table (default: the first)")
    p.add_argument(
        "--model",
        help="model folder whose sampling.json gives the default fps and frames per call "
        "(default: the shipped models/shapes-storygen)",
    )
    p.add_argument(
        "--fps",
        type=positive_float,
        help="frame rate of the output (default: the script's, else the model's sampling.json)",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--frames",
        type=positive_int,
        metavar="N",
        help="output length in frames (default: duration × fps)",
    )
    length.add_argument(
        "--duration",
        type=positive_float,
        metavar="S",
        help="output length in seconds (default: the script's)",
    )
    p.add_argument(
        "--frames-per-call",
        "-L",
        type=int,
        metavar="L",
        help="frames one model call makes (default: the model's sampling.json, else 16)",
    )
    p.add_argument(
        "--depth",
        "-m",
        type=int,
        metavar="M",
        help="levels of the hierarchy (default: the fewest that reach the length)",
    )
    p.add_argument(
        "--max-frames",
        type=positive_int,
        default=MAX_FRAMES,
        metavar="N",
        help=f"refuse outputs longer than N frames (default: {MAX_FRAMES:,})",
    )
    p.add_argument(
        "--policy",
        choices=(*POLICIES, AUTOREGRESSIVE),
        default="stretch",
        help="stretch: uneven spacing, exact length (default); trim: regular spacing, "
        "extra frames generated then dropped; autoregressive: the sliding-window baseline",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=1,
        help="frames each sliding window is given from the one before (autoregressive; default 1)",
    )
    p.add_argument(
        "--gaps",
        choices=("hold", "error"),
        default="hold",
        help="frames between segments keep the previous prompt (hold, default) or are an error",
    )
    p.add_argument("--calls", action="store_true", help="also list every model call")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (with every call)")
    p.set_defaults(func=run)
    return p


def num_frames_of(args: argparse.Namespace, fps: float) -> int | None:
    """``--frames``, or ``--duration`` × fps checked against the frame limit, or None."""
    if args.frames is not None:
        return args.frames
    if args.duration is not None:
        frames = args.duration * fps
        if not frames <= args.max_frames:
            raise ValueError(
                f"--duration {args.duration:g} s at {fps:g} fps is {frame_count(frames)} "
                f"frames, more than the limit of {args.max_frames:,} frames (raise it with "
                "--max-frames)"
            )
        return max(1, round(frames))
    return None


def sampling_choices(args: argparse.Namespace, script: StoryScript, **flags: Any) -> dict:
    """The render settings of ``args`` resolved against the script and the model folder's
    sampling.json (see :func:`storygen.settings.resolve_sampling`)."""
    from storygen.script import script_format  # YAML and pyarrow.compute, as in run()

    return resolve_sampling(
        {"fps": args.fps, "frames_per_call": args.frames_per_call, **flags},
        default_model(args.model),
        script_fps=script.fps,
        curated=script_format(args.script) == "parquet",
    )


def no_fps_message(args: argparse.Namespace) -> str:
    model = default_model(args.model)
    where = f" and {model}/sampling.json gives none" if model is not None else ""
    return f"{args.script}: the script sets no fps (SRT never does){where}; pass --fps"


def _calls_table(plan: Plan) -> list[str]:
    lines = ["", "calls (frames; * = given):"]
    for call in plan.calls:
        marks = " ".join(f"{f}{'*' if k else ''}" for f, k in zip(call.frames, call.known))
        lines.append(f"  level {call.level}: {marks}")
    return lines


def run(args: argparse.Namespace) -> int:
    # the script readers import YAML and pyarrow.compute: here, so that `storygen --help` stays fast
    from storygen.script import ScriptError, load_script

    try:
        script = load_script(args.script, story_id=args.story_id)
        choices = sampling_choices(args, script)
        fps, frames_per_call = choices["fps"].value, choices["frames_per_call"].value
        if fps is None:
            raise ValueError(no_fps_message(args))
        check_fps(fps, choices["fps"].source)
        with frame_limit(args.max_frames):
            plan = plan_story(
                script,
                fps=fps,
                num_frames=num_frames_of(args, fps),
                frames_per_call=frames_per_call,
                depth=args.depth,
                policy=args.policy,
                gaps=args.gaps,
                overlap=args.overlap,
            )
            baseline = None
            if args.policy != AUTOREGRESSIVE:
                overlap = args.overlap if args.overlap < frames_per_call else 1
                baseline = autoregressive_plan(
                    plan.num_frames, frames_per_call=frames_per_call, overlap=overlap
                )
    except ScriptError as exc:
        print(f"storygen plan: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"storygen plan: error: {exc}", file=sys.stderr)
        return 2

    warnings = segment_warnings(script, plan, fps)
    for line in warnings:
        log.warning("%s", line)
    try:
        _print(args, script, plan, baseline, fps, warnings)
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the interpreter closes it at exit)
    return 0


def segment_warnings(script: StoryScript, plan: Plan, fps: float) -> list[str]:
    """Segments no frame of ``plan`` shows at ``fps``: too short for the frame rate, or past
    the output's last frame (``plan`` and ``render`` both warn of them). Judged from the
    segment each frame takes its prompt from, as the plan does (a frame before the first
    segment, or in a gap, holds a segment too), and named as the script's reader labelled
    them."""
    return script.unshown_segments(fps, num_frames=plan.num_frames)


def _print(
    args: argparse.Namespace,
    script: StoryScript,
    plan: Plan,
    baseline: Plan | None,
    fps: float,
    warnings: list[str],
) -> None:
    if args.json:
        data = {
            "script": str(args.script),
            "story_id": script.story_id,
            "duration_s": script.duration_s,
            "segments": len(script.segments),
            **plan.to_dict(),
            "warnings": warnings,
        }
        if baseline is not None:
            data["autoregressive"] = {
                "overlap": baseline.overlap,
                "model_calls": baseline.model_calls,
                "rounds": baseline.rounds,
            }
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return

    out = [
        f"script: {args.script} (story {script.story_id!r}, {len(script.segments)} segments, "
        f"{script.duration_s:g} s)",
        plan.summary(),
    ]
    if baseline is not None:
        speed = baseline.rounds / plan.rounds
        out.append(
            f"sliding windows (overlap {baseline.overlap}) would need {baseline.model_calls} "
            f"model calls in {baseline.rounds} sequential rounds ({speed:.1f}x the rounds)"
        )
    out += ["", "prompt changes:"]
    for frame, prompt in plan.prompt_changes():
        out.append(f"  frame {frame:>6}  {frame / fps:>9.3f} s  {prompt}")
    if warnings:
        out += ["", "warnings:", *(f"  {w}" for w in warnings)]
    if args.calls:
        out += _calls_table(plan)
    print("\n".join(out))
