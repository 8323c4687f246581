"""The story validator: every rule, each problem located."""

from __future__ import annotations

import pytest

from schemas import StoryError, story_problems, validate_story, validate_story_row


def seg(start, end, prompt="a red circle"):
    return {"start_s": start, "end_s": end, "prompt": prompt}


def test_valid_story_passes():
    validate_story([seg(0, 1.5), seg(1.5, 3.0), seg(4.0, 5.0)], duration_s=5.0)


@pytest.mark.parametrize(
    "segments,duration,expected",
    [
        ([], None, ["story has no segments"]),
        ([seg(0, 1), seg(0.5, 2)], None, ["segment 1: overlaps segment 0 (starts at 0.5 s"]),
        ([seg(2, 3), seg(0, 1)], None, ["segment 1: unsorted (starts at 0 s, before segment 0"]),
        ([seg(1, 1)], None, ["segment 0: zero duration"]),
        ([seg(2, 1)], None, ["segment 0: negative duration"]),
        ([seg(0, 1, "  ")], None, ["segment 0: empty prompt"]),
        ([seg(0, 1, None)], None, ["segment 0: empty prompt"]),
        ([seg(-1, 1)], None, ["segment 0: negative start -1 s"]),
        ([seg(0, 6)], 5.0, ["segment 0: ends at 6 s, after the video's duration 5 s"]),
    ],
)
def test_each_rule_is_reported(segments, duration, expected):
    problems = story_problems(segments, duration_s=duration)
    assert len(problems) == len(expected)
    for got, want in zip(problems, expected):
        assert got.startswith(want), got


def test_all_problems_reported_with_labels():
    segments = [seg(0, 2, ""), seg(1, 1), seg(3, 4)]
    with pytest.raises(StoryError) as err:
        validate_story(segments, where="story.yaml", labels=["line 3", "line 4", "line 5"])
    e = err.value
    assert e.where == "story.yaml"
    assert e.problems[0] == "line 3: empty prompt"
    assert e.problems[1].startswith("line 4: zero duration")
    assert e.problems[2].startswith("line 4: overlaps line 3")
    assert str(e).startswith("story.yaml: line 3: empty prompt; ")


def test_frame_spans_checked_and_row_wrapper():
    row = {
        "story_id": "s1",
        "duration_s": 2.0,
        "segments": [dict(seg(0, 2), start_frame=10, end_frame=10)],
    }
    with pytest.raises(StoryError, match="story 's1': segment 0: end_frame 10 <= start_frame 10"):
        validate_story_row(row)


def test_float_rounding_at_boundaries_is_not_an_overlap():
    fps = 30000 / 1001
    a, b = 48 / fps, 96 / fps
    validate_story([seg(0, a), seg(48 * (1001 / 30000), b)], duration_s=b)
