"""``storygen render``: a story script into a video with a model folder (masked or ModelScope
layout), streaming frames to the output file as they become final.

torch, diffusers and the script readers (pyarrow, YAML) load inside the functions that run a
command (``run_*``, and the steps of ``run_render`` after its checks), so that
``storygen --help`` and argument errors stay fast.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from schemas.cli import auto_or_positive_int, non_negative_float, positive_float, positive_int
from storygen.accel import COMPILE_CHOICES, DEFAULT_SPEEDUPS, SPEEDUPS
from storygen.cli import DEFAULT_MODEL, DTYPES, default_model, torch_dtype
from storygen.export import CONTAINERS, MAX_GIF_FPS, ExportError, check_video_path, plan_sheet
from storygen.plan import (
    AUTOREGRESSIVE,
    FPS_RANGE,
    FRAMES_PER_CALL_RANGE,
    MAX_FRAMES,
    POLICIES,
    check_fps,
    frame_limit,
    plan_story,
)
from storygen.plan_cli import no_fps_message, num_frames_of, sampling_choices, segment_warnings
from storygen.report import write_render_report
from storygen.settings import (
    BUILTIN_DEFAULTS,
    MAX_FRAME_SIZE,
    SCHEDULERS,
    Choice,
    check_frame_size,
    describe,
    frame_size_limit,
)

logger = logging.getLogger(__name__)

_BUILTIN_STEPS = BUILTIN_DEFAULTS["num_inference_steps"]
_BUILTIN_GUIDANCE = BUILTIN_DEFAULTS["guidance_scale"]
_BUILTIN_FRAMES_PER_CALL = BUILTIN_DEFAULTS["frames_per_call"]
_MAX_FRAME_SIZE = MAX_FRAME_SIZE
#: where a sampling flag's default comes from
_FROM_MODEL = "default: the model's sampling.json, else"

RENDER_DESCRIPTION = """\
Render a timed prompt sequence (a YAML / JSON / SRT script, or a row of a curated stories
table) to a video. Hierarchical mode: the global model draws keyframes over the whole story,
local models fill between them level by level, each level's calls batched (--micro-batch) and
spread over --devices. Autoregressive mode (the baseline): overlapping sliding windows. Frames
stream to --out as they become final; --cache-dir makes an interrupted run resumable.

Sampling settings come from the first place that sets them: the flag, the model folder's
sampling.json (the settings its trainer recommends), the built-in default. The frame rate of a
hand-written script comes before sampling.json; a curated story renders at the model's fps
(its source video's fps is the last resort). The summary says where each value came from.
"""

RENDER_EPILOG = f"""\
examples:
  storygen render examples/shapes_story.yaml --out demo-out/shapes_story.mp4
  storygen render examples/shapes_story.srt --out demo-out/shapes_story.gif \\
      --preview demo-out/shapes_story.png --steps 8
  storygen render demo-out/curated/stories --story-id shapes_2026_0003 \\
      --out demo-out/story.mp4 --cache-dir demo-out/cache     # after `make demo`

demo-out/ is ignored by git. Limits (refused with a one-line error, exit code 2): at most
{MAX_FRAMES:,} frames (--max-frames), {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g} fps, \
{FRAMES_PER_CALL_RANGE[0]} to {FRAMES_PER_CALL_RANGE[1]} frames per call,
frames of at most {_MAX_FRAME_SIZE}×{_MAX_FRAME_SIZE} pixels (--max-frame-size).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_render(subparsers)


def _add_render(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render",
        help="render a story script to a video",
        description=RENDER_DESCRIPTION,
        epilog=RENDER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "script", help="story script: .yaml / .json / .srt / .vtt, or a stories .parquet (folder)"
    )
    p.add_argument(
        "--model",
        help="model folder (masked or ModelScope layout); default: the shipped "
        "models/shapes-storygen",
    )
    p.add_argument(
        "--out",
        required=True,
        help=f"output video ({', '.join(sorted(CONTAINERS))} or .gif; a GIF at most "
        f"{MAX_GIF_FPS} fps)",
    )
    p.add_argument("--story-id", help="which story of a stories table (default: the first)")
    _add_plan_flags(p.add_argument_group("length and plan"))
    _add_sampling_flags(p.add_argument_group("sampling"))
    _add_output_flags(p.add_argument_group("devices and output"))
    p.set_defaults(func=run_render)


def _add_plan_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--fps",
        type=positive_float,
        help="frames per second (default: a hand-written script's, else the model's "
        "sampling.json, else a curated story's source fps)",
    )
    length = g.add_mutually_exclusive_group()
    length.add_argument(
        "--frames", type=positive_int, help="number of frames (default: duration × fps)"
    )
    length.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help="length in seconds (default: the script's)",
    )
    g.add_argument(
        "--frames-per-call",
        type=positive_int,
        metavar="L",
        help=f"frames one model call makes ({_FROM_MODEL} {_BUILTIN_FRAMES_PER_CALL})",
    )
    g.add_argument(
        "--depth",
        type=positive_int,
        help="levels (hierarchical mode; default: the fewest that reach the length)",
    )
    g.add_argument(
        "--policy",
        choices=POLICIES,
        help="hierarchical mode: stretch (default): exact length, uneven spacing; trim: "
        "regular spacing",
    )
    g.add_argument(
        "--mode",
        choices=("hierarchical", AUTOREGRESSIVE),
        default="hierarchical",
        help="hierarchical (default) or the sliding-window baseline",
    )
    g.add_argument(
        "--overlap",
        type=positive_int,
        default=1,
        help="known frames per autoregressive window (default: 1)",
    )
    g.add_argument(
        "--max-frames",
        type=positive_int,
        default=MAX_FRAMES,
        metavar="N",
        help=f"refuse videos longer than N frames (default: {MAX_FRAMES:,})",
    )


def _add_sampling_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--scheduler",
        choices=sorted(SCHEDULERS),
        help=f"{_FROM_MODEL} the one saved in the model folder",
    )
    g.add_argument(
        "--steps",
        type=positive_int,
        help=f"denoising steps per call ({_FROM_MODEL} {_BUILTIN_STEPS})",
    )
    g.add_argument(
        "--guidance",
        type=non_negative_float,
        help=f"classifier-free guidance scale, 1 = off ({_FROM_MODEL} {_BUILTIN_GUIDANCE:g})",
    )
    g.add_argument(
        "--negative-prompt", default="", help="prompt of the unconditional branch (default: empty)"
    )
    g.add_argument("--seed", type=int, default=0, help="(default: 0)")
    g.add_argument("--height", type=positive_int, help=f"pixels ({_FROM_MODEL} the model's size)")
    g.add_argument("--width", type=positive_int, help=f"pixels ({_FROM_MODEL} the model's size)")
    g.add_argument(
        "--max-frame-size",
        type=positive_int,
        default=_MAX_FRAME_SIZE,
        metavar="PIXELS",
        help=f"refuse a height or width above this (default: {_MAX_FRAME_SIZE})",
    )
    g.add_argument(
        "--resample-steps",
        type=positive_int,
        help="RePaint resampling per step (default: 1; 2 for a ModelScope-layout model)",
    )
    g.add_argument(
        "--jump-length", type=positive_int, help="RePaint jump length in steps (default: 1)"
    )
    g.add_argument(
        "--reconstruction-guidance",
        type=non_negative_float,
        default=0.0,
        help="weight of the gradient step towards the known frames (default: 0, off)",
    )


def _add_output_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if present)")
    g.add_argument(
        "--devices", help="spread each level over several devices: e.g. cuda:0,cuda:1 or cpu,cpu"
    )
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        help="the dtype every part of the model loads in, whatever it was saved in "
        "(default: bfloat16 on CUDA, float32 elsewhere)",
    )
    g.add_argument(
        "--micro-batch",
        type=auto_or_positive_int,
        default="auto",
        help="model calls per forward pass, or auto: 16 on the CPU, on CUDA sized from free "
        "memory once a batch has been measured (default: auto)",
    )
    g.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default="auto",
        help="compile the UNet with torch.compile: on = the batch shapes a render runs 50 or "
        "more passes of (a short render stays eager), all = every shape, regional = every "
        "shape, the UNet's repeated blocks one by one (a shorter compile), aot = every shape, "
        "compiled ahead of time into AOTInductor packages a later run loads without tracing "
        "(where AOTInductor cannot load them it does as pre, and says so), pre = every shape, "
        "traced ahead of time into files a later run loads without tracing, auto = the "
        "shapes on would compile, block by block as regional does (on CUDA; whole passes with "
        "cgraph or a UNet without those blocks) and off on a CPU; a minute or two per shape "
        "the first time, graphs cached in ~/.cache/storyloom/inductor or "
        "$STORYLOOM_COMPILE_CACHE (default: auto)",
    )
    g.add_argument(
        "--speedups",
        default="auto",
        help="speed-ups of the UNet and the VAE decoder, comma separated: "
        + "; ".join(f"{k} = {v}" for k, v in SPEEDUPS.items())
        + ". auto = "
        + ", ".join(
            f"{','.join(v)} on {k.upper() if k == 'cuda' else 'a CPU'}"
            for k, v in DEFAULT_SPEEDUPS.items()
        )
        + "; auto,NAME = those and NAME (auto,cgraph); none = off (default: auto)",
    )
    g.add_argument(
        "--cudnn-autotune",
        choices=("on", "off"),
        default="on",
        help="on CUDA, let cuDNN time its convolution algorithms once per shape and keep the "
        "fastest (torch.backends.cudnn.benchmark; nothing on a CPU). The pick may differ "
        "between runs, so repeats agree to rounding, not bit for bit: off for bit-exact "
        "repeats (default: on)",
    )
    g.add_argument("--cache-dir", help="keep finished calls here and resume from them")
    g.add_argument("--preview", help="also write a keyframe preview sheet (PNG)")
    g.add_argument("--stats-json", help="also write the run's statistics as JSON")
    g.add_argument(
        "--report",
        help="also write a self-contained HTML page of the render: preview sheet, script "
        "timeline, the plan level by level, time per level",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def _fail(message: Any, code: int = 2) -> int:
    """Bad input (exit code 2) or a render that failed (1): one message on stderr, no
    traceback."""
    print(f"storygen render: {message}", file=sys.stderr)
    return code


def _why(exc: BaseException) -> str:
    """An OSError as ``file: reason``; other errors as their message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


#: names of the settings in the summary
_NAMES = {
    "scheduler": "scheduler",
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "fps": "fps",
    "height": "height",
    "width": "width",
    "frames_per_call": "frames per call",
}


class _Refused(Exception):
    """A render refused before or while it runs; the message goes to stderr, exit code 2."""


def run_render(args: argparse.Namespace) -> int:
    try:
        model = _model_folder(args)
        # 1. everything that can be checked without a model, before torch loads
        script, choices, fps, num_frames = _check_request(args, model)
        # 2. the devices, the model, the settings it completes, the render
        _check_devices(args)
        pipe = _load_model(args, model, choices)
        _make_output_folders(args)  # only now: a refused render leaves no empty folder behind
        out = _render(args, pipe, script, fps, num_frames, choices)
    except _Refused as exc:
        return _fail(exc)
    except (OSError, ExportError) as exc:  # a disk that fills up, a folder removed meanwhile
        return _fail(f"the render failed: {_why(exc)}", code=1)
    written, failed = _write_extras(args, out, script=script, choices=choices)
    print(_summary(args, model, pipe, out, fps, [args.out, *written], choices))
    for flag, path, why in failed:
        _fail(f"{flag} {path} was not written: {why}", code=1)
    return 1 if failed else 0


def _model_folder(args: argparse.Namespace) -> Path:
    model = default_model(args.model)
    if model is None:
        raise _Refused(
            f"no --model given and {DEFAULT_MODEL} does not exist; pass a model folder "
            "(create a random one with `storygen new-model DIR`)"
        )
    if not model.is_dir():
        raise _Refused(f"{model}: no such model folder")
    return model


def _check_request(
    args: argparse.Namespace, model: Path
) -> tuple[Any, dict[str, Choice], float, int | None]:
    """The script, the sampling settings resolved against the model folder, the frame rate
    and the length, with every check the plan makes; nothing is loaded but the script."""
    # the script readers load YAML and pyarrow.compute: here, so that `storygen --help` stays fast
    from storygen.script import ScriptError, load_script

    hierarchical = args.mode == "hierarchical"
    for flag, value in (("--depth", args.depth), ("--policy", args.policy)):
        if value is not None and not hierarchical:
            raise _Refused(
                f"{flag} applies to --mode hierarchical only; --mode {args.mode} renders "
                "sliding windows (their overlap: --overlap)"
            )
    try:
        script = load_script(args.script, story_id=args.story_id)
        choices = sampling_choices(
            args,
            script,
            scheduler=args.scheduler,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=args.height,
            width=args.width,
        )
        fps = choices["fps"].value
        if fps is None:
            raise _Refused(no_fps_message(args))
        check_fps(fps, choices["fps"].source)
        num_frames = num_frames_of(args, fps)
        _check_sides(choices, args.max_frame_size, model)
        with frame_limit(args.max_frames):
            plan = plan_story(  # the plan's own checks: length, frames per call, depth
                script,
                fps=fps,
                num_frames=num_frames,
                frames_per_call=choices["frames_per_call"].value,
                depth=args.depth if hierarchical else None,
                policy=_policy(args),
                overlap=args.overlap,
            )
    except ScriptError as exc:
        raise _Refused(str(exc)) from None
    except ValueError as exc:
        raise _Refused(f"error: {exc}") from None
    for line in segment_warnings(script, plan, fps):  # as `storygen plan` warns
        logger.warning("%s", line)
    _check_outputs(args, fps)
    return script, choices, fps, num_frames


def _policy(args: argparse.Namespace) -> str:
    return (args.policy or "stretch") if args.mode == "hierarchical" else AUTOREGRESSIVE


def _check_sides(choices: dict[str, Choice], limit: int, model: Path) -> None:
    """The frame sides a flag or sampling.json set, against ``--max-frame-size`` and the
    model's VAE, whose latent pixels span ``factor`` × ``factor`` pixels (a side left to the
    model is checked once it loads, :func:`_load_model`)."""
    sides = {key: choices[key] for key in ("height", "width")}
    for key, choice in sides.items():
        if choice.value is not None and choice.value > limit:
            other = "width" if key == "height" else "height"
            size = (
                f"frames of {sides['height'].value}×{sides['width'].value}"
                if sides[other].value is not None
                else f"the {other} is the model's"
            )
            raise _Refused(
                f"error: {key} {choice.value} is larger than the limit of {limit} pixels "
                f"(from {choice.source}; {size}; raise the limit with --max-frame-size)"
            )
    factor = _vae_factor(model)
    for key, choice in sides.items():
        if choice.value is not None and factor and choice.value % factor:
            source = choice.source
            if "sampling.json" in source:
                source = f"{source}, {model / 'sampling.json'}"
            low, high = choice.value // factor * factor, (choice.value // factor + 1) * factor
            raise _Refused(
                f"error: {key} {choice.value} (from {source}) is not a multiple of {factor}: "
                f"the model's VAE ({model / 'vae' / 'config.json'}) makes one latent pixel of "
                f"{factor}×{factor} pixels; use {f'{low} or {high}' if low else high}"
            )


def _vae_factor(model: Path) -> int | None:
    """How many pixels one latent pixel of the model's VAE spans, a side (2 ** (blocks - 1),
    the pipeline's ``vae_scale``), from ``vae/config.json``; 1 without a VAE; None where the
    folder does not say (loading the model then names what is wrong)."""
    try:
        index = json.loads((model / "model_index.json").read_text(encoding="utf-8"))
        spec = index.get("vae")
        if not isinstance(spec, list) or not spec or spec[0] is None:
            return 1
        config = json.loads((model / "vae" / "config.json").read_text(encoding="utf-8"))
        return int(2 ** (len(config["block_out_channels"]) - 1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


#: the flags that name files or folders the render writes
_OUTPUT_FLAGS = ("--out", "--preview", "--stats-json", "--report", "--cache-dir")
#: a file name for each output, for a message that asks for one
_EXAMPLE = {
    "--out": "story.mp4",
    "--preview": "preview.png",
    "--stats-json": "stats.json",
    "--report": "report.html",
}


def _check_outputs(args: argparse.Namespace, fps: float) -> None:
    """Every path the render writes, checked before the model loads: the video's extension
    (and a GIF's frame rate), no output on another or on the script, each a file (the cache a
    folder) whose folder exists or can be made, and can be written in."""
    try:
        check_video_path(args.out, fps)
    except ValueError as exc:
        raise _Refused(f"--out {exc}") from None
    given = _given_outputs(args)
    seen: dict[Path, str] = {}
    script = Path(args.script)
    if _is_file_or_folder(script):
        seen[script.resolve()] = "the script"
    for flag, value in given:
        where = Path(value).resolve()
        if where in seen:
            other = seen[where]
            raise _Refused(
                f"{flag} {value} is {other}{'' if other == 'the script' else ' too'}: "
                "it would be overwritten; give each output a path of its own"
            )
        seen[where] = f"the path of {flag}"
    if args.preview and Path(args.preview).suffix.lower() != ".png":
        raise _Refused(
            f"--preview {args.preview}: the preview sheet is a PNG image; name a .png file, "
            f"e.g. {Path(args.preview).with_suffix('.png')}"
        )
    for flag, value in given:
        _check_writable(flag, Path(value), folder=flag == "--cache-dir")
    _remove_stale_temporaries(Path(args.out))


def _given_outputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(flag, path) of each output flag given."""
    given = [(f, getattr(args, f[2:].replace("-", "_"))) for f in _OUTPUT_FLAGS]
    return [(flag, value) for flag, value in given if value]


def _is_file_or_folder(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # script text, not a path: too long, or holding a NUL
        return False


def _check_writable(flag: str, path: Path, *, folder: bool) -> None:
    """Refuse, naming ``flag``, a file path that is a folder, a folder path that is a file,
    and a place that cannot be made or written in. Nothing is made here: a missing folder
    is checked by writing in the nearest folder that exists, and made once the model has
    loaded (:func:`_make_output_folders`)."""
    where = path if folder else path.parent
    try:
        if folder and path.exists() and not path.is_dir():
            raise _Refused(f"{flag} {path}: exists and is not a folder")
        if not folder and path.is_dir():
            raise _Refused(f"{flag} {path}: is a folder; name a file, e.g. {path / _EXAMPLE[flag]}")
        above = next((p for p in (where, *where.parents) if p.exists()), Path.cwd())
    except OSError as exc:  # a folder on the way that cannot be looked into
        raise _Refused(f"{flag} {path}: {_why(exc)}") from None
    if not above.is_dir():
        raise _Refused(f"{flag} {path}: {above} is a file, not a folder")
    try:  # the outputs are written under a temporary name, then renamed: one like it
        with tempfile.NamedTemporaryFile(dir=above, prefix=".storygen-probe-"):
            pass
    except OSError as exc:
        what = f"cannot write in {where}"
        if above != where:
            what = f"cannot create the folder {where}: cannot write in {above}"
        raise _Refused(f"{flag} {path}: {what} ({exc.strerror or exc})") from None


def _make_output_folders(args: argparse.Namespace) -> None:
    """The folders of the outputs (and the cache), made where missing, right before the
    render: :func:`_check_writable` checked that they can be."""
    for flag, value in _given_outputs(args):
        where = Path(value) if flag == "--cache-dir" else Path(value).parent
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _Refused(
                f"{flag} {value}: cannot create the folder {where} ({exc.strerror or exc})"
            ) from None


def _remove_stale_temporaries(out: Path) -> None:
    """Remove the temporary files (``.NAME.tmp-PID.mp4``) of ``out`` that renders killed
    without a chance to clean up left behind: those whose process is gone."""
    prefix = f".{out.stem}.tmp-"
    for tmp in out.parent.glob(glob.escape(prefix) + "*" + glob.escape(out.suffix)):
        pid = tmp.name[len(prefix) : len(tmp.name) - len(out.suffix)]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            logger.info("removed %s, left by an interrupted render (process %s)", tmp, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's, or no such pid
        return True
    return True


def _check_devices(args: argparse.Namespace) -> None:
    """``--device`` and each of ``--devices``: a device torch knows, present on this machine."""
    import torch

    given = [("--device", args.device)] if args.device is not None else []
    if args.devices is not None:
        given += [("--devices", d.strip()) for d in args.devices.split(",")]
    for flag, name in given:
        shown = f"{flag} {args.devices}" if flag == "--devices" else f"{flag} {name}"
        if not name:
            raise _Refused(f"{shown}: an empty device name (expected e.g. cuda:0,cuda:1)")
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise _Refused(
                f"{shown}: {name!r} is not a device (expected cpu, cuda, cuda:N or mps)"
            ) from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise _Refused(
                    f"{shown}: CUDA is not available here (no GPU, or a torch built without "
                    "CUDA); use --device cpu"
                )
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                raise _Refused(
                    f"{shown}: there is no {device}; this machine has {count} CUDA "
                    f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})"
                )
        elif device.type == "mps":
            if not torch.backends.mps.is_available():
                raise _Refused(f"{shown}: the MPS (Apple GPU) backend is not available here")
        elif device.type != "cpu":
            raise _Refused(f"{shown}: storygen renders on cpu, cuda, cuda:N or mps")


def _load_model(args: argparse.Namespace, model: Path, choices: dict[str, Choice]) -> Any:
    """The pipeline on its device; the size and scheduler no flag or file set are the model's
    (``choices`` is completed in place)."""
    import torch

    from storygen.loading import load_pipeline  # torch and diffusers

    try:
        pipe = load_pipeline(
            model,
            torch_dtype=torch_dtype(args.dtype),
            scheduler=choices["scheduler"].value,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise _Refused(str(exc)) from None
    devices = _devices(args)
    device = args.device or (devices[0] if devices else None)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        # the device's default, whatever the parts were saved in: left to them, diffusers
        # loads the UNet and VAE in float32 but transformers the text encoder in its own
        want = getattr(torch, default_dtype(device))
        for part in pipe.components.values():
            if isinstance(part, torch.nn.Module) and any(
                p.is_floating_point() and p.dtype != want for p in part.parameters()
            ):
                part.to(want)
    default_h, default_w = pipe.default_size()
    for key, value in (("height", default_h), ("width", default_w)):
        if choices[key].value is None:
            choices[key] = Choice(value, "the model's config")
    if choices["scheduler"].value is None:
        choices["scheduler"] = Choice(type(pipe.scheduler).__name__, "saved in the model folder")
    try:
        check_frame_size(choices["height"].value, choices["width"].value, args.max_frame_size)
    except ValueError as exc:
        raise _Refused(f"error: {exc}") from None
    pipe.to(device)
    return pipe


def default_dtype(device: str) -> str:
    """What a render without ``--dtype`` runs in: bfloat16 on CUDA (the speed-ups and their
    measured figures are bfloat16's), float32 elsewhere."""
    return "bfloat16" if str(device).startswith("cuda") else "float32"


def _devices(args: argparse.Namespace) -> list[str] | None:
    return [d.strip() for d in args.devices.split(",")] if args.devices else None


def _render(
    args: argparse.Namespace,
    pipe: Any,
    script: Any,
    fps: float,
    num_frames: int | None,
    choices: dict[str, Choice],
) -> Any:
    """The render, its frames streamed to ``--out``."""
    hierarchical = args.mode == "hierarchical"
    try:
        with frame_limit(args.max_frames), frame_size_limit(args.max_frame_size):
            return pipe(
                script,
                num_frames,
                fps=fps,
                frames_per_call=choices["frames_per_call"].value,
                depth=args.depth if hierarchical else None,
                policy=_policy(args),
                overlap=args.overlap,
                num_inference_steps=choices["num_inference_steps"].value,
                guidance_scale=choices["guidance_scale"].value,
                negative_prompt=args.negative_prompt,
                generator=args.seed,
                height=choices["height"].value,
                width=choices["width"].value,
                micro_batch=args.micro_batch,
                output_type=None,
                output_path=args.out,
                cache_dir=args.cache_dir,
                devices=_devices(args),
                resample_steps=args.resample_steps,
                jump_length=args.jump_length,
                reconstruction_guidance=args.reconstruction_guidance,
                progress=not args.no_progress,
                compile=args.compile,
                cudnn_autotune=args.cudnn_autotune == "on",
                speedups=args.speedups,
            )
    except ValueError as exc:
        raise _Refused(f"error: {exc}") from None


def _write_extras(
    args: argparse.Namespace, out: Any, *, script: Any, choices: dict[str, Any]
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The preview sheet, the statistics JSON and the report page, where asked for, each
    written whether or not another could be; returns the paths written, and (flag, path,
    why) of each that could not be."""
    written: list[str] = []
    failed: list[tuple[str, str, str]] = []

    def stats_json(path: str) -> None:
        data = {"stats": out.stats.to_dict(), "plan": out.plan.to_dict(calls=False)}
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    sheets: list[Any] = []  # the preview sheet, once drawn

    def preview_sheet(path: str) -> None:
        sheets.append(plan_sheet(out.keyframes, out.plan, path))

    def sheet_png() -> bytes | None:
        """The sheet as PNG bytes for the report page: --preview's, else drawn in memory."""
        if not out.keyframes:
            return None
        buffer = io.BytesIO()
        try:
            image = sheets[0] if sheets else plan_sheet(out.keyframes, out.plan, None)
            image.save(buffer, format="PNG")
        except (OSError, ValueError) as exc:
            logger.warning(
                "--report %s: the page has no preview sheet (%s)", args.report, _why(exc)
            )
            return None
        return buffer.getvalue()

    preview = args.preview if args.preview and out.keyframes else None
    extras = [
        ("--preview", preview, preview_sheet),
        ("--stats-json", args.stats_json, stats_json),
        (
            "--report",
            args.report,
            lambda path: write_render_report(
                path,
                out.stats,
                out.plan,
                sheet_png(),
                script=script,
                settings={key: choice.value for key, choice in choices.items()},
                video=args.out,
            ),
        ),
    ]
    for flag, path, write in extras:
        if not path:
            continue
        try:
            write(path)
        except (OSError, ExportError, ValueError) as exc:
            failed.append((flag, path, _why(exc)))
        else:
            written.append(path)
    return written, failed


#: what a compile fallback's message says ran instead (:func:`storygen.accel.aot_fallbacks`)
_INSTEAD = {
    "runs precompiled graphs": "precompiled graphs instead",
    "blocks compile one by one": "its blocks compiled one by one instead",
    "runs eager": "eager instead",
}


def _instead(why: str) -> str:
    return next((v for k, v in _INSTEAD.items() if k in why), "compiled in process instead")


def _speedups(stats: Any) -> str:
    """The speed-ups and compile state of a render, for its summary."""
    if not stats.unet_forwards and stats.calls_from_cache:  # whether or not set up for it
        parts = ["none needed: every model call came from the cache"]
    else:
        parts = [f"{k} ({n} layers)" if n else k for k, n in stats.speedups.items()] or ["none"]
    if stats.compiled_rows:
        phases = stats.compile_phases_s
        # graphs built ahead of time and read back from the disk (aot, pre), none built now
        loaded = ("aot_load" in phases or "pre_load" in phases) and not (
            "aot_compile" in phases or "pre_compile" in phases
        )
        parts.append(
            f"compiled {', '.join(str(r) for r in stats.compiled_rows)}-row passes "
            f"({stats.compile_s:.0f} s {'loading saved graphs' if loaded else 'compiling'})"
        )
    elif stats.compiled:
        parts.append("compile on, no shape ran enough passes to repay it")
    for why in stats.compile_fallbacks:  # "compile='aot': <why>; <what runs instead> (...)"
        parts.append(f"{why.split(':', 1)[0]} not possible here: {_instead(why)} (see the log)")
    if stats.decoder_compiled:
        parts.append("decoder compiled")
    if stats.cudnn_autotune:
        parts.append("cuDNN autotuner")
    return ", ".join(parts)


def _summary(
    args: argparse.Namespace,
    model: Path,
    pipe: Any,
    out: Any,
    fps: float,
    written: list[str],
    choices: dict[str, Any],
) -> str:
    plan, stats = out.plan, out.stats
    settings = describe(choices, _NAMES)
    lines = [
        f"rendered {plan.num_frames} frames ({plan.num_frames / fps:.2f} s at {fps:g} fps) "
        f"with {model} ({type(pipe.unet).__name__}, {type(pipe.scheduler).__name__})",
        f"  mode            {args.mode}"
        + (f", depth {plan.depth}" if args.mode == "hierarchical" else f", overlap {args.overlap}"),
        *(f"  {'settings' if i == 0 else '':<16}{line}" for i, line in enumerate(settings)),
        f"  model calls     {plan.model_calls} ({stats.calls_from_cache} from cache) "
        f"in {plan.rounds} sequential round{'s' if plan.rounds != 1 else ''}, "
        f"{stats.unet_forwards} batched UNet passes",
        f"  wall time       {stats.wall_time_s:.1f} s"
        + (
            " ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in stats.stage_times_s.items() if v >= 0.05)
            + ")"
            if stats.stage_times_s
            else ""
        ),
        f"  speed-ups       {_speedups(stats)}",
        f"  peak memory     {_human_bytes(stats.peak_memory_bytes)} ({stats.peak_memory_kind}), "
        f"at most {stats.peak_frames_held} frames held",
        f"  devices         {', '.join(stats.devices)}",
    ]
    if stats.cache_dir:
        lines.append(
            f"  cache           {stats.cache_dir}"
            + (f" (stopped keeping calls: {stats.cache_error})" if stats.cache_error else "")
        )
    lines.append("  wrote           " + ", ".join(written))
    return "\n".join(lines)
