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

from storygen.script.limits import (
    MAX_ALIAS_NODES,
    MAX_NESTING,
    quote,
    shorten,
    text_too_large,
)
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
                f"{label}: unknown field {quote(key)} (expected start, end or duration, prompt, "
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
        problems.append(
            f"{label}: prompt must be text, got {type(prompt).__name__} {quote(prompt)}"
        )
        ok = False
    score = fields.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        problems.append(f"{label}: score must be a number, got {quote(score)}")
        ok = False
    clip_id = fields.get("clip_id")
    if clip_id is not None and not _is_id(clip_id):
        problems.append(f"{label}: clip_id must be text, got {quote(clip_id)}")
        ok = False
    if not ok:
        return None
    start = times["start"]
    end = times["end"] if "end" in times else start + times["duration"]
    return {
        "start_s": start,
        "end_s": end,
        "prompt": (prompt or "").strip(),
        "clip_id": None if clip_id is None else str(clip_id),
        "score": None if score is None else _float(score),
    }


def _is_id(value: Any) -> bool:
    """Ids are text (a number, as YAML reads ``story_id: 7``, counts as its text)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond a float's range
        return math.inf


def _header(
    data: Mapping[str, Any],
    problems: list[str],
    where: str,
) -> tuple[float | None, float | None, str | None]:
    fps = data.get("fps")
    if isinstance(fps, str) and re.fullmatch(r"0[0-9]+", fps):  # YAML's 010, not octal 8
        problems.append(
            f"{where}: fps must be a positive number, got {quote(fps)} (a leading zero is "
            f"not read as a number: write {int(fps)})"
        )
        fps = None
    if fps is not None and (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not _float(fps) > 0
        or not math.isfinite(_float(fps))
    ):
        problems.append(f"{where}: fps must be a positive number, got {quote(fps)}")
        fps = None
    length = data.get("duration", data.get("duration_s"))
    length_s = None
    if "duration" in data and "duration_s" in data:
        problems.append(f"{where}: field 'duration' given twice (as 'duration' and 'duration_s')")
        length = None
    if length is not None:
        try:
            length_s = parse_time(length)
        except ValueError as exc:
            problems.append(f"{where}: duration: {exc}")
    sid = data.get("story_id")
    if sid is not None and not _is_id(sid):
        problems.append(f"{where}: story_id must be text, got {quote(sid)}")
        sid = None
    unknown = [key for key in data if str(key) not in _TOP_KEYS]
    if unknown:
        shown = ", ".join(quote(key, 40) for key in unknown[:5])
        more = f" and {len(unknown) - 5:,} more" if len(unknown) > 5 else ""
        problems.append(
            f"{where}: unknown top-level field(s) {shown}{more} (expected {sorted(_TOP_KEYS)})"
        )
    return (
        None if fps is None else _float(fps),
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
#: plain scalars YAML 1.1 reads as numbers that a person writing a time does not mean: a
#: leading zero (``010``, octal 8), hex and binary (``0x20``, ``0b11``) and underscores
#: (``1_000``, ``1_0.5``)
_NUMERAL = re.compile(
    r"[-+]?0[0-9_]+"
    r"|[-+]?0[xb][0-9a-fA-F_]+"
    r"|[-+]?(?=[0-9._]*_)(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+][0-9]+)?"
)


def _yaml_loader() -> type:
    """A safe loader that reads ``1:02.5``, ``010`` and ``0x20`` as text, not as YAML 1.1
    numbers.

    PyYAML resolves ``1:2:3`` to 3723, ``1:02.5`` to 62.5, ``010`` to 8 and ``0x20`` to 32;
    times go through :func:`parse_time` instead so that every form is checked the same way
    (``"010"`` is 10 s there, ``"0x20"`` no time), and an fps written so is refused.
    """

    # libyaml's parser where PyYAML was built with it (several times faster); same results
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type,misc]
        pass

    clock = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-9_]+)+(?:\.[0-9_]*)?$")
    numeral = re.compile(rf"^(?:{_NUMERAL.pattern})$")
    resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in "+-.0123456789":
        text = [("tag:yaml.org,2002:str", clock), ("tag:yaml.org,2002:str", numeral)]
        resolvers[first] = [*text, *resolvers.get(first, [])]
    Loader.yaml_implicit_resolvers = resolvers
    return Loader


def _check_yaml_events(text: str, loader: type, source: str | None) -> None:
    """Refuse, before anything is built, nesting deeper than ``MAX_NESTING`` and aliases that
    expand to more than ``MAX_ALIAS_NODES`` nodes (or refer to a node that holds them).

    One streaming pass over the parser's events: each anchor's expanded size is known when its
    node ends, and an alias adds that size. Nothing is expanded, so a "billion laughs" document
    is refused after reading it once, in time and memory linear in its length.
    """
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, nodes before it) per collection
    sizes: dict[str, int] = {}  # expanded size of every finished anchored node
    expanded = written = 0
    for event in yaml.parse(text, Loader=loader):
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, yaml.AliasEvent):
            size = sizes.get(event.anchor) if event.anchor is not None else None
            if size is None or any(a == event.anchor for a, _ in open_nodes):
                raise ScriptError(
                    source,
                    [
                        f"line {line}: alias *{shorten(str(event.anchor), 40)} refers to no finished "
                        "anchor (undefined, or a node that holds the alias)"
                    ],
                )
            expanded += size
            if expanded - written > MAX_ALIAS_NODES:
                raise ScriptError(
                    source,
                    [
                        f"line {line}: aliases expand the document by more than "
                        f"{MAX_ALIAS_NODES:,} nodes; write the values out instead"
                    ],
                )
        elif isinstance(event, yaml.ScalarEvent):
            expanded += 1
            written += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append((event.anchor, expanded))
            expanded += 1
            written += 1
            if len(open_nodes) > MAX_NESTING:
                raise ScriptError(
                    source,
                    [f"line {line}: nested more than {MAX_NESTING} levels deep"],
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = expanded - before


def _duplicate_yaml_keys(root: Any) -> list[str]:
    """A problem for every key a YAML mapping gives twice (a safe load keeps the last one
    silently), with the lines of both. Each node is visited once: an alias refers to a node
    already seen, so the walk is linear in the document's length."""
    problems: list[tuple[int, str]] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                stack += [key, value]
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    problems.append(
                        (
                            line,
                            f"line {line}: key {quote(key.value)} given twice (first on line "
                            f"{first[key.tag, key.value]}); keep one",
                        )
                    )
                else:
                    first[key.tag, key.value] = line
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return [problem for _, problem in sorted(problems)]


def parse_yaml(text: str, source: str | None, story_id: str | None) -> StoryScript:
    too_large = text_too_large(text)
    if too_large:
        raise ScriptError(source, [too_large])
    loader_class = _yaml_loader()
    try:
        _check_yaml_events(text, loader_class, source)
        loader = loader_class(text)
        try:
            node = loader.get_single_node()
            duplicates = _duplicate_yaml_keys(node)
            if duplicates:
                raise ScriptError(source, duplicates)
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ScriptError(source, [f"{line}not valid YAML ({shorten(str(exc), 300)})"]) from exc
    except ScriptError:
        raise
    except Exception as exc:  # only PyYAML runs in the block
        # PyYAML's constructors fail in their own ways on hostile input: an integer of 5,000
        # digits, a date like 2024-13-45, an empty "!!timestamp" (AttributeError)
        raise ScriptError(
            source, [f"not valid YAML ({type(exc).__name__}: {quote(str(exc))})"]
        ) from exc
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
            if isinstance(key_node.value, str) and key_node.value == "segments":
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


def _json_decoder(text: str, source: str | None, duplicates: list[str]) -> json.JSONDecoder:
    """A decoder whose objects carry their line (the pure-Python scanner calls our hooks),
    refusing arrays and objects nested more than ``MAX_NESTING`` deep before the scanner's
    recursion can run out of stack. A key an object gives twice (the standard decoder keeps
    the last one silently) adds a problem to ``duplicates``."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    decoder = json.JSONDecoder()
    depth = 0

    def line_of(pos: int) -> int:
        return bisect.bisect_right(line_starts, pos - 1)

    def enter(start: int) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_NESTING:
            raise ScriptError(
                source, [f"line {line_of(start)}: nested more than {MAX_NESTING} levels deep"]
            )

    def note_duplicates(pairs: list, start: int, end: int, line: int) -> None:
        counts: dict[str, int] = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == 2:
                # the lines of the key's spellings in the object, where it is written plainly
                at = [
                    line_of(start + m.start() + 1)
                    for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text[start:end])
                ]
                where = (
                    f"line {at[1]}: key {quote(key)} given twice (first on line {at[0]})"
                    if len(at) >= 2
                    else f"line {line}: the object starting here gives key {quote(key)} twice"
                )
                duplicates.append(f"{where}; keep one")

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        nonlocal depth
        _, start = s_and_end
        enter(start)
        # JSONObject is the stdlib's object parser; typeshed does not list it
        pairs, end = json.decoder.JSONObject(  # type: ignore[attr-defined]
            s_and_end, strict, scan_once, object_hook, list, memo
        )
        depth -= 1
        out = _LineDict(pairs)
        out.line = line_of(start)
        if len(out) < len(pairs):
            note_duplicates(pairs, start, end, out.line)
        return out, end

    def parse_array(s_and_end, scan_once):
        nonlocal depth
        enter(s_and_end[1])
        out = json.decoder.JSONArray(s_and_end, scan_once)  # type: ignore[attr-defined]
        depth -= 1
        return out

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.parse_array = parse_array  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def parse_json(text: str, source: str | None, story_id: str | None) -> StoryScript:
    too_large = text_too_large(text)
    if too_large:
        raise ScriptError(source, [too_large])
    duplicates: list[str] = []
    try:
        data = _json_decoder(text, source, duplicates).decode(text)
    except json.JSONDecodeError as exc:
        raise ScriptError(
            source, [f"line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"]
        ) from exc
    except ScriptError:
        raise
    except ValueError as exc:  # an integer of 5,000 digits
        raise ScriptError(source, [f"not valid JSON ({shorten(str(exc))})"]) from exc
    if duplicates:
        raise ScriptError(source, duplicates)
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
