"""Fuzzing the script readers: any input gives a StoryScript or a ScriptError, in bounded time.

Inputs are drawn both as raw text and as documents of the right shape with hostile values in
them (NaN, inf, negative and huge numbers, wrong types, deep nesting, long strings), so the
search reaches the checks behind the parser as well as the parser. Hypothesis deadlines bound
the time of one example; the inputs of several megabytes at the end bound time and memory.
"""

from __future__ import annotations

import json
import math
import os
import time
import tracemalloc
from datetime import timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import StoryError
from storygen.script import ScriptError, StoryScript, load_script, script_from_stories_row
from storygen.script.subtitles import parse_srt
from storygen.script.yaml_json import parse_json, parse_yaml

#: a generous bound for one small example on a loaded shared CPU; search longer with e.g.
#: STORYGEN_FUZZ_EXAMPLES=5000
FUZZ = settings(
    max_examples=int(os.environ.get("STORYGEN_FUZZ_EXAMPLES", "150")),
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _parses_or_refuses(parse: Any, *args: Any) -> StoryScript | None:
    """The reader's contract: a script, or the domain error; nothing else escapes."""
    try:
        script = parse(*args)
    except StoryError as exc:  # ScriptError is one
        assert isinstance(exc, ScriptError)
        assert str(exc)
        return None
    assert isinstance(script, StoryScript)
    for seg in script.segments:
        assert math.isfinite(seg.start_s) and math.isfinite(seg.end_s)
        assert 0 <= seg.start_s < seg.end_s
        # text every later stage writes: the tokenizer, a JSON plan, an output file's metadata
        seg.prompt.encode("utf-8")
        (seg.clip_id or "").encode("utf-8")
    (script.story_id or "").encode("utf-8")
    return script


# --------------------------------------------------------------------------- values
numbers = st.one_of(
    st.integers(-(10**6), 10**6),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 1e-300, 1e300, 10**400, -(10**400), 2**63]),
)
times = st.one_of(
    numbers,
    st.sampled_from(["12.5", "12.5s", "250ms", "1:02.5", "00:01:02,500", "1e400", "nan", "-3"]),
    st.text(max_size=20),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=40))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
segment = st.fixed_dictionaries(
    {},
    optional={
        "start": times,
        "end": times,
        "duration": times,
        "prompt": st.one_of(st.text(max_size=30), values),
        "clip_id": values,
        "score": values,
        "extra": values,
    },
)
header = st.fixed_dictionaries(
    {"segments": st.one_of(st.lists(st.one_of(segment, values), max_size=6), values)},
    optional={
        "fps": st.one_of(numbers, values),
        "duration": times,
        "story_id": values,
        "title": values,
    },
)
documents = st.one_of(header, st.lists(segment, max_size=6), values)


def _yaml_text(doc: Any) -> str | None:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- YAML
@FUZZ
@given(text=st.text(max_size=400))
def test_yaml_any_text(text):
    _parses_or_refuses(parse_yaml, text, "<fuzz>", None)


@FUZZ
@given(doc=documents)
def test_yaml_documents_of_the_right_shape(doc):
    text = _yaml_text(doc)
    if text is not None:
        _parses_or_refuses(parse_yaml, text, "<fuzz>", None)


YAML_PIECES = [
    "segments:",
    "\n",
    "  - ",
    "{start: ",
    "end: ",
    "prompt: ",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!timestamp ",
    "!!float ",
    "? ",
    ": ",
    ", ",
    "- ",
    "---\n",
    "...\n",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "9" * 40,
    "0x1F",
    "0o17",
    "1:02.5",
    "2024-13-45",
    "'",
    '"',
    "\\u0000",
    "\t",
    "#",
    "%YAML 1.1\n",
    "fps: ",
    "duration: ",
    "story_id: ",
]


@FUZZ
@given(pieces=st.lists(st.sampled_from(YAML_PIECES) | st.text(max_size=5), max_size=60))
def test_yaml_token_soup(pieces):
    _parses_or_refuses(parse_yaml, "".join(pieces), "<fuzz>", None)


# --------------------------------------------------------------------------- JSON
@FUZZ
@given(text=st.text(max_size=400))
def test_json_any_text(text):
    _parses_or_refuses(parse_json, text, "<fuzz>", None)


@FUZZ
@given(doc=documents)
def test_json_documents_of_the_right_shape(doc):
    try:
        text = json.dumps(doc)  # NaN and Infinity included, as Python writes them
    except (ValueError, TypeError):
        return
    _parses_or_refuses(parse_json, text, "<fuzz>", None)


@FUZZ
@given(
    pieces=st.lists(
        st.sampled_from(
            ['{"segments": ', "[", "]", "{", "}", '"start": ', '"end": ', '"prompt": ', ", "]
            + ["NaN", "Infinity", "-Infinity", "1e400", "9" * 50, '"x"', "null", "true", ":"]
        )
        | st.text(max_size=4),
        max_size=80,
    )
)
def test_json_token_soup(pieces):
    _parses_or_refuses(parse_json, "".join(pieces), "<fuzz>", None)


#: any code point, lone surrogates (which JSON's "\ud800" escapes give) included; st.text
#: never draws them
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.lists(st.characters() | surrogates, max_size=12).map("".join)


@FUZZ
@given(
    prompt=st.one_of(any_text, st.text(max_size=12)),
    clip_id=st.one_of(st.none(), any_text),
    story_id=st.one_of(st.none(), any_text),
)
def test_json_text_of_any_code_points(prompt, clip_id, story_id):
    seg = {"start": 0, "end": 2, "prompt": prompt, "clip_id": clip_id}
    text = json.dumps({"story_id": story_id, "segments": [seg]})  # escapes every surrogate
    _parses_or_refuses(parse_json, text, "<fuzz>", None)


# --------------------------------------------------------------------------- SRT / WebVTT
stamps = st.one_of(
    st.builds(
        "{:02d}:{:02d}:{:02d}{}{:03d}".format,
        st.integers(0, 10**12),
        st.integers(0, 99),
        st.integers(0, 99),
        st.sampled_from([",", "."]),
        st.integers(0, 9999),
    ),
    st.builds(
        "{:02d}:{:02d}.{:03d}".format, st.integers(0, 99), st.integers(0, 99), st.integers(0, 999)
    ),
    st.text(max_size=15),
)
cue = st.builds(
    lambda number, a, b, text, settings_: f"{number}\n{a} --> {b}{settings_}\n{text}\n",
    st.one_of(st.integers(-5, 10**30).map(str), st.text(max_size=8)),
    stamps,
    stamps,
    st.text(max_size=40),
    st.sampled_from(["", " align:start", " position:10%"]),
)


@FUZZ
@given(
    cues=st.lists(cue, max_size=8),
    head=st.sampled_from(["", "WEBVTT\n\n", "\ufeff", "NOTE x\n\n"]),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_srt_cues(cues, head, newline):
    text = (head + "\n".join(cues)).replace("\n", newline)
    _parses_or_refuses(parse_srt, text, "<fuzz>", None)


@FUZZ
@given(text=st.text(max_size=400))
def test_srt_any_text(text):
    _parses_or_refuses(parse_srt, text, "<fuzz>", None)


# --------------------------------------------------------------------------- stories rows
seg_struct = st.fixed_dictionaries(
    {},
    optional={
        "start_s": st.one_of(numbers, values),
        "end_s": st.one_of(numbers, values),
        "start_frame": st.one_of(st.integers(), values),
        "end_frame": st.one_of(st.integers(), values),
        "prompt": st.one_of(st.text(max_size=20), values),
        "clip_id": values,
        "score": st.one_of(numbers, values),
    },
)
rows = st.fixed_dictionaries(
    {},
    optional={
        "story_id": values,
        "video_id": values,
        "uri": values,
        "fps": st.one_of(numbers, values),
        "duration_s": st.one_of(numbers, values),
        "num_frames": values,
        "segments": st.one_of(st.lists(st.one_of(seg_struct, values), max_size=6), values),
    },
)


@FUZZ
@given(row=rows)
def test_stories_rows(row):
    _parses_or_refuses(script_from_stories_row, row)


@settings(max_examples=25, deadline=timedelta(seconds=10))
@given(
    segments=st.lists(
        st.fixed_dictionaries(
            {
                "start_s": st.floats(allow_nan=True, allow_infinity=True),
                "end_s": st.floats(allow_nan=True, allow_infinity=True),
                "prompt": st.text(max_size=20),
            }
        ),
        max_size=5,
    ),
    fps=st.floats(allow_nan=True, allow_infinity=True),
    duration=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_stories_parquet_files(tmp_path_factory, segments, fps, duration):
    """Rows as a stories table holds them (typed columns), through load_script."""
    from schemas import rows_to_table, write_parquet

    row = {
        "story_id": "fuzz",
        "video_id": None,
        "uri": None,
        "fps": fps,
        "duration_s": duration,
        "num_frames": None,
        "segments": [
            {**s, "start_frame": None, "end_frame": None, "clip_id": None, "score": None}
            for s in segments
        ],
    }
    try:
        table = rows_to_table([row], "stories")
    except (ValueError, TypeError):  # the schema's own checks: not the reader's input
        return
    path = write_parquet(table, tmp_path_factory.mktemp("fuzz") / "s.parquet", "stories")
    _parses_or_refuses(load_script, path)


# --------------------------------------------------------------------------- load_script
@FUZZ
@given(text=st.text(max_size=300), fmt=st.sampled_from([None, "yaml", "json", "srt"]))
def test_load_script_text(text, fmt):
    _parses_or_refuses(lambda: load_script(text, fmt=fmt))


# --------------------------------------------------------------------------- big inputs
def _big_yaml(n: int) -> str:
    return "fps: 8\nsegments:\n" + "".join(
        f"  - {{start: {i}, end: {i + 1}, prompt: a red circle moving right on navy}}\n"
        for i in range(n)
    )


BIG_INPUTS = {
    "valid yaml near the size limit": (_big_yaml(27_000), "yaml"),
    "yaml just over the size limit": (_big_yaml(29_000), "yaml"),
    "valid json near the size limit": (
        json.dumps(
            {
                "fps": 8,
                "segments": [{"start": i, "end": i + 1, "prompt": "a"} for i in range(40_000)],
            }
        ),
        "json",
    ),
    "valid srt near the size limit": (
        "".join(
            f"{i + 1}\n{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d},000 --> "
            f"{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d},500\ncue {i}\n\n"
            for i in range(30_000)
        ),
        "srt",
    ),
    "3 MB of one line": ("x" * 3_000_000, "yaml"),
    "3 MB of brackets": ("[" * 3_000_000, "json"),
    "3 MB of flow nesting": ("{a: " * 750_000, "yaml"),
    "valid script with one 1.9 MB prompt": (
        "segments: [{start: 0, end: 1, prompt: " + "y" * 1_900_000 + "}]",
        "yaml",
    ),
    "a 1.9 MB SRT line": ("1\n" + "0" * 1_900_000 + " --> 1\nx\n", "srt"),
    "alias bomb": (
        "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
        + "segments: *h\n",
        "yaml",
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(BIG_INPUTS))
def test_big_inputs_end_in_bounded_time_and_memory(name):
    text, fmt = BIG_INPUTS[name]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        script = _parses_or_refuses(lambda: load_script(text, fmt=fmt))
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # generous for a loaded 2-core machine with tracing on; a hang or a blow-up is far beyond
    assert elapsed < 60, f"{name}: {elapsed:.1f} s"
    assert peak < 400 * 2**20, f"{name}: {peak / 2**20:.0f} MiB"
    assert (script is not None) == name.startswith("valid"), name
