"""``storygen render`` / ``storygen new-model`` / ``storygen train``.

``render`` turns a story script into a video with a model folder (masked or ModelScope
layout), streaming frames to the output file as they become final; ``new-model`` writes a
randomly initialised model folder of a preset size; ``train`` trains the small shapes-world
model (:mod:`storygen.train`).

torch, diffusers, numpy and the pyarrow-backed script readers load inside the functions that
run a command, so that ``storygen --help`` and argument errors stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from storygen.plan import AUTOREGRESSIVE, POLICIES

logger = logging.getLogger(__name__)

#: the shipped shapes-world model, beside the packages in the repository
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "shapes-storygen"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_render(subparsers)
    _add_new_model(subparsers)
    _add_train(subparsers)


def _add_render(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render",
        help="render a story script to a video",
        description=(
            "Render a timed prompt sequence (YAML / JSON / SRT script, or a stories.parquet "
            "row with --story-id) to a video. Hierarchical mode: the global model draws "
            "keyframes over the whole story, local models fill between them level by level, "
            "each level's calls batched (--micro-batch) and spread over --devices. "
            "Autoregressive mode (the baseline): overlapping sliding windows. Frames stream "
            "to --out as they become final; --cache-dir makes an interrupted run resumable."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("script", help="story script: .yaml/.json/.srt/.vtt, or stories .parquet")
    p.add_argument(
        "--model",
        default=None,
        help=f"model folder (masked or ModelScope layout); default {DEFAULT_MODEL} if present",
    )
    p.add_argument("--out", required=True, help="output video (.mp4, .mkv, .webm or .gif)")
    p.add_argument("--fps", type=_positive_float, default=None, help="default: the script's")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--frames", type=_positive_int, default=None, help="number of frames")
    length.add_argument(
        "--duration", type=_positive_float, default=None, help="seconds (frames = duration × fps)"
    )
    p.add_argument("--frames-per-call", type=_positive_int, default=16, help="L")
    p.add_argument("--depth", type=_positive_int, default=None, help="levels; default: minimal")
    p.add_argument("--policy", choices=POLICIES, default="stretch")
    p.add_argument("--mode", choices=("hierarchical", AUTOREGRESSIVE), default="hierarchical")
    p.add_argument(
        "--overlap", type=_positive_int, default=1, help="known frames per autoregressive window"
    )
    p.add_argument("--steps", type=_positive_int, default=25, help="denoising steps per call")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--negative-prompt", default="", help="prompt for the unconditional branch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scheduler", choices=("ddim", "dpm", "euler"), default=None, help="default: saved one"
    )
    p.add_argument("--height", type=_positive_int, default=None, help="default: the model's")
    p.add_argument("--width", type=_positive_int, default=None, help="default: the model's")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument(
        "--devices",
        default=None,
        help="spread each level over several devices: e.g. cuda:0,cuda:1 or cpu,cpu",
    )
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument("--micro-batch", type=_positive_int, default=16, help="calls per forward")
    p.add_argument("--resample-steps", type=_positive_int, default=None)
    p.add_argument("--jump-length", type=_positive_int, default=None)
    p.add_argument(
        "--reconstruction-guidance",
        type=float,
        default=0.0,
        help="weight of the gradient step towards the known frames (0: off)",
    )
    p.add_argument("--cache-dir", default=None, help="keep finished calls here; resume from it")
    p.add_argument("--story-id", default=None, help="which story of a multi-story file")
    p.add_argument("--preview", default=None, help="write a keyframe preview sheet (PNG)")
    p.add_argument("--stats-json", default=None, help="write the run's statistics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_render)


def _add_new_model(subparsers: argparse._SubParsersAction) -> None:
    n = subparsers.add_parser(
        "new-model",
        help="write a randomly initialised model folder",
        description=(
            "Write a randomly initialised model folder: --mode masked (StoryVideoPipeline with "
            "a mask-conditioned UNet) or t2v (the ModelScope text-to-video layout, used "
            "training-free). Presets: micro / tiny (pixel space, for tests and CPU runs), "
            "micro-latent / tiny-latent (with a tiny VAE), modelscope (the real 1.41 B "
            "UNet shape, SD VAE, 1024-wide text encoder: GPU benchmarks only)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    n.add_argument("dir", help="output folder")
    n.add_argument(
        "--preset", default="tiny", help="micro, micro-latent, tiny, tiny-latent, modelscope"
    )
    n.add_argument("--mode", choices=("masked", "t2v"), default="masked")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    n.set_defaults(func=run_new_model)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    # every argument, --help included, goes to storygen.train's own parser (which imports
    # torch): no character counts as an option prefix here
    t = subparsers.add_parser(
        "train",
        help="train the small shapes-world storygen model (storygen train --help)",
        description="Train the latent shapes-world model (autoencoder + MaskedUNet3D) on story windows (see storygen.train).",
        add_help=False,
        prefix_chars="\x00",
    )
    t.add_argument("args", nargs=argparse.REMAINDER, help="arguments of python -m storygen.train")
    t.set_defaults(func=run_train)


def _dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def run_new_model(args: argparse.Namespace) -> int:
    from storygen.presets import new_model

    out = new_model(
        args.dir, preset=args.preset, mode=args.mode, seed=args.seed, dtype=_dtype(args.dtype)
    )
    print(f"wrote a randomly initialised {args.preset} model ({args.mode} layout) to {out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from storygen.train import main as train_main

    return int(train_main(args.args) or 0)


def _resolve_model(value: str | None) -> Path:
    if value is not None:
        return Path(value)
    if DEFAULT_MODEL.is_dir():
        return DEFAULT_MODEL
    raise SystemExit(
        f"storygen render: no --model given and {DEFAULT_MODEL} does not exist; pass a model "
        "folder (create a random one with `storygen new-model DIR`)"
    )


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def _fail(message: Any) -> int:
    print(f"storygen render: {message}", file=sys.stderr)
    return 2


def run_render(args: argparse.Namespace) -> int:
    import torch

    from storygen.loading import load_pipeline
    from storygen.script import ScriptError, load_script

    model = _resolve_model(args.model)
    try:
        script = load_script(args.script, story_id=args.story_id)
    except (ScriptError, FileNotFoundError, ValueError) as exc:
        return _fail(exc)
    fps = args.fps or script.fps
    if fps is None:
        return _fail(f"{args.script} sets no fps; pass --fps")
    num_frames = args.frames
    if args.duration is not None:
        num_frames = max(1, round(args.duration * fps))
    try:
        pipe = load_pipeline(model, torch_dtype=_dtype(args.dtype), scheduler=args.scheduler)
    except FileNotFoundError as exc:
        return _fail(exc)
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
    device = args.device or (devices[0] if devices else None)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe.to(device)
    hierarchical = args.mode == "hierarchical"
    try:
        out = pipe(
            script,
            num_frames,
            fps=fps,
            frames_per_call=args.frames_per_call,
            depth=args.depth if hierarchical else None,
            policy=args.policy if hierarchical else AUTOREGRESSIVE,
            overlap=args.overlap,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            negative_prompt=args.negative_prompt,
            generator=args.seed,
            height=args.height,
            width=args.width,
            micro_batch=args.micro_batch,
            output_type=None,
            output_path=args.out,
            cache_dir=args.cache_dir,
            devices=devices,
            resample_steps=args.resample_steps,
            jump_length=args.jump_length,
            reconstruction_guidance=args.reconstruction_guidance,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        return _fail(exc)
    written = [args.out, *_write_extras(args, out)]
    print(_summary(args, model, pipe, out, fps, written))
    return 0


def _write_extras(args: argparse.Namespace, out: Any) -> list[str]:
    """The preview sheet and the statistics JSON, where asked for; returns their paths."""
    from storygen.export import plan_sheet

    written = []
    if args.preview and out.keyframes:
        plan_sheet(out.keyframes, out.plan, args.preview)
        written.append(args.preview)
    if args.stats_json:
        Path(args.stats_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.stats_json).write_text(
            json.dumps(
                {"stats": out.stats.to_dict(), "plan": out.plan.to_dict(calls=False)}, indent=2
            )
        )
        written.append(args.stats_json)
    return written


def _summary(
    args: argparse.Namespace, model: Path, pipe: Any, out: Any, fps: float, written: list[str]
) -> str:
    plan, stats = out.plan, out.stats
    lines = [
        f"rendered {plan.num_frames} frames ({plan.num_frames / fps:.2f} s at {fps:g} fps) "
        f"with {model} ({type(pipe.unet).__name__}, {type(pipe.scheduler).__name__})",
        f"  mode            {args.mode}"
        + (f", depth {plan.depth}" if args.mode == "hierarchical" else f", overlap {args.overlap}"),
        f"  model calls     {plan.model_calls} ({stats.calls_from_cache} from cache) "
        f"in {plan.rounds} sequential rounds, {stats.unet_forwards} batched UNet passes",
        f"  wall time       {stats.wall_time_s:.1f} s",
        f"  peak memory     {_human_bytes(stats.peak_memory_bytes)} ({stats.peak_memory_kind}), "
        f"at most {stats.peak_frames_held} frames held",
        f"  devices         {', '.join(stats.devices)}",
    ]
    if stats.cache_dir:
        lines.append(f"  cache           {stats.cache_dir}")
    lines.append("  wrote           " + ", ".join(written))
    return "\n".join(lines)
