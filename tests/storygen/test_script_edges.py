"""Script readers at their edges: numbers YAML 1.1 reads otherwise, WebVTT blocks that run
into a cue, text outside any cue, prompts that are not Unicode, ids a table holds twice."""

from __future__ import annotations

import pytest

from schemas import rows_to_table, write_parquet
from storygen.script import ScriptError, load_script


def _times(script) -> list[tuple[float, float, str]]:
    return [(s.start_s, s.end_s, s.prompt) for s in script.segments]


# --------------------------------------------------------------------------- YAML numbers
def test_yaml_times_with_a_leading_zero_are_decimal_not_octal(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "fps: 4\nduration: 030\nsegments:\n  - {start: 0, end: 010, prompt: red}\n"
        "  - {start: 010, end: 020, prompt: blue}\n  - {start: 020, end: 09, duration: 08,"
        " prompt: x}\n"
    )
    with pytest.raises(ScriptError) as exc:
        load_script(path)
    # 09 and 08 are no octal digits: read as 9 and 8 all the same, so the segment is refused
    # for giving end and duration, not for a bad time
    assert exc.value.problems == ["segment 3 (line 6): give 'end' or 'duration', not both"]
    path.write_text(
        "fps: 4\nduration: 030\nsegments:\n  - {start: 0, end: 010, prompt: red}\n"
        "  - {start: 010, end: 020, prompt: blue}\n  - {start: 020, duration: 08, prompt: x}\n"
    )
    script = load_script(path)
    assert _times(script) == [(0, 10, "red"), (10, 20, "blue"), (20, 28, "x")]
    assert script.length_s == 30


@pytest.mark.parametrize("value", ["0x20", "0b11", "1_000", "1_0.5"])
def test_yaml_hex_binary_and_underscore_times_are_refused(value):
    with pytest.raises(ScriptError) as exc:
        load_script(f"fps: 4\nsegments:\n  - {{start: 0, end: {value}, prompt: red}}\n")
    assert exc.value.problems == [
        f"segment 1 (line 3): end: bad time string '{value}': expected seconds or a string like "
        "'12.5s', '1:02.5', '00:01:02.5'"
    ]


def test_yaml_fps_with_a_leading_zero_or_in_hex_is_refused():
    body = "segments:\n  - {start: 0, end: 2, prompt: red}\n"
    with pytest.raises(ScriptError) as exc:
        load_script("fps: 010\n" + body)
    assert exc.value.problems == [
        "line 1: fps must be a positive number, got '010' (a leading zero is not read as a "
        "number: write 10)"
    ]
    with pytest.raises(ScriptError, match="line 1: fps must be a positive number, got '0x10'"):
        load_script("fps: 0x10\n" + body)
    # and an id keeps its digits
    assert load_script("fps: 8\nstory_id: 007\n" + body).story_id == "007"


# --------------------------------------------------------------------------- duration twice
@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        (
            "s.yaml",
            "fps: 4\nduration: 20\nduration_s: 8\nsegments: [{start: 0, end: 4, prompt: a}]",
            "line 1",
        ),
        (
            "s.json",
            '{"fps": 4, "duration_s": 3, "duration": 20, "segments": [{"start": 0, "end": 4, "prompt": "a"}]}',
            "top level",
        ),
    ],
)
def test_duration_and_duration_s_together_are_refused(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ScriptError) as exc:
        load_script(path)
    assert exc.value.problems == [
        f"{where}: field 'duration' given twice (as 'duration' and 'duration_s')"
    ]


# --------------------------------------------------------------------------- WebVTT blocks
@pytest.mark.parametrize(
    ("head", "line"),
    [
        ("WEBVTT\n", 2),  # the cue right under the header
        ("WEBVTT - title\nKind: captions\n", 3),
        ("WEBVTT\n\nNOTE a comment\n", 3),  # the note's line is the cue's identifier
        ("WEBVTT\n\nNOTE\na longer\ncomment\n", 6),
        ("WEBVTT\n\nSTYLE\n::cue { color: red }\n", 5),
    ],
)
def test_a_webvtt_cue_without_a_blank_line_above_it_is_kept(head, line):
    text = f"{head}00:00.000 --> 00:02.000\nred square\n\n00:02.000 --> 00:04.000\nblue circle\n"
    script = load_script(text, fmt="srt")
    assert _times(script) == [(0, 2, "red square"), (2, 4, "blue circle")]
    assert script.segments[0].label == f"cue 1 (line {line})"


def test_a_malformed_timing_line_under_the_webvtt_header_is_reported():
    with pytest.raises(ScriptError) as exc:
        load_script("WEBVTT\n00:00.000 --> 00:99.000\nred\n", fmt="srt")
    assert exc.value.problems == [
        "cue 1 (line 2): bad timestamp '00:99.000': minutes and seconds must be below 60"
    ]


# --------------------------------------------------------------------------- stray text
def test_text_after_a_blank_line_in_a_cue_is_named_as_outside_any_cue(tmp_path):
    path = tmp_path / "s.srt"
    path.write_text(
        "1\n00:00:00,000 --> 00:00:02,000\nred square\n\nmoving left\n\n"
        "2\n00:00:02,000 --> 00:00:04,000\nblue circle\n"
    )
    with pytest.raises(ScriptError) as exc:
        load_script(path)
    assert str(exc.value) == (
        f"{path}: line 5: text 'moving left' outside any cue (a blank line in the text of cue 1 "
        "(line 1)? SRT ends a cue at a blank line)"
    )
    with pytest.raises(ScriptError) as exc:
        load_script("WEBVTT\n\nhello there\n\n00:00.000 --> 00:02.000\nred\n", fmt="srt")
    assert exc.value.problems == [
        "line 3: text 'hello there' outside any cue (expected a cue: its number or its timing "
        "line 'HH:MM:SS,mmm --> HH:MM:SS,mmm')"
    ]
    # a lone number is still a cue missing its timing line
    with pytest.raises(ScriptError, match=r"cue 2 \(line 5\): cue has a number but no timing"):
        load_script("1\n00:00:00,000 --> 00:00:02,000\nred\n\n2\n", fmt="srt")


# --------------------------------------------------------------------------- Unicode
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '{"fps": 4, "segments": [{"start": 0, "end": 2, "prompt": "red \\ud800 square"}]}',
            "segment 1 (line 1): prompt is not valid Unicode (lone surrogate U+D800)",
        ),
        (
            '[{"start": 0, "end": 2, "prompt": "a", "clip_id": "c\\udfff"}]',
            "segment 1 (line 1): clip_id is not valid Unicode (lone surrogate U+DFFF)",
        ),
        (
            '{"story_id": "s\\udc80", "segments": [{"start": 0, "end": 2, "prompt": "a"}]}',
            "story_id is not valid Unicode (lone surrogate U+DC80)",
        ),
    ],
)
def test_prompts_and_ids_that_are_not_unicode_are_refused(tmp_path, text, problem):
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(ScriptError) as exc:
        load_script(path)
    assert exc.value.problems == [problem]


def test_plan_refuses_a_lone_surrogate_with_one_line(tmp_path, capsys):
    import argparse

    from storygen import plan_cli

    path = tmp_path / "s.json"
    path.write_text('{"fps": 4, "segments": [{"start": 0, "end": 2, "prompt": "red \\ud800"}]}')
    parser = argparse.ArgumentParser(prog="storygen")
    plan_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", str(path)])
    assert args.func(args) == 2
    assert capsys.readouterr().err == (
        f"storygen plan: {path}: segment 1 (line 1): prompt is not valid Unicode (lone "
        "surrogate U+D800)\n"
    )


def test_a_stories_row_with_a_lone_surrogate_is_refused():
    from storygen.script import script_from_stories_row

    row = {
        "story_id": "s1",
        "fps": 8.0,
        "segments": [{"start_s": 0.0, "end_s": 2.0, "prompt": "red \ud800"}],
    }
    with pytest.raises(ScriptError) as exc:
        script_from_stories_row(row)
    assert exc.value.problems == [
        "story 's1' segment 0: prompt is not valid Unicode (lone surrogate U+D800)"
    ]


# --------------------------------------------------------------------------- stories tables
def _row(uri: str, prompt: str) -> dict:
    seg = {
        "start_s": 0.0,
        "end_s": 2.0,
        "start_frame": 0,
        "end_frame": 50,
        "prompt": prompt,
        "clip_id": None,
        "score": None,
        "status": "kept",
        "reason": None,
        "prompt_source": None,
    }
    return {
        "story_id": "s1",
        "video_id": "v",
        "uri": uri,
        "fps": 25.0,
        "duration_s": 2.0,
        "num_frames": 50,
        "segments": [seg],
    }


def test_a_story_id_on_several_rows_is_refused_naming_them(tmp_path):
    table = tmp_path / "stories.parquet"
    write_parquet(
        rows_to_table([_row("u1", "red"), _row("u2", "blue")], "stories"), table, "stories"
    )
    with pytest.raises(ScriptError) as exc:
        load_script(table, story_id="s1")
    assert exc.value.problems == [
        "story_id 's1' is on 2 rows: row 0 (uri 'u1'), row 1 (uri 'u2'); a stories table holds "
        "each story once, so which one to read is not clear"
    ]
    # in a folder of shards, each row is named by its file
    shards = tmp_path / "shards"
    shards.mkdir()
    write_parquet(rows_to_table([_row("u0", "green")], "stories"), shards / "a.parquet", "stories")
    other = _row("u3", "x") | {"story_id": "s2"}
    write_parquet(
        rows_to_table([other, _row("u1", "red")], "stories"), shards / "b.parquet", "stories"
    )
    with pytest.raises(ScriptError) as exc:
        load_script(shards, story_id="s1")
    assert exc.value.problems == [
        "story_id 's1' is on 2 rows: a.parquet row 0 (uri 'u0'), b.parquet row 1 (uri 'u1'); "
        "a stories table holds each story once, so which one to read is not clear"
    ]
    assert load_script(shards, story_id="s2").prompts == ("x",)


def test_a_story_id_that_is_not_unicode_is_refused_by_a_stories_table(tmp_path):
    # as a command line gives an argument of undecodable bytes (surrogate escapes)
    table = tmp_path / "stories.parquet"
    write_parquet(rows_to_table([_row("u1", "red")], "stories"), table, "stories")
    with pytest.raises(ScriptError) as exc:
        load_script(table, story_id="s\udcff")
    assert exc.value.problems == [
        "story_id 's\\udcff' is not valid Unicode (lone surrogate U+DCFF)"
    ]
