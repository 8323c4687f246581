"""The SRT and WebVTT forms of a script: one cue per segment, its text the prompt.

Cue numbers (SRT) and identifiers (WebVTT) are optional, markup tags are dropped, and every
problem names the cue and its line. Subtitles carry no frame rate: pass one when rendering.
"""

from __future__ import annotations

import re
from typing import Any

from storygen.script.limits import quote, text_too_large
from storygen.script.story import ScriptError, StoryScript, build_script

# hours take at most 9 digits: a longer stamp is malformed, not a float overflow
_SRT_TIME = r"(\d{1,9}:)?\d{1,2}:\d{1,2}[,.]\d{1,3}"
_SRT_TIMING = re.compile(rf"^\s*(?P<a>{_SRT_TIME})\s*-->\s*(?P<b>{_SRT_TIME})(?:\s+.*)?$")
# bounded repeats: an unclosed "{\" must not make the substitution quadratic in the cue's length
_TAG = re.compile(r"</?[^>]{1,40}>|\{\\[^}]{0,200}\}")


def _srt_seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    h, m, s = parts
    if int(m) >= 60 or float(s) >= 60:
        raise ValueError(f"bad timestamp {quote(stamp)}: minutes and seconds must be below 60")
    return int(h) * 3600 + int(m) * 60 + float(s)


def parse_srt(text: str, source: str | None, story_id: str | None) -> StoryScript:
    too_large = text_too_large(text)
    if too_large:
        raise ScriptError(source, [too_large])
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
        first = block[0].strip()
        number = first if timing_at and first.isdigit() and len(first) <= 12 else str(k)
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
                f"{quote(timing.strip())}, expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm'"
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
    return build_script(
        raw, labels, problems, source=source, fps=None, story_id=story_id, length_s=None
    )


def _srt_stamp(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def to_srt(script: StoryScript) -> str:
    """The script as SRT cues (milliseconds kept; no fps or id)."""
    return "\n".join(
        f"{i}\n{_srt_stamp(s.start_s)} --> {_srt_stamp(s.end_s)}\n{s.prompt}\n"
        for i, s in enumerate(script.segments, 1)
    )
