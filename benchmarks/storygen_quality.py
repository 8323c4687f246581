"""How good are a storygen model's stories? The pixel probe on held-out scripts.

Renders held-out shapes-world stories (a seed family training never draws) with a model
folder, reads every frame back with the shapes world's pixel readers and prints, beside the
readers' ceiling on real frames of the same stories: colour, shape, background and all three
per frame, motion per segment, within-segment identity, flicker and the seam ratio (see
:mod:`storygen.training.probe`). Parts:

- the probe: ``--stories`` stories of ``--frames`` frames, hierarchical and autoregressive;
- ``--sweep``: guidance and step counts on fewer stories (hierarchical), to pick the defaults
  a model folder recommends;
- ``--lengths``: NUWA-XL's length experiment (16, 226, 3,376 frames at L = 16), both modes,
  with "all facts right" per quarter and per tenth of the video (does a mode drift?);
- ``--training-free``: the same network as a plain text-to-video model (ModelScope layout,
  no mask channels) run training-free (replacement + RePaint resampling) on the same stories.

    python benchmarks/storygen_quality.py                      # CPU: 4 short stories
    python benchmarks/storygen_quality.py --device cuda --stories 32 --frames 226 \\
        --sweep --lengths 16,226,3376 --training-free --plot benchmarks/results/storygen_drift.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from storygen.training.probe import (  # noqa: E402
    MODES,
    REAL_KEYFRAMES,
    PoolRenderer,
    evaluate,
    held_out_stories,
    keyframe_motion,
    load_settings,
    prompt_sensitivity,
)

COLUMNS = ("color", "shape", "background", "all", "motion", "identity", "flicker", "seam_ratio")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    head = f"{'':<26}" + "".join(f"{c[:10]:>11}" for c in COLUMNS)
    lines = [title, head]
    for name, r in rows.items():
        lines.append(f"{name:<26}" + "".join(f"{_fmt(r.get(c)):>11}" for c in COLUMNS))
    return "\n".join(lines)


def load(folder: str, device: str, scheduler: str | None) -> Any:
    import torch

    from storygen.loading import load_pipeline

    pipe = load_pipeline(folder, scheduler=scheduler)
    return pipe.to(torch.device(device))


def probe(
    pipe: Any,
    settings: dict[str, Any],
    *,
    stories: int,
    frames: int,
    modes: Any,
    renderer: Any = None,
) -> dict:
    return evaluate(
        pipe,
        held_out_stories(stories, num_frames=frames),
        settings=settings,
        modes=modes,
        renderer=renderer,
    )


def parse_length_stories(text: str, lengths: list[int]) -> dict[int, int]:
    """``"4"`` (every length) or ``"16:32,226:32,3376:8"`` (per length) -> {length: stories}."""
    if ":" not in text:
        return dict.fromkeys(lengths, int(text))
    given = {int(k): int(v) for k, v in (part.split(":") for part in text.split(","))}
    missing = [n for n in lengths if n not in given]
    if missing:
        raise SystemExit(f"--length-stories names no story count for length(s) {missing}")
    return {n: given[n] for n in lengths}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_grad_enabled(False)
    settings = load_settings(args.model)
    for key in (
        "guidance_scale",
        "num_inference_steps",
        "overlap",
        "reconstruction_guidance",
        "resample_steps",
    ):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings.setdefault("num_inference_steps", 12)
    settings.setdefault("guidance_scale", 2.0)
    settings["micro_batch"] = args.micro_batch
    if args.stories_per_render < 1:
        raise SystemExit("--stories-per-render must be at least 1")
    if args.stories_per_render > 1:
        settings["stories_per_render"] = args.stories_per_render
    pipe = load(args.model, args.device, settings.get("scheduler"))
    pool = (
        PoolRenderer(args.model, args.device, settings.get("scheduler"), args.processes)
        if args.processes > 1
        else None
    )
    result: dict[str, Any] = {
        "model": str(args.model),
        "device": torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "settings": settings,
        "processes": args.processes,
    }
    started = time.perf_counter()

    def save() -> None:  # after every part, so a run cut short keeps what it measured
        result["wall_time_s"] = time.perf_counter() - started
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2))

    modes = (*args.modes, REAL_KEYFRAMES) if args.real_keyframes else args.modes
    if modes:
        main = probe(
            pipe, settings, stories=args.stories, frames=args.frames, modes=modes, renderer=pool
        )
        result["probe"] = main
        save()
        print(
            table(
                f"probe: {args.stories} held-out stories of {args.frames} frames "
                f"({settings['num_inference_steps']} steps, guidance {settings['guidance_scale']})",
                {"ceiling (real frames)": main["ceiling"]} | {m: main[m] for m in modes},
            )
        )
    if args.sweep:
        sweep = {}
        for guidance in args.sweep_guidance:
            for steps in args.sweep_steps:
                s = settings | {"guidance_scale": guidance, "num_inference_steps": steps}
                r = probe(
                    pipe,
                    s,
                    stories=args.sweep_stories,
                    frames=args.frames,
                    modes=("hierarchical",),
                    renderer=pool,
                )
                sweep[f"guidance {guidance:g}, {steps} steps"] = r["hierarchical"]
        result["sweep"] = sweep
        save()
        print(table(f"\nsweep: {args.sweep_stories} stories, hierarchical", sweep))
    if args.keyframe_motion:
        km = keyframe_motion(
            pipe, held_out_stories(args.stories, num_frames=args.frames), settings=settings
        )
        result["keyframe_motion"] = km
        save()
        print(
            f"\nglobal keyframes alone: motion {_fmt(km['motion'])} over {km['segments']} "
            f"segments (real frames at the same positions {_fmt(km['motion_ceiling'])}), "
            f"colour {_fmt(km['color'])}"
        )
    if args.prompt_sensitivity:
        ps = prompt_sensitivity(pipe, reference_draws=args.reference_draws)
        result["prompt_sensitivity"] = ps
        save()
        m = ps["mean"]
        print(
            f"\nprompt sensitivity ({ps['windows']} windows, times {ps['times']}): the prediction "
            f"moves {m['motion']:.4f} when the motion word flips, {m['colour']:.4f} when the "
            f"colour changes, {m['empty']:.4f} with no prompt (motion / colour "
            f"{ps['motion_vs_colour']:.3f})"
        )
        if "last_time" in ps:
            got, ref = ps["last_time"]["model"], ps["last_time"]["reference"]
            print(
                f"at t = {ps['last_time']['time']} (the mean video of the prompt): motion "
                f"{got['motion']:.4f}, colour {got['colour']:.4f}; the mean of "
                f"{args.reference_draws} real videos per prompt: motion {ref['motion']:.4f}, "
                f"colour {ref['colour']:.4f} (estimate noise {ref['noise']:.4f})"
            )
    if args.training_free:
        from storygen.training.folder import to_t2v_folder
        from storygen.training_free import is_t2v_layout

        source = args.t2v_model or args.model
        with tempfile.TemporaryDirectory() as tmp:
            folder = (
                Path(source) if is_t2v_layout(source) else to_t2v_folder(source, Path(tmp) / "t2v")
            )
            t2v = load(str(folder), args.device, settings.get("scheduler"))
            t2v_pool = (
                PoolRenderer(str(folder), args.device, settings.get("scheduler"), args.processes)
                if args.processes > 1
                else None
            )
            try:
                tf = probe(
                    t2v,
                    settings,
                    stories=args.stories,
                    frames=args.frames,
                    modes=("hierarchical",),
                    renderer=t2v_pool,
                )
            finally:
                if t2v_pool is not None:
                    t2v_pool.close()
            del t2v
        result["training_free"] = tf | {"model": str(source)}
        save()
        masked = {"masked local model": main["hierarchical"]} if "hierarchical" in modes else {}
        print(
            table(
                f"\ntraining-free vs masked: {args.stories} stories of {args.frames} frames",
                masked | {"training-free (RePaint)": tf["hierarchical"]},
            )
        )
    if args.lengths:
        lengths: dict[str, Any] = {}
        wanted = [int(v) for v in args.lengths.split(",")]
        counts = parse_length_stories(args.length_stories, wanted)
        length_modes = args.length_modes
        for n in wanted:
            if set(length_modes) <= set(modes) and n == args.frames and counts[n] == args.stories:
                r = main  # the same stories as the probe's: not rendered twice
            else:
                r = probe(
                    pipe, settings, stories=counts[n], frames=n, modes=length_modes, renderer=pool
                )
            lengths[str(n)] = r
            result["lengths"] = lengths
            save()
            print_lengths({str(n): r}, modes=length_modes)
        result["lengths"] = lengths
    if pool is not None:
        pool.close()
    if args.plot and args.lengths:
        plot_drift(result["lengths"], args.plot)
        result["plot"] = args.plot
        print(f"\nplot: {args.plot}")
    save()
    return result


def merge_lengths(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The length experiments of several results files as one: per length, the modes each
    file measured (a later file's reading of a mode replaces an earlier one's). Runs of one
    length must have read the same stories (their ceilings agree), or ``SystemExit``."""
    merged: dict[str, Any] = {}
    for i, result in enumerate(results):
        for n, r in result.get("lengths", {}).items():
            if n in merged and merged[n]["ceiling"] != r["ceiling"]:
                raise SystemExit(
                    f"--merge-lengths: file {i + 1} read other stories of length {n} "
                    "(another ceiling) than an earlier file"
                )
            merged.setdefault(n, {}).update(r)
    if not merged:
        raise SystemExit("--merge-lengths: no length experiment in these files")
    return dict(sorted(merged.items(), key=lambda kv: int(kv[0])))


def print_lengths(lengths: dict[str, Any], modes: Any = MODES) -> None:
    """Per length, the table of ``modes`` (those measured) and each mode's quarters."""
    for n, r in lengths.items():
        shown = [m for m in modes if m in r]
        title = f"\nlength {n}: {r['ceiling'].get('stories', '?')} stories"
        print(table(title, {"ceiling": r["ceiling"]} | {m: r[m] for m in shown}))
        for m in shown:
            q = " ".join(f"{v:.2f}" for v in r[m]["quarters_all"])
            print(f"  {m:<16} all facts by quarter: {q}   wall {r[m]['wall_time_s']:.1f} s")


def _dashed(d: Any, a: tuple[float, float], b: tuple[float, float], fill: str) -> None:
    """A dashed line from a to b (8 px on, 6 px off)."""
    (x0, y0), (x1, y1) = a, b
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
    pos = 0.0
    while pos < length:
        end = min(pos + 8, length)
        d.line(
            [
                (x0 + (x1 - x0) * pos / length, y0 + (y1 - y0) * pos / length),
                (x0 + (x1 - x0) * end / length, y0 + (y1 - y0) * end / length),
            ],
            fill=fill,
            width=3,
        )
        pos += 14


def plot_drift(lengths: dict[str, Any], path: str, low: float = 0.5) -> None:
    """Adherence (all facts right) by tenth of the video, per length and mode, as a PNG:
    solid lines and filled dots hierarchical, dashed lines and hollow squares autoregressive;
    the grey line is the readers' ceiling on real frames of the longest length."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 960, 480, 70, 210, 40, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    x_of = lambda i: left + (w - left - right) * (i + 0.5) / 10  # noqa: E731
    y_of = lambda v: h - bottom - (h - top - bottom) * (max(v, low) - low) / (1 - low)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(6):
        v = low + (1 - low) * k / 5
        d.line([left - 4, y_of(v), left, y_of(v)], fill="black")
        d.line([left, y_of(v), w - right, y_of(v)], fill="#eeeeee")
        d.text((left - 40, y_of(v) - 6), f"{v:.1f}", fill="black")
    for i in range(10):
        d.text((x_of(i) - 12, h - bottom + 8), f"{i * 10 + 5}%", fill="black")
    d.text((left + 150, h - 25), "position in the video (tenths of its frames)", fill="black")
    d.text((left, 12), "share of frames with colour, shape and background all right", fill="black")
    longest = max(lengths, key=int)
    ceiling = lengths[longest]["ceiling"]["all"]
    d.line([left, y_of(ceiling), w - right, y_of(ceiling)], fill="#999999", width=2)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for i, (n, r) in enumerate(lengths.items()):
        color = colors[i % len(colors)]
        for mode in [m for m in ("hierarchical", "autoregressive") if m in r]:
            pts = [(x_of(x), y_of(v)) for x, v in enumerate(r[mode]["tenths_all"])]
            for a, b in zip(pts, pts[1:]):
                if mode == "hierarchical":
                    d.line([a, b], fill=color, width=3)
                else:
                    _dashed(d, a, b, color)
            for x, y in pts:
                if mode == "hierarchical":
                    d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
                else:
                    d.rectangle([x - 4, y - 4, x + 4, y + 4], outline=color, fill="white", width=2)
        d.text((w - right + 15, top + 10 + 18 * i), f"{n} frames", fill=color)
    ly = top + 30 + 18 * len(lengths)
    d.line([w - right + 15, ly + 6, w - right + 45, ly + 6], fill="black", width=3)
    d.text((w - right + 52, ly), "hierarchical", fill="black")
    _dashed(d, (w - right + 15, ly + 26), (w - right + 45, ly + 26), "black")
    d.text((w - right + 52, ly + 20), "autoregressive", fill="black")
    d.line([w - right + 15, ly + 46, w - right + 45, ly + 46], fill="#999999", width=2)
    d.text((w - right + 52, ly + 40), "ceiling (real frames)", fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "shapes-storygen"))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--stories", type=int, default=4, help="held-out stories of the probe (32 for the README)"
    )
    p.add_argument(
        "--frames", type=int, default=46, help="frames per story of the probe (226 for the README)"
    )
    p.add_argument(
        "--guidance-scale", type=float, default=None, help="override the folder's guidance"
    )
    p.add_argument(
        "--num-inference-steps", type=int, default=None, help="override the folder's steps"
    )
    p.add_argument(
        "--overlap", type=int, default=None, help="known frames per autoregressive window"
    )
    p.add_argument(
        "--reconstruction-guidance",
        type=float,
        default=None,
        help="override: pull each call towards its known frames by this weight (0: off)",
    )
    p.add_argument(
        "--resample-steps",
        type=int,
        default=None,
        help="override: RePaint passes per step of calls with known frames (1: off)",
    )
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument(
        "--stories-per-render",
        type=int,
        default=1,
        help="render this many stories side by side in one run, their calls batched level by "
        "level (a GPU runs 8 stories' sliding windows in about the time of one; other noise "
        "per call than one by one, the same sampler)",
    )
    p.add_argument("--sweep", action="store_true", help="also sweep guidance and steps")
    p.add_argument(
        "--sweep-guidance",
        type=lambda s: [float(v) for v in s.split(",")],
        default=[1.0, 1.5, 2.0, 3.0],
    )
    p.add_argument("--sweep-steps", type=lambda s: [int(v) for v in s.split(",")], default=[8, 12])
    p.add_argument("--sweep-stories", type=int, default=12)
    p.add_argument(
        "--lengths", default="", help="comma-separated story lengths for the drift experiment"
    )
    p.add_argument(
        "--length-stories",
        default="4",
        help='stories per length: "4", or per length as "16:32,226:32,3376:8"',
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes rendering stories side by side on the device (the numbers are "
        "the same; only wall time changes)",
    )
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help="modes of the main probe, comma separated (empty: none, e.g. to read only "
        "--keyframe-motion)",
    )
    p.add_argument("--training-free", action="store_true", help="also probe the training-free mode")
    p.add_argument(
        "--t2v-model",
        default=None,
        help="with --training-free: the plain text-to-video model it runs (a ModelScope-layout "
        "folder, or one `storygen train --text-to-video 1` wrote, exported on the fly); "
        "default: --model's own network without its mask channels",
    )
    p.add_argument(
        "--real-keyframes",
        action="store_true",
        help="also probe the local levels alone: hierarchical with the real keyframes in place "
        "of the global call's (does the local model fill in motion and identity?)",
    )
    p.add_argument(
        "--keyframe-motion",
        action="store_true",
        help="also read motion from the global call's keyframes alone, per segment with 3 or "
        "more of them (cheap: one call a story; where motion is lost first)",
    )
    p.add_argument(
        "--prompt-sensitivity",
        action="store_true",
        help="also measure how far the model's prediction moves when the prompt's motion word "
        "flips (left/right, growing/shrinking), beside a colour change (seconds: no sampling)",
    )
    p.add_argument(
        "--reference-draws",
        type=int,
        default=32,
        help="with --prompt-sensitivity: real renders per prompt whose mean video says how far "
        "a model that has learnt its prompts moves at t = 999 (0: skip; 64 take about 6 "
        "minutes on two CPU cores)",
    )
    p.add_argument(
        "--length-modes",
        default=",".join(MODES),
        help="modes of the length experiment (one per run splits a long experiment over "
        "several device calls; --merge-lengths joins the runs)",
    )
    p.add_argument(
        "--merge-lengths",
        nargs="+",
        default=None,
        metavar="JSON",
        help="render nothing: join the length experiments of these results files (later files "
        "add modes and lengths to earlier ones; a length's stories must agree), print the "
        "tables, write --out and --plot",
    )
    p.add_argument("--plot", default=None, help="PNG of adherence by position (with --lengths)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "storygen_quality.json"))
    args = p.parse_args(argv)
    args.modes = tuple(m for m in args.modes.split(",") if m)
    args.length_modes = tuple(m for m in args.length_modes.split(",") if m)
    for flag, given in (("--modes", args.modes), ("--length-modes", args.length_modes)):
        unknown = [m for m in given if m not in MODES]
        if unknown:
            p.error(f"{flag}: unknown mode(s) {unknown}; expected some of {MODES}")
    if args.merge_lengths:
        merged = merge_lengths([json.loads(Path(f).read_text()) for f in args.merge_lengths])
        out = {"merged_from": list(args.merge_lengths), "lengths": merged}
        print_lengths(merged)
        if args.plot:
            plot_drift(merged, args.plot)
            out["plot"] = args.plot
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(f"\nresults: {args.out}")
        return 0
    run(args)
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
