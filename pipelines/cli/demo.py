"""``make demo``: the whole loop on the shipped defaults, offline, in a few minutes on a laptop.

1. synthesize a shapes-world corpus (videos with noisy WebVid-style captions and exact truth);
2. curate it with the Beam pipeline and the shipped shapes-world CLIP;
3. print the run's summary and compare it with the corpus' ground truth (comparison.json);
4. render the richest curated story to mp4 (plus a preview sheet and a report page) with the
   shipped storygen model;
5. print where everything went, ending with the run's report (OUT/curated/report.html).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from curate.shapes import GroundTruth, generate_corpus, parse_caption
from curate.video import probe as probe_video
from curate.video import read_frames
from pipelines.cli import build_parser as curate_parser
from schemas import read_parquet
from schemas.cli import setup_logging
from storygen.cli import main as storygen_main
from storygen.script import load_script
from storygen.training.probe import probe_prompted

#: denoising steps of the demo's render: the shipped model recommends 12 (sampling.json), which
#: took the 79-frame story 105.6 s on a 2-core AMD EPYC with AVX2 alone (63.6 s on a faster
#: 2-core machine); 10 took 83.5 s there and read the same colour, background and motion
#: (shape 67 % against 70 %, identity 85 % against 87 %)
DEMO_STEPS = 10

logger = logging.getLogger("storyloom.demo")


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)), flush=True)


def pick_story(stories_dir: Path) -> dict:
    """The curated story with the most segments (ties: the longest)."""
    rows = read_parquet(stories_dir, "stories").to_pylist()
    if not rows:
        raise SystemExit(f"{stories_dir}: the run produced no story to render")
    return max(rows, key=lambda r: (len(r["segments"]), r["duration_s"], r["story_id"]))


def compare_with_truth(run_dir: Path, truth) -> dict[str, Any]:
    """How the curated run compares with the corpus' ground truth (the headline numbers)."""
    clips = read_parquet(run_dir / "clips", "clips").to_pylist()
    by_video: dict[str, list[dict]] = {}
    for c in clips:
        by_video.setdefault(c["video_id"], []).append(c)
    noisy = {v.video_id for v in truth.videos if v.caption_is_noise}
    flagged = {
        vid
        for vid, cs in by_video.items()
        if all(c["status"] == "dropped" and c["reason"] != "duplicate" for c in cs)
    }
    names = {
        "source": "own caption",
        "source_fragment": "own caption's fragments",
        "prompt_bank": "corpus prompt bank",
        "captioner": "captioner",
    }
    counts: dict[str, int] = {}
    for c in clips:
        key = names.get(c.get("recaption_source") or "", "none")
        counts[key] = counts.get(key, 0) + 1
    match = total = 0
    for v in truth.videos:
        for c in sorted(by_video.get(v.video_id, []), key=lambda c: c["scene_index"]):
            facts = parse_caption(c.get("recaption"))
            mid = (c["start_frame"] + c["end_frame"]) // 2
            scene = next((s for s in v.scenes if s.start_frame <= mid < s.end_frame), None)
            total += 1
            if scene is None or facts is None:
                continue
            match += (facts.color, facts.shape, facts.motion) == (
                scene.color,
                scene.shape,
                scene.motion,
            )
    return {
        "clips": len(clips),
        "true_scenes": sum(len(v.scenes) for v in truth.videos),
        "noisy_videos": len(noisy),
        "noisy_videos_dropped_whole": len(noisy & flagged),
        "clean_videos_dropped_whole": len(flagged - noisy),
        "recaptions_right": match,
        "recaptions": total,
        "prompt_sources": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
    }


def comparison_lines(c: Mapping[str, Any]) -> list[str]:
    sources = ", ".join(f"{k} {n}" for k, n in c["prompt_sources"].items())
    return [
        f"scenes: {c['clips']} clips found for {c['true_scenes']} true scenes",
        f"noisy captions: {c['noisy_videos_dropped_whole']} of {c['noisy_videos']} noisy videos "
        f"had every clip dropped ({c['clean_videos_dropped_whole']} clean videos dropped whole)",
        f"re-captions naming the right colour, shape and motion: {c['recaptions_right']} of "
        f"{c['recaptions']} (from: {sources})",
    ]


def make_corpus(corpus: Path, *, videos: int, seed: int) -> GroundTruth:
    """The demo corpus, reused when one of the same size and seed is there already."""
    truth_file = corpus / "ground_truth.json"
    if not truth_file.exists():
        return generate_corpus(corpus, videos=videos, seed=seed)
    truth = GroundTruth.load(truth_file)
    if len(truth.videos) != videos or truth.seed != seed:
        return generate_corpus(corpus, videos=videos, seed=seed, overwrite=True)
    print(f"reusing {corpus}")
    return truth


def render_story(run_dir: Path, out: Path, args: argparse.Namespace) -> tuple[int, Path, Path]:
    """Render the richest curated story; the exit status, the video and its preview sheet."""
    story = pick_story(run_dir / "stories")
    _banner(f"4/4 storygen: story {story['story_id']!r}, {len(story['segments'])} segments")
    for seg in story["segments"]:
        print(f"  {seg['start_s']:6.2f}-{seg['end_s']:6.2f} s  {seg['prompt']}")
    video = out / f"story-{story['story_id']}.mp4"
    preview = out / f"story-{story['story_id']}-preview.png"
    stats = out / f"story-{story['story_id']}-stats.json"
    code = storygen_main(
        [
            "render",
            str(run_dir / "stories"),
            "--story-id",
            story["story_id"],
            "--out",
            str(video),
            "--preview",
            str(preview),
            "--fps",
            str(args.fps),
            *(["--steps", str(args.steps)] if args.steps else []),
            *(["--guidance", str(args.guidance)] if args.guidance is not None else []),
            "--device",
            "cpu",
            "--stats-json",
            str(stats),
            "--report",
            str(out / f"story-{story['story_id']}-report.html"),
        ]
    )
    return code, video, preview


def probe_render(run_dir: Path, video: Path, fps: float) -> dict[str, Any]:
    """The rendered story read back from its pixels, frame by frame against the prompt of
    its segment (:func:`storygen.training.probe.probe_prompted`), beside the readers' ceiling
    on real shapes-world frames of the same segments at the video's size."""
    info = probe_video(video)
    frames = read_frames(video, np.arange(info.num_frames))
    story_id = pick_story(run_dir / "stories")["story_id"]
    script = load_script(run_dir / "stories", story_id=story_id)
    prompts = list(script.prompts_per_frame(fps, num_frames=len(frames)))
    return probe_prompted(frames, prompts, size=int(frames.shape[1]))


def probe_lines(probe: dict[str, Any]) -> list[str]:
    ceiling = probe.get("ceiling") or {}

    def pct(key: str) -> str:
        value, best = probe.get(key), ceiling.get(key)
        if value is None:
            return f"{key} -"
        return f"{key} {value:.0%}" + (f" (ceiling {best:.0%})" if best is not None else "")

    return [
        "the rendered story, read back from its pixels (per frame, against its segment's prompt):",
        "  " + ", ".join(pct(k) for k in ("color", "shape", "background", "all")),
        "  "
        + ", ".join(pct(k) for k in ("motion", "identity"))
        + f"; flicker {probe.get('flicker', 0):.1f} (real frames {ceiling.get('flicker', 0):.1f})",
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.cli.demo",
        description=(
            "Synthesize a shapes-world corpus, curate it with the Beam pipeline and the shipped "
            "CLIP, and render the richest curated story to mp4 with the shipped storygen model."
        ),
    )
    parser.add_argument("--out", default="demo-out", help="folder for everything the demo makes")
    parser.add_argument("--videos", type=int, default=24, help="videos in the corpus")
    parser.add_argument("--seed", type=int, default=2026, help="corpus seed")
    parser.add_argument("--workers", type=int, default=1, help="Beam worker processes")
    parser.add_argument("--fps", type=float, default=4.0, help="frame rate of the rendered story")
    parser.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        help=f"denoising steps per model call (default {DEMO_STEPS}, so the story renders in "
        "about a minute and a half on a slow 2-core CPU; 0: the model's recommended steps, "
        "sampling.json)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance (default: the model's recommended, sampling.json)",
    )
    parser.add_argument("--skip-render", action="store_true", help="stop after curation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(level=logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    _banner(f"1/4 shapes world: {args.videos} videos, seed {args.seed}")
    corpus = out / "corpus"
    truth: Any = make_corpus(corpus, videos=args.videos, seed=args.seed)
    print(truth.summary() if hasattr(truth, "summary") else f"{len(truth.videos)} videos")

    _banner("2/4 curate (Apache Beam, local runner, shipped shapes-world CLIP)")
    run_dir = out / "curated"
    flags = ["--input", str(corpus / "webvid.csv"), "--output", str(run_dir)]
    # the command itself, under the demo's logging (warnings only)
    run_args = curate_parser().parse_args(["run", *flags, "--workers", str(args.workers)])
    code = int(run_args.func(run_args) or 0)
    if code:
        print(f"curate run ended with status {code}: see above", file=sys.stderr)
        return code

    _banner("3/4 curated vs. ground truth")
    comparison = compare_with_truth(run_dir, truth)
    for line in comparison_lines(comparison):
        print(line)
    comparison_file = out / "comparison.json"
    comparison_file.write_text(json.dumps(comparison, indent=2) + "\n")

    video = preview = render_report = None
    if not args.skip_render:
        code, video, preview = render_story(run_dir, out, args)
        if code:
            return code
        render_report = video.with_name(video.stem + "-report.html")
        probe = probe_render(run_dir, video, args.fps)
        comparison["render_probe"] = probe
        comparison_file.write_text(json.dumps(comparison, indent=2) + "\n")
        for line in probe_lines(probe):
            print(line)

    report = run_dir / "report.html"
    _banner("where everything went")
    print(f"corpus (videos, manifests, ground truth): {corpus}")
    print(f"curated shards + _manifest.json:          {run_dir}")
    print(f"comparison with the ground truth:         {comparison_file}")
    print(f"the run in the terminal:                  curate inspect {run_dir}")
    if video:
        print(f"rendered story:                           {video}")
        print(f"preview sheet:                            {preview}")
        print(f"render report:                            {render_report}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(f"\nopen the run's report in a browser:\n{report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
