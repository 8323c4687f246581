"""The hierarchical plan of diffusion over diffusion: which model call makes which frames.

With ``L`` frames per model call and depth ``m`` (the number of levels, which is also the number
of sequential rounds), the regular structure makes ``N = (L − 1)^m + 1`` frames:

* level 0 (global): one call makes ``L`` keyframes spread over the whole story, none given;
* level j ≥ 1 (local): for every adjacent pair ``(a, b)`` of frames known after level j − 1 with
  ``b − a > 1``, one call makes up to ``L − 2`` frames between them, given ``a`` and ``b``.

For ``L = 16``: depth 1 → 16 frames (1 call), depth 2 → 226 frames (16 calls, 2 rounds),
depth 3 → 3376 frames (241 calls, 3 rounds). All calls of one level are independent, so a level
is one batch however many calls it holds.

Other lengths use a policy:

* ``"stretch"`` (default): positions are rounded linspaces at every level, so spacing is uneven
  by at most one frame; every call still holds ≤ ``L`` frames. Level 0 always makes ``L``
  keyframes over the whole story; below it each gap is split into the fewest parts that let
  the remaining levels finish, which keeps the last level's calls full and the call count low
  (1024 frames at L = 16: 1 + 15 + 75 = 91 calls in 3 rounds). Exactly ``N`` frames are
  generated. When ``depth`` is larger than ``N`` needs, each level splits its gaps
  geometrically (``≈ g^(1/r)`` parts for ``r`` levels left) so that every level does part of
  the work.
* ``"trim"``: the regular structure for ``(L − 1)^m + 1`` frames, keeping the first ``N``;
  calls whose frames are all dropped (and not needed as ends by a kept call) are skipped.
  ``Plan.generated_frames`` counts what the kept calls make; ``Plan.dropped`` lists the frames
  beyond ``N`` that they make anyway.

:func:`autoregressive_plan` lays out the sliding-window baseline as a plan of the same type
(one call per level), so a benchmark runs both through the same executor and compares model
calls and rounds on equal footing.

Every builder keeps its inputs in bounds and refuses, with a ``ValueError`` naming the value,
what it cannot honour exactly (nothing is clamped):

=========================  ==================  ================================================
input                      accepted            why
=========================  ==================  ================================================
output frames              1 to 1,000,000      ``MAX_FRAMES``; raise it with :func:`frame_limit`
                                               (``--max-frames``): a plan holds every frame
frame rate (fps)           0.1 to 240          ``FPS_RANGE``: a million fps is a typo
frames per call ``L``      3 to 256            ``FRAMES_PER_CALL_RANGE`` (2 for sliding windows)
depth                      1 to 32, and no     ``MAX_DEPTH``; a plan never has fewer levels
                           more levels than    than asked for
                           the length can use
=========================  ==================  ================================================

(Somewhat over 500 lines on purpose: the plan types, their bounds and the arithmetic that
builds them are read together; :meth:`Plan.check` states the rules the builders keep.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .script import StoryScript

__all__ = [
    "AUTOREGRESSIVE",
    "FPS_RANGE",
    "FRAMES_PER_CALL_RANGE",
    "MAX_DEPTH",
    "MAX_FRAMES",
    "POLICIES",
    "Call",
    "Level",
    "Plan",
    "autoregressive_plan",
    "build_plan",
    "check_fps",
    "current_frame_limit",
    "deepest",
    "depth_for",
    "frame_limit",
    "max_frames",
    "plan_story",
    "with_prompts",
]

POLICIES = ("stretch", "trim")
#: the sliding-window baseline's policy name (see :func:`autoregressive_plan`)
AUTOREGRESSIVE = "autoregressive"

#: the most output frames a plan holds unless :func:`frame_limit` says otherwise
MAX_FRAMES = 1_000_000
#: the frame rates a story is planned at, inclusive
FPS_RANGE = (0.1, 240.0)
#: frames one model call may make, inclusive (sliding windows may use 2)
FRAMES_PER_CALL_RANGE = (3, 256)
#: the most levels a hierarchical plan may have
MAX_DEPTH = 32

_FRAME_LIMIT: ContextVar[int] = ContextVar("storygen_frame_limit", default=MAX_FRAMES)


@contextmanager
def frame_limit(limit: int) -> Iterator[int]:
    """Plans built inside the block may hold up to ``limit`` frames (``--max-frames``).

    The pipeline builds its plan inside ``__call__``, so this is how a caller raises the cap
    for one render::

        with frame_limit(5_000_000):
            pipe(script, fps=240)
    """
    _check_int("frame limit", limit, 1)
    token = _FRAME_LIMIT.set(limit)
    try:
        yield limit
    finally:
        _FRAME_LIMIT.reset(token)


def current_frame_limit() -> int:
    """The frame cap in force: :data:`MAX_FRAMES` unless a :func:`frame_limit` block sets one."""
    return _FRAME_LIMIT.get()


def _check_length(num_frames: int | float, what: str | None = None) -> None:
    """``ValueError`` when ``num_frames`` (``what``: how it was reached) exceeds the limit."""
    limit = current_frame_limit()
    if not num_frames <= limit:  # also catches nan
        head = (
            f"num_frames={num_frames:,}" if what is None else f"{what} is {num_frames:,.0f} frames,"
        )
        raise ValueError(
            f"{head} more than the limit of {limit:,} frames "
            "(raise it with --max-frames, or storygen.plan.frame_limit)"
        )


def check_fps(fps: float, source: str | None = None) -> float:
    """``fps`` if it lies in :data:`FPS_RANGE`, else ``ValueError`` naming where it came from."""
    lo, hi = FPS_RANGE
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not (lo <= fps <= hi)  # also catches nan
    ):
        shown = f"{fps:g}" if isinstance(fps, (int, float)) else repr(fps)[:40]
        where = f" (from {source})" if source else ""
        raise ValueError(
            f"fps {shown}{where} is out of range: frame rates go from {lo:g} to {hi:g}"
        )
    return float(fps)


def _check_frames_per_call(value: Any, minimum: int) -> int:
    lo, hi = minimum, FRAMES_PER_CALL_RANGE[1]
    frames = _check_int("frames_per_call", value, lo)
    if frames > hi:
        raise ValueError(f"frames_per_call must be between {lo} and {hi}, got {frames!r}")
    return frames


@dataclass(frozen=True)
class Call:
    """One model call: the frames it outputs, which of them are given, and their prompts.

    ``frames`` are output-frame indices, sorted; ``known[i]`` is True where ``frames[i]`` was
    produced by an earlier level and is given to the model as a condition.
    """

    level: int
    frames: tuple[int, ...]
    known: tuple[bool, ...]
    prompts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.known) != len(self.frames):
            raise ValueError(
                f"call at level {self.level}: {len(self.frames)} frames but "
                f"{len(self.known)} known flags"
            )
        if self.prompts is not None and len(self.prompts) != len(self.frames):
            raise ValueError(
                f"call at level {self.level}: {len(self.frames)} frames but "
                f"{len(self.prompts)} prompts"
            )

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def new_frames(self) -> tuple[int, ...]:
        """The frames this call generates (not given)."""
        return tuple(f for f, k in zip(self.frames, self.known) if not k)

    @property
    def known_frames(self) -> tuple[int, ...]:
        return tuple(f for f, k in zip(self.frames, self.known) if k)

    @property
    def key(self) -> str:
        """A stable name for caching this call's output: level, first and last frame."""
        return f"L{self.level}-{self.frames[0]:06d}-{self.frames[-1]:06d}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "frames": list(self.frames),
            "known": list(self.known),
            "prompts": None if self.prompts is None else list(self.prompts),
        }


@dataclass(frozen=True)
class Level:
    """The calls of one level (all independent) and the approximate frame spacing after it."""

    index: int
    calls: tuple[Call, ...]
    spacing: float

    @property
    def new_frames(self) -> int:
        return sum(len(c.new_frames) for c in self.calls)

    @property
    def max_call_frames(self) -> int:
        return max((len(c) for c in self.calls), default=0)

    @property
    def min_call_frames(self) -> int:
        return min((len(c) for c in self.calls), default=0)


@dataclass(frozen=True)
class Plan:
    """Levels of model calls producing ``num_frames`` output frames."""

    num_frames: int
    frames_per_call: int
    depth: int
    levels: tuple[Level, ...]
    policy: str
    prompts: tuple[str, ...] | None = None
    generated_frames: int = 0
    dropped: tuple[int, ...] = ()
    fps: float | None = None
    overlap: int | None = None

    @property
    def model_calls(self) -> int:
        return sum(len(level.calls) for level in self.levels)

    @property
    def rounds(self) -> int:
        """Sequential rounds: levels run one after another, calls inside a level in parallel."""
        return len(self.levels)

    @property
    def calls(self) -> tuple[Call, ...]:
        return tuple(c for level in self.levels for c in level.calls)

    def frames_at_level(self, j: int) -> list[int]:
        """Sorted indices known after level ``j`` (generated space; trim may exceed N)."""
        if not 0 <= j < len(self.levels):
            raise IndexError(f"level {j} out of range: the plan has {len(self.levels)} levels")
        out: set[int] = set()
        for level in self.levels[: j + 1]:
            for call in level.calls:
                out.update(call.new_frames)
        return sorted(out)

    def prompt_changes(self) -> list[tuple[int, str]]:
        """``(frame, prompt)`` wherever the per-frame prompt changes (frame 0 included)."""
        if not self.prompts:
            return []
        out = [(0, self.prompts[0])]
        for i in range(1, len(self.prompts)):
            if self.prompts[i] != self.prompts[i - 1]:
                out.append((i, self.prompts[i]))
        return out

    def summary(self) -> str:
        """A human-readable table of levels, calls and spacing."""
        fps = self.fps
        head = (
            f"plan: {self.num_frames} frames"
            + (f" ({self.num_frames / fps:.2f} s at {fps:g} fps)" if fps else "")
            + f", {self.frames_per_call} frames per call, "
            + (
                f"sliding windows with overlap {self.overlap}"
                if self.policy == AUTOREGRESSIVE
                else f"depth {self.depth}, policy {self.policy}"
            )
        )
        cols = ["level", "calls", "frames/call", "new frames", "spacing (frames)"]
        if fps:
            cols.append("spacing (s)")
        rows = []
        levels = self.levels
        shown = levels
        if self.policy == AUTOREGRESSIVE and len(levels) > 8:
            shown = (*levels[:3], *levels[-2:])
        for level in shown:
            lo, hi = level.min_call_frames, level.max_call_frames
            row = [
                str(level.index),
                str(len(level.calls)),
                f"{lo}" if lo == hi else f"{lo}–{hi}",
                str(level.new_frames),
                f"{level.spacing:.2f}",
            ]
            if fps:
                row.append(f"{level.spacing / fps:.3f}")
            rows.append(row)
        if shown is not levels:
            rows.insert(3, ["…"] * len(cols))
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

        def fmt(r: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) for v, w in zip(r, widths)).rstrip()

        lines = [head, fmt(cols), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in rows]
        tail = (
            f"total: {self.model_calls} model calls in {self.rounds} sequential rounds; "
            f"{self.generated_frames} frames generated for {self.num_frames} kept"
        )
        if self.dropped:
            tail += f" ({len(self.dropped)} dropped by trimming)"
        lines.append(tail)
        return "\n".join(lines)

    def to_dict(self, *, calls: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_frames": self.num_frames,
            "frames_per_call": self.frames_per_call,
            "depth": self.depth,
            "policy": self.policy,
            "fps": self.fps,
            "overlap": self.overlap,
            "model_calls": self.model_calls,
            "rounds": self.rounds,
            "generated_frames": self.generated_frames,
            "dropped": list(self.dropped),
            "levels": [
                {
                    "index": lv.index,
                    "calls": len(lv.calls),
                    "min_frames_per_call": lv.min_call_frames,
                    "max_frames_per_call": lv.max_call_frames,
                    "new_frames": lv.new_frames,
                    "spacing_frames": lv.spacing,
                    "spacing_s": None if not self.fps else lv.spacing / self.fps,
                }
                for lv in self.levels
            ],
            "prompt_changes": [{"frame": f, "prompt": p} for f, p in self.prompt_changes()],
        }
        if calls:
            out["prompts"] = None if self.prompts is None else list(self.prompts)
            out["calls"] = [c.to_dict() for c in self.calls]
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(**kwargs), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """A plan from :meth:`to_dict` output (with its calls), checked with :meth:`check`."""
        if "calls" not in data:
            raise ValueError("plan data has no 'calls' (write it with to_dict(calls=True))")
        by_level: dict[int, list[Call]] = {}
        for k, c in enumerate(data["calls"]):
            try:
                call = Call(
                    int(c["level"]),
                    tuple(int(f) for f in c["frames"]),
                    tuple(bool(x) for x in c["known"]),
                    None if c.get("prompts") is None else tuple(c["prompts"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"plan call {k}: {exc}") from exc
            by_level.setdefault(call.level, []).append(call)
        if sorted(by_level) != list(range(len(by_level))):
            raise ValueError(f"plan levels must be 0..n-1, got {sorted(by_level)}")
        levels = tuple(
            Level(j, tuple(by_level[j]), _spacing(by_level[j])) for j in sorted(by_level)
        )
        prompts = data.get("prompts")
        plan = cls(
            int(data["num_frames"]),
            int(data["frames_per_call"]),
            len(levels),
            levels,
            str(data.get("policy", "stretch")),
            None if prompts is None else tuple(prompts),
            int(data.get("generated_frames", 0)),
            tuple(int(f) for f in data.get("dropped", ())),
            data.get("fps"),
            data.get("overlap"),
        )
        plan.check()
        return plan

    def check(self) -> None:
        """Raise ``ValueError`` naming the first call that breaks a rule of an executable plan.

        Rules: calls hold 1..L sorted, distinct frames; a given frame was made at an earlier
        level; no frame is made twice; every output frame is made; prompts match frames.
        """
        made_at: dict[int, int] = {}
        for j, level in enumerate(self.levels):
            if level.index != j:
                raise ValueError(f"level {j} carries index {level.index}")
            this_level: set[int] = set()
            for k, call in enumerate(level.calls):
                where = f"level {j} call {k} (frames {call.frames[:3]}...)"
                if call.level != j:
                    raise ValueError(f"{where}: says level {call.level}")
                if not 1 <= len(call) <= self.frames_per_call:
                    raise ValueError(
                        f"{where}: {len(call)} frames, expected 1..{self.frames_per_call}"
                    )
                if list(call.frames) != sorted(set(call.frames)) or call.frames[0] < 0:
                    raise ValueError(f"{where}: frames must be sorted, distinct and >= 0")
                for f, known in zip(call.frames, call.known):
                    if known and made_at.get(f, j) >= j:
                        raise ValueError(
                            f"{where}: frame {f} is given but no earlier level made it"
                        )
                    if not known and (f in made_at or f in this_level):
                        raise ValueError(f"{where}: frame {f} is made twice")
                    if not known:
                        this_level.add(f)
            for f in this_level:
                made_at[f] = j
        missing = [f for f in range(self.num_frames) if f not in made_at]
        if missing:
            raise ValueError(
                f"plan never makes {len(missing)} of its {self.num_frames} frames "
                f"(first: {missing[:5]})"
            )
        if self.prompts is not None and len(self.prompts) != self.num_frames:
            raise ValueError(f"{len(self.prompts)} prompts for {self.num_frames} frames")


# --------------------------------------------------------------------- arithmetic
def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def max_frames(frames_per_call: int, depth: int) -> int:
    """Frames the regular structure makes: ``(L − 1)^m + 1`` (``L`` for depth 1)."""
    _check_frames_per_call(frames_per_call, 3)
    _check_depth(depth)
    return (frames_per_call - 1) ** depth + 1


def _check_depth(depth: Any) -> int:
    _check_int("depth", depth, 1)
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be between 1 and {MAX_DEPTH}, got {depth!r}")
    return depth


def deepest(num_frames: int, frames_per_call: int = 16) -> int:
    """The most levels a stretched plan of ``num_frames`` can use: every level must make
    frames, and each splits its gaps at least in two, so about ``log2(N − 1)``."""
    n = _check_int("num_frames", num_frames, 1)
    L = _check_frames_per_call(frames_per_call, 3)
    if n <= 2:
        return 1
    most = min(MAX_DEPTH, (n - 1).bit_length() + 1)
    return len(_hierarchy(n, L, most, balanced=True, keep=n))


def depth_for(num_frames: int, frames_per_call: int) -> int:
    """The smallest depth ``m ≥ 1`` with ``(L − 1)^m + 1 ≥ num_frames``."""
    _check_int("num_frames", num_frames, 1)
    _check_frames_per_call(frames_per_call, 3)
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


def _spacing(calls: Sequence[Call]) -> float:
    """Mean distance between neighbouring frames inside the calls of a level."""
    steps = [(c.frames[-1] - c.frames[0]) / (len(c) - 1) for c in calls if len(c) > 1]
    return sum(steps) / len(steps) if steps else 1.0


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
    levels = [Level(0, calls, _spacing(calls))]
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
        levels.append(Level(j, tuple(new_calls), _spacing(new_calls)))
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
    n = _check_int("num_frames", num_frames, 1)
    _check_length(n)
    L = _check_frames_per_call(frames_per_call, 3)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    need = depth_for(n, L)
    if depth is None:
        depth = need
    _check_depth(depth)
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
    n = _check_int("num_frames", num_frames, 1)
    _check_length(n)
    L = _check_frames_per_call(frames_per_call, 2)
    _check_int("overlap", overlap, 1)
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


def with_prompts(plan: Plan, prompts: Sequence[str], *, fps: float | None = None) -> Plan:
    """``plan`` with per-frame prompts on the plan and on every call.

    Frames past the end (trim) take the last prompt.
    """
    prompts = tuple(prompts)
    if len(prompts) != plan.num_frames:
        raise ValueError(f"got {len(prompts)} prompts for a plan of {plan.num_frames} frames")

    def at(f: int) -> str:
        return prompts[min(f, len(prompts) - 1)]

    levels = tuple(
        replace(
            lv,
            calls=tuple(replace(c, prompts=tuple(at(f) for f in c.frames)) for c in lv.calls),
        )
        for lv in plan.levels
    )
    return replace(plan, levels=levels, prompts=prompts, fps=fps if fps else plan.fps)


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
        _check_length(
            script.duration_s * fps_used,
            f"{script.source or 'the story'}: {script.duration_s:g} s at {fps_used:g} fps",
        )
    else:
        _check_int("num_frames", num_frames, 1)
        _check_length(num_frames)
    prompts = script.prompts_per_frame(fps_used, num_frames=num_frames, gaps=gaps)
    if policy == AUTOREGRESSIVE:
        if depth is not None:
            raise ValueError(f"depth does not apply to the {AUTOREGRESSIVE!r} policy")
        plan = autoregressive_plan(len(prompts), frames_per_call=frames_per_call, overlap=overlap)
    else:
        plan = build_plan(len(prompts), frames_per_call=frames_per_call, depth=depth, policy=policy)
    return with_prompts(plan, prompts, fps=fps_used)
