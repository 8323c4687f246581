"""``make demo``: the whole loop on the shipped defaults, offline, in a few minutes on a laptop.

1. synthesize a shapes-world corpus (videos with noisy WebVid-style captions and exact truth);
2. curate it with the Beam pipeline and the shipped shapes-world CLIP;
3. print the run's summary and check it against the corpus' ground truth;
4. render the richest curated story to mp4 (plus a preview sheet) with the shipped storygen model;
5. print where everything went.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from curate.shapes import GroundTruth, generate_corpus, parse_caption
from pipelines.cli import main as curate_main
from schemas import read_parquet
from storygen.cli import main as storygen_main

logger = logging.getLogger("storyloom.demo")


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)), flush=True)


def pick_story(stories_dir: Path) -> dict:
    """The curated story with the most segments (ties: the longest)."""
    rows = read_parquet(stories_dir, "stories").to_pylist()
    if not rows:
        raise SystemExit(f"{stories_dir}: the run produced no story to render")
    return max(rows, key=lambda r: (len(r["segments"]), r["duration_s"], r["story_id"]))


def check_against_truth(run_dir: Path, truth) -> list[str]:
    """How the curated run compares with the corpus' ground truth (a few headline numbers)."""
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
    caught = len(noisy & flagged)
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
    sources = ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    scenes_true = sum(len(v.scenes) for v in truth.videos)
    match = total = 0
    for v in truth.videos:
        for c in sorted(by_video.get(v.video_id, []), key=lambda c: c["scene_index"]):
            facts = parse_caption(c.get("recaption"))
            mid = (c["start_frame"] + c["end_frame"]) // 2
            scene = next((s for s in v.scenes if s.start_frame <= mid < s.end_frame), None)
            if scene is None or facts is None:
                total += 1
                continue
            total += 1
            match += (facts.color, facts.shape, facts.motion) == (
                scene.color,
                scene.shape,
                scene.motion,
            )
    return [
        f"scenes: {len(clips)} clips found for {scenes_true} true scenes",
        f"noisy captions: {caught} of {len(noisy)} noisy videos had every clip dropped "
        f"({len(flagged - noisy)} clean videos dropped whole)",
        f"re-captions naming the right colour, shape and motion: {match} of {total} "
        f"(from: {sources})",
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
            "--steps",
            str(args.steps),
            "--guidance",
            str(args.guidance),
            "--device",
            "cpu",
        ]
    )
    return code, video, preview


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
    parser.add_argument("--steps", type=int, default=12, help="denoising steps per model call")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance")
    parser.add_argument("--skip-render", action="store_true", help="stop after curation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
    code = curate_main(["run", *flags, "--workers", str(args.workers)])
    if code:
        print(f"curate run ended with status {code}: see above", file=sys.stderr)
        return code

    _banner("3/4 curated vs. ground truth")
    for line in check_against_truth(run_dir, truth):
        print(line)

    video = preview = None
    if not args.skip_render:
        code, video, preview = render_story(run_dir, out, args)
        if code:
            return code

    _banner("where everything went")
    print(f"corpus (videos, manifests, ground truth): {corpus}")
    print(f"curated shards + _manifest.json:          {run_dir}")
    print(f"inspect the run:                          curate inspect {run_dir}")
    if video:
        print(f"rendered story:                           {video}")
        print(f"preview sheet:                            {preview}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
