"""The arithmetic of the hierarchy and the builders: :func:`build_plan` (the stretch and trim
policies), :func:`autoregressive_plan` (sliding windows), :func:`with_prompts` and
:func:`plan_story` (a script at a frame rate)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .limits import (
    MAX_DEPTH,
    check_depth,
    check_fps,
    check_frames_per_call,
    check_int,
    check_length,
)
from .structure import AUTOREGRESSIVE, POLICIES, Call, Level, Plan, spacing_of

if TYPE_CHECKING:
    from ..script import StoryScript


def max_frames(frames_per_call: int, depth: int) -> int:
    """Frames the regular structure makes: ``(L − 1)^m + 1`` (``L`` for depth 1)."""
    check_frames_per_call(frames_per_call, 3)
    check_depth(depth)
    return (frames_per_call - 1) ** depth + 1


def deepest(num_frames: int, frames_per_call: int = 16) -> int:
    """The most levels a stretched plan of ``num_frames`` can use: every level must make
    frames, and each splits its gaps at least in two, so about ``log2(N − 1)``."""
    n = check_int("num_frames", num_frames, 1)
    L = check_frames_per_call(frames_per_call, 3)
    if n <= 2:
        return 1
    most = min(MAX_DEPTH, (n - 1).bit_length() + 1)
    return len(_hierarchy(n, L, most, balanced=True, keep=n))


def depth_for(num_frames: int, frames_per_call: int) -> int:
    """The smallest depth ``m ≥ 1`` with ``(L − 1)^m + 1 ≥ num_frames``."""
    check_int("num_frames", num_frames, 1)
    check_frames_per_call(frames_per_call, 3)
    m = 1
    while max_frames(frames_per_call, m) < num_frames:
        m += 1
    return m


def _int_root_ceil(g: int, r: int) -> int:
    """The smallest s with s**r >= g (exact integer arithmetic)."""
    s = max(1, int(round(g ** (1.0 / r))))
    while s**r < g:
        s += 1
    while s > 1 and (s - 1) ** r >= g:
        s -= 1
    return s


def _split(a: int, b: int, parts: int) -> list[int]:
    """``parts + 1`` evenly spaced, rounded, unique positions from a to b inclusive."""
    g = b - a
    # exact integer rounding (half up): float division drifts for very deep trimmed plans
    return sorted({a + (2 * k * g + parts) // (2 * parts) for k in range(parts + 1)})


def _parts(g: int, levels_left: int, L: int, balanced: bool, *, first: bool = False) -> int:
    """How many sub-gaps a gap of ``g`` frames is split into at this level.

    The global level uses all ``L`` frames (it is the only call that sees the whole story).
    Below it a gap gets the fewest parts that still let the levels left finish it, so the
    calls of the last level are as full as they can be and the call count stays low: 91 calls
    for 1024 frames at L = 16 instead of 241 with every level split ``L − 1`` ways. With
    ``balanced`` (more levels than the length needs) each level takes about ``g^(1/r)``.
    """
    cap = min(L - 1, g)
    needed = math.ceil(g / (L - 1) ** (levels_left - 1))  # so later levels can still finish
    if balanced:
        return min(cap, max(needed, _int_root_ceil(g, levels_left)))
    return cap if first else min(cap, needed)


def _hierarchy(total: int, L: int, depth: int, balanced: bool, keep: int) -> list[Level]:
    """Levels over frames ``0 .. total − 1`` (``total ≤ (L−1)^depth + 1``).

    Every frame below ``keep`` is produced exactly once; a gap is only filled when it holds a
    frame below ``keep`` (so trimming never builds the calls it would throw away).
    """
    if total <= 2 or (total <= L and not balanced):
        call = Call(0, tuple(range(total)), (False,) * total)
        return [Level(0, (call,), 1.0)]
    first = _split(0, total - 1, _parts(total - 1, depth, L, balanced, first=True))
    calls = (Call(0, tuple(first), (False,) * len(first)),)
    levels = [Level(0, calls, spacing_of(calls))]
    known = first
    for j in range(1, depth):
        new_calls = []
        next_known: list[int] = [known[0]]
        for a, b in zip(known, known[1:]):
            if b - a > 1 and a < keep - 1:
                frames = _split(a, b, _parts(b - a, depth - j, L, balanced))
                flags = tuple(f in (a, b) for f in frames)
                new_calls.append(Call(j, tuple(frames), flags))
                next_known.extend(frames[1:])
            else:
                next_known.append(b)
        if not new_calls:
            break
        known = next_known
        levels.append(Level(j, tuple(new_calls), spacing_of(new_calls)))
    missing = keep - len([f for f in known if f < keep])
    if missing:  # guarded by the feasibility check in build_plan
        raise AssertionError(f"plan left {missing} of {keep} frames ungenerated")
    return levels


def build_plan(
    num_frames: int,
    *,
    frames_per_call: int = 16,
    depth: int | None = None,
    policy: str = "stretch",
) -> Plan:
    """The hierarchical plan for ``num_frames`` frames (see the module docstring).

    Raises ``ValueError`` for a length over the frame limit (:func:`frame_limit`), a depth
    too small for the length or with more levels than the length can use.
    """
    n = check_int("num_frames", num_frames, 1)
    check_length(n)
    L = check_frames_per_call(frames_per_call, 3)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    need = depth_for(n, L)
    if depth is None:
        depth = need
    check_depth(depth)
    if max_frames(L, depth) < n:
        raise ValueError(
            f"depth {depth} with {L} frames per call makes at most {max_frames(L, depth)} "
            f"frames, fewer than num_frames={n}; use depth >= {need} or more frames per call"
        )

    if policy == "stretch":
        levels = _hierarchy(n, L, depth, balanced=depth > need, keep=n)
        if len(levels) < depth:
            raise ValueError(
                f"depth {depth} is more levels than {n} frames can use with {L} frames per "
                f"call (at most {deepest(n, L)}); leave depth out for the fewest levels"
            )
        return Plan(n, L, len(levels), tuple(levels), policy, None, n)

    # trim: the regular structure over (L-1)^depth + 1 frames, built only where frames < n lie
    levels = _hierarchy(max_frames(L, depth), L, depth, balanced=False, keep=n)
    produced = sorted({f for lv in levels for c in lv.calls for f in c.new_frames})
    dropped = tuple(f for f in produced if f >= n)
    return Plan(n, L, len(levels), tuple(levels), policy, None, len(produced), dropped)


def autoregressive_plan(num_frames: int, *, frames_per_call: int = 16, overlap: int = 1) -> Plan:
    """Sliding windows of ``L`` frames, each given the last ``overlap`` frames of the one before.

    Every window is one level with one call, so ``rounds == model_calls``: nothing runs in
    parallel. The last window is shifted back to end on the last frame (it keeps ``L`` frames
    and is given more than ``overlap`` of them) so every call has the model's native length.
    """
    n = check_int("num_frames", num_frames, 1)
    check_length(n)
    L = check_frames_per_call(frames_per_call, 2)
    check_int("overlap", overlap, 1)
    if overlap >= L:
        raise ValueError(f"overlap must be smaller than frames_per_call={L}, got {overlap!r}")
    levels: list[Level] = []
    first = tuple(range(min(n, L)))
    levels.append(Level(0, (Call(0, first, (False,) * len(first)),), 1.0))
    done = len(first)
    while done < n:
        start = max(0, min(done - overlap, n - L))
        frames = tuple(range(start, min(start + L, n)))
        j = len(levels)
        levels.append(Level(j, (Call(j, frames, tuple(f < done for f in frames)),), 1.0))
        done = frames[-1] + 1
    return Plan(n, L, len(levels), tuple(levels), AUTOREGRESSIVE, None, n, overlap=overlap)


def segment_progress(prompts: Sequence[str]) -> list[float]:
    """How far each frame is into its segment (a run of equal prompts): 0 at the segment's
    first frame, 1 at its last, evenly between; a one-frame segment is 0.5.

    A timed prompt says what happens over its whole span ("moving right" from its start to its
    end), so a frame's place in that span says where the action should be: a keyframe drawn
    seconds away from its neighbours needs it to place the shape along the motion."""
    out: list[float] = []
    start = 0
    for k in range(1, len(prompts) + 1):
        if k == len(prompts) or prompts[k] != prompts[start]:
            n = k - start
            out += [0.5] if n == 1 else [i / (n - 1) for i in range(n)]
            start = k
    return out


def with_prompts(plan: Plan, prompts: Sequence[str], *, fps: float | None = None) -> Plan:
    """``plan`` with per-frame prompts (and each frame's :func:`segment_progress`) on the plan
    and on every call.

    Frames past the end (trim) take the last prompt, at the end of its segment.
    """
    prompts = tuple(prompts)
    if len(prompts) != plan.num_frames:
        raise ValueError(f"got {len(prompts)} prompts for a plan of {plan.num_frames} frames")
    progress = segment_progress(prompts)

    def at(f: int) -> str:
        return prompts[min(f, len(prompts) - 1)]

    def progress_at(f: int) -> float:
        return progress[f] if f < len(progress) else 1.0

    levels = tuple(
        replace(
            lv,
            calls=tuple(
                replace(
                    c,
                    prompts=tuple(at(f) for f in c.frames),
                    progress=tuple(progress_at(f) for f in c.frames),
                )
                for c in lv.calls
            ),
        )
        for lv in plan.levels
    )
    return replace(plan, levels=levels, prompts=prompts, fps=fps if fps else plan.fps)


def check_policy_options(policy: str, depth: int | None, overlap: int) -> None:
    """``ValueError`` for an option the policy has no use for, rather than ignoring it:
    ``depth`` (the levels of a hierarchy) under the sliding windows of ``"autoregressive"``,
    an ``overlap`` other than 1 (known frames per window) under a hierarchical policy."""
    if policy == AUTOREGRESSIVE and depth is not None:
        raise ValueError(f"depth does not apply to the {AUTOREGRESSIVE!r} policy")
    if policy != AUTOREGRESSIVE and overlap != 1:
        raise ValueError(
            f"overlap applies to the {AUTOREGRESSIVE!r} policy only, got overlap {overlap!r} "
            f"with policy {policy!r}"
        )


def plan_story(
    script: StoryScript,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    frames_per_call: int = 16,
    depth: int | None = None,
    policy: str = "stretch",
    gaps: str = "hold",
    overlap: int = 1,
) -> Plan:
    """The plan for a script at ``fps`` (default: the script's), with per-frame prompts.

    ``num_frames`` defaults to ``round(duration × fps)``; ``policy`` may also be
    ``"autoregressive"`` (sliding windows with ``overlap``), for comparison. The frame rate
    must lie in :data:`FPS_RANGE` and the length within the frame limit (:func:`frame_limit`),
    checked before any per-frame list is made.
    """
    fps_used = check_fps(script._fps(fps), None if fps is not None else script.source or "script")
    if num_frames is None:
        check_length(
            script.duration_s * fps_used,
            f"{script.source or 'the story'}: {script.duration_s:g} s at {fps_used:g} fps",
        )
    else:
        check_int("num_frames", num_frames, 1)
        check_length(num_frames)
    prompts = script.prompts_per_frame(fps_used, num_frames=num_frames, gaps=gaps)
    check_policy_options(policy, depth, overlap)
    if policy == AUTOREGRESSIVE:
        plan = autoregressive_plan(len(prompts), frames_per_call=frames_per_call, overlap=overlap)
    else:
        plan = build_plan(len(prompts), frames_per_call=frames_per_call, depth=depth, policy=policy)
    return with_prompts(plan, prompts, fps=fps_used)


def side_by_side(plans: Sequence[Plan]) -> tuple[Plan, list[int]]:
    """Several stories' plans as one plan, and where each story starts in it.

    Story ``i``'s frames follow story ``i - 1``'s, and level ``k`` holds level ``k`` of every
    plan (no call spans two stories, each keeps its own prompts and progress), so one render
    runs the calls of all the stories level by level in shared batches: a batch of 32 stories'
    sliding windows costs a GPU about what one window does. The plans must share a policy,
    frames per call and frame rate and make no frames past their ends (the trim policy).
    """
    if not plans:
        raise ValueError("side_by_side needs at least one plan")
    first = plans[0]
    for i, p in enumerate(plans):
        if (p.policy, p.frames_per_call, p.fps, p.overlap) != (
            first.policy,
            first.frames_per_call,
            first.fps,
            first.overlap,
        ):
            raise ValueError(
                f"plan {i}: policy {p.policy!r}, {p.frames_per_call} frames per call, fps "
                f"{p.fps}, overlap {p.overlap} differ from plan 0's ({first.policy!r}, "
                f"{first.frames_per_call}, {first.fps}, {first.overlap})"
            )
        if p.dropped or p.generated_frames > p.num_frames:
            raise ValueError(f"plan {i} makes frames past its end (trim): not side by side")
    starts, total = [], 0
    for p in plans:
        starts.append(total)
        total += p.num_frames
    check_length(total, f"{len(plans)} stories side by side")
    levels = []
    for k in range(max(len(p.levels) for p in plans)):
        calls = tuple(
            replace(c, level=k, frames=tuple(f + start for f in c.frames))
            for p, start in zip(plans, starts)
            if k < len(p.levels)
            for c in p.levels[k].calls
        )
        spacing = next(p.levels[k].spacing for p in plans if k < len(p.levels))
        levels.append(Level(k, calls, spacing))
    prompts = (
        tuple(s for p in plans for s in (p.prompts or ()))
        if all(p.prompts is not None for p in plans)
        else None
    )
    merged = replace(
        first,
        num_frames=total,
        depth=max(p.depth for p in plans),
        levels=tuple(levels),
        prompts=prompts,
        generated_frames=total,
        dropped=(),
    )
    return merged, starts
