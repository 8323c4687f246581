"""Is a story's motion set by its starting noise? Keyframe motion with the global call's noise
warped along each segment's prompted direction.

The prompt-sensitivity probe shows that the shipped model's prediction at the noisiest time
follows the starting noise, not the motion word. If so, the direction a shape takes in the
global call's keyframes is read out of the noise, and noise that already holds the prompted
motion should give keyframes that move as prompted. This rewrites the starting noise of the
global call (level 0) only: in every segment whose prompt names a direction ("moving left",
"right", "up", "down"), each frame's noise becomes

    alpha * roll(noise of the segment's first frame, travel * progress) + sqrt(1 - alpha²) * own noise

(``travel`` latent pixels over the whole segment, along the prompted direction; the mix keeps
every frame's noise standard normal), then reads motion from the global call's keyframes
(:func:`storygen.training.probe.keyframe_motion`, the same held-out stories and seeds as
``storygen_quality.py --keyframe-motion``) for the unwarped noise and each ``--warp``.

    python benchmarks/storygen_motion_noise.py --stories 16 --frames 226 --warp 0.9:5 --warp 1.0:5

A measurement, not a render option: growing and shrinking are left as they are, and the
travel is one number for every segment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (rows, columns) of a latent frame a shape moving that way travels along
DIRECTIONS = {
    "moving left": (0, -1),
    "moving right": (0, 1),
    "moving up": (-1, 0),
    "moving down": (1, 0),
}


def direction(prompt: str) -> tuple[int, int] | None:
    return next((d for word, d in DIRECTIONS.items() if word in prompt), None)


def warp_noise(
    noise: torch.Tensor,
    prompts: Sequence[str],
    progress: Sequence[float],
    *,
    alpha: float,
    travel: float,
) -> torch.Tensor:
    """One call's noise (C, F, H, W), each directed segment's frames mixed with its first
    frame's noise rolled ``travel × (progress - first progress)`` latent pixels that way."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    out = noise.clone()
    first = 0
    for k, prompt in enumerate(prompts):
        if k == 0 or prompts[k - 1] != prompt:
            first = k
        d = direction(prompt)
        if d is None or k == first:
            continue
        shift = round(travel * (progress[k] - progress[first]))
        moved = torch.roll(noise[:, first], shifts=(d[0] * shift, d[1] * shift), dims=(1, 2))
        out[:, k] = alpha * moved + math.sqrt(1.0 - alpha**2) * noise[:, k]
    return out


@contextlib.contextmanager
def warped_global_noise(alpha: float, travel: float) -> Iterator[None]:
    """Every pipeline's first-level calls start from :func:`warp_noise`'d noise meanwhile."""
    from storygen.pipeline import StoryVideoPipeline
    from storygen.plan import segment_progress

    original = StoryVideoPipeline.prepare_latents

    def prepare_latents(self: Any, batch: Any, **kw: Any) -> Any:
        inputs = original(self, batch, **kw)
        if batch.level == 0:
            for i, call in enumerate(batch.calls):
                prompts = list(call.prompts or ())
                progress = call.progress or segment_progress(prompts)
                inputs.noise[i] = warp_noise(
                    inputs.noise[i], prompts, progress, alpha=alpha, travel=travel
                )
        return inputs

    StoryVideoPipeline.prepare_latents = prepare_latents  # type: ignore[method-assign]
    try:
        yield
    finally:
        StoryVideoPipeline.prepare_latents = original  # type: ignore[method-assign]


def parse_warp(spec: str) -> tuple[float, float]:
    alpha, _, travel = spec.partition(":")
    try:
        return float(alpha), float(travel)
    except ValueError:
        raise SystemExit(f"--warp takes ALPHA:TRAVEL (0.9:5), got {spec!r}") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "shapes-storygen"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--stories", type=int, default=16)
    p.add_argument("--frames", type=int, default=226)
    p.add_argument(
        "--warp",
        action="append",
        default=[],
        help="ALPHA:TRAVEL (mix of the rolled noise, latent pixels over a segment); repeatable",
    )
    p.add_argument(
        "--probe-stories",
        type=int,
        default=0,
        help="also render this many held-out stories whole (hierarchical) per warp and read "
        "every frame, as storygen_quality.py does: do the local levels keep the keyframes' "
        "motion? (0: keyframes only)",
    )
    p.add_argument(
        "--skip-keyframes", action="store_true", help="with --probe-stories: the whole stories only"
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="leave out the unwarped noise (read before)"
    )
    p.add_argument("--out", default=None, help="JSON to write")
    args = p.parse_args(argv)
    warps = [parse_warp(s) for s in args.warp]
    for alpha, _ in warps:
        if not 0.0 <= alpha <= 1.0:
            raise SystemExit(f"--warp: alpha must be in [0, 1], got {alpha}")

    from storygen.loading import load_pipeline
    from storygen.training.probe import evaluate, held_out_stories, keyframe_motion, load_settings

    torch.set_grad_enabled(False)
    settings = load_settings(args.model)
    # as storygen_quality.py's defaults
    settings.setdefault("num_inference_steps", 12)
    settings.setdefault("guidance_scale", 2.0)
    settings["micro_batch"] = 16
    pipe = load_pipeline(args.model, scheduler=settings.get("scheduler"))
    pipe.to(torch.device(args.device))
    stories = held_out_stories(args.stories, num_frames=args.frames)
    rows = []
    for alpha, travel in ([] if args.no_baseline else [(0.0, 0.0)]) + warps:
        started = time.perf_counter()
        row: dict[str, Any] = {"alpha": alpha, "travel": travel}
        with warped_global_noise(alpha, travel):
            if not args.skip_keyframes:
                km = keyframe_motion(pipe, stories, settings=settings)
                row.update(km)
                print(
                    f"alpha {alpha:4.2f} travel {travel:4.1f}: keyframe motion {km['motion']:.3f}"
                    f" over {km['segments']} segments, keyframe colour {km['color']:.3f}",
                    flush=True,
                )
            if args.probe_stories:
                whole = held_out_stories(args.probe_stories, num_frames=args.frames)
                h = evaluate(pipe, whole, settings=settings, modes=("hierarchical",))
                row["probe"] = h["hierarchical"]
                print(
                    f"alpha {alpha:4.2f} travel {travel:4.1f}: {args.probe_stories} whole stories"
                    + "".join(
                        f", {k} {h['hierarchical'][k]:.3f}"
                        for k in ("all", "motion", "identity", "seam_ratio")
                    ),
                    flush=True,
                )
        rows.append(row | {"time_s": time.perf_counter() - started})
    result = {"model": args.model, "stories": args.stories, "frames": args.frames, "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
