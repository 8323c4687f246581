"""The YAML and JSON forms of a script, read with the line of every segment.

::

    fps: 8                 # optional
    duration: 40           # optional; at least the last segment's end
    story_id: lighthouse   # optional; defaults to the file's stem
    segments:
      - {start: 0, end: 12.5, prompt: "a lighthouse at dusk"}
      - {start: "12.5s", end: "0:25", prompt: "waves break on the rocks"}

Times are seconds (numbers) or strings (:func:`~storygen.script.story.parse_time`). A segment
may give ``duration`` instead of ``end``; a bare list of segments is read too.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

from storygen.script.story import ScriptError, StoryScript, build_script, parse_time

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


def _build_from_mappings(
    header: Mapping[str, Any],
    where: str,
    items: list[Any],
    labels: list[str],
    *,
    source: str | None,
    story_id: str | None,
) -> StoryScript:
    """The script from a YAML / JSON header and its segment mappings, every problem collected."""
    problems: list[str] = []
    fps, length_s, sid = _header(header, problems, where) if header else (None, None, None)
    raw = [_segment_from_mapping(item, lab, problems) for item, lab in zip(items, labels)]
    return build_script(
        raw,
        labels,
        problems,
        source=source,
        fps=fps,
        story_id=story_id or sid,
        length_s=length_s,
    )


# --------------------------------------------------------------------- YAML
def _yaml_loader() -> type:
    """A safe loader that reads ``1:02.5`` as text, not as a YAML 1.1 base-60 number.

    PyYAML resolves ``1:2:3`` to 3723 and ``1:02.5`` to 62.5; times go through
    :func:`parse_time` instead so that every form is checked the same way.
    """

    class Loader(yaml.SafeLoader):
        pass

    clock = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-9_]+)+(?:\.[0-9_]*)?$")
    resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in "+-0123456789":
        resolvers[first] = [("tag:yaml.org,2002:str", clock), *resolvers.get(first, [])]
    Loader.yaml_implicit_resolvers = resolvers
    return Loader


def parse_yaml(text: str, source: str | None, story_id: str | None) -> StoryScript:
    try:
        loader = _yaml_loader()
        node = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ScriptError(source, [f"{line}not valid YAML ({exc})"]) from exc
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
    labels = [
        f"segment {i + 1} (line {item_nodes[i].start_mark.line + 1})"
        if i < len(item_nodes)
        else f"segment {i + 1}"
        for i in range(len(items))
    ]
    return _build_from_mappings(header, "line 1", items, labels, source=source, story_id=story_id)


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
        # JSONObject is the stdlib's object parser; typeshed does not list it
        obj, end = json.decoder.JSONObject(  # type: ignore[attr-defined]
            s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo
        )
        out = _LineDict(obj)
        out.line = bisect.bisect_right(line_starts, start - 1)
        return out, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def parse_json(text: str, source: str | None, story_id: str | None) -> StoryScript:
    try:
        data = _json_decoder(text).decode(text)
    except json.JSONDecodeError as exc:
        raise ScriptError(
            source, [f"line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"]
        ) from exc
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
    labels = [
        f"segment {i + 1} (line {item.line})" if isinstance(item, _LineDict) else f"segment {i + 1}"
        for i, item in enumerate(items)
    ]
    return _build_from_mappings(
        header, "top level", items, labels, source=source, story_id=story_id
    )


# --------------------------------------------------------------------- writing
def script_data(script: StoryScript) -> dict[str, Any]:
    """The YAML / JSON form of ``script`` (ids and scores only where set)."""
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
    return data


def to_json(script: StoryScript) -> str:
    return json.dumps(script_data(script), indent=2, ensure_ascii=False) + "\n"


def to_yaml(script: StoryScript) -> str:
    return yaml.safe_dump(script_data(script), sort_keys=False, allow_unicode=True, width=100)
