"""The pixel probe: how well a storygen model renders shapes-world stories, read from pixels.

Held-out stories (random scripts from a seed family the training never draws) are rendered by
a model, and every generated frame is read back with the shapes world's pixel readers
(:func:`curate.shapes.read_frame`, :func:`curate.shapes.read_motion`); no learned judge. The
same stories rendered by the shapes world itself give the *ceiling*: what the readers score on
real frames at the same size and fps. Numbers per story:

- per frame: colour, shape and background right against the prompt active at that frame, and
  all three right;
- per segment: motion right (segments of at least :data:`MIN_MOTION_FRAMES` frames);
- identity: per segment, the share of frames whose read (colour, shape, background) equal the
  segment's most common reading;
- flicker: mean absolute difference of consecutive frames (0-255 scale) inside segments (a
  cut is not flicker), as VBench computes it;
- seam ratio: mean frame difference at the frames next to a given frame divided by the mean
  elsewhere, inside segments (as ``benchmarks/storygen_speed.py`` defines it);
- per quarter of the video: "all three right" of the frames in that quarter (drift).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.shapes import (
    FrameFacts,
    SceneFacts,
    SceneRenderer,
    random_facts,
    read_frame,
    read_motion,
)

#: seeds of held-out stories start here; training windows draw from seeds below 10**6
HELD_OUT_SEED = 20_261_201
MIN_MOTION_FRAMES = 6
MODES = ("hierarchical", "autoregressive")
#: hierarchical with the global call's output replaced by the real keyframes: the local
#: model alone, given the truth at every keyframe (does it fill in the motion?)
REAL_KEYFRAMES = "real keyframes"


@dataclass(frozen=True)
class ProbeStory:
    """A held-out story: segments ``(start_frame, end_frame, facts)``, half-open, contiguous."""

    story_id: str
    num_frames: int
    segments: tuple[tuple[int, int, SceneFacts], ...]

    def prompts(self) -> list[str]:
        out: list[str] = []
        for start, end, facts in self.segments:
            out += [facts.caption] * (end - start)
        return out

    def facts_at(self) -> list[SceneFacts]:
        out: list[SceneFacts] = []
        for start, end, facts in self.segments:
            out += [facts] * (end - start)
        return out

    def to_script(self, fps: float) -> dict[str, Any]:
        """The story as a script mapping (``storygen`` reads it as YAML / JSON)."""
        return {
            "fps": fps,
            "segments": [
                {"start": s / fps, "end": e / fps, "prompt": f.caption} for s, e, f in self.segments
            ],
        }


def segment_frames(num_frames: int) -> tuple[int, int]:
    """Default segment lengths for a story of ``num_frames``: 3-9 segments for 226 frames,
    2-4 for 16; long stories get segments of 24-96 frames (3-12 s at 8 fps)."""
    lo = max(4, min(24, num_frames // 4))
    hi = max(lo, min(96, num_frames // 2))
    return lo, hi


def held_out_stories(
    count: int,
    *,
    num_frames: int,
    seed: int = HELD_OUT_SEED,
    lengths: tuple[int, int] | None = None,
) -> list[ProbeStory]:
    """``count`` random stories of ``num_frames`` frames; consecutive segments differ in
    colour and background, so every cut is visible."""
    if count < 1 or num_frames < 2:
        raise ValueError(f"need count >= 1 and num_frames >= 2, got {count!r}, {num_frames!r}")
    lo, hi = lengths or segment_frames(num_frames)
    stories = []
    for i in range(count):
        rng = np.random.default_rng([seed, num_frames, i])
        bounds = [0]
        while bounds[-1] < num_frames:
            bounds.append(bounds[-1] + int(rng.integers(lo, hi + 1)))
        bounds[-1] = num_frames
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < lo:  # a stub at the end joins
            del bounds[-2]
        segments = []
        prev = None
        for a, b in zip(bounds, bounds[1:]):
            prev = random_facts(rng, avoid=prev)
            segments.append((a, b, prev))
        stories.append(ProbeStory(f"probe-{num_frames}-{i:03d}", num_frames, tuple(segments)))
    return stories


def render_truth(story: ProbeStory, size: int, *, seed: int = 0) -> np.ndarray:
    """The story as the shapes world renders it: uint8 (N, size, size, 3)."""
    rng = np.random.default_rng([seed, HELD_OUT_SEED, story.num_frames, len(story.segments)])
    parts = []
    for start, end, facts in story.segments:
        r = SceneRenderer(facts, num_frames=end - start, width=size, height=size, seed=rng)
        parts.append(np.stack(list(r)))
    return np.concatenate(parts)


def _frame_diffs(frames: np.ndarray) -> np.ndarray:
    x = frames.astype(np.float32)
    return np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))


def read_story(
    frames: np.ndarray, story: ProbeStory, *, known: Iterable[int] = ()
) -> dict[str, Any]:
    """Probe numbers of one rendered story (frames uint8 (N, H, W, 3), N = story length)."""
    if len(frames) != story.num_frames:
        raise ValueError(
            f"{story.story_id}: {len(frames)} frames for a {story.num_frames}-frame story"
        )
    seen: list[FrameFacts] = [read_frame(np.ascontiguousarray(f)) for f in frames]
    want = story.facts_at()
    color = np.array([s.color == w.color for s, w in zip(seen, want)])
    shape = np.array([s.shape == w.shape for s, w in zip(seen, want)])
    background = np.array([s.background == w.background for s, w in zip(seen, want)])
    every = color & shape & background
    motions, identity = [], []
    inside = np.zeros(max(len(frames) - 1, 0), bool)  # diff i (frame i -> i+1) inside a segment
    for start, end, facts in story.segments:
        inside[start : end - 1] = True
        triples = [(s.color, s.shape, s.background) for s in seen[start:end]]
        identity.append(Counter(triples).most_common(1)[0][1] / len(triples))
        if end - start >= MIN_MOTION_FRAMES:
            motions.append(read_motion(seen[start:end], aspect=1.0) == facts.motion)
    diffs = _frame_diffs(frames)
    seam = np.zeros_like(inside)
    for f in known:
        for i in (f - 1, f):
            if 0 <= i < len(seam):
                seam[i] = True
    seam &= inside
    plain = inside & ~seam
    quarters = np.array_split(every, 4)
    tenths = np.array_split(every, 10)
    return {
        "frames": len(frames),
        "color": float(color.mean()),
        "shape": float(shape.mean()),
        "background": float(background.mean()),
        "all": float(every.mean()),
        "motion": float(np.mean(motions)) if motions else None,
        "motion_segments": len(motions),
        "identity": float(np.mean(identity)),
        "flicker": float(diffs[inside].mean()) if inside.any() else 0.0,
        "seam_ratio": (
            float(diffs[seam].mean() / max(diffs[plain].mean(), 1e-9))
            if seam.any() and plain.any()
            else None
        ),
        "quarters_all": [float(q.mean()) if len(q) else None for q in quarters],
        "tenths_all": [float(q.mean()) if len(q) else None for q in tenths],
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Frame-weighted means of per-story numbers (motion weighted by segments)."""
    frames = np.array([r["frames"] for r in rows], float)
    out: dict[str, Any] = {"stories": len(rows), "frames": int(frames.sum())}
    for key in ("color", "shape", "background", "all", "identity", "flicker"):
        out[key] = float(np.average([r[key] for r in rows], weights=frames))
    segs = np.array([r["motion_segments"] for r in rows], float)
    out["motion"] = (
        float(np.average([r["motion"] or 0.0 for r in rows], weights=segs)) if segs.sum() else None
    )
    out["motion_segments"] = int(segs.sum())
    seams = [(r["seam_ratio"], w) for r, w in zip(rows, frames) if r["seam_ratio"] is not None]
    out["seam_ratio"] = (
        float(np.average([s for s, _ in seams], weights=[w for _, w in seams])) if seams else None
    )
    for key in ("quarters_all", "tenths_all"):
        table = np.array([r[key] for r in rows], float)
        out[key] = [float(v) for v in np.nanmean(table, axis=0)]
    return out


def ceiling(stories: Sequence[ProbeStory], size: int) -> dict[str, Any]:
    """The readers on real shapes-world frames of the same stories: the best a model can score."""
    return summarize([read_story(render_truth(s, size), s) for s in stories])


#: sampler settings that act on calls with known frames, passed on by :func:`render_story`
KNOWN_FRAME_SAMPLING = ("resample_steps", "jump_length", "reconstruction_guidance")


def render_story(
    pipe: Any,
    story: ProbeStory,
    *,
    mode: str,
    settings: dict[str, Any],
    seed: int,
    **callbacks: Any,
) -> tuple[np.ndarray, set[int]]:
    """Render a story with ``pipe`` in ``mode``; returns frames and the frames given to calls.
    ``callbacks`` (``callback_on_call_end``, ``callback_on_level_end``) go to the pipeline."""
    out = pipe(
        story.prompts(), story.num_frames, **_render_kwargs(mode, settings, seed), **callbacks
    )
    known = {f for call in out.plan.calls for f, k in zip(call.frames, call.known) if k}
    return out.frames, known


def _render_kwargs(mode: str, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """The pipeline's arguments for rendering in ``mode`` with the probe's ``settings``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return dict(
        fps=settings.get("fps"),
        frames_per_call=int(settings.get("frames_per_call", 16)),
        num_inference_steps=int(settings["num_inference_steps"]),
        guidance_scale=float(settings["guidance_scale"]),
        generator=seed,
        policy="autoregressive" if mode == "autoregressive" else "stretch",
        overlap=int(settings.get("overlap", 1)) if mode == "autoregressive" else 1,
        micro_batch=int(settings.get("micro_batch", 16)),
        output_type="np",
        progress=False,
        # the sampler's ways to make calls agree with their known frames, when the settings
        # name them (the folder's sampling.json, or the probe's overrides)
        **{k: settings[k] for k in KNOWN_FRAME_SAMPLING if k in settings},
    )


def render_stories(
    pipe: Any,
    stories: Sequence[ProbeStory],
    *,
    mode: str,
    settings: dict[str, Any],
    seed: int,
) -> list[tuple[np.ndarray, set[int]]]:
    """Render ``stories`` side by side in one run of ``pipe``
    (:func:`storygen.plan.side_by_side`: level by level, the calls of all the stories in
    shared batches); per story its frames and the frames given to calls, as
    :func:`render_story` returns them. Each call draws its own noise from ``seed`` and its
    place in the merged plan, so a story's video differs from its render alone (another draw
    of the same sampler), not its distribution."""
    from storygen.plan import side_by_side

    if len(stories) == 1:
        return [render_story(pipe, stories[0], mode=mode, settings=settings, seed=seed)]
    kwargs = _render_kwargs(mode, settings, seed)
    plans = [
        pipe.build_plan(
            s.prompts(),
            num_frames=s.num_frames,
            fps=kwargs["fps"],
            frames_per_call=kwargs["frames_per_call"],
            depth=None,
            policy=kwargs["policy"],
            overlap=kwargs["overlap"],
        )
        for s in stories
    ]
    merged, starts = side_by_side(plans)
    pipe.build_plan = lambda *_, **__: merged  # the pipeline renders the merged plan
    try:
        out = pipe(list(merged.prompts or ()), merged.num_frames, **kwargs)
    finally:
        del pipe.build_plan  # the class's method again
    known = {f for call in out.plan.calls for f, k in zip(call.frames, call.known) if k}
    result = []
    for start, story in zip(starts, stories):
        end = start + story.num_frames
        mine = {f - start for f in known if start <= f < end}
        result.append((out.frames[start:end], mine))
    return result


def render_with_real_keyframes(
    pipe: Any, story: ProbeStory, *, settings: dict[str, Any], seed: int
) -> tuple[np.ndarray, set[int]]:
    """Render ``story`` hierarchically with the global call's frames taken from the real
    story (:func:`render_truth`, encoded by the pipeline) instead of sampled: what the local
    levels make of true keyframes. The plan's first level must be one call."""
    import torch

    plan = pipe.build_plan(
        story.prompts(),
        num_frames=story.num_frames,
        fps=settings.get("fps"),
        frames_per_call=int(settings.get("frames_per_call", 16)),
        depth=None,
        policy="stretch",
    )
    first = plan.levels[0].calls
    if len(first) != 1:
        raise ValueError(f"{story.story_id}: the first level has {len(first)} calls, not one")
    # the size render_story renders at: the folder's recommended size, else the model's own
    size = int(getattr(pipe, "sampling", {}).get("height") or pipe.default_size()[0])
    truth = render_truth(story, size)[list(first[0].frames)]
    pixels = torch.from_numpy(truth).permute(0, 3, 1, 2).float() / 127.5 - 1
    keyframes = pipe.encode_frames(pixels).permute(1, 0, 2, 3)[None]  # (1, C, F, h, w)
    sample = pipe.denoise
    calls = 0

    def denoise(unet: Any, inputs: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the global call: the real keyframes, no model evaluation
            return keyframes.to(inputs.noise.device), 0
        return sample(unet, inputs, **kwargs)

    pipe.denoise = denoise
    try:
        return render_story(pipe, story, mode="hierarchical", settings=settings, seed=seed)
    finally:
        del pipe.denoise  # the class's method again


def stories_per_render(mode: str, settings: dict[str, Any]) -> int:
    """How many stories one render of ``mode`` puts side by side (``settings``'
    ``stories_per_render``; the real-keyframes mode renders one story at a time)."""
    group = 1 if mode == REAL_KEYFRAMES else int(settings.get("stories_per_render", 1))
    if group < 1:
        raise ValueError(f"stories_per_render must be >= 1, got {group}")
    return group


def probe_rows(
    pipe: Any,
    stories: Sequence[ProbeStory],
    *,
    mode: str,
    settings: dict[str, Any],
    seeds: Sequence[int],
) -> list[dict[str, Any]]:
    """Render each story (with its seed) in ``mode`` and read it back: one row per story, with
    the story's render time (``render_s``). ``settings["stories_per_render"]`` > 1 renders
    that many stories at a time side by side (:func:`render_stories`, seeded with the first
    one's seed; ``render_s`` is then the group's time shared out)."""
    if len(stories) != len(seeds):
        raise ValueError(f"{len(stories)} stories but {len(seeds)} seeds")
    group = stories_per_render(mode, settings)
    rows = []
    for at in range(0, len(stories), group):
        chunk, seed = stories[at : at + group], seeds[at]
        started = time.perf_counter()
        if mode == REAL_KEYFRAMES:
            rendered = [render_with_real_keyframes(pipe, chunk[0], settings=settings, seed=seed)]
        else:
            rendered = render_stories(pipe, chunk, mode=mode, settings=settings, seed=seed)
        took = (time.perf_counter() - started) / len(chunk)
        for story, (frames, known) in zip(chunk, rendered):
            row = read_story(frames, story, known=known)
            row["render_s"] = took
            rows.append(row)
    return rows


#: ``(mode, stories, settings, seeds) -> rows``: how :func:`evaluate` renders; the default
#: renders with one pipeline in this process, a benchmark may spread stories over processes
RowRenderer = Callable[[str, Sequence[ProbeStory], dict[str, Any], Sequence[int]], list]


# --- the global call alone -------------------------------------------------------------------


class _FirstLevelDone(Exception):
    pass


def global_keyframes(
    pipe: Any, story: ProbeStory, *, settings: dict[str, Any], seed: int
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The hierarchical render's first call only (the keyframes the global model draws over
    the whole story): its frames, uint8 (F, H, W, 3), and their positions in the story. The
    render stops after that level."""
    import torch

    got: dict[str, Any] = {}

    def on_call(_: Any, result: Any) -> None:
        got["result"] = result

    def on_level(_: Any, level: int) -> None:
        raise _FirstLevelDone

    with contextlib.suppress(_FirstLevelDone):
        render_story(
            pipe,
            story,
            mode="hierarchical",
            settings=settings,
            seed=seed,
            callback_on_call_end=on_call,
            callback_on_level_end=on_level,
        )
    result = got["result"]
    if result.level != 0:
        raise ValueError(f"{story.story_id}: the first level has more than one call")
    with torch.no_grad():
        pixels = pipe.decode(result.sample.permute(1, 0, 2, 3))  # (F, 3, H, W) in [-1, 1]
    frames = ((pixels.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255)
    return frames.astype(np.uint8), tuple(result.call.frames)


def keyframe_motion(
    pipe: Any,
    stories: Sequence[ProbeStory],
    *,
    settings: dict[str, Any],
    seed: int = 0,
    min_keyframes: int = 3,
) -> dict[str, Any]:
    """Does the global call place the shape along each segment's motion? Per segment that
    holds at least ``min_keyframes`` of the global call's keyframes (and moves), the motion
    read from those keyframes alone against the prompt, beside the same read on the real
    story's frames at the same positions (the readers' ceiling); colour per keyframe too.
    Motion lost here cannot come back in the local levels, which only fill between
    keyframes."""
    size = int(settings.get("height") or pipe.default_size()[0])
    motion, ceiling, color = [], [], []
    for i, story in enumerate(stories):
        frames, positions = global_keyframes(pipe, story, settings=settings, seed=seed + i)
        truth = render_truth(story, size)
        for start, end, facts in story.segments:
            ks = [k for k, pos in enumerate(positions) if start <= pos < end]
            color += [read_frame(frames[k]).color == facts.color for k in ks]
            if len(ks) < min_keyframes or facts.motion == "still":
                continue
            motion.append(read_motion(frames[ks], aspect=1.0) == facts.motion)
            real = truth[[positions[k] for k in ks]]
            ceiling.append(read_motion(real, aspect=1.0) == facts.motion)
    return {
        "segments": len(motion),
        "motion": float(np.mean(motion)) if motion else None,
        "motion_ceiling": float(np.mean(ceiling)) if ceiling else None,
        "color": float(np.mean(color)) if color else None,
        "min_keyframes": min_keyframes,
    }


# --- stories spread over processes that share the device ------------------------------------

_PIPE: Any = None


def _start_worker(folder: str, device: str, scheduler: str | None) -> None:
    import torch

    from storygen.loading import load_pipeline

    global _PIPE
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    _PIPE = load_pipeline(folder, scheduler=scheduler).to(torch.device(device))


def _render_group(mode: str, stories: Any, settings: dict[str, Any], seeds: Any) -> list:
    return probe_rows(_PIPE, stories, mode=mode, settings=settings, seeds=seeds)


class PoolRenderer:
    """A :data:`RowRenderer` over ``processes`` worker processes, each holding the model
    folder on ``device``: the batch-1 calls of the autoregressive baseline leave a GPU mostly
    idle, so several stories at once make long probes affordable. Rows (and every number
    read from them) are the same as rendering one story after another; only wall time
    differs, so ``story_render_s`` is reported beside it. With ``stories_per_render`` in the
    settings each task renders that many stories side by side (:func:`render_stories`)."""

    def __init__(self, folder: str, device: str, scheduler: str | None, processes: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # CUDA does not survive a fork
        self.pool = ctx.Pool(
            processes, initializer=_start_worker, initargs=(folder, device, scheduler)
        )

    def __call__(self, mode: str, stories: Any, settings: dict, seeds: Any) -> list:
        # a task per render: one story, or the group ``stories_per_render`` puts side by side
        group = stories_per_render(mode, settings)
        tasks = [
            (mode, list(stories[i : i + group]), settings, list(seeds[i : i + group]))
            for i in range(0, len(stories), group)
        ]
        return [
            row for rows in self.pool.starmap(_render_group, tasks, chunksize=1) for row in rows
        ]

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def evaluate(
    pipe: Any,
    stories: Sequence[ProbeStory],
    *,
    settings: dict[str, Any],
    modes: Sequence[str] = MODES,
    seed: int = 0,
    renderer: RowRenderer | None = None,
) -> dict[str, Any]:
    """Render every story in every mode and read it back; with the readers' ceiling.

    Story ``i`` is rendered with seed ``seed + i`` in every mode. ``wall_time_s`` is the time
    of all stories of a mode; ``story_render_s`` the mean time of one story."""
    size = int(settings.get("height") or pipe.default_size()[0])
    report: dict[str, Any] = {
        "settings": dict(settings),
        "num_frames": stories[0].num_frames,
        "ceiling": ceiling(stories, size),
    }

    def local(mode: str, group: Sequence[ProbeStory], s: dict, seeds: Sequence[int]) -> list:
        return probe_rows(pipe, group, mode=mode, settings=s, seeds=seeds)

    render = renderer or local
    seeds = [seed + i for i in range(len(stories))]
    for mode in modes:
        started = time.perf_counter()
        rows = render(mode, stories, settings, seeds)
        report[mode] = summarize(rows) | {
            "wall_time_s": time.perf_counter() - started,
            "story_render_s": float(np.mean([r["render_s"] for r in rows])),
        }
    return report


def load_settings(folder: str | Path) -> dict[str, Any]:
    """The folder's recommended sampling settings (``sampling.json``), or an empty dict."""
    from storygen.settings import read_sampling_json

    return read_sampling_json(folder)


def evaluate_folder(
    folder: str | Path,
    *,
    stories: int = 32,
    num_frames: int = 226,
    device: str = "cpu",
    modes: Sequence[str] = MODES,
    overrides: dict[str, Any] | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Load a model folder and probe it with its own recommended settings (plus overrides);
    ``processes > 1`` renders the stories in a :class:`PoolRenderer` (same numbers)."""
    import torch

    from storygen.loading import load_pipeline

    settings = load_settings(folder) | (overrides or {})
    pipe = load_pipeline(folder, scheduler=settings.get("scheduler"))
    pipe.to(torch.device(device))
    held_out = held_out_stories(stories, num_frames=num_frames)
    pool = (
        PoolRenderer(str(folder), device, settings.get("scheduler"), processes)
        if processes > 1
        else None
    )
    try:
        return evaluate(pipe, held_out, settings=settings, modes=modes, renderer=pool)
    finally:
        if pool is not None:
            pool.close()


def probe_prompted(
    frames: np.ndarray, prompts: Sequence[str], *, size: int | None = None
) -> dict[str, Any]:
    """The probe of any rendered story whose prompts follow the shapes world's grammar (a
    curated story, a script): each run of equal prompts is a segment, read on its own;
    segments whose prompt names no scene are left out (``frames_unread``). With ``size``, the
    readers' ceiling on real frames of the same segments at that size comes along."""
    from curate.shapes import parse_caption

    if len(frames) != len(prompts):
        raise ValueError(f"{len(frames)} frames for {len(prompts)} prompts")
    rows, truths, unread = [], [], 0
    start = 0
    for end in range(1, len(prompts) + 1):
        if end < len(prompts) and prompts[end] == prompts[start]:
            continue
        facts = parse_caption(prompts[start])
        if facts is None:
            unread += end - start
        else:
            story = ProbeStory(f"segment-{start}", end - start, ((0, end - start, facts),))
            rows.append(read_story(np.asarray(frames[start:end]), story))
            if size:
                truths.append(read_story(render_truth(story, size, seed=start), story))
        start = end
    out: dict[str, Any] = summarize(rows) if rows else {"stories": 0, "frames": 0}
    out["frames_unread"] = unread
    if truths:
        out["ceiling"] = summarize(truths)
    return out


# --- does the model read the words? ----------------------------------------------------------

#: each motion's opposite: the word a prompt-sensitivity probe swaps in
OPPOSITE_MOTION = {
    "moving left": "moving right",
    "moving right": "moving left",
    "moving up": "moving down",
    "moving down": "moving up",
    "growing": "shrinking",
    "shrinking": "growing",
}
#: diffusion times the prompt-sensitivity probe reads (of the 1,000 training steps)
SENSITIVITY_TIMES = (900, 700, 500, 300)
#: the last diffusion time: the input holds (almost) nothing of the video, so a v-prediction
#: model's output is the mean video its prompt implies, which real videos give exactly
LAST_TIME = 999


def mean_video_edits(
    vae: Any,
    facts: Sequence[SceneFacts],
    edits: Mapping[str, Sequence[SceneFacts]],
    *,
    size: int,
    draws: int,
    seed: int,
) -> dict[str, float]:
    """What a model that has learnt the mean video of each prompt shows at :data:`LAST_TIME`.

    For each one-scene window (``facts``, 16 frames, the scene spanning them) the mean latent
    video of ``draws`` real renders (random tracks) is taken, and for each edit the same with
    the edited facts; the result is ``|mean(edit) - mean(facts)| / |mean(facts)|`` over all
    windows, as :func:`prompt_sensitivity` reads the model. A second, independent set of draws
    of the unedited facts measures the estimate's own noise (``noise``), which is taken out of
    each edit's change (the two add in squares).
    """
    import torch

    from storygen.training.vae import encode

    rng = np.random.default_rng([seed, 7877])

    def means(scenes: Sequence[SceneFacts]) -> torch.Tensor:
        out = []
        for f in scenes:
            clips = []
            for _ in range(draws):
                r = SceneRenderer(f, num_frames=16, width=size, height=size, seed=rng)
                clips.append(np.stack([r.frame(k) for k in range(16)]))
            with torch.no_grad():
                z = encode(vae, torch.from_numpy(np.concatenate(clips))).float()
            out.append(z.reshape(draws, 16, *z.shape[1:]).mean(0))
        return torch.stack(out)

    base, again = means(facts), means(facts)
    noise = float((again - base).norm() / base.norm())
    result = {"noise": noise}
    for name, scenes in edits.items():
        raw = float((means(scenes) - base).norm() / base.norm())
        result[name] = float(np.sqrt(max(raw**2 - noise**2, 0.0)))
    return result


def prompt_sensitivity(
    pipe: Any,
    *,
    windows: int = 8,
    times: Sequence[int] = SENSITIVITY_TIMES,
    seed: int = HELD_OUT_SEED,
    reference_draws: int = 0,
) -> dict[str, Any]:
    """How much the model's prediction moves when one word of the prompt changes.

    ``windows`` global calls of one moving scene each (16 frames at spacing 1, held-out seed),
    noised to each of ``times`` with the same noise; per time, the relative change
    ``|pred(edited) - pred(prompt)| / |pred(prompt)|`` when the motion turns to its opposite
    ("moving left" -> "moving right", "growing" -> "shrinking"), when the colour changes, and
    when the prompt is emptied. A model that draws the motion it is told changes its
    prediction with the motion word about as much as with the colour word; one that ignores
    the motion word shows a change near zero however smooth its videos are.

    ``reference_draws`` > 0 also reads the model at :data:`LAST_TIME`, where its output is the
    mean video of its prompt, beside the same edits on the mean of that many real renders per
    window (:func:`mean_video_edits`): what a model that has learnt its prompts shows there
    (``last_time``: ``model`` and ``reference``; not part of ``mean``).
    """
    import torch

    from storygen.text import encode_texts
    from storygen.training.vae import encode
    from storygen.training.windows import sample_window

    unet, vae = pipe.unet, pipe.vae
    if not pipe.masked or vae is None:
        raise ValueError("the prompt-sensitivity probe needs a masked model with an autoencoder")
    size = pipe.default_size()[0]
    rng = np.random.default_rng([seed, 4099])
    drawn: list[Any] = []
    while len(drawn) < windows:
        w = sample_window(rng, frames=16, size=size, role="global", spacing=1.0)
        if len(set(w.prompts)) == 1 and w.facts[0].motion in OPPOSITE_MOTION:
            drawn.append(w)
    device, dtype = unet.device, unet.dtype
    frames = torch.from_numpy(np.stack([w.frames for w in drawn]))
    b, f = frames.shape[:2]
    with torch.no_grad():
        z = encode(vae, frames.flatten(0, 1)).to(device=device, dtype=dtype)
        x0 = z.reshape(b, f, *z.shape[1:]).transpose(1, 2).contiguous()
    progress = torch.from_numpy(np.stack([w.progress for w in drawn])).to(device)
    spacing = torch.ones(b, device=device)
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    colours = sorted({w.facts[0].color for w in drawn})

    def recolour(f: SceneFacts) -> SceneFacts:
        other = next(c for c in colours + ["red", "blue"] if c != f.color)
        return dataclasses.replace(f, color=other)

    facts = [w.facts[0] for w in drawn]
    edited_facts = {
        "motion": [dataclasses.replace(f, motion=OPPOSITE_MOTION[f.motion]) for f in facts],
        "colour": [recolour(f) for f in facts],
    }
    edits = {k: [f.caption for f in v] for k, v in edited_facts.items()} | {"empty": [""] * b}

    def states(prompts: list[str]) -> torch.Tensor:
        s = encode_texts(pipe.tokenizer, pipe.text_encoder, prompts, device=device, dtype=dtype)
        return s[:, None].expand(-1, f, -1, -1)

    gen = torch.Generator().manual_seed(seed)
    read_at: dict[int, dict[str, float]] = {}
    read = list(times) + ([LAST_TIME] if reference_draws and LAST_TIME not in times else [])
    with torch.no_grad():
        base_states = states([w.prompts[0] for w in drawn])
        edited = {k: states(v) for k, v in edits.items()}
        for t in read:
            noise = torch.randn(x0.shape, generator=gen).to(device=device, dtype=dtype)
            a = alphas[int(t)].to(dtype)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            step = torch.full((b,), int(t), device=device)
            mask = torch.zeros(b, f, device=device)
            preds = {
                k: unet(noisy, step, ctx, mask=mask, spacing=spacing, progress=progress).float()
                for k, ctx in {"prompt": base_states, **edited}.items()
            }
            base = preds.pop("prompt")
            read_at[int(t)] = {
                k: float((p - base).norm() / base.norm().clamp(min=1e-12)) for k, p in preds.items()
            }
    by_time = {str(int(t)): read_at[int(t)] for t in times}
    mean = {k: float(np.mean([row[k] for row in by_time.values()])) for k in edits}
    out: dict[str, Any] = {
        "windows": windows,
        "times": [int(t) for t in times],
        "by_time": by_time,
        "mean": mean,
        "motion_vs_colour": mean["motion"] / mean["colour"] if mean["colour"] else None,
    }
    if reference_draws:
        reference = mean_video_edits(
            vae, facts, edited_facts, size=size, draws=reference_draws, seed=seed
        )
        out["last_time"] = {"time": LAST_TIME, "model": read_at[LAST_TIME], "reference": reference}
    return out
