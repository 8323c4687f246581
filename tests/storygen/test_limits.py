"""Bounded plans and commands: hostile lengths, rates, sizes and depths end in one clear error.

Each case here once hung, allocated without limit or ended in a traceback: a story of 10^12
seconds, a million fps, 100,000 × 100,000 frames, ``--duration inf``, a depth silently
lowered. The commands answer each with one line on stderr and exit code 2, before any model
loads.
"""

from __future__ import annotations

import json
import math

import pytest

from storygen.cli import main
from storygen.plan import (
    FPS_RANGE,
    MAX_DEPTH,
    MAX_FRAMES,
    autoregressive_plan,
    build_plan,
    current_frame_limit,
    deepest,
    frame_limit,
    plan_story,
)
from storygen.script import StoryScript, load_script
from tests.storygen.test_script_limits import ALIAS_BOMB


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """stderr of a failed command: one line, the command's name, no traceback."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err
    assert err.count("\n") == 0, err
    assert err.startswith(f"storygen {command}: ")
    return err


# --------------------------------------------------------------------------- plans
def _script(end_s: float, fps: float | None = 4) -> StoryScript:
    return load_script(f"fps: {fps}\nsegments: [{{start: 0, end: {end_s}, prompt: a}}]\n")


def test_story_length_is_capped_before_any_frame_list_is_made():
    with pytest.raises(ValueError, match=f"more than the limit of {MAX_FRAMES:,} frames"):
        plan_story(_script(1e12))
    with pytest.raises(ValueError, match="num_frames=2,000,000 more than the limit"):
        plan_story(_script(10), num_frames=2_000_000)
    with pytest.raises(ValueError, match="more than the limit"):
        build_plan(10**12)
    with pytest.raises(ValueError, match="more than the limit"):
        autoregressive_plan(10**12)


def test_frame_limit_raises_and_lowers_the_cap_inside_its_block():
    with frame_limit(100):
        assert current_frame_limit() == 100
        assert build_plan(100).num_frames == 100
        with pytest.raises(ValueError, match="more than the limit of 100 frames"):
            plan_story(_script(25.25))
    assert current_frame_limit() == MAX_FRAMES
    with frame_limit(MAX_FRAMES + 10):
        assert build_plan(MAX_FRAMES + 10, frames_per_call=256).num_frames == MAX_FRAMES + 10


@pytest.mark.parametrize("fps", [1e6, 0.01, 240.5])
def test_fps_outside_the_range_is_refused(fps):
    script = _script(10, fps=2)
    lo, hi = FPS_RANGE
    with pytest.raises(ValueError, match=f"frame rates go from {lo:g} to {hi:g}"):
        plan_story(script, fps=fps)
    with pytest.raises(ValueError, match="fps must be finite, got inf"):
        plan_story(script, fps=math.inf)


def test_script_fps_outside_the_range_names_the_script(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text("fps: 1000000\nsegments: [{start: 0, end: 10, prompt: a}]\n")
    with pytest.raises(ValueError, match=r"fps 1e\+06 \(from .*fast.yaml\) is out of range"):
        plan_story(load_script(path))


def test_depth_and_frames_per_call_are_refused_not_clamped():
    assert deepest(40, 16) == 6
    assert build_plan(40, depth=6).depth == 6
    with pytest.raises(ValueError, match=r"depth 7 is more levels than 40 frames .*at most 6"):
        build_plan(40, depth=7)
    with pytest.raises(ValueError, match=f"depth must be between 1 and {MAX_DEPTH}, got 10000"):
        build_plan(40, depth=10_000, policy="trim")
    with pytest.raises(ValueError, match="frames_per_call must be between 3 and 256, got 100000"):
        build_plan(40, frames_per_call=100_000)


# --------------------------------------------------------------------------- command line
@pytest.fixture
def story(tmp_path):
    def write(text: str, name: str = "s.yaml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (ALIAS_BOMB, [], "aliases expand the document"),
        ("fps: 4\nsegments: [{start: 0, end: 1e12, prompt: x}]\n", [], "1e+12 s at 4 fps"),
        ("fps: 1000000\nsegments: [{start: 0, end: 10, prompt: x}]\n", [], "fps 1e+06"),
        ("fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n", ["--depth", "20"], "at most 6"),
        ("fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n", ["-L", "1000"], "3 and 256"),
        (
            "fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n",
            ["--frames", "2000000"],
            "more than the limit of 1,000,000 frames",
        ),
        (
            "fps: 240\nsegments: [{start: 0, end: 10, prompt: x}]\n",
            ["--max-frames", "1000"],
            "2,400 frames, more than the limit of 1,000 frames",
        ),
        (
            "fps: 4\nsegments: [{start: 0, end: .nan, prompt: x}]\n",
            [],
            "segment 1 (line 2): end: bad time nan",
        ),
    ],
)
def test_plan_command_gives_one_line_and_exit_2(capsys, story, script, args, message):
    assert main(["plan", story(script), *args]) == 2
    assert message in _one_line_error(capsys, "plan")


@pytest.mark.parametrize(
    "args",
    [
        ["--duration", "inf"],
        ["--duration", "nan"],
        ["--duration", "-1"],
        ["--fps", "inf"],
        ["--frames", "0"],
        ["--max-frames", "0"],
    ],
)
def test_plan_command_refuses_bad_numbers_as_usage_errors(capsys, story, args):
    path = story("fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n")
    with pytest.raises(SystemExit) as exc:
        main(["plan", path, *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument {args[0]}" in err


def test_plan_command_max_frames_raises_the_cap(capsys, story):
    path = story("fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n")
    assert main(["plan", path, "--frames", "1500000", "--max-frames", "2000000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_frames"] == 1_500_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (ALIAS_BOMB, [], "aliases expand the document"),
        ("fps: 4\nsegments: [{start: 0, end: 1e12, prompt: x}]\n", [], "1e+12 s at 4 fps"),
        ("fps: 1000000\nsegments: [{start: 0, end: 10, prompt: x}]\n", [], "fps 1e+06"),
        (
            "fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n",
            ["--height", "100000", "--width", "100000"],
            "height 100000 is larger than the limit of 4096 pixels",
        ),
        (
            "fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n",
            ["--width", "8192", "--max-frame-size", "8000"],
            "width 8192 is larger than the limit of 8000 pixels",
        ),
        ("fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n", ["--depth", "20"], "at most 6"),
        (
            "fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n",
            ["--frames-per-call", "1000"],
            "3 and 256",
        ),
    ],
)
def test_render_command_gives_one_line_and_exit_2_before_loading_a_model(
    capsys, story, tmp_path, script, args, message
):
    # the folder holds no model: every one of these is refused before one would load
    model = tmp_path / "no-model-here"
    model.mkdir()
    out = tmp_path / "x.mp4"
    argv = ["render", story(script), "--model", str(model), "--out", str(out), *args]
    assert main(argv) == 2
    assert message in _one_line_error(capsys, "render")
    assert not out.exists()


@pytest.mark.parametrize(
    "args", [["--duration", "inf"], ["--guidance", "nan"], ["--fps", "-4"], ["--steps", "0"]]
)
def test_render_command_refuses_bad_numbers_as_usage_errors(capsys, story, args):
    path = story("fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n")
    with pytest.raises(SystemExit) as exc:
        main(["render", path, "--out", "x.mp4", *args])
    assert exc.value.code == 2
    assert f"argument {args[0]}" in capsys.readouterr().err


def test_render_command_names_a_missing_model_folder(capsys, story, tmp_path):
    path = story("fps: 4\nsegments: [{start: 0, end: 10, prompt: x}]\n")
    argv = ["render", path, "--model", str(tmp_path / "absent"), "--out", "x.mp4"]
    assert main(argv) == 2
    assert "absent: no such model folder" in _one_line_error(capsys, "render")


def test_plan_command_writes_a_huge_frame_count_short(capsys, story):
    path = story("fps: 8\nsegments: [{start: 0, end: 1e300, prompt: x}]\n")
    assert main(["plan", path]) == 2
    err = _one_line_error(capsys, "plan")
    assert "1e+300 s at 8 fps is about 8.0e+300 frames, more than the limit" in err
    assert len(err) < 300
    path = story("fps: 8\nsegments: [{start: 0, end: 10, prompt: x}]\n", "short.yaml")
    assert main(["plan", path, "--duration", "1e300"]) == 2
    err = _one_line_error(capsys, "plan")
    assert "--duration 1e+300 s at 8 fps is about 8.0e+300 frames" in err


def test_plan_frame_counts_read_in_full_up_to_a_trillion():
    from storygen.plan.limits import frame_count

    assert frame_count(2_400) == "2,400" and frame_count(2_400.4) == "2,400"
    assert frame_count(999_999_999_999) == "999,999,999,999"
    assert frame_count(8e300) == "about 8.0e+300"
    assert frame_count(8 * 10**400) == "about 8.0e+400"  # past any float
    assert frame_count(math.nan) == "nan"
