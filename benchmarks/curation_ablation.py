"""The measured value of curation (issue 18): one storygen model trained three ways.

Same network, steps and seed; only the training data differs:

* ``raw``: every window of every video of a noisy shapes-world corpus, every frame prompted
  with the video's manifest caption, noise and all (``curate export --raw``), as someone would
  train on WebVid as it comes;
* ``curated``: ``curate run``'s kept, non-duplicate clips with their timed re-captions
  (``curate export``); trained with two seeds to measure the seed-to-seed spread;
* ``truth``: the shapes renderer's clean story windows (``storygen train`` without
  ``--shards``): the ceiling.

Every arm is probed on the same held-out scripts by :mod:`storygen.training.probe` (colour,
shape, background, motion, all three facts right), read from pixels.

Steps (CPU for ``prepare`` and ``table``, a GPU for ``train`` and ``probe``)::

    python benchmarks/curation_ablation.py prepare --out .ablation      # corpus, run, shards
    python benchmarks/curation_ablation.py train --arm curated --shards .ablation/carry/curated \\
        --out /tmp/curated-s0 --device cuda --workers 14 --steps 3000 --seed 0 \\
        --vae models/shapes-storygen                    # one autoencoder for every arm
    python benchmarks/curation_ablation.py probe --model curated-s0=/tmp/curated-s0 \\
        --device cuda --out results/curated-s0.json --sheet results
    python benchmarks/curation_ablation.py table --results results/*.json
    python benchmarks/curation_ablation.py dry-run --out /tmp/abl     # all of it, tiny, on CPU

``prepare`` checks that each arm's carried folder (its tar shards and ``_export.json``) fits
in one device call beside the repository and the wheels the GPU image lacks (diffusers; the
samples decode with the image's OpenCV), and writes ``prepare.json`` with the sizes. The arms may run in separate GPU sittings:
each ``probe`` writes a JSON that ``table`` merges.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
#: what one device call may carry, and the wheels the GPU image lacks (measured sizes of
#: diffusers-0.42.1-py3-none-any.whl and importlib_metadata-10.2.0-py3-none-any.whl); the
#: samples decode there with the image's OpenCV (curate.export.decode_mp4), since decord's
#: 13.6 MB wheel no longer fits beside the repository and one arm's shards
TRANSFER_BYTES = 64 * MIB
WHEEL_BYTES = 6_355_908 + 34_109
ARMS = ("raw", "curated", "truth")
FACTS = ("color", "shape", "background", "motion", "all")

#: prepare / train settings: the full ablation and the CPU dry run
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "videos": 2000,
        "resolutions": "128x128",
        "size": 64,
        "fps": 8.0,
        "frames": 32,
        "crf": 23,
        "pix_fmt": "yuv444p",
        "max_samples": 950,
        "samples_per_shard": 200,
        "train_frames": 16,
        "model_preset": "shapes",
        "batch_size": 64,
        "vae_steps": 4000,
        "stories": 32,
        "num_frames": 226,
    },
    "micro": {
        "videos": 6,
        "resolutions": "64x64",
        "size": 32,
        "fps": 8.0,
        "frames": 8,
        "crf": 23,
        "pix_fmt": "yuv444p",
        "max_samples": 40,
        "samples_per_shard": 10,
        "train_frames": 8,
        "model_preset": "micro",
        "batch_size": 2,
        "vae_steps": 2,
        "stories": 1,
        "num_frames": 16,
    },
}


def repo_bytes() -> int:
    """What a device call carries of the repository: tracked files plus untracked ones that
    git does not ignore."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum(
        (ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file()
    )


# --- prepare (CPU) ---------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    from curate.export import ExportSettings, export_run
    from curate.shapes import GroundTruth, generate_corpus
    from pipelines.curate import run as curate_run
    from pipelines.options import runner_flags

    p = PRESETS[args.preset]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    corpus = out / "corpus"
    t = time.perf_counter()
    if (corpus / GroundTruth.FILE_NAME).exists():
        print(f"corpus: reusing {corpus}")
    else:  # the synth defaults (noise mix, duplicates, transitions), square frames
        generate_corpus(
            corpus,
            videos=args.videos or p["videos"],
            seed=args.seed,
            resolutions=p["resolutions"].split(","),
            workers=args.workers,
            progress=not args.quiet,
        )
    timings["synth_s"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = curate_run(
        [
            f"--input={corpus / 'manifest.jsonl'}",
            f"--output={out / 'run'}",
            *runner_flags("local", workers=args.workers),
        ],
        progress=not args.quiet,
    )
    timings["curate_s"] = time.perf_counter() - t
    print("\n".join(summary.lines()))
    arms: dict[str, Any] = {}
    base = repo_bytes()
    for arm in ("raw", "curated"):
        settings = ExportSettings(
            width=p["size"],
            height=p["size"],
            fps=p["fps"],
            frames=p["frames"],
            crf=p["crf"],
            pix_fmt=p["pix_fmt"],
            samples_per_shard=p["samples_per_shard"],
            raw=arm == "raw",
            max_samples=args.max_samples or p["max_samples"],
        )
        t = time.perf_counter()
        shards = out / "shards" / arm
        result = export_run(out / "run", shards, settings, workers=args.workers)
        timings[f"export_{arm}_s"] = time.perf_counter() - t
        carry = out / "carry" / arm
        shutil.rmtree(carry, ignore_errors=True)
        carry.mkdir(parents=True)
        for f in [*sorted(shards.glob("shard-*.tar")), shards / "_export.json"]:
            shutil.copy2(f, carry / f.name)
        carried = sum(f.stat().st_size for f in carry.iterdir())
        total = base + WHEEL_BYTES + carried
        arms[arm] = {
            "samples": result.samples,
            "frames": result.counts["frames"],
            "videos": result.counts["videos_exported"],
            "failures": result.failures,
            "shard_bytes": result.bytes,
            "carried_bytes": carried,
            "call_bytes": total,
            "fits": total <= TRANSFER_BYTES,
        }
    report = {
        "preset": args.preset,
        "settings": p,
        "seed": args.seed,
        "run_counts": summary.counts if hasattr(summary, "counts") else None,
        "repo_bytes": base,
        "wheel_bytes": WHEEL_BYTES,
        "transfer_limit_bytes": TRANSFER_BYTES,
        "arms": arms,
        "timings": timings,
    }
    (out / "prepare.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"{'arm':8} {'samples':>8} {'frames':>8} {'videos':>7} {'shards MB':>10} {'call MiB':>9}")
    for arm, a in arms.items():
        print(
            f"{arm:8} {a['samples']:8d} {a['frames']:8d} {a['videos']:7d} "
            f"{a['carried_bytes'] / 1e6:10.2f} {a['call_bytes'] / MIB:9.2f}"
            f"{'' if a['fits'] else '  OVER the 64 MiB transfer: lower --max-samples'}"
        )
    print(f"repository {base / 1e6:.1f} MB, wheels {WHEEL_BYTES / 1e6:.1f} MB; {out}/prepare.json")
    return report


# --- train and probe (GPU) -------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict[str, Any]:
    """One arm; every arm gets the same network, steps, batch, seed and schedule."""
    from storygen.training.unet import TrainConfig
    from storygen.training.unet import train as train_unet

    p = PRESETS[args.preset]
    shards = None if args.shards in (None, "none") else args.shards
    if (args.arm == "truth") != (shards is None):
        raise SystemExit(
            "--arm truth trains on the renderer (--shards none); the others need shards"
        )
    if shards is not None:
        from storygen.training.shards import ShardWindows

        ShardWindows(shards, batch_size=1, frames=p["train_frames"], size=p["size"], seed=0)
    config = TrainConfig(
        out=args.out,
        init=args.init,
        shards=shards,
        steps=args.steps,
        batch_size=args.batch_size or p["batch_size"],
        frames=p["train_frames"],
        size=p["size"],
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        preset=p["model_preset"],
        vae_steps=args.vae_steps or p["vae_steps"],
        # a continued arm keeps the autoencoder of the folder it continues
        vae=None if args.init else args.vae,
        max_minutes=args.max_minutes,
        eval_stories=0,
        log_every=max(1, min(100, args.steps // 10)),
    )
    # the sitting owns its arms' folders: a new sitting's arm replaces the last one's
    report = train_unet(config, force=True)
    print(json.dumps({"arm": args.arm, "steps_done": report["steps_done"]}))
    return report


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Probe each NAME=FOLDER on the same held-out stories; one JSON for all of them."""
    from storygen.training.probe import evaluate_folder, held_out_stories

    p = PRESETS[args.preset]
    results: dict[str, Any] = {}
    for spec in args.model:
        name, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--model takes NAME=FOLDER, got {spec!r}")
        started = time.perf_counter()
        report = evaluate_folder(
            folder,
            stories=args.stories or p["stories"],
            num_frames=args.num_frames or p["num_frames"],
            device=args.device,
            modes=("hierarchical",),
            overrides={"micro_batch": 16},
            processes=args.processes,
        )
        report["probe_time_s"] = time.perf_counter() - started
        training = Path(folder) / "training.json"
        if training.is_file():
            t = json.loads(training.read_text())
            report["training"] = {
                "config": t.get("config"),
                "steps_done": t.get("steps_done"),
                "unet_time_s": t.get("unet_time_s"),
            }
        results[name] = report
        if args.sheet:
            sheet(folder, name, Path(args.sheet), args, held_out_stories, p)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(format_table(results))
    return results


def sheet(folder: str, name: str, out: Path, args: Any, stories: Any, p: dict) -> Path:
    """The first held-out script rendered by the model: 8 frames with their prompts."""
    import numpy as np
    import torch

    from storygen.export import preview_sheet
    from storygen.loading import load_pipeline
    from storygen.training.probe import load_settings, render_story

    settings = load_settings(folder)
    pipe = load_pipeline(folder, scheduler=settings.get("scheduler"))
    pipe.to(torch.device(args.device))
    story = stories(1, num_frames=args.num_frames or p["num_frames"])[0]
    frames, _ = render_story(pipe, story, mode="hierarchical", settings=settings, seed=0)
    prompts = story.prompts()
    fps = float(settings.get("fps") or 8.0)
    picks = np.linspace(0, len(frames) - 1, 8).round().astype(int)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sheet-{name}.png"
    entries = [(int(i), i / fps, prompts[i], frames[i]) for i in picks]
    preview_sheet(entries, path, columns=8, thumb_width=128, title=f"{name}: {story.story_id}")
    return path


def parse_arm_spec(spec: str) -> tuple[str, str, str, int]:
    """``NAME=ARM:SHARDS:SEED`` (``raw-s0=raw:.ablation/carry/raw:0``, ``truth=truth:none:0``)."""
    name, _, rest = spec.partition("=")
    parts = rest.split(":")
    if not name or len(parts) != 3 or parts[0] not in ARMS or not parts[2].isdigit():
        raise SystemExit(f"--arm takes NAME=ARM:SHARDS:SEED with ARM one of {ARMS}, got {spec!r}")
    return name, parts[0], parts[1], int(parts[2])


def sitting(args: argparse.Namespace) -> dict[str, Any]:
    """Several arms in one GPU sitting: their trainings side by side on the device (each a
    process with its share of the data workers; a 12 M-parameter UNet leaves an H200 mostly
    idle, so two arms take little longer than one), then each model probed in turn. Writes
    ``NAME.log``, ``NAME.json`` and ``sheet-NAME.png`` per arm under ``--out``.

    ``--continue`` trains each arm on from its folder under ``--models`` (what an earlier call
    of the same sitting left on the machine), so a sitting of several 10-minute device calls
    gives every arm the same longer training: all but the last call with ``--no-probe``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = [parse_arm_spec(spec) for spec in args.arm]
    models = Path(args.models)
    if args.continue_:
        missing = [n for n, *_ in arms if not (models / n / "training.json").is_file()]
        if missing:
            raise SystemExit(f"--continue: no trained folder under {models} for {missing}")
    if args.to_steps is not None and not args.continue_:
        raise SystemExit("--to-steps evens continued arms out; it needs --continue")
    workers = max(0, args.workers // max(1, len(arms)))
    procs = []
    started = time.perf_counter()
    for name, arm, shards, seed in arms:
        steps = args.steps
        if args.to_steps is not None:
            # an arm that a time cap stopped short earlier catches up: every arm ends at the
            # same total
            done = json.loads((models / name / "training.json").read_text())["steps_done"]
            steps = args.to_steps - int(done)
            if steps <= 0:
                print(f"{name}: {done} steps done already (--to-steps {args.to_steps})")
                continue
        # a continued arm trains into NAME.next, which replaces NAME once it has finished
        target = models / (f"{name}.next" if args.continue_ else name)
        cmd = [sys.executable, __file__, "train", "--arm", arm, "--shards", shards]
        cmd += ["--out", str(target), "--seed", str(seed)]
        if args.continue_:
            cmd += ["--init", str(models / name)]
        cmd += ["--steps", str(steps), "--device", args.device, "--preset", args.preset]
        cmd += ["--workers", str(workers)]
        if args.vae:
            cmd += ["--vae", args.vae]
        if args.max_minutes:
            cmd += ["--max-minutes", str(args.max_minutes)]
        log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for name, proc, log in procs:
        if proc.wait() != 0:
            failed.append(name)
        log.close()
        if args.continue_ and name not in failed:
            shutil.rmtree(models / name)
            (models / f"{name}.next").rename(models / name)
    train_s = time.perf_counter() - started
    print(f"trained {len(arms)} arm(s) side by side in {train_s:.0f} s")
    results: dict[str, Any] = {}
    for name, *_ in arms:
        if name in failed:
            print(f"{name}: training failed, see {out / (name + '.log')}")
            continue
        if args.no_probe:
            done = json.loads((models / name / "training.json").read_text())["steps_done"]
            print(f"{name}: {done} steps done, not probed (--no-probe)")
            results[name] = {"steps_done": done}
            continue
        r = main(
            ["probe", "--model", f"{name}={Path(args.models) / name}", "--device", args.device]
            + ["--out", str(out / f"{name}.json"), "--sheet", str(out), "--preset", args.preset]
            + ["--processes", str(args.processes)]
        )
        r[name]["sitting"] = {"arms": [a[0] for a in arms], "train_wall_s": train_s}
        (out / f"{name}.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
        results.update(r)
    if args.bundle:
        bundle(out, [a[0] for a in arms], results)
    if failed:
        raise SystemExit(f"training failed for {failed}")
    return results


def stack_sheets(paths: list[Path], out: Path) -> Path:
    """The arms' preview sheets (the same held-out script) one above the other, one PNG."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths]
    width = max(i.width for i in images)
    canvas = Image.new("RGB", (width, sum(i.height for i in images)), "white")
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def bundle(out: Path, names: list[str], results: dict[str, Any]) -> None:
    """Three files for any number of arms (a device call returns at most eight):
    ``sitting.json`` (every arm's result, what ``table`` reads), ``sheets.png`` (their
    sheets stacked) and ``train.log`` (their logs one after the other); the per-arm files go."""
    (out / "sitting.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    sheets = [out / f"sheet-{n}.png" for n in names if (out / f"sheet-{n}.png").is_file()]
    if sheets:
        stack_sheets(sheets, out / "sheets.png")
    with open(out / "train.log", "w") as log:
        for name in names:
            path = out / f"{name}.log"
            if path.is_file():
                log.write(f"==> {name} <==\n{path.read_text()}\n")
    for name in names:
        for path in (out / f"{name}.log", out / f"{name}.json", out / f"sheet-{name}.png"):
            path.unlink(missing_ok=True)
    print(f"bundled {len(names)} arm(s): {out}/sitting.json, sheets.png, train.log")


# --- the table (CPU) -------------------------------------------------------------------------


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "| model | steps | " + " | ".join(FACTS) + " |",
        "|---|---|" + "---|" * len(FACTS),
    ]
    ceiling = None
    for name, r in results.items():
        h = r["hierarchical"]
        steps = (r.get("training") or {}).get("steps_done", "")
        cells = [f"{h[k]:.3f}" if h.get(k) is not None else "-" for k in FACTS]
        lines.append(f"| {name} | {steps} | " + " | ".join(cells) + " |")
        ceiling = r["ceiling"]
    if ceiling is not None:
        cells = [f"{ceiling[k]:.3f}" if ceiling.get(k) is not None else "-" for k in FACTS]
        lines.append("| readers on real frames | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(args: argparse.Namespace) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in args.results:
        merged.update(json.loads(Path(path).read_text()))
    text = format_table(merged)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {name: {k: r["hierarchical"].get(k) for k in FACTS} for name, r in merged.items()}
    out.write_text(json.dumps({"table": summary, "results": merged}, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    if args.sheets:
        if not args.sheet_out:
            raise SystemExit("--sheets needs --sheet-out")
        print(f"wrote {stack_sheets([Path(p) for p in args.sheets], Path(args.sheet_out))}")
    return merged


def dry_run(args: argparse.Namespace) -> dict[str, Any]:
    """Every step at toy size on the CPU: prepare, train each arm a few steps, probe, table."""
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ablation-"))
    common = ["--preset", args.preset, "--workers", "1"]
    prepared = main(["prepare", "--out", str(out), *common, "--quiet"])
    assert isinstance(prepared, dict)
    results = []
    runs = [("raw", 0), ("curated", 0), ("curated", 1), ("truth", 0)]
    for arm, seed in runs:
        shards = str(out / "carry" / arm) if arm != "truth" else "none"
        model = out / "models" / f"{arm}-s{seed}"
        main(
            ["train", "--arm", arm, "--shards", shards, "--out", str(model), "--seed", str(seed)]
            + ["--steps", str(args.steps), "--device", "cpu", "--preset", args.preset]
            + ["--workers", "0"]
        )
        result = out / "results" / f"{arm}-s{seed}.json"
        main(
            ["probe", "--model", f"{arm}-s{seed}={model}", "--device", "cpu", "--out", str(result)]
            + ["--preset", args.preset]
            + (["--sheet", str(out / "results")] if arm != "truth" else [])
        )
        results.append(str(result))
    merged = main(["table", "--results", *results, "--out", str(out / "results" / "table.json")])
    assert isinstance(merged, dict)
    return {"out": str(out), "prepare": prepared, "results": merged}


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="corpus, curate run, raw and curated shards, size check")
    p.add_argument("--out", default=".ablation")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--videos", type=int, default=None, help="corpus size (default: preset's)")
    p.add_argument("--max-samples", type=int, default=None, help="samples per arm (preset's)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=prepare)
    t = sub.add_parser("train", help="train one arm (same settings for every arm)")
    t.add_argument("--arm", choices=ARMS, required=True)
    t.add_argument("--shards", default=None, help="an arm's carried folder, or none (truth)")
    t.add_argument("--out", required=True)
    t.add_argument("--preset", choices=sorted(PRESETS), default="full")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--vae-steps", type=int, default=None)
    t.add_argument(
        "--vae",
        default=None,
        help="share this autoencoder (e.g. models/shapes-storygen), frozen, across the arms "
        "instead of training one per arm: it sees frames only, no captions, so every arm "
        "gets the same one and the GPU time goes to the UNets",
    )
    t.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="a safety stop: an arm cut short reports fewer steps_done than --steps",
    )
    t.add_argument(
        "--init",
        default=None,
        help="continue this arm's folder (another --steps, its schedule warmed up and "
        "decayed again, as `storygen train --init` does)",
    )
    t.set_defaults(func=train)
    r = sub.add_parser("probe", help="probe model folders on the held-out scripts")
    r.add_argument("--model", action="append", required=True, help="NAME=FOLDER (repeatable)")
    r.add_argument("--preset", choices=sorted(PRESETS), default="full")
    r.add_argument("--stories", type=int, default=None)
    r.add_argument("--num-frames", type=int, default=None)
    r.add_argument("--device", default="cpu")
    r.add_argument("--out", default=None, help="JSON to write")
    r.add_argument("--sheet", default=None, help="folder for a preview sheet per model")
    r.add_argument(
        "--processes", type=int, default=1, help="render the stories in N processes (same rows)"
    )
    r.set_defaults(func=probe)
    g = sub.add_parser("sitting", help="train arms side by side on one GPU, then probe each")
    g.add_argument(
        "--arm",
        action="append",
        required=True,
        help="NAME=ARM:SHARDS:SEED, e.g. raw-s0=raw:.ablation/carry/raw:0 (repeatable)",
    )
    g.add_argument("--out", required=True, help="logs, probe JSONs and sheets")
    g.add_argument("--models", default="/tmp/ablation-models", help="where the arms' folders go")
    g.add_argument("--preset", choices=sorted(PRESETS), default="full")
    g.add_argument("--steps", type=int, default=3000)
    g.add_argument("--device", default="cuda")
    g.add_argument("--workers", type=int, default=14, help="data workers, split over the arms")
    g.add_argument("--vae", default=None)
    g.add_argument("--max-minutes", type=float, default=None)
    g.add_argument("--processes", type=int, default=8)
    g.add_argument(
        "--continue",
        dest="continue_",
        action="store_true",
        help="train each arm on from its folder under --models (left by an earlier call of "
        "this sitting on the same machine) for another --steps",
    )
    g.add_argument(
        "--to-steps",
        type=int,
        default=None,
        help="with --continue: train each arm on until it has done this many steps in all "
        "(instead of another --steps), so arms a time cap left uneven end even",
    )
    g.add_argument(
        "--no-probe",
        action="store_true",
        help="train only (a call that a --continue call follows); the last call probes",
    )
    g.add_argument(
        "--bundle",
        action="store_true",
        help="leave three files under --out whatever the number of arms (sitting.json, "
        "sheets.png, train.log) instead of three per arm: a device call returns eight",
    )
    g.set_defaults(func=sitting)
    b = sub.add_parser("table", help="merge probe JSONs into the README table")
    b.add_argument("--results", nargs="+", required=True)
    b.add_argument(
        "--sheets",
        nargs="+",
        default=None,
        help="preview sheets to stack into one PNG (--sheet-out), in this order",
    )
    b.add_argument("--sheet-out", default=None, help="where the stacked sheets go")
    b.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "curation_ablation.json"))
    b.set_defaults(func=table)
    d = sub.add_parser("dry-run", help="every step at toy size on the CPU")
    d.add_argument("--out", default=None)
    d.add_argument("--preset", choices=sorted(PRESETS), default="micro")
    d.add_argument("--steps", type=int, default=2)
    d.set_defaults(func=dry_run)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    main()
