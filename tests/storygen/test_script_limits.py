"""Bounded script readers: hostile scripts end in one clear ScriptError, quickly.

Each case here once hung, ran out of memory, or escaped as another exception: a YAML alias
bomb, nesting deeper than the parsers' recursion, a 5,000-digit number, NaN and infinite times,
a value of megabytes formatted into a message, an unclosed subtitle tag.
"""

from __future__ import annotations

import math
import time

import pytest

from storygen.script import ScriptError, load_script, script_from_stories_row
from storygen.script.limits import (
    MAX_ALIAS_NODES,
    MAX_NESTING,
    MAX_PROBLEMS_SHOWN,
    MAX_SCRIPT_BYTES,
    MAX_SEGMENTS,
    QUOTE_CHARS,
    quote,
)

#: nine levels of nine aliases: 9^9 = 387 million strings once expanded
ALIAS_BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
    + "segments: [{start: 0, end: 1, prompt: *i}]\n"
)


# --------------------------------------------------------------------------- YAML
@pytest.mark.timeout(30)
def test_yaml_alias_bomb_is_refused_quickly():
    started = time.perf_counter()
    with pytest.raises(ScriptError) as exc:
        load_script(ALIAS_BOMB, fmt="yaml")
    assert time.perf_counter() - started < 5
    assert f"aliases expand the document by more than {MAX_ALIAS_NODES:,} nodes" in str(exc.value)
    assert len(str(exc.value)) < 300


def test_a_few_aliases_are_fine():
    text = (
        "fps: 4\nsegments:\n"
        "  - {start: 0, end: 1, prompt: &red a red circle}\n"
        "  - {start: 1, end: 2, prompt: *red}\n"
    )
    assert load_script(text).prompts == ("a red circle", "a red circle")


def test_recursive_and_undefined_aliases_are_refused():
    with pytest.raises(ScriptError, match=r"line 1: alias \*a refers to no finished anchor"):
        load_script("a: &a [1, *a]\nsegments: []\n", fmt="yaml")
    with pytest.raises(ScriptError, match="alias"):
        load_script("segments: [*nowhere]\n", fmt="yaml")


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("x: " + "[" * 100_000, "yaml"),
        ("x: " + "{a: " * 5_000, "yaml"),
        ("[" * 100_000, "json"),
        ('{"a": ' * 5_000, "json"),
    ],
)
def test_deep_nesting_is_refused_before_recursion(text, fmt):
    with pytest.raises(ScriptError, match=f"nested more than {MAX_NESTING} levels deep"):
        load_script(text + "\n", fmt=fmt)


def test_huge_integer_literals_are_script_errors():
    digits = "9" * 5000
    with pytest.raises(ScriptError, match="not valid YAML"):
        load_script(f"fps: {digits}\nsegments: []\n", fmt="yaml")
    with pytest.raises(ScriptError, match="not valid JSON"):
        load_script(f'{{"fps": {digits}, "segments": []}}', fmt="json")
    # 400 digits still convert, to a float beyond range: a bad fps, not an OverflowError
    with pytest.raises(ScriptError, match="fps must be a positive number"):
        load_script(f"fps: {'9' * 400}\nsegments: [{{start: 0, end: 1, prompt: a}}]\n", fmt="yaml")


@pytest.mark.parametrize("text", ["!!timestamp ", "start: !!timestamp 2024-13-45", "!!binary x"])
def test_yaml_constructor_failures_are_script_errors(text):
    # an empty !!timestamp once escaped PyYAML as AttributeError
    with pytest.raises(ScriptError, match="not valid YAML"):
        load_script(text + "\n", fmt="yaml")


# --------------------------------------------------------------------------- size
def test_files_over_the_size_limit_are_refused_without_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("segments:\n" + "  - {start: 0, end: 1, prompt: a}\n" * 80_000)
    assert big.stat().st_size > MAX_SCRIPT_BYTES
    started = time.perf_counter()
    with pytest.raises(ScriptError, match=f"more than the limit of {MAX_SCRIPT_BYTES:,} bytes"):
        load_script(big)
    assert time.perf_counter() - started < 1
    with pytest.raises(ScriptError, match="more than the limit"):
        load_script(big.read_text(), fmt="yaml")
    with pytest.raises(ScriptError, match="more than the limit"):
        load_script("1\n00:00:00,000 --> 00:00:01,000\nx\n\n" * 60_000, fmt="srt")


def test_long_single_line_text_is_read_as_text_not_a_path():
    # once: OSError "File name too long" from probing it as a path
    with pytest.raises(ScriptError, match="expected a mapping"):
        load_script("x" * 3000)


def test_stories_rows_with_too_many_segments_are_refused():
    seg = {"start_s": 0.0, "end_s": 1.0, "prompt": "a"}
    with pytest.raises(ScriptError, match=f"more than the limit of {MAX_SEGMENTS:,}"):
        script_from_stories_row({"story_id": "s", "segments": [seg] * (MAX_SEGMENTS + 1)})


# --------------------------------------------------------------------------- messages
def test_quote_is_bounded_for_any_value():
    nested: list = ["x" * 1_000_000]
    for _ in range(50):
        nested = [nested] * 9  # 9^50 strings if expanded
    assert len(quote(nested)) <= QUOTE_CHARS
    assert len(quote(10**5000)) <= QUOTE_CHARS
    assert quote("short") == "'short'"


def test_huge_values_are_cut_in_messages():
    text = f"fps: 4\nsegments:\n  - {{start: 0, end: 1, prompt: [{'x' * 1_000_000}]}}\n"
    with pytest.raises(ScriptError) as exc:
        load_script(text, fmt="yaml")
    assert "prompt must be text" in str(exc.value)
    assert len(str(exc.value)) < 400
    bad_time = "9" * 100_000 + "x"
    with pytest.raises(ScriptError) as exc:
        load_script(f"segments: [{{start: 0, end: '{bad_time}', prompt: a}}]\n", fmt="yaml")
    assert "bad time string" in str(exc.value) and len(str(exc.value)) < 400


def test_many_problems_are_listed_up_to_a_limit():
    text = "fps: 4\nsegments:\n" + "  - {start: 1, end: 0, prompt: a}\n" * 100
    with pytest.raises(ScriptError) as exc:
        load_script(text, fmt="yaml")
    assert len(exc.value.problems) == 100
    message = str(exc.value)
    assert f"… and {100 - MAX_PROBLEMS_SHOWN} more" in message
    assert message.count("\n") == MAX_PROBLEMS_SHOWN + 1


# --------------------------------------------------------------------------- times
def test_non_finite_and_negative_times_name_their_line():
    text = (
        "fps: 4\nsegments:\n"
        "  - {start: 0, end: .inf, prompt: a}\n"
        "  - {start: .nan, end: 5, prompt: b}\n"
        "  - {start: 6, end: '1e400', prompt: c}\n"
        "  - {start: -3, end: 9, prompt: d}\n"
    )
    with pytest.raises(ScriptError) as exc:
        load_script(text, fmt="yaml")
    problems = exc.value.problems
    assert problems[0].startswith("segment 1 (line 3): end: bad time inf: not finite")
    assert problems[1].startswith("segment 2 (line 4): start: bad time nan: not finite")
    assert problems[2].startswith("segment 3 (line 5): end: bad time '1e400': not finite")
    assert problems[3].startswith("segment 4 (line 6): start: bad time -3: negative")


def test_json_nan_and_infinity_are_errors():
    text = (
        '{"fps": 4, "segments": [\n {"start": NaN, "end": 1, "prompt": "a"},\n'
        ' {"start": 1, "end": Infinity, "prompt": "b"}]}'
    )
    with pytest.raises(ScriptError) as exc:
        load_script(text, fmt="json")
    assert exc.value.problems == [
        "segment 1 (line 2): start: bad time nan: not finite",
        "segment 2 (line 3): end: bad time inf: not finite",
    ]
    with pytest.raises(ScriptError, match="duration: bad time -4: negative"):
        load_script('{"duration": -4, "segments": [{"start": 0, "end": 1, "prompt": "a"}]}')


def test_stories_row_times_name_story_and_segment():
    row = {
        "story_id": "v1",
        "fps": math.nan,
        "duration_s": math.inf,
        "segments": [
            {"start_s": math.nan, "end_s": 1.0, "prompt": "a"},
            {"start_s": 1.0, "end_s": math.inf, "prompt": "b"},
            {"start_s": -2.0, "end_s": 3.0, "prompt": "c"},
            {"start_s": "x", "end_s": 4.0, "prompt": 7},
        ],
    }
    with pytest.raises(ScriptError) as exc:
        script_from_stories_row(row)
    text = str(exc.value)
    for expected in (
        "story 'v1': fps must be a positive number, got nan",
        "story 'v1': duration_s must be a positive number, got inf",
        "story 'v1' segment 0: start must be a finite number, got nan",
        "story 'v1' segment 1: end must be a finite number, got inf",
        "story 'v1' segment 2: start must not be negative, got -2 s",
        "story 'v1' segment 3: start_s must be a number, got 'x'",
        "story 'v1' segment 3: prompt must be text, got 7",
    ):
        assert expected in text


def test_srt_stamps_with_huge_hours_are_malformed_not_overflows():
    with pytest.raises(ScriptError, match="malformed timing line"):
        load_script(f"1\n{'9' * 400}:00:00,000 --> 00:00:01,000\nx\n", fmt="srt")


@pytest.mark.timeout(30)
def test_unclosed_subtitle_tags_stay_linear():
    text = "1\n00:00:00,000 --> 00:00:01,000\n" + "{\\" * 400_000 + "\n"
    started = time.perf_counter()
    script = load_script(text, fmt="srt")
    assert time.perf_counter() - started < 5
    assert script.segments[0].prompt.startswith("{\\")
