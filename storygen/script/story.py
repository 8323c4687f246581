"""The story script: a validated timed prompt sequence, its times, and the checks every reader
ends in.

A script is a sorted list of non-overlapping segments ``[start_s, end_s)`` with one prompt each.
Readers (:mod:`.yaml_json`, :mod:`.subtitles`, :mod:`.parquet`) turn a file into raw segments
with a label each (the line, cue or story segment they come from) and hand them to
:func:`build_script`, which collects every problem before raising :class:`ScriptError`.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.stories import TIME_EPS, StoryError, story_problems
from storygen.script.limits import MAX_PROBLEMS_SHOWN, MAX_SEGMENTS, quote

GAP_POLICIES = ("hold", "error")


class ScriptError(StoryError):
    """A script cannot be read or breaks a rule.

    ``source`` is the file (or ``"<text>"``), ``problems`` every problem found, each naming
    its line, cue or segment. The message lists the first
    :data:`~storygen.script.limits.MAX_PROBLEMS_SHOWN` of them. A ``ValueError`` (through
    :class:`schemas.StoryError`).
    """

    def __init__(self, source: str | None, problems: Sequence[str]) -> None:
        self.source = source or "<script>"
        self.where = self.source
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"{self.source}: {self.problems[0]}"
        else:
            shown = self.problems[:MAX_PROBLEMS_SHOWN]
            listed = "\n".join(f"  - {p}" for p in shown)
            more = len(self.problems) - len(shown)
            if more:
                listed += f"\n  - … and {more:,} more"
            message = f"{self.source}: {len(self.problems):,} problems:\n{listed}"
        # skip StoryError.__init__: the message is laid out one problem per line here
        ValueError.__init__(self, message)


@dataclass(frozen=True)
class Segment:
    """One prompt over the half-open time span ``[start_s, end_s)``.

    ``label`` says where the segment was written (``"segment 2 (line 5)"``, ``"cue 3 (line 9)"``,
    ``"story 's1' segment 0"``), for messages; it takes no part in comparisons.
    """

    start_s: float
    end_s: float
    prompt: str
    clip_id: str | None = None
    score: float | None = None
    label: str | None = field(default=None, compare=False, repr=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "prompt": self.prompt,
            "clip_id": self.clip_id,
            "score": self.score,
        }


#: a frame index past any plan (times far beyond the story's frames map here, not to inf)
FRAME_INDEX_MAX = 2**62


def _first_frame_at_or_after(t: float, fps: float) -> int:
    """Index of the first frame whose time ``i / fps`` is >= ``t`` (up to ``TIME_EPS``)."""
    x = t * fps - TIME_EPS * max(1.0, fps)
    if not x < FRAME_INDEX_MAX:  # huge, inf or nan: past every frame
        return FRAME_INDEX_MAX
    return max(0, math.ceil(x))


def time_problems(segments: Sequence[Any], labels: Sequence[str]) -> dict[int, str]:
    """Times the shared story rules cannot judge (not finite, negative), by segment index."""
    problems = {}
    for i, (seg, label) in enumerate(zip(segments, labels)):
        for key in ("start_s", "end_s"):
            t = seg[key] if isinstance(seg, dict) else getattr(seg, key)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                problems[i] = f"{label}: {key[:-2]} must be a finite number, got {quote(t)}"
                break
            if t < 0:
                problems[i] = f"{label}: {key[:-2]} must not be negative, got {t:g} s"
                break
    return problems


def length_problem(length_s: Any) -> str | None:
    """Why a declared story length is unusable, or None."""
    if length_s is None:
        return None
    if (
        isinstance(length_s, bool)
        or not isinstance(length_s, (int, float))
        or not math.isfinite(length_s)
        or length_s <= 0
    ):
        return f"duration must be a positive, finite number of seconds, got {quote(length_s)}"
    return None


@dataclass(frozen=True)
class StoryScript:
    """A validated timed prompt sequence.

    ``length_s`` is the declared length (a YAML ``duration``, a stories row's ``duration_s``);
    without it the story ends with its last segment. Constructing a script validates it and
    raises :class:`ScriptError` listing every problem.
    """

    segments: tuple[Segment, ...]
    fps: float | None = None
    story_id: str | None = None
    source: str | None = None
    length_s: float | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        labels = [f"segment {i}" for i in range(len(self.segments))]
        problems = list(time_problems(self.segments, labels).values())
        length = length_problem(self.length_s)
        if length:
            problems.append(length)
        if not problems:
            problems = story_problems(
                [s.as_dict() for s in self.segments], duration_s=self.length_s
            )
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            problems.append(f"fps must be a positive number, got {quote(self.fps)}")
        if problems:
            raise ScriptError(self.source, problems)

    # ----------------------------------------------------------------- properties
    @property
    def duration_s(self) -> float:
        """The story's length: the declared length, else the last segment's end."""
        last = self.segments[-1].end_s
        return max(last, self.length_s) if self.length_s is not None else last

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(s.prompt for s in self.segments)

    def num_frames(self, fps: float | None = None) -> int:
        """Frames in the story at ``fps`` (default: the script's): ``round(duration × fps)``."""
        fps = self._fps(fps)
        frames = self.duration_s * fps
        if not frames < FRAME_INDEX_MAX:
            raise ValueError(
                f"{self.source or 'script'}: {self.duration_s:g} s at {fps:g} fps is "
                f"{frames:.3g} frames, too many to render"
            )
        return max(1, round(frames))

    def _fps(self, fps: float | None) -> float:
        fps = self.fps if fps is None else fps
        if fps is None:
            raise ValueError(
                f"{self.source or 'script'}: no fps given and the script sets none; "
                "pass fps= (or --fps)"
            )
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise ValueError(f"fps must be a positive number, got {quote(fps)}")
        if not math.isfinite(fps):
            raise ValueError(f"fps must be finite, got {fps!r}")
        return float(fps)

    # ----------------------------------------------------------------- frames
    def prompt_at(self, t: float) -> str | None:
        """The prompt of the segment containing time ``t`` (half-open spans), or None."""
        starts = [s.start_s for s in self.segments]
        i = bisect.bisect_right(starts, t + TIME_EPS) - 1
        if i >= 0 and t < self.segments[i].end_s - TIME_EPS:
            return self.segments[i].prompt
        return None

    def prompts_per_frame(
        self,
        fps: float | None = None,
        *,
        num_frames: int | None = None,
        gaps: str = "hold",
    ) -> list[str]:
        """One prompt per frame: frame ``i`` at time ``i / fps`` takes its segment's prompt.

        Spans are half-open, so a frame exactly on a boundary belongs to the later segment.
        ``gaps="hold"``: a frame between segments (or after the last) keeps the previous
        segment's prompt, one before the first segment takes the first's. ``gaps="error"``:
        raise :class:`ScriptError` naming every gap that holds frames. ``num_frames`` defaults
        to ``round(duration × fps)``.
        """
        prompts = self.prompts
        return [prompts[i] for i in self.segments_per_frame(fps, num_frames=num_frames, gaps=gaps)]

    def segments_per_frame(
        self,
        fps: float | None = None,
        *,
        num_frames: int | None = None,
        gaps: str = "hold",
    ) -> list[int]:
        """The index (into :attr:`segments`) of the segment each frame shows, by the rules of
        :meth:`prompts_per_frame`: a segment no frame shows is missing from the list."""
        fps = self._fps(fps)
        if gaps not in GAP_POLICIES:
            raise ValueError(f"gaps must be one of {GAP_POLICIES}, got {gaps!r}")
        if num_frames is None:
            num_frames = self.num_frames(fps)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")

        # segment i owns frames [first_i, end_i): the frames whose time lies in its span
        out: list[int] = []
        uncovered: list[tuple[int, int]] = []  # runs of frames in a gap: [a, b)
        held = 0
        cursor = shown_end = 0
        for i, seg in enumerate(self.segments):
            first = min(_first_frame_at_or_after(seg.start_s, fps), num_frames)
            end = min(_first_frame_at_or_after(seg.end_s, fps), num_frames)
            if first > cursor:
                uncovered.append((cursor, first))
                out.extend([held] * (first - cursor))
            out.extend([i] * (end - first))
            held = i
            cursor = max(cursor, end)
            if end > first:
                shown_end = end
        cursor_last = shown_end
        if cursor < num_frames:
            uncovered.append((cursor, num_frames))
            out.extend([held] * (num_frames - cursor))

        if gaps == "error" and uncovered:
            problems = []
            for a, b in uncovered:
                if a == 0:
                    where = "before the first segment"
                elif b == num_frames and a >= cursor_last:
                    where = "after the last segment"
                else:
                    where = "between segments"
                frames = f"frame {a}" if b - a == 1 else f"frames {a}–{b - 1}"
                span = f"{a / fps:g}–{b / fps:g} s"
                problems.append(f"no segment covers {span} ({frames} at {fps:g} fps, {where})")
            raise ScriptError(self.source, problems)
        return out

    def unshown_segments(
        self, fps: float | None = None, *, num_frames: int | None = None
    ) -> list[str]:
        """A warning for each segment no frame shows at ``fps`` over ``num_frames`` frames
        (default ``round(duration × fps)``): one that starts after the last frame, or falls
        between two frames and is not held over a gap after it. Each names the file and the
        segment as its reader labelled it (line, cue, story)."""
        fps = self._fps(fps)
        if num_frames is None:
            num_frames = self.num_frames(fps)
        shown = set(self.segments_per_frame(fps, num_frames=num_frames))
        last = num_frames - 1
        out = []
        for i, seg in enumerate(self.segments):
            if i in shown:
                continue
            first = _first_frame_at_or_after(seg.start_s, fps)
            if first >= num_frames:
                why = (
                    f"it starts at {seg.start_s:g} s, after the output's last frame "
                    f"(frame {last} at {last / fps:g} s)"
                )
            else:
                before = max(0, first - 1)
                why = (
                    f"{seg.start_s:g}–{seg.end_s:g} s falls between two frames "
                    f"({before / fps:g} s and {first / fps:g} s)"
                )
            where = f"{self.source}: " if self.source else ""
            label = seg.label or f"segment {i + 1}"
            out.append(f"{where}{label}: not shown at {fps:g} fps ({num_frames} frames): {why}")
        return out

    def frame_spans(self, fps: float | None = None) -> list[tuple[int, int]]:
        """Each segment's half-open frame span ``[start_frame, end_frame)`` at ``fps``."""
        fps = self._fps(fps)
        return [
            (_first_frame_at_or_after(s.start_s, fps), _first_frame_at_or_after(s.end_s, fps))
            for s in self.segments
        ]

    # ----------------------------------------------------------------- tables
    def to_stories_row(self, fps: float | None = None) -> dict[str, Any]:
        """A row of ``schemas.STORIES_SCHEMA`` (times kept as written, frames at ``fps``)."""
        fps = self._fps(fps)
        num_frames = self.num_frames(fps)
        # spans end at the row's last frame: a segment past it holds no frame of the row
        spans = [(min(a, num_frames), min(b, num_frames)) for a, b in self.frame_spans(fps)]
        empty = [
            f"{s.label or f'segment {i + 1}'} ({s.start_s:g}–{s.end_s:g} s) holds no frame at "
            f"{fps:g} fps ({num_frames} frames)"
            for i, (s, (a, b)) in enumerate(zip(self.segments, spans))
            if b <= a
        ]
        if empty:
            raise ScriptError(self.source, empty)
        story_id = self.story_id
        if story_id is None:
            src = self.source
            story_id = Path(src).stem if src and not src.startswith("<") else "story"
        return {
            "story_id": story_id,
            "video_id": None,
            "uri": self.source,
            "fps": fps,
            "duration_s": float(self.duration_s),
            "num_frames": num_frames,
            "segments": [
                {
                    "start_s": float(s.start_s),
                    "end_s": float(s.end_s),
                    "start_frame": a,
                    "end_frame": b,
                    "prompt": s.prompt,
                    "clip_id": s.clip_id,
                    "score": s.score,
                }
                for s, (a, b) in zip(self.segments, spans)
            ],
        }

    def with_segments(self, segments: Sequence[Segment]) -> StoryScript:
        return StoryScript(
            tuple(segments),
            self.fps,
            self.story_id,
            self.source,
            length_s=self.length_s,
        )


# --------------------------------------------------------------------- times
_CLOCK = re.compile(r"^(?:(?:(?P<h>\d+):)?(?P<m>\d+):)?(?P<s>\d+(?:[.,]\d*)?|[.,]\d+)$")
_SUFFIX = re.compile(r"^(?P<v>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<u>ms|s)?$")


def parse_time(value: Any) -> float:
    """Seconds from a number or a string (``"12.5"``, ``"12.5s"``, ``"1:02.5"``,
    ``"00:01:02,500"``, ``"250ms"``); ``ValueError`` naming the value otherwise, also for
    a time that is negative or not finite (``nan``, ``inf``, ``1e999``)."""
    if isinstance(value, bool):
        raise ValueError(f"bad time {value!r}: expected seconds or a time string")
    if isinstance(value, (int, float)):
        return _checked(float(value) if isinstance(value, float) else _int_seconds(value), value)
    if not isinstance(value, str):
        raise ValueError(
            f"bad time {quote(value)}: expected seconds or a string like '12.5s', '1:02.5', "
            "'00:01:02.5'"
        )
    text = value.strip()
    m = _SUFFIX.match(text) if len(text) <= _TIME_CHARS else None
    if m:
        seconds = float(m.group("v"))
        return _checked(seconds / 1000.0 if m.group("u") == "ms" else seconds, value)
    m = _CLOCK.match(text) if len(text) <= _TIME_CHARS else None
    if m and (m.group("m") is not None):
        hours = int(m.group("h") or 0)
        minutes = int(m.group("m"))
        seconds = float(m.group("s").replace(",", "."))
        if seconds >= 60 or (m.group("h") is not None and minutes >= 60):
            raise ValueError(
                f"bad time string {quote(value)}: minutes and seconds must be below 60"
            )
        return _checked(hours * 3600.0 + minutes * 60.0 + seconds, value)
    raise ValueError(
        f"bad time string {quote(value)}: expected seconds or a string like '12.5s', "
        "'1:02.5', '00:01:02.5'"
    )


#: the longest time string read (longer ones are not times, however many digits they hold)
_TIME_CHARS = 64


def _int_seconds(value: int) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond a float's range
        return math.inf


def _checked(seconds: float, value: Any) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"bad time {quote(value)}: not finite")
    if seconds < 0:
        raise ValueError(f"bad time {quote(value)}: negative")
    return seconds


# --------------------------------------------------------------------- building
def _in_file_order(problems: list[str], labels: list[str]) -> list[str]:
    """Problems sorted by the segment they name (file-level problems first), stable."""
    order = {lab: i for i, lab in enumerate(labels)}

    def key(problem: str) -> int:
        return order.get(problem.split(": ", 1)[0], -1)

    return sorted(problems, key=key)


def not_unicode(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (a lone surrogate, as JSON's ``"\\ud800"``
    gives), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode (lone surrogate U+{ord(text[exc.start]):04X})"
    return None


def _unicode_problems(good: list[tuple[dict[str, Any], str]], story_id: str | None) -> list[str]:
    """The prompts, clip ids and story id that no text encoder, tokenizer or output file
    takes: a problem of the script, not a crash at the stage that first writes them."""
    problems = []
    if isinstance(story_id, str):
        why = not_unicode(story_id)
        if why:
            problems.append(f"story_id is {why}")
    for seg, label in good:
        for key in ("prompt", "clip_id"):
            value = seg.get(key)
            why = not_unicode(value) if isinstance(value, str) else None
            if why:
                problems.append(f"{label}: {key} is {why}")
    return problems


def build_script(
    raw: list[dict[str, Any] | None],
    labels: list[str],
    problems: list[str],
    *,
    source: str | None,
    fps: float | None,
    story_id: str | None,
    length_s: float | None,
) -> StoryScript:
    """Validate parsed segments with the shared story rules and build the script."""
    good = [(seg, lab) for seg, lab in zip(raw, labels) if seg is not None]
    if len(raw) > MAX_SEGMENTS:
        problems.append(f"{len(raw):,} segments, more than the limit of {MAX_SEGMENTS:,}")
        raise ScriptError(source, problems)
    length = length_problem(length_s)
    if length:
        problems.append(length)
    timed = time_problems([seg for seg, _ in good], [lab for _, lab in good])
    if timed:
        problems.extend(timed.values())
        good = [item for i, item in enumerate(good) if i not in timed]
    problems.extend(_unicode_problems(good, story_id))
    if not raw and not problems:
        problems.append("script has no segments")
    elif good and not length:
        problems.extend(
            story_problems(
                [seg for seg, _ in good],
                duration_s=length_s,
                labels=[lab for _, lab in good],
            )
        )
    if problems:
        raise ScriptError(source, _in_file_order(problems, labels))
    return StoryScript(
        tuple(Segment(**seg, label=lab) for seg, lab in good),
        fps,
        story_id,
        source,
        length_s=length_s,
    )
