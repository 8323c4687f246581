"""The SRT and WebVTT forms of a script: one cue per segment, its text the prompt.

Cue numbers (SRT) and identifiers (WebVTT) are optional, markup tags are dropped (WebVTT's
character references decoded), and every problem names the cue and its line. A cue that runs
into the next without a blank line between them ends where the next one's timing line begins;
so, as in the WebVTT parser, does the header or a NOTE / STYLE / REGION block that a cue follows
without a blank line. Text in a block of its own, with no timing line (a blank line inside a
cue's text ends the cue), is an error naming its line. Subtitles carry no frame rate: pass one
when rendering.
"""

from __future__ import annotations

import html
import re
from typing import Any

from storygen.script.limits import quote, text_too_large
from storygen.script.story import ScriptError, StoryScript, build_script

# hours take at most 9 digits: a longer stamp is malformed, not a float overflow
_SRT_TIME = r"(\d{1,9}:)?\d{1,2}:\d{1,2}[,.]\d{1,3}"
_SRT_TIMING = re.compile(rf"^\s*(?P<a>{_SRT_TIME})\s*-->\s*(?P<b>{_SRT_TIME})(?:\s+.*)?$")
# the markup of a cue's text: WebVTT's tags (<c.loud>, <v Bob>, <lang en>, <ruby>, <rt>) and
# timestamps (<00:01.500>), SRT's <font ...>, and ASS overrides ({\an8}); text such as
# "size <10 px and >5 px" holds no tag. Bounded repeats: an unclosed "{\" must not make the
# substitution quadratic in the cue's length
_TAG = re.compile(
    r"</?(?:b|i|u|s|c|v|lang|ruby|rt|font|span)(?:\.[^\s<>]{0,80})?(?:\s[^<>]{0,200})?>"
    r"|<(?:\d{1,9}:)?\d{2}:\d{2}\.\d{3}>"
    r"|\{\\[^}]{0,200}\}",
    re.IGNORECASE,
)
#: WebVTT blocks that hold no cue, by their first line: the word alone or followed by a space
#: or tab (a cue identified as "notebook-scene" is a cue)
_NON_CUE_BLOCK = re.compile(r"(?:NOTE|STYLE|REGION)(?:[ \t].*)?")


def _srt_seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    h, m, s = parts
    if int(m) >= 60 or float(s) >= 60:
        raise ValueError(f"bad timestamp {quote(stamp)}: minutes and seconds must be below 60")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _timing_at(block: list[str]) -> int:
    """Where a cue's timing line is: first, or after its number (SRT) or identifier
    (WebVTT)."""
    return 0 if "-->" in block[0] or re.match(r"\s*\d+:\d", block[0]) else 1


def _split_cues(first_line: int, block: list[str]) -> list[tuple[int, list[str]]]:
    """A block of consecutive lines as its cues, each with the line it starts on: a timing
    line after a cue's own starts the next cue, together with the line before it where that
    line is a cue number."""
    cues = []
    start = 0
    for j in range(_timing_at(block) + 1, len(block)):
        timing = start + _timing_at(block[start:])  # the current cue's timing line
        if j <= timing or not _SRT_TIMING.match(block[j]):
            continue
        number = block[j - 1].strip()
        cut = j - 1 if j - 1 > timing and number.isdigit() and len(number) <= 12 else j
        cues.append((first_line + start, block[start:cut]))
        start = cut
    cues.append((first_line + start, block[start:]))
    return cues


def _cues_in_header(first_line: int, block: list[str]) -> list[tuple[int, list[str]]]:
    """The cues a WebVTT header block runs into: as the WebVTT parser does, a line holding
    ``-->`` ends the header and starts the next block (a cue written right under the
    ``WEBVTT`` line, no blank line between, is a cue, not part of the header)."""
    for j in range(1, len(block)):
        if "-->" in block[j]:
            return [(first_line + j, block[j:])]
    return []


def _cues_in_non_cue_block(first_line: int, block: list[str]) -> list[tuple[int, list[str]]]:
    """A block as the cues it holds: itself when it is a cue, none for a WebVTT NOTE, STYLE
    or REGION block, unless a line holding ``-->`` follows without a blank line. Then, as in
    the WebVTT parser, that line is the cue's timing line: on the block's second line, the
    first (``NOTE a comment``) is the cue's identifier; further down, the block ends above
    it."""
    if not _NON_CUE_BLOCK.fullmatch(block[0].strip()):
        return [(first_line, block)]
    for j in range(1, len(block)):
        if "-->" in block[j]:
            return [(first_line, block)] if j == 1 else [(first_line + j, block[j:])]
    return []


def _no_timing(block: list[str]) -> bool:
    """Whether a block shows no sign of a timing line where a cue has one (first, or after
    its number or identifier)."""
    return not any("-->" in line or re.match(r"\s*\d+:\d", line) for line in block[:2])


def _stray_text(line: int, text: str, labels: list[str], webvtt: bool) -> str:
    """The problem of text outside any cue: most often a blank line inside the cue above."""
    fmt = "WebVTT" if webvtt else "SRT"
    cues = [label for label in labels if label.startswith("cue ")]
    if cues:
        why = f"a blank line in the text of {cues[-1]}? {fmt} ends a cue at a blank line"
    else:
        why = "expected a cue: its number or its timing line 'HH:MM:SS,mmm --> HH:MM:SS,mmm'"
    return f"line {line}: text {quote(text)} outside any cue ({why})"


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
    webvtt = bool(blocks) and blocks[0][1][0].strip().upper().startswith("WEBVTT")
    if webvtt:
        blocks = [*_cues_in_header(*blocks[0]), *blocks[1:]]
    blocks = [
        cue for first_line, block in blocks for cue in _cues_in_non_cue_block(first_line, block)
    ]
    blocks = [cue for first_line, block in blocks for cue in _split_cues(first_line, block)]

    problems: list[str] = []
    raw: list[dict[str, Any] | None] = []
    labels: list[str] = []
    k = 0  # cues so far (stray text is none)
    for first_line, block in blocks:
        timing_at = _timing_at(block)
        first = block[0].strip()
        numbered = first.isdigit() and len(first) <= 12
        if not numbered and _no_timing(block):
            labels.append(f"line {first_line}")
            raw.append(None)
            problems.append(_stray_text(first_line, first, labels[:-1], webvtt))
            continue
        k += 1
        number = first if timing_at and numbered else str(k)
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
        if webvtt:  # &amp;, &lt;, &nbsp; ... (SRT has no character references)
            prompt = html.unescape(prompt)
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
