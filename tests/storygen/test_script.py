"""Story scripts: parsing each format, located errors, and the per-frame prompt mapping."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import rows_to_table, validate_rows, write_parquet
from storygen.script import (
    ScriptError,
    Segment,
    StoryScript,
    load_script,
    parse_time,
    save_script,
    script_from_stories_row,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PROMPTS = ("a red circle moving right", "a blue square growing", "a white star moving up")
# (start, end) per segment, with a gap between the second and third
SPANS = ((0.0, 2.5), (2.5, 6.0), (7.25, 10.0))


def _yaml(spans=SPANS, prompts=PROMPTS, header="fps: 8\nstory_id: demo\n") -> str:
    body = "".join(
        f"  - start: {a}\n    end: {b}\n    prompt: {p}\n" for (a, b), p in zip(spans, prompts)
    )
    return f"{header}segments:\n{body}"


def _srt(spans=SPANS, prompts=PROMPTS) -> str:
    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "".join(
        f"{i}\n{stamp(a)} --> {stamp(b)}\n{p}\n\n"
        for i, ((a, b), p) in enumerate(zip(spans, prompts), 1)
    )


def _problems(exc: pytest.ExceptionInfo[ScriptError]) -> list[str]:
    return exc.value.problems


# --------------------------------------------------------------------------- times
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (12, 12.0),
        (12.5, 12.5),
        ("12.5", 12.5),
        ("12.5s", 12.5),
        ("250ms", 0.25),
        ("1:02.5", 62.5),
        ("00:01:02.5", 62.5),
        ("01:00:00,250", 3600.25),
        ("0:00", 0.0),
    ],
)
def test_parse_time_accepts(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1:75", "1:2:3:4", "abc", "12.5 sec", "", True, None, [1]])
def test_parse_time_rejects_with_the_value(text):
    with pytest.raises(ValueError, match="bad time"):
        parse_time(text)


# --------------------------------------------------------------------------- formats
def test_all_four_formats_load_to_equal_scripts(tmp_path):
    yaml_path = tmp_path / "s.yaml"
    yaml_path.write_text(_yaml())
    json_path = tmp_path / "s.json"
    json_path.write_text(
        json.dumps(
            {
                "fps": 8,
                "story_id": "demo",
                "segments": [
                    {"start": a, "end": f"{b}s", "prompt": p} for (a, b), p in zip(SPANS, PROMPTS)
                ],
            },
            indent=2,
        )
    )
    srt_path = tmp_path / "s.srt"
    srt_path.write_text(_srt())
    from_yaml = load_script(yaml_path)
    parquet_path = tmp_path / "stories.parquet"
    other = StoryScript((Segment(0.0, 1.0, "another story"),), 8, "other")
    table = rows_to_table([other.to_stories_row(), from_yaml.to_stories_row()], "stories")
    write_parquet(table, parquet_path, "stories")

    scripts = {
        "yaml": from_yaml,
        "json": load_script(json_path),
        "srt": load_script(srt_path, story_id="demo"),
        "parquet": load_script(parquet_path, story_id="demo"),
    }
    expected = tuple(Segment(a, b, p) for (a, b), p in zip(SPANS, PROMPTS))
    for fmt, script in scripts.items():
        assert script.segments == expected, fmt
        assert script.story_id == "demo", fmt
    assert scripts["json"].fps == scripts["yaml"].fps == scripts["parquet"].fps == 8
    assert scripts["srt"].fps is None  # SRT carries no frame rate
    assert scripts["yaml"].prompts_per_frame() == scripts["parquet"].prompts_per_frame()


def test_shipped_examples_agree():
    names = ("shapes_story.yaml", "shapes_story.json", "shapes_story.srt")
    scripts = [load_script(EXAMPLES / n) for n in names]
    assert scripts[0].segments == scripts[1].segments == scripts[2].segments
    assert len(scripts[0].segments) == 4
    # the SRT's first cue spans two lines, joined with a space
    assert scripts[2].segments[0].prompt == "a red circle moving right on a navy background"
    assert scripts[0].duration_s == 28


def test_text_is_sniffed_and_file_stem_is_the_default_id(tmp_path):
    assert load_script(_yaml()).segments == load_script(_srt()).segments
    path = tmp_path / "my_story.yaml"
    path.write_text(_yaml(header="fps: 8\n"))
    assert load_script(path).story_id == "my_story"
    assert load_script(path, story_id="override").story_id == "override"


def test_srt_tolerates_bom_crlf_blank_lines_and_tags(tmp_path):
    text = "\ufeff\r\n\r\n1\r\n00:00:00,000 --> 00:00:02,000\r\n<i>a red</i> circle\r\n  moving\r\n"
    text += "\r\n\r\n\r\n2\r\n00:00:02,000 --> 00:00:03,500 X1:10 X2:20\r\nthe end\r\n"
    path = tmp_path / "c.srt"
    path.write_bytes(text.encode("utf-8"))
    script = load_script(path)
    assert script.segments == (
        Segment(0.0, 2.0, "a red circle moving"),
        Segment(2.0, 3.5, "the end"),
    )


def test_webvtt(tmp_path):
    path = tmp_path / "c.vtt"
    path.write_text(
        "WEBVTT\n\nNOTE a comment\n\n00:01.000 --> 00:02.500\nhello there\n\n"
        "intro-2\n00:02.500 --> 00:04.000 align:start\n<v Narrator>general kenobi\n"
    )
    assert load_script(path).segments == (
        Segment(1.0, 2.5, "hello there"),
        Segment(2.5, 4.0, "general kenobi"),
    )


def test_duration_and_segment_duration_fields():
    script = load_script(
        "fps: 4\nduration: 10\nsegments:\n  - {start: 0, duration: 3, prompt: a}\n"
        "  - {start: 3, end: 5, prompt: b}\n"
    )
    assert script.segments[0].end_s == 3.0
    assert script.duration_s == 10.0
    assert script.num_frames() == 40
    # after the last segment the last prompt holds
    assert script.prompts_per_frame()[-1] == "b"


# --------------------------------------------------------------------------- errors
def test_yaml_errors_name_lines_and_all_problems_are_collected():
    text = (
        "fps: 8\n"  # 1
        "segments:\n"  # 2
        "  - {start: 0, end: 4, prompt: first}\n"  # 3
        "  - {start: 3, end: 6, prompt: overlapping}\n"  # 4
        "  - {start: 7, end: 7, prompt: zero}\n"  # 5
        "  - {start: 9, end: 8, prompt: negative}\n"  # 6
        "  - {start: 10, end: 11, prompt: '  '}\n"  # 7
        "  - start: 12\n"  # 8
        "    end: 1:2:3:4\n"  # 9
        "    prompt: bad time\n"  # 10
        "  - {end: 20, prompt: no start}\n"  # 11
        "  - {start: 1, end: 2, prompt: unsorted}\n"  # 12
        "  - {start: 30, end: 31, promt: typo}\n"  # 13
    )
    with pytest.raises(ScriptError) as exc:
        load_script(text)
    problems = _problems(exc)
    joined = "\n".join(problems)

    def has(line: int, words: str) -> bool:
        return any(f"(line {line})" in p and words in p for p in problems)

    assert has(4, "overlaps segment 1 (line 3)"), joined
    assert has(5, "zero duration"), joined
    assert has(6, "negative duration"), joined
    assert has(7, "empty prompt"), joined
    assert has(8, "bad time string '1:2:3:4'"), joined
    assert has(11, "missing field 'start'"), joined
    assert has(12, "unsorted"), joined
    assert has(13, "unknown field 'promt'"), joined
    assert has(13, "missing field 'prompt'"), joined
    # the message lists every problem, one per line, under the source name
    assert str(exc.value).startswith("<text>: ")
    assert str(exc.value).count("\n  - ") == len(problems)
    assert isinstance(exc.value, ValueError)


def test_json_errors_name_the_segment_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        "{\n"  # 1
        '  "fps": 8,\n'  # 2
        '  "segments": [\n'  # 3
        '    {"start": 0, "end": 5, "prompt": "a"},\n'  # 4
        "    {\n"  # 5
        '      "start": 4,\n'  # 6
        '      "end": 9,\n'  # 7
        '      "prompt": "b"\n'  # 8
        "    },\n"  # 9
        '    {"start": "x1", "end": 12, "prompt": "c"}\n'  # 10
        "  ]\n"
        "}\n"
    )
    with pytest.raises(ScriptError) as exc:
        load_script(path)
    problems = _problems(exc)
    assert exc.value.source == str(path)
    assert any("segment 2 (line 5)" in p and "overlaps segment 1 (line 4)" in p for p in problems)
    assert any("segment 3 (line 10)" in p and "bad time string 'x1'" in p for p in problems)
    assert len(problems) == 2


def test_invalid_json_and_yaml_syntax_name_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "segments": [\n    {"start": 0,, "end": 1}\n  ]\n}\n')
    with pytest.raises(ScriptError, match="line 3"):
        load_script(path)
    with pytest.raises(ScriptError, match="line 3"):
        load_script("segments:\n  - {start: 0, end: 1, prompt: a}\n  - [unclosed\n")


def test_malformed_srt_cue_names_cue_and_line():
    text = (
        "1\n00:00:00,000 --> 00:00:02,000\nfine\n\n"  # lines 1-4
        "2\n00:00:02,000 -> 00:00:04,000\nbroken arrow\n\n"  # lines 5-8
        "3\n00:00:04,000 --> 00:00:05,000\n\n"  # lines 9-11: no text
        "4\n00:00:05,000 --> 00:00:04,000\nbackwards\n"  # lines 12-14
    )
    with pytest.raises(ScriptError) as exc:
        load_script(text, fmt="srt")
    problems = _problems(exc)
    assert any(p.startswith("cue 2 (line 6): malformed timing line") for p in problems), problems
    assert any(p.startswith("cue 3 (line 9): empty prompt") for p in problems), problems
    assert any(p.startswith("cue 4 (line 12): negative duration") for p in problems), problems
    assert len(problems) == 3


def test_parquet_missing_story_lists_available_ids(tmp_path):
    path = tmp_path / "stories.parquet"
    rows = [
        StoryScript((Segment(0.0, 1.0, f"story {i}"),), 4, f"s{i}").to_stories_row()
        for i in range(3)
    ]
    write_parquet(rows_to_table(rows, "stories"), path, "stories")
    with pytest.raises(ScriptError) as exc:
        load_script(path, story_id="nope")
    assert "no story with story_id 'nope'" in str(exc.value)
    assert "'s0', 's1', 's2'" in str(exc.value)
    assert load_script(path).story_id == "s0"
    assert load_script(path, story_id="s2").prompts == ("story 2",)
    # a folder of shards, as curate writes them
    shards = tmp_path / "stories"
    for i, row in enumerate(rows):
        write_parquet(rows_to_table([row], "stories"), shards / f"part-{i}.parquet", "stories")
    assert load_script(shards, story_id="s1").prompts == ("story 1",)


def test_stories_row_errors_name_story_and_segment():
    row = {
        "story_id": "v1",
        "fps": 10.0,
        "duration_s": 5.0,
        "segments": [
            {"start_s": 0.0, "end_s": 3.0, "prompt": "a"},
            {"start_s": 2.0, "end_s": 6.0, "prompt": ""},
        ],
    }
    with pytest.raises(ScriptError) as exc:
        script_from_stories_row(row)
    problems = _problems(exc)
    assert any(
        p.startswith("story 'v1' segment 1: overlaps story 'v1' segment 0") for p in problems
    )
    assert any(p.startswith("story 'v1' segment 1: empty prompt") for p in problems)
    assert any("after the video's duration 5 s" in p for p in problems)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(ScriptError, match="unknown script format '.txt'"):
        load_script(tmp_path / "a.txt")
    with pytest.raises(ScriptError, match="no such file"):
        load_script(tmp_path / "missing.yaml")


def test_constructing_an_invalid_script_raises():
    with pytest.raises(ScriptError, match="overlaps"):
        StoryScript((Segment(0, 2, "a"), Segment(1, 3, "b")))
    with pytest.raises(ScriptError, match="no segments"):
        StoryScript(())


# --------------------------------------------------------------------------- frames
def test_prompt_boundaries_at_non_integer_fps():
    # at 7.5 fps frame 3 sits exactly on 0.4 s: half-open spans give it to the later segment
    script = StoryScript((Segment(0, 0.4, "a"), Segment(0.4, 1.0, "b"), Segment(1.0, 2.0, "c")))
    prompts = script.prompts_per_frame(7.5)
    assert len(prompts) == 15  # round(2.0 * 7.5)
    assert prompts[:3] == ["a"] * 3
    assert prompts[3:8] == ["b"] * 5  # frames at 0.4 ... 0.933 s
    assert prompts[8:] == ["c"] * 7  # 1.0666 s on (1.0 s lies between frames 7 and 8)
    # NTSC rate: 1 s boundary lies between frames 29 (0.9676 s) and 30 (1.001 s)
    ntsc = script.prompts_per_frame(30000 / 1001)
    assert ntsc[29] == "b" and ntsc[30] == "c"


def test_gaps_hold_and_error():
    script = StoryScript((Segment(1.0, 2.0, "a"), Segment(3.0, 4.0, "b")), 2)
    assert script.prompts_per_frame() == ["a", "a", "a", "a", "a", "a", "b", "b"]
    with pytest.raises(ScriptError) as exc:
        script.prompts_per_frame(gaps="error")
    problems = _problems(exc)
    assert problems == [
        "no segment covers 0–1 s (frames 0–1 at 2 fps, before the first segment)",
        "no segment covers 2–3 s (frames 4–5 at 2 fps, between segments)",
    ]
    # frames past the end are a gap too
    with pytest.raises(ScriptError, match=r"4–5 s \(frames 8–9 at 2 fps, after the last"):
        StoryScript((Segment(0.0, 4.0, "a"),)).prompts_per_frame(2, num_frames=10, gaps="error")


def test_prompts_per_frame_arguments_are_checked():
    script = StoryScript((Segment(0, 1, "a"),))
    with pytest.raises(ValueError, match="no fps given"):
        script.prompts_per_frame()
    with pytest.raises(ValueError, match="got -3"):
        script.prompts_per_frame(-3)
    with pytest.raises(ValueError, match="'skip'"):
        script.prompts_per_frame(4, gaps="skip")
    with pytest.raises(ValueError, match="got 0"):
        script.prompts_per_frame(4, num_frames=0)


_FPS = st.sampled_from(["8", "7.5", "12.5", "23.976", "24", "25", "29.97", "30"])


@st.composite
def _scripts(draw):
    # times on a 1/100 s grid, as a person writes them; boundaries often land on frame times
    n = draw(st.integers(1, 6))
    cuts = sorted(draw(st.sets(st.integers(0, 2000), min_size=2 * n, max_size=2 * n)))
    spans = [(cuts[2 * i], cuts[2 * i + 1]) for i in range(n)]
    if draw(st.booleans()):  # contiguous segments
        spans = [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)][:n]
    segments = tuple(Segment(a / 100, b / 100, f"p{i}") for i, (a, b) in enumerate(spans))
    return StoryScript(segments)


@settings(max_examples=150, deadline=None)
@given(_scripts(), _FPS)
def test_each_frame_takes_the_segment_containing_its_time(script, fps_text):
    # ground truth in exact rational arithmetic: frame i is at i / fps
    fps = float(fps_text)
    fps_q = Fraction(fps_text)
    spans = [(Fraction(repr(s.start_s)), Fraction(repr(s.end_s))) for s in script.segments]
    prompts = script.prompts_per_frame(fps)
    assert len(prompts) == max(1, round(script.duration_s * fps))
    for i, prompt in enumerate(prompts):
        t = i / fps_q
        inside = [s.prompt for s, (a, b) in zip(script.segments, spans) if a <= t < b]
        # in a gap: the segment before it (even one too short to hold a frame), else the first
        before = [s.prompt for s, (a, _) in zip(script.segments, spans) if a <= t]
        expected = inside[0] if inside else (before[-1] if before else script.segments[0].prompt)
        assert len(inside) <= 1
        assert prompt == expected, (i, float(t))


@settings(max_examples=150, deadline=None)
@given(_scripts(), _FPS, st.integers(1, 300))
def test_a_segment_is_warned_of_exactly_when_no_frame_shows_it(script, fps_text, num_frames):
    # ground truth in exact rational arithmetic over the frames made (num_frames may cut the
    # story short): a frame shows the segment holding its time, else the one before it, else
    # the first
    fps = float(fps_text)
    fps_q = Fraction(fps_text)
    starts = [Fraction(repr(s.start_s)) for s in script.segments]
    shown = {
        max([0, *(k for k, a in enumerate(starts) if a <= i / fps_q)]) for i in range(num_frames)
    }
    assert set(script.segments_per_frame(fps, num_frames=num_frames)) == shown
    warned = script.unshown_segments(fps, num_frames=num_frames)
    assert [w.split(":")[0] for w in warned] == [
        f"segment {k + 1}" for k in range(len(script.segments)) if k not in shown
    ]


def test_to_stories_row_matches_the_schema_and_round_trips():
    script = load_script(EXAMPLES / "shapes_story.yaml")
    row = script.to_stories_row()
    validate_rows([row], "stories")
    assert row["num_frames"] == 224
    assert [(s["start_frame"], s["end_frame"]) for s in row["segments"]] == [
        (0, 56),
        (56, 112),
        (112, 172),
        (172, 224),
    ]
    back = script_from_stories_row(row)
    assert back.segments == script.segments
    assert back.prompts_per_frame() == script.prompts_per_frame()
    # a segment too short to hold a frame at this rate is reported, not silently lost
    # (frames at 4 fps fall on 1.0 and 1.25 s, neither inside [1.05, 1.1))
    short = StoryScript((Segment(0, 1.05, "a"), Segment(1.05, 1.1, "b"), Segment(1.1, 2, "c")))
    with pytest.raises(ScriptError, match="segment 2 .* holds no frame at 4 fps"):
        short.to_stories_row(4)


def test_a_stories_row_ends_its_segments_at_its_last_frame():
    """At 4 fps a 10.1 s story has 40 frames (0 to 9.75 s): a segment from 9.9 s holds none of
    them, and the row never names a frame past its own count."""
    late = StoryScript((Segment(0, 9.9, "a"), Segment(9.9, 10.1, "b")), 4)
    with pytest.raises(ScriptError, match=r"segment 2 \(9.9–10.1 s\) holds no frame at 4 fps \(40"):
        late.to_stories_row()
    row = StoryScript((Segment(0, 5, "a"), Segment(5, 10.1, "b")), 4).to_stories_row()
    assert row["num_frames"] == 40
    assert [(s["start_frame"], s["end_frame"]) for s in row["segments"]] == [(0, 20), (20, 40)]


@pytest.mark.parametrize("ext", ["yaml", "json", "srt", "parquet"])
def test_save_and_load_round_trip(tmp_path, ext):
    script = StoryScript(
        (
            Segment(0.0, 2.125, "a red circle: moving right", clip_id="c1", score=0.31),
            Segment(3.5, 7.0, 'a "quoted" prompt, with commas'),
            Segment(7.0, 61.25, "the last one, über long"),
        ),
        8.0,
        "round-trip",
        length_s=70.0,
    )
    path = save_script(script, tmp_path / f"story.{ext}")
    back = load_script(path, story_id="round-trip")
    if ext == "srt":  # SRT holds only times and text
        assert back.segments == tuple(
            Segment(s.start_s, s.end_s, s.prompt) for s in script.segments
        )
        return
    assert back.segments == script.segments
    assert (back.fps, back.story_id, back.duration_s) == (8.0, "round-trip", 70.0)


# --------------------------------------------------------------------------- subtitles, in detail
def test_srt_cue_without_a_blank_line_after_it_ends_at_the_next_timing_line():
    text = (
        "1\n00:00:00,000 --> 00:00:02,000\na red circle\n"
        "2\n00:00:02,000 --> 00:00:04,000\na blue square\n"  # no blank line between the cues
        "00:00:04,000 --> 00:00:05,000\na star\n"  # nor a number
    )
    script = load_script(text, fmt="srt")
    assert script.segments == (
        Segment(0.0, 2.0, "a red circle"),
        Segment(2.0, 4.0, "a blue square"),
        Segment(4.0, 5.0, "a star"),
    )
    broken = text.replace("2\n00:00:02,000 --> 00:00:04,000\na blue square\n", "2\n")
    with pytest.raises(ScriptError, match=r"cue 1 \(line 1\): empty prompt"):
        load_script(broken.replace("a red circle\n", ""), fmt="srt")


def test_webvtt_blocks_cues_entities_and_tags(tmp_path):
    path = tmp_path / "c.vtt"
    path.write_text(
        "WEBVTT\n\nREGION\nid:fred\nwidth:40%\n\nSTYLE\n::cue { color: red }\n\n"
        "NOTE\tcomment\n\n"
        "notebook-scene\n00:00.000 --> 00:02.000 region:fred\na blue notebook\n\n"
        "style-2\n00:02.000 --> 00:04.000\n<c.big>Tom</c> &amp; <v Jerry>Jerry</v> &lt;3\n\n"
        "00:04.000 --> 00:06.000\nsize <10 px and >5 px, <00:04.500>then <i>more</i>\n"
    )
    assert load_script(path).segments == (
        Segment(0.0, 2.0, "a blue notebook"),
        Segment(2.0, 4.0, "Tom & Jerry <3"),
        Segment(4.0, 6.0, "size <10 px and >5 px, then more"),
    )


def test_srt_keeps_text_that_only_looks_like_a_tag():
    script = load_script("1\n00:00:00,000 --> 00:00:02,000\nsize <10 px and >5 px\n", fmt="srt")
    assert script.segments[0].prompt == "size <10 px and >5 px"
    tagged = "1\n00:00:00,000 --> 00:00:02,000\n<FONT color=red>red</FONT> {\\an8}top\n"
    assert load_script(tagged, fmt="srt").segments[0].prompt == "red top"


# --------------------------------------------------------------------------- paths and keys
def test_a_missing_path_without_an_extension_is_named_as_a_missing_file(tmp_path):
    for name in ("nosuchfile", str(tmp_path / "nosuchfile"), "my story"):
        with pytest.raises(ScriptError, match="no such file") as exc:
            load_script(name)
        assert exc.value.source == name
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScriptError, match="folder holds no .parquet file"):
        load_script(tmp_path / "empty")


@pytest.mark.parametrize(
    ("name", "text", "problems"),
    [
        (
            "a.yaml",
            "fps: 8\nfps: 2\nsegments:\n  - {start: 0, end: 2, end: 6, prompt: a}\n",
            [
                "line 2: key 'fps' given twice (first on line 1); keep one",
                "line 4: key 'end' given twice (first on line 4); keep one",
            ],
        ),
        (
            "a.json",
            '{"fps": 8,\n "segments": [{"start": 0, "end": 2, "prompt": "a"}],\n "segments": []}',
            ["line 3: key 'segments' given twice (first on line 2); keep one"],
        ),
        (
            "b.json",
            '{"segments": [{"start": 0,\n "end": 2,\n "prompt": "a",\n "end": 6}]}',
            ["line 4: key 'end' given twice (first on line 2); keep one"],
        ),
    ],
)
def test_duplicate_keys_are_refused_with_their_lines(tmp_path, name, text, problems):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ScriptError) as exc:
        load_script(path)
    assert _problems(exc) == problems


def test_yaml_merge_keys_may_be_overridden():
    text = "segments:\n  - &a {start: 0, end: 2, prompt: a}\n  - {<<: *a, start: 2, end: 3}\n"
    assert load_script(text).segments[1] == Segment(2.0, 3.0, "a")
