"""What a plan is: :class:`Call` (the frames one model call makes and is given), :class:`Level`
(calls that run together) and :class:`Plan`, with its summary, its JSON form and
:meth:`Plan.check`, the rules of an executable plan."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

POLICIES = ("stretch", "trim")
#: the sliding-window baseline's policy name (see :func:`autoregressive_plan`)
AUTOREGRESSIVE = "autoregressive"


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
    #: how far each frame is into its prompt's segment, 0 at its first frame and 1 at its
    #: last (:func:`storygen.plan.build.segment_progress`)
    progress: tuple[float, ...] | None = None

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
        if self.progress is not None and len(self.progress) != len(self.frames):
            raise ValueError(
                f"call at level {self.level}: {len(self.frames)} frames but "
                f"{len(self.progress)} progress values"
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
        out: dict[str, Any] = {
            "level": self.level,
            "frames": list(self.frames),
            "known": list(self.known),
            "prompts": None if self.prompts is None else list(self.prompts),
        }
        if self.progress is not None:
            out["progress"] = list(self.progress)
        return out


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
                    None if c.get("progress") is None else tuple(float(x) for x in c["progress"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"plan call {k}: {exc}") from exc
            by_level.setdefault(call.level, []).append(call)
        if sorted(by_level) != list(range(len(by_level))):
            raise ValueError(f"plan levels must be 0..n-1, got {sorted(by_level)}")
        levels = tuple(
            Level(j, tuple(by_level[j]), spacing_of(by_level[j])) for j in sorted(by_level)
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


def spacing_of(calls: Sequence[Call]) -> float:
    """Mean distance between neighbouring frames inside the calls of a level."""
    steps = [(c.frames[-1] - c.frames[0]) / (len(c) - 1) for c in calls if len(c) > 1]
    return sum(steps) / len(steps) if steps else 1.0
