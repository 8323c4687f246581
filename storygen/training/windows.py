"""Training windows: shapes-world stories seen the way the hierarchical plan sees them.

A *story* is a run of scenes on a fine timeline (one step = one frame of the final video),
each scene a :class:`~curate.shapes.SceneFacts` whose motion is spread over the scene's whole
length, as the shapes world renders it. A *window* is ``F`` frames of that timeline at a
spacing ``s`` (positions ``round(k·s)``): exactly what one model call of the plan outputs.
Each frame is captioned with the prompt of the scene it falls in, so cuts inside a window teach
per-frame prompts.

The spacing covers every level of a plan: at ``s`` of a few hundred frames a window holds the
keyframes of a long story (every frame may fall in another scene); at ``s = 1`` it is the last
level, where a scene spans many windows. Scene lengths are drawn on the fine timeline
(log-uniform, 4 to 240 frames: half a second to half a minute at 8 fps), so the mix of scenes
per window follows from the spacing as it does in a real plan.

Roles, as the plan uses the model:

- ``global``: the story is exactly the window (its first and last frames are the story's);
  nothing known;
- ``local``: a window inside a longer story; its first and last frames known;
- ``autoregressive``: a window inside a longer story; its first 1-4 frames known.

Only the frames a window needs are drawn (:meth:`SceneRenderer.frame`), so a window of a
seven-minute story costs sixteen frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from curate.shapes import SceneFacts, SceneRenderer, random_facts

ROLES = ("global", "local", "autoregressive")
#: how often each role is drawn (the global call places every keyframe: where motion is won or lost)
ROLE_WEIGHTS = (0.40, 0.40, 0.20)
#: scene length on the fine timeline, frames (log-uniform)
SCENE_FRAMES = (4, 240)
#: window spacing, frames of the final video between adjacent frames of a call (log-uniform)
SPACING = (1.0, 320.0)


@dataclass(frozen=True)
class Window:
    """One training window: ``frames`` uint8 (F, H, W, 3), a prompt per frame, the mask of
    given frames (F,), the spacing, the facts of every frame (for tests) and each frame's
    progress through its scene (F,), 0 at the scene's first frame and 1 at its last, as
    :func:`storygen.plan.segment_progress` gives it at inference."""

    frames: np.ndarray
    prompts: list[str]
    mask: np.ndarray
    spacing: float
    role: str
    facts: list[SceneFacts]
    progress: np.ndarray


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_scenes(
    rng: np.random.Generator, span: int, *, start_offset: int = 0
) -> list[tuple[int, int, SceneFacts]]:
    """Scenes ``(start, length, facts)`` covering fine frames ``[0, span]``.

    The first scene starts ``start_offset`` frames before 0 (a window inside a story);
    ``start_offset = 0`` with a last scene cut at ``span`` is a whole story (the global role).
    Half the time consecutive scenes differ in colour and background (a plain cut), half the
    time they are drawn independently (a script may keep its background).
    """
    scenes: list[tuple[int, int, SceneFacts]] = []
    t = -start_offset
    prev: SceneFacts | None = None
    while t <= span:
        length = max(2, round(_log_uniform(rng, *SCENE_FRAMES)))
        if not scenes and start_offset:
            length = max(length, start_offset + 1)
        facts = random_facts(rng, avoid=prev if rng.random() < 0.5 else None)
        scenes.append((t, length, facts))
        t += length
        prev = facts
    return scenes


def window_positions(frames: int, spacing: float) -> np.ndarray:
    """Fine-timeline positions of a call's frames: rounded multiples of ``spacing``."""
    return np.round(np.arange(frames) * spacing).astype(np.int64)


def sample_window(
    rng: np.random.Generator,
    *,
    frames: int,
    size: int,
    role: str | None = None,
    spacing: float | None = None,
) -> Window:
    """Draw one window of ``frames`` frames at ``size`` × ``size`` pixels."""
    if role is None:
        role = str(rng.choice(ROLES, p=ROLE_WEIGHTS))
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if spacing is None:
        # the last level (spacing 1) is where most frames are made: draw it often
        spacing = 1.0 if rng.random() < 0.25 else _log_uniform(rng, *SPACING)
    if spacing < 1:
        raise ValueError(f"spacing must be >= 1 frame, got {spacing!r}")
    positions = window_positions(frames, spacing)
    span = int(positions[-1])
    if role == "global":
        scenes = draw_scenes(rng, span)
        start, length, facts = scenes[-1]
        scenes[-1] = (start, span + 1 - start, facts)  # the story ends with the window
    else:
        first = max(2, round(_log_uniform(rng, *SCENE_FRAMES)))
        scenes = draw_scenes(rng, span, start_offset=int(rng.integers(0, first)))
    starts = np.array([s for s, _, _ in scenes])
    renderers: dict[int, SceneRenderer] = {}
    out = np.empty((frames, size, size, 3), np.uint8)
    prompts: list[str] = []
    facts_per_frame: list[SceneFacts] = []
    progress = np.empty(frames, np.float32)
    for k, pos in enumerate(positions):
        i = int(np.searchsorted(starts, pos, side="right") - 1)
        start, length, facts = scenes[i]
        progress[k] = (pos - start) / (length - 1) if length > 1 else 0.5
        if i not in renderers:
            renderers[i] = SceneRenderer(
                facts, num_frames=length, width=size, height=size, seed=rng
            )
        out[k] = renderers[i].frame(int(pos - start))
        prompts.append(facts.caption)
        facts_per_frame.append(facts)
    mask = np.zeros(frames, np.float32)
    if role == "local":
        mask[0] = mask[-1] = 1.0
    elif role == "autoregressive":
        mask[: int(rng.integers(1, min(4, frames - 1) + 1))] = 1.0
    real_spacing = float(positions[-1] - positions[0]) / max(frames - 1, 1)
    return Window(out, prompts, mask, real_spacing, role, facts_per_frame, progress)


#: shorter calls, as a share of ``frames``: uneven (stretched) plans make calls of 3 to L frames;
#: training draws a few lengths only, since each new input shape costs the GPU a round of
#: kernel selection (the network itself takes any length)
SHORT_CALLS = (0.25, 0.5, 0.75)


def draw_call_length(rng: np.random.Generator, frames: int) -> int:
    """Frames of one training call: L most of the time, else one of a few shorter lengths."""
    if frames <= 3 or rng.random() < 0.7:
        return frames
    return max(3, round(frames * float(rng.choice(SHORT_CALLS))))


class StoryWindows(torch.utils.data.IterableDataset):
    """Endless batches of windows for training (each DataLoader worker draws its own).

    Yields ``(frames uint8 (B, F, H, W, 3), prompts [[str] * F] * B, mask (B, F),
    spacing (B,), progress (B, F))``, in every role or in ``role`` alone; all windows of a batch share ``F``, which varies
    between batches.
    ``uncond`` of the windows get empty prompts (classifier-free guidance).
    """

    def __init__(
        self,
        *,
        batch_size: int,
        frames: int,
        size: int,
        seed: int,
        uncond: float = 0.1,
        role: str | None = None,
    ) -> None:
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
        self.batch_size, self.frames, self.size = batch_size, frames, size
        #: every window in this role (``"global"``: nothing known, a plain text-to-video
        #: model's training); None: the roles drawn as :data:`ROLE_WEIGHTS` says
        self.seed, self.uncond, self.role = seed, uncond, role

    def __iter__(
        self,
    ) -> Iterator[tuple[torch.Tensor, list[list[str]], torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, worker, 7919])
        while True:
            f = draw_call_length(rng, self.frames)
            windows = [
                sample_window(rng, frames=f, size=self.size, role=self.role)
                for _ in range(self.batch_size)
            ]
            prompts = [[""] * f if rng.random() < self.uncond else w.prompts for w in windows]
            yield collate(windows, prompts)


def collate(
    windows: list[Window], prompts: list[list[str]] | None = None
) -> tuple[torch.Tensor, list[list[str]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch of ``windows`` (all of one length): ``(frames uint8 (B, F, H, W, 3),
    prompts, mask (B, F), spacing (B,), progress (B, F))``; ``prompts`` in place of the
    windows' own (guidance's empty prompts)."""
    return (
        torch.from_numpy(np.stack([w.frames for w in windows])),
        [w.prompts for w in windows] if prompts is None else prompts,
        torch.from_numpy(np.stack([w.mask for w in windows])),
        torch.tensor([w.spacing for w in windows], dtype=torch.float32),
        torch.from_numpy(np.stack([w.progress for w in windows])),
    )


def random_frames(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``count`` single shapes-world frames (uint8 (N, H, W, 3)) for training the autoencoder:
    any scene, any moment of it."""
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        length = max(2, round(_log_uniform(rng, *SCENE_FRAMES)))
        renderer = SceneRenderer(
            random_facts(rng), num_frames=length, width=size, height=size, seed=rng
        )
        out[i] = renderer.frame(int(rng.integers(0, length)))
    return out


class ShapeFrames(torch.utils.data.IterableDataset):
    """Endless batches of single frames, uint8 (B, H, W, 3)."""

    def __init__(self, *, batch_size: int, size: int, seed: int) -> None:
        self.batch_size, self.size, self.seed = batch_size, size, seed

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, worker, 104729])
        while True:
            yield torch.from_numpy(random_frames(rng, self.batch_size, self.size))
