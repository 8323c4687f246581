"""Story scripts: timed prompt sequences written by hand (YAML / JSON / SRT) or curated (Parquet).

A script is a sorted list of non-overlapping segments ``[start_s, end_s)`` with one prompt each.
Every loader collects *all* the problems of a file before raising, and each problem names the
line (YAML, JSON), cue (SRT) or story and segment (Parquet) it comes from::

    script = load_script("examples/lighthouse.yaml")
    prompts = script.prompts_per_frame(8)      # one prompt per frame at 8 fps

The YAML / JSON form::

    fps: 8                 # optional
    duration: 40           # optional; at least the last segment's end
    story_id: lighthouse   # optional; defaults to the file's stem
    segments:
      - {start: 0, end: 12.5, prompt: "a lighthouse at dusk"}
      - {start: "12.5s", end: "0:25", prompt: "waves break on the rocks"}

Times are seconds (numbers) or strings: ``"12.5"``, ``"12.5s"``, ``"250ms"``, ``"1:02.5"``
(minutes:seconds), ``"00:01:02.5"`` / ``"00:01:02,500"`` (hours:minutes:seconds). A segment may
give ``duration`` instead of ``end``.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.stories import TIME_EPS, StoryError, story_problems

__all__ = [
    "FORMATS",
    "ScriptError",
    "Segment",
    "StoryScript",
    "load_script",
    "parse_time",
    "save_script",
    "script_from_stories_row",
    "script_to_text",
]

#: file formats ``load_script`` reads, by extension
FORMATS = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".srt": "srt",
    ".vtt": "srt",
    ".parquet": "parquet",
}

GAP_POLICIES = ("hold", "error")


class ScriptError(StoryError):
    """A script cannot be read or breaks a rule.

    ``source`` is the file (or ``"<text>"``), ``problems`` every problem found, each naming
    its line, cue or segment. A ``ValueError`` (through :class:`schemas.StoryError`).
    """

    def __init__(self, source: str | None, problems: Sequence[str]) -> None:
        self.source = source or "<script>"
        self.where = self.source
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"{self.source}: {self.problems[0]}"
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{self.source}: {len(self.problems)} problems:\n{listed}"
        # skip StoryError.__init__: the message is laid out one problem per line here
        ValueError.__init__(self, message)


@dataclass(frozen=True)
class Segment:
    """One prompt over the half-open time span ``[start_s, end_s)``."""

    start_s: float
    end_s: float
    prompt: str
    clip_id: str | None = None
    score: float | None = None

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


def _first_frame_at_or_after(t: float, fps: float) -> int:
    """Index of the first frame whose time ``i / fps`` is >= ``t`` (up to ``TIME_EPS``)."""
    return max(0, math.ceil(t * fps - TIME_EPS * max(1.0, fps)))


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
        problems = story_problems([s.as_dict() for s in self.segments], duration_s=self.length_s)
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            problems.append(f"fps must be a positive number, got {self.fps!r}")
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
        return max(1, round(self.duration_s * fps))

    def _fps(self, fps: float | None) -> float:
        fps = self.fps if fps is None else fps
        if fps is None:
            raise ValueError(
                f"{self.source or 'script'}: no fps given and the script sets none; "
                "pass fps= (or --fps)"
            )
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
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
        fps = self._fps(fps)
        if gaps not in GAP_POLICIES:
            raise ValueError(f"gaps must be one of {GAP_POLICIES}, got {gaps!r}")
        if num_frames is None:
            num_frames = self.num_frames(fps)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")

        # segment i owns frames [first_i, end_i): the frames whose time lies in its span
        out: list[str] = []
        uncovered: list[tuple[int, int]] = []  # runs of frames in a gap: [a, b)
        held = self.segments[0].prompt
        cursor = shown_end = 0
        for seg in self.segments:
            first = min(_first_frame_at_or_after(seg.start_s, fps), num_frames)
            end = min(_first_frame_at_or_after(seg.end_s, fps), num_frames)
            if first > cursor:
                uncovered.append((cursor, first))
                out.extend([held] * (first - cursor))
            out.extend([seg.prompt] * (end - first))
            held = seg.prompt
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
        spans = self.frame_spans(fps)
        empty = [
            f"segment {i + 1} ({s.start_s:g}–{s.end_s:g} s) holds no frame at {fps:g} fps"
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
            "num_frames": self.num_frames(fps),
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
    ``"00:01:02,500"``, ``"250ms"``); ``ValueError`` naming the value otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"bad time {value!r}: expected seconds or a time string")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"bad time {value!r}: not finite")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(
            f"bad time {value!r}: expected seconds or a string like '12.5s', '1:02.5', '00:01:02.5'"
        )
    text = value.strip()
    m = _SUFFIX.match(text)
    if m:
        seconds = float(m.group("v"))
        return seconds / 1000.0 if m.group("u") == "ms" else seconds
    m = _CLOCK.match(text)
    if m and (m.group("m") is not None):
        hours = int(m.group("h") or 0)
        minutes = int(m.group("m"))
        seconds = float(m.group("s").replace(",", "."))
        if seconds >= 60 or (m.group("h") is not None and minutes >= 60):
            raise ValueError(f"bad time string {value!r}: minutes and seconds must be below 60")
        return hours * 3600.0 + minutes * 60.0 + seconds
    raise ValueError(
        f"bad time string {value!r}: expected seconds or a string like '12.5s', '1:02.5', "
        "'00:01:02.5'"
    )


# --------------------------------------------------------------------- building
_SEGMENT_KEYS = {
    "start": "start",
    "start_s": "start",
    "end": "end",
    "end_s": "end",
    "duration": "duration",
    "duration_s": "duration",
    "prompt": "prompt",
    "text": "prompt",
    "clip_id": "clip_id",
    "score": "score",
}
_TOP_KEYS = {"fps", "duration", "duration_s", "story_id", "segments", "title", "description"}


def _segment_from_mapping(item: Any, label: str, problems: list[str]) -> dict[str, Any] | None:
    """A segment dict from one YAML / JSON entry, or None (problems appended) if unusable."""
    if not isinstance(item, Mapping):
        problems.append(
            f"{label}: expected a mapping with start, end and prompt, got {type(item).__name__}"
        )
        return None
    fields: dict[str, Any] = {}
    ok = True
    for key, value in item.items():
        canon = _SEGMENT_KEYS.get(str(key))
        if canon is None:
            problems.append(
                f"{label}: unknown field {key!r} (expected start, end or duration, prompt, "
                "clip_id, score)"
            )
            ok = False
            continue
        if canon in fields:
            problems.append(f"{label}: field {canon!r} given twice")
            ok = False
            continue
        fields[canon] = value
    for need in ("start", "prompt"):
        if need not in fields:
            problems.append(f"{label}: missing field {need!r}")
            ok = False
    if "end" not in fields and "duration" not in fields:
        problems.append(f"{label}: missing field 'end' (or 'duration')")
        ok = False
    if "end" in fields and "duration" in fields:
        problems.append(f"{label}: give 'end' or 'duration', not both")
        ok = False
    times: dict[str, float] = {}
    for key in ("start", "end", "duration"):
        if key in fields:
            try:
                times[key] = parse_time(fields[key])
            except ValueError as exc:
                problems.append(f"{label}: {key}: {exc}")
                ok = False
    prompt = fields.get("prompt")
    if "prompt" in fields and prompt is not None and not isinstance(prompt, str):
        problems.append(f"{label}: prompt must be text, got {type(prompt).__name__} {prompt!r}")
        ok = False
    score = fields.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        problems.append(f"{label}: score must be a number, got {score!r}")
        ok = False
    if not ok:
        return None
    start = times["start"]
    end = times["end"] if "end" in times else start + times["duration"]
    clip_id = fields.get("clip_id")
    return {
        "start_s": start,
        "end_s": end,
        "prompt": (prompt or "").strip(),
        "clip_id": None if clip_id is None else str(clip_id),
        "score": None if score is None else float(score),
    }


def _in_file_order(problems: list[str], labels: list[str]) -> list[str]:
    """Problems sorted by the segment they name (file-level problems first), stable."""
    order = {lab: i for i, lab in enumerate(labels)}

    def key(problem: str) -> int:
        return order.get(problem.split(": ", 1)[0], -1)

    return sorted(problems, key=key)


def _build(
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
    if not raw and not problems:
        problems.append("script has no segments")
    elif good:
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
        tuple(Segment(**seg) for seg, _ in good),
        fps,
        story_id,
        source,
        length_s=length_s,
    )


def _header(
    data: Mapping[str, Any],
    problems: list[str],
    where: str,
) -> tuple[float | None, float | None, str | None]:
    fps = data.get("fps")
    if fps is not None and (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not fps > 0
        or not math.isfinite(fps)
    ):
        problems.append(f"{where}: fps must be a positive number, got {fps!r}")
        fps = None
    length = data.get("duration", data.get("duration_s"))
    length_s = None
    if length is not None:
        try:
            length_s = parse_time(length)
        except ValueError as exc:
            problems.append(f"{where}: duration: {exc}")
    sid = data.get("story_id")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        problems.append(
            f"{where}: unknown top-level field(s) {unknown} (expected {sorted(_TOP_KEYS)})"
        )
    return (
        None if fps is None else float(fps),
        length_s,
        None if sid is None else str(sid),
    )


# --------------------------------------------------------------------- YAML
def _yaml_loader() -> type:
    """A safe loader that reads ``1:02.5`` as text, not as a YAML 1.1 base-60 number.

    PyYAML resolves ``1:2:3`` to 3723 and ``1:02.5`` to 62.5; times go through
    :func:`parse_time` instead so that every form is checked the same way.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    clock = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-9_]+)+(?:\.[0-9_]*)?$")
    resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in "+-0123456789":
        resolvers[first] = [("tag:yaml.org,2002:str", clock), *resolvers.get(first, [])]
    Loader.yaml_implicit_resolvers = resolvers
    return Loader


def _parse_yaml(text: str, source: str | None, story_id: str | None) -> StoryScript:
    import yaml

    try:
        loader = _yaml_loader()
        node = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ScriptError(source, [f"{line}not valid YAML ({exc})"]) from exc
    problems: list[str] = []
    items: Any
    if data is None:
        raise ScriptError(source, ["script is empty"])
    if isinstance(data, list):  # a bare list of segments
        items, item_nodes, header = data, node.value, {}
        where = "line 1"
    elif isinstance(data, dict):
        header = data
        where = "line 1"
        items = data.get("segments")
        item_nodes = []
        for key_node, value_node in node.value:
            if key_node.value == "segments":
                item_nodes = value_node.value if isinstance(value_node.value, list) else []
                where = f"line {key_node.start_mark.line + 1}"
        if items is None:
            raise ScriptError(source, ["missing field 'segments' (a list of start/end/prompt)"])
        if not isinstance(items, list):
            raise ScriptError(source, [f"{where}: 'segments' must be a list"])
    else:
        raise ScriptError(source, ["expected a mapping with 'segments' (or a list of segments)"])
    fps, length_s, sid = _header(header, problems, "line 1") if header else (None, None, None)
    labels = [
        f"segment {i + 1} (line {item_nodes[i].start_mark.line + 1})"
        if i < len(item_nodes)
        else f"segment {i + 1}"
        for i in range(len(items))
    ]
    raw = [_segment_from_mapping(item, lab, problems) for item, lab in zip(items, labels)]
    return _build(
        raw,
        labels,
        problems,
        source=source,
        fps=fps,
        story_id=story_id or sid,
        length_s=length_s,
    )


# --------------------------------------------------------------------- JSON
class _LineDict(dict):
    """A JSON object that remembers the line it starts on."""

    line: int = 0


def _json_decoder(text: str) -> json.JSONDecoder:
    """A decoder whose objects carry their line (the pure-Python scanner calls our hook)."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        _, start = s_and_end
        obj, end = json.decoder.JSONObject(
            s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo
        )
        out = _LineDict(obj)
        out.line = bisect.bisect_right(line_starts, start - 1)
        return out, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def _parse_json(text: str, source: str | None, story_id: str | None) -> StoryScript:
    try:
        data = _json_decoder(text).decode(text)
    except json.JSONDecodeError as exc:
        raise ScriptError(
            source, [f"line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"]
        ) from exc
    problems: list[str] = []
    if isinstance(data, list):
        items, header = data, {}
    elif isinstance(data, dict):
        header = data
        if "segments" not in data:
            raise ScriptError(source, ["missing field 'segments' (a list of start/end/prompt)"])
        items = data["segments"]
        if not isinstance(items, list):
            raise ScriptError(source, ["'segments' must be a list"])
    else:
        raise ScriptError(source, ["expected an object with 'segments' (or a list of segments)"])
    fps, length_s, sid = _header(header, problems, "top level") if header else (None, None, None)
    labels = [
        f"segment {i + 1} (line {item.line})" if isinstance(item, _LineDict) else f"segment {i + 1}"
        for i, item in enumerate(items)
    ]
    raw = [_segment_from_mapping(item, lab, problems) for item, lab in zip(items, labels)]
    return _build(
        raw,
        labels,
        problems,
        source=source,
        fps=fps,
        story_id=story_id or sid,
        length_s=length_s,
    )


# --------------------------------------------------------------------- SRT / WebVTT
_SRT_TIME = r"(\d+:)?\d{1,2}:\d{1,2}[,.]\d{1,3}"
_SRT_TIMING = re.compile(rf"^\s*(?P<a>{_SRT_TIME})\s*-->\s*(?P<b>{_SRT_TIME})(?:\s+.*)?$")
_TAG = re.compile(r"</?[^>]{1,40}>|\{\\[^}]*\}")


def _srt_seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    h, m, s = parts
    if int(m) >= 60 or float(s) >= 60:
        raise ValueError(f"bad timestamp {stamp!r}: minutes and seconds must be below 60")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _parse_srt(text: str, source: str | None, story_id: str | None) -> StoryScript:
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # blocks of consecutive non-blank lines, with the 1-based line of their first line
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start_line = 0
    for n, line in enumerate(lines, 1):
        if line.strip():
            if not current:
                start_line = n
            current.append(line.rstrip())
        elif current:
            blocks.append((start_line, current))
            current = []
    if current:
        blocks.append((start_line, current))
    if blocks and blocks[0][1][0].strip().upper().startswith("WEBVTT"):
        blocks = blocks[1:]
    blocks = [b for b in blocks if not b[1][0].strip().upper().startswith(("NOTE", "STYLE"))]

    problems: list[str] = []
    raw: list[dict[str, Any] | None] = []
    labels: list[str] = []
    for k, (first_line, block) in enumerate(blocks, 1):
        # a cue may start with its number (SRT) or an identifier (WebVTT) before the timing
        timing_at = 0 if "-->" in block[0] or re.match(r"\s*\d+:\d", block[0]) else 1
        number = block[0].strip() if timing_at and block[0].strip().isdigit() else str(k)
        label = f"cue {number} (line {first_line})"
        labels.append(label)
        if timing_at >= len(block):
            problems.append(f"{label}: cue has a number but no timing line")
            raw.append(None)
            continue
        timing = block[timing_at]
        m = _SRT_TIMING.match(timing)
        if not m:
            problems.append(
                f"cue {number} (line {first_line + timing_at}): malformed timing line "
                f"{timing.strip()!r}, expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm'"
            )
            raw.append(None)
            continue
        try:
            start, end = _srt_seconds(m.group("a")), _srt_seconds(m.group("b"))
        except ValueError as exc:
            problems.append(f"cue {number} (line {first_line + timing_at}): {exc}")
            raw.append(None)
            continue
        prompt = " ".join(_TAG.sub("", t).strip() for t in block[timing_at + 1 :]).strip()
        prompt = re.sub(r"\s+", " ", prompt)
        raw.append({"start_s": start, "end_s": end, "prompt": prompt})
    return _build(raw, labels, problems, source=source, fps=None, story_id=story_id, length_s=None)


# --------------------------------------------------------------------- Parquet
def script_from_stories_row(row: Mapping[str, Any], *, source: str | None = None) -> StoryScript:
    """A script from one ``schemas.STORIES_SCHEMA`` row (problems name story and segment)."""
    sid = row.get("story_id")
    segments = list(row.get("segments") or [])
    labels = [f"story {sid!r} segment {i}" for i in range(len(segments))]
    problems: list[str] = []
    raw: list[dict[str, Any] | None] = []
    for seg, label in zip(segments, labels):
        missing = [k for k in ("start_s", "end_s", "prompt") if seg.get(k) is None]
        if missing:
            problems.append(f"{label}: missing field(s) {missing}")
            raw.append(None)
            continue
        raw.append(
            {
                "start_s": float(seg["start_s"]),
                "end_s": float(seg["end_s"]),
                "prompt": str(seg["prompt"]).strip(),
                "clip_id": seg.get("clip_id"),
                "score": seg.get("score"),
            }
        )
    if not segments:
        problems.append(f"story {sid!r}: no segments")
    fps = row.get("fps")
    return _build(
        raw,
        labels,
        problems,
        source=source or row.get("uri"),
        fps=None if fps is None else float(fps),
        story_id=None if sid is None else str(sid),
        length_s=None if row.get("duration_s") is None else float(row["duration_s"]),
    )


def _load_parquet(path: Path, story_id: str | None) -> StoryScript:
    import pyarrow.compute as pc

    from schemas.io import SchemaError, read_parquet

    try:
        table = read_parquet(path, "stories")
    except SchemaError as exc:
        raise ScriptError(str(path), [str(exc)]) from exc
    if table.num_rows == 0:
        raise ScriptError(str(path), ["stories table has no rows"])
    if story_id is None:
        rows = table.slice(0, 1).to_pylist()
    else:
        rows = table.filter(pc.equal(table["story_id"], story_id)).to_pylist()
        if not rows:
            ids = table["story_id"].to_pylist()
            shown = ", ".join(map(repr, ids[:20])) + (
                f", … ({len(ids)} in all)" if len(ids) > 20 else ""
            )
            raise ScriptError(
                str(path), [f"no story with story_id {story_id!r}; available: {shown}"]
            )
    return script_from_stories_row(rows[0], source=str(path))


# --------------------------------------------------------------------- writing
def _srt_stamp(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def script_to_text(script: StoryScript, fmt: str) -> str:
    """The script as YAML, JSON or SRT text (SRT keeps milliseconds and no fps / id)."""
    if fmt == "srt":
        return "\n".join(
            f"{i}\n{_srt_stamp(s.start_s)} --> {_srt_stamp(s.end_s)}\n{s.prompt}\n"
            for i, s in enumerate(script.segments, 1)
        )
    data: dict[str, Any] = {}
    if script.story_id is not None:
        data["story_id"] = script.story_id
    if script.fps is not None:
        data["fps"] = script.fps
    if script.length_s is not None:
        data["duration"] = script.length_s
    data["segments"] = [
        {
            "start": s.start_s,
            "end": s.end_s,
            "prompt": s.prompt,
            **({"clip_id": s.clip_id} if s.clip_id is not None else {}),
            **({"score": s.score} if s.score is not None else {}),
        }
        for s in script.segments
    ]
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    raise ValueError(f"fmt must be one of ['json', 'srt', 'yaml'], got {fmt!r}")


def save_script(
    script: StoryScript, path: str | os.PathLike[str], *, fps: float | None = None
) -> Path:
    """Write ``script`` in the format of ``path``'s extension (a ``.parquet`` stories table
    needs a frame rate: ``fps`` or the script's). Returns the path."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unknown script format {path.suffix!r}; expected one of {sorted(FORMATS)}"
        )
    if kind == "parquet":
        from schemas.io import rows_to_table, write_parquet

        row = script.to_stories_row(fps)
        return write_parquet(rows_to_table([row], "stories"), path, "stories")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(script_to_text(script, kind), encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------- entry point
_PARSERS = {"yaml": _parse_yaml, "json": _parse_json, "srt": _parse_srt}


def _sniff(text: str) -> str:
    head = text.lstrip("\ufeff \t\r\n")
    if head.startswith(("{", "[")):
        return "json"
    if head.upper().startswith("WEBVTT") or re.search(r"-->", head[:400]):
        return "srt"
    return "yaml"


def load_script(
    path_or_text: str | os.PathLike[str],
    *,
    story_id: str | None = None,
    fmt: str | None = None,
) -> StoryScript:
    """Read a script from a file (format by extension, or ``fmt``) or from text.

    Formats: ``yaml`` (.yaml / .yml), ``json``, ``srt`` (.srt, .vtt), ``parquet`` (a stories
    table, or a folder of them; ``story_id`` picks the row, default the first). A string
    holding a newline, or one that names no existing file, is read as text (format from
    ``fmt`` or sniffed). ``story_id`` also overrides the id a YAML / JSON file sets. Raises
    :class:`ScriptError` listing every problem, each with its line, cue or segment.
    """
    if fmt is not None and fmt not in {*_PARSERS, "parquet"}:
        raise ValueError(f"fmt must be one of {sorted({*_PARSERS, 'parquet'})}, got {fmt!r}")
    text: str | None = None
    path: Path | None = None
    if isinstance(path_or_text, os.PathLike):
        path = Path(path_or_text)
    elif isinstance(path_or_text, str):
        if "\n" in path_or_text or (
            len(path_or_text) < 4096
            and Path(path_or_text).suffix.lower() not in FORMATS
            and not Path(path_or_text).exists()
        ):
            text = path_or_text
        else:
            path = Path(path_or_text)
    else:
        raise TypeError(f"expected a path or script text, got {type(path_or_text).__name__}")

    if path is not None:
        # a folder is a sharded stories table, as curate writes it
        kind = fmt or ("parquet" if path.is_dir() else FORMATS.get(path.suffix.lower()))
        if kind is None:
            raise ScriptError(
                str(path),
                [f"unknown script format {path.suffix!r}; expected one of {sorted(FORMATS)}"],
            )
        if not path.exists():
            raise ScriptError(str(path), ["no such file"])
        if kind == "parquet":
            return _load_parquet(path, story_id)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ScriptError(str(path), [f"not UTF-8 text ({exc})"]) from exc
        source = str(path)
        story_id = story_id or None
        script = _PARSERS[kind](text, source, story_id)
        if script.story_id is None:
            script = StoryScript(
                script.segments, script.fps, path.stem, source, length_s=script.length_s
            )
        return script

    assert text is not None
    kind = fmt or _sniff(text)
    if kind == "parquet":
        raise ValueError("a Parquet stories table must be given as a path, not text")
    return _PARSERS[kind](text.lstrip("\ufeff"), "<text>", story_id)
