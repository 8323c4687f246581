"""Validation of timed prompt sequences (the ``segments`` of a stories row)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .io import SchemaError

#: two times closer than this are treated as equal (float seconds from frame counts)
TIME_EPS = 1e-6


class StoryError(SchemaError):
    """A story breaks one of the rules; ``problems`` lists every one found, each located."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        self.where = where
        self.problems = list(problems)
        head = f"{where}: " if where else ""
        super().__init__(head + "; ".join(self.problems))


def story_problems(
    segments: Sequence[Mapping[str, Any]],
    *,
    duration_s: float | None = None,
    labels: Sequence[str] | None = None,
) -> list[str]:
    """Every rule a story breaks, each naming its segment (or ``labels[i]``, e.g. a line).

    Rules: at least one segment; each has a non-empty prompt and a positive duration; segments
    are sorted by start and do not overlap; all lie inside ``[0, duration_s]`` when given.
    """
    problems: list[str] = []
    if not segments:
        return ["story has no segments"]

    def name(i: int) -> str:
        return labels[i] if labels is not None else f"segment {i}"

    prev_end = None
    prev_start = None
    for i, seg in enumerate(segments):
        start, end = seg.get("start_s"), seg.get("end_s")
        prompt = seg.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{name(i)}: empty prompt")
        if start is None or end is None:
            problems.append(f"{name(i)}: missing start or end time")
            continue
        if start < -TIME_EPS:
            problems.append(f"{name(i)}: negative start {start:g} s")
        if end - start <= TIME_EPS:
            kind = "zero" if abs(end - start) <= TIME_EPS else "negative"
            problems.append(f"{name(i)}: {kind} duration (start {start:g} s, end {end:g} s)")
        if prev_start is not None and start < prev_start - TIME_EPS:
            problems.append(
                f"{name(i)}: unsorted (starts at {start:g} s, before {name(i - 1)} "
                f"at {prev_start:g} s)"
            )
        elif prev_end is not None and start < prev_end - TIME_EPS:
            problems.append(
                f"{name(i)}: overlaps {name(i - 1)} (starts at {start:g} s, "
                f"{name(i - 1)} ends at {prev_end:g} s)"
            )
        if duration_s is not None and end > duration_s + TIME_EPS:
            problems.append(
                f"{name(i)}: ends at {end:g} s, after the video's duration {duration_s:g} s"
            )
        if "start_frame" in seg and "end_frame" in seg:
            sf, ef = seg["start_frame"], seg["end_frame"]
            if sf is not None and ef is not None and ef <= sf:
                problems.append(f"{name(i)}: end_frame {ef} <= start_frame {sf}")
        prev_start, prev_end = start, end
    return problems


def validate_story(
    segments: Sequence[Mapping[str, Any]],
    *,
    duration_s: float | None = None,
    where: str = "",
    labels: Sequence[str] | None = None,
) -> None:
    """Raise :class:`StoryError` listing every problem of the story, or return."""
    problems = story_problems(segments, duration_s=duration_s, labels=labels)
    if problems:
        raise StoryError(where, problems)


def validate_story_row(row: Mapping[str, Any], *, where: str = "") -> None:
    sid = row.get("story_id", "?")
    validate_story(
        row.get("segments") or [],
        duration_s=row.get("duration_s"),
        where=f"{where + ': ' if where else ''}story {sid!r}",
    )
