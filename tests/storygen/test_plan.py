"""The hierarchical plan: arithmetic as properties, the paper's regular structure, prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storygen.plan import (
    Call,
    Plan,
    autoregressive_plan,
    build_plan,
    deepest,
    depth_for,
    max_frames,
    plan_story,
    side_by_side,
    with_prompts,
)
from storygen.script import Segment, StoryScript


def check_plan(plan: Plan) -> None:
    """The invariants every executable plan keeps."""
    L = plan.frames_per_call
    produced_at: dict[int, int] = {}
    for j, level in enumerate(plan.levels):
        assert level.index == j
        assert level.calls, f"level {j} is empty"
        new_this_level: set[int] = set()
        for call in level.calls:
            assert call.level == j
            assert 1 <= len(call.frames) <= L
            assert list(call.frames) == sorted(set(call.frames))
            assert len(call.known) == len(call.frames)
            for f, known in zip(call.frames, call.known):
                if known:  # given frames come from an earlier level
                    assert f in produced_at and produced_at[f] < j, (j, f)
                else:  # calls of one level are disjoint in what they generate
                    assert f not in produced_at and f not in new_this_level, (j, f)
                    new_this_level.add(f)
        for f in new_this_level:
            produced_at[f] = j
        if j in (0, len(plan.levels) // 2, len(plan.levels) - 1):
            assert plan.frames_at_level(j) == sorted(produced_at)
    # every output frame exactly once (trim may make a few more, all beyond the end)
    assert set(range(plan.num_frames)) <= set(produced_at)
    extra = sorted(set(produced_at) - set(range(plan.num_frames)))
    assert extra == list(plan.dropped)
    assert plan.generated_frames == len(produced_at)
    assert plan.rounds == len(plan.levels) == plan.depth
    assert plan.model_calls == sum(len(lv.calls) for lv in plan.levels)
    plan.check()  # the library's own check agrees


# --------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    ("L", "m", "n"), [(16, 1, 16), (16, 2, 226), (16, 3, 3376), (8, 2, 50), (3, 4, 17)]
)
def test_max_frames_and_depth_for(L, m, n):
    assert max_frames(L, m) == n
    assert depth_for(n, L) == m
    assert depth_for(n + 1, L) == m + 1


@pytest.mark.parametrize("policy", ["stretch", "trim"])
@pytest.mark.parametrize(("L", "m"), [(16, 1), (16, 2), (16, 3), (4, 3), (5, 4), (3, 5)])
def test_regular_lengths_give_the_papers_structure(L, m, policy):
    n = (L - 1) ** m + 1
    plan = build_plan(n, frames_per_call=L, policy=policy)
    check_plan(plan)
    assert plan.depth == plan.rounds == m
    assert [len(lv.calls) for lv in plan.levels] == [(L - 1) ** j for j in range(m)]
    assert plan.model_calls == sum((L - 1) ** j for j in range(m))
    assert plan.generated_frames == n and plan.dropped == ()
    for j, level in enumerate(plan.levels):
        step = (L - 1) ** (m - 1 - j)
        assert level.spacing == step
        for call in level.calls:
            assert len(call.frames) == L
            # evenly spaced: a call spans (L - 1) steps of this level's spacing
            assert [b - a for a, b in zip(call.frames, call.frames[1:])] == [step] * (L - 1)
            if j == 0:
                assert not any(call.known)
            else:
                assert call.known == (True,) + (False,) * (L - 2) + (True,)
    assert plan.levels[0].calls[0].frames[0] == 0
    assert plan.levels[0].calls[0].frames[-1] == n - 1


def test_paper_numbers_for_16_frames_per_call():
    three = build_plan(3376)
    assert (three.model_calls, three.rounds) == (241, 3)
    assert [len(lv.calls) for lv in three.levels] == [1, 15, 225]
    two = build_plan(226)
    assert (two.model_calls, two.rounds) == (16, 2)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 4000),
    L=st.integers(3, 20),
    extra_depth=st.integers(0, 2),
    policy=st.sampled_from(["stretch", "trim"]),
)
def test_plan_invariants(n, L, extra_depth, policy):
    depth = depth_for(n, L) + extra_depth
    if policy == "stretch" and depth > deepest(n, L):
        # more levels than the length can use: refused, never silently fewer
        with pytest.raises(ValueError, match=f"depth {depth} is more levels than {n} frames"):
            build_plan(n, frames_per_call=L, depth=depth, policy=policy)
        return
    plan = build_plan(n, frames_per_call=L, depth=depth, policy=policy)
    check_plan(plan)
    assert plan.policy == policy
    first = plan.levels[0].calls[0]
    assert first.frames[0] == 0
    if policy == "stretch":
        assert plan.generated_frames == n and not plan.dropped
        assert first.frames[-1] == n - 1
        assert plan.depth == depth
        if extra_depth == 0:
            # the global call uses the model's full length whenever the story has that many frames
            assert len(first.frames) == min(L, n)
    else:
        assert plan.generated_frames >= n
        assert all(f >= n for f in plan.dropped)
        assert first.frames[-1] == max_frames(L, depth) - 1 or n <= 2


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 4000), L=st.integers(3, 20))
def test_stretch_spacing_is_even_within_one_frame(n, L):
    plan = build_plan(n, frames_per_call=L)
    for level in plan.levels:
        for call in level.calls:
            gaps = [b - a for a, b in zip(call.frames, call.frames[1:])]
            assert max(gaps) - min(gaps) <= 1


def test_stretch_needs_fewer_calls_than_splitting_every_level_fully():
    plan = build_plan(1024)
    check_plan(plan)
    assert [len(lv.calls) for lv in plan.levels] == [1, 15, 75]
    assert plan.levels[-1].min_call_frames >= 14  # the last level's calls stay nearly full


def test_trim_skips_calls_that_only_make_dropped_frames():
    plan = build_plan(100, policy="trim")
    check_plan(plan)
    # the regular 226-frame structure, of which frames 0..99 need level-1 calls 0..6
    assert [len(lv.calls) for lv in plan.levels] == [1, 7]
    assert plan.generated_frames == 16 + 7 * 14
    assert plan.dropped[0] == 100 and plan.dropped[-1] == 225


def test_depth_larger_than_needed_spreads_work_over_every_level():
    plan = build_plan(226, depth=3)
    check_plan(plan)
    assert plan.depth == 3
    assert all(lv.new_frames > 0 for lv in plan.levels)
    short = build_plan(16, depth=2)
    check_plan(short)
    assert short.depth == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames must be an integer >= 1, got 0"),
        ({"num_frames": 2.5}, "got 2.5"),
        (
            {"num_frames": 10, "frames_per_call": 2},
            "frames_per_call must be an integer >= 3, got 2",
        ),
        ({"num_frames": 10, "depth": 0}, "depth must be an integer >= 1, got 0"),
        ({"num_frames": 10, "policy": "squash"}, "got 'squash'"),
        ({"num_frames": 227, "depth": 2}, "depth 2 with 16 frames per call makes at most 226"),
    ],
)
def test_bad_arguments_are_quoted(kwargs, message):
    n = kwargs.pop("num_frames")
    with pytest.raises(ValueError, match=message):
        build_plan(n, **kwargs)


def test_call_checks_lengths():
    with pytest.raises(ValueError, match="3 frames but 2 known flags"):
        Call(0, (0, 1, 2), (False, False))


# --------------------------------------------------------------------------- baseline
@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 2000), L=st.integers(3, 20), data=st.data())
def test_autoregressive_windows(n, L, data):
    overlap = data.draw(st.integers(1, L - 1))
    plan = autoregressive_plan(n, frames_per_call=L, overlap=overlap)
    check_plan(plan)
    assert plan.rounds == plan.model_calls  # nothing runs in parallel
    for level in plan.levels[1:]:
        (call,) = level.calls
        assert len(call.frames) == min(L, n)
        assert call.frames == tuple(range(call.frames[0], call.frames[-1] + 1))
        # the first `overlap` frames (at least) are given, and only a prefix is given
        n_known = sum(call.known)
        assert n_known >= overlap
        assert call.known == (True,) * n_known + (False,) * (len(call) - n_known)
    expected_calls = 1 if n <= L else 1 + -(-(n - L) // (L - overlap))
    assert plan.model_calls == expected_calls


def test_autoregressive_argument_checks():
    with pytest.raises(ValueError, match="overlap must be smaller than frames_per_call=16, got 16"):
        autoregressive_plan(100, overlap=16)
    with pytest.raises(ValueError, match="overlap must be an integer >= 1, got 0"):
        autoregressive_plan(100, overlap=0)


# --------------------------------------------------------------------------- prompts
def _script() -> StoryScript:
    return StoryScript(
        (Segment(0.0, 10.0, "a"), Segment(10.0, 17.5, "b"), Segment(20.0, 28.0, "c")), 8
    )


@pytest.mark.parametrize("policy", ["stretch", "trim", "autoregressive"])
def test_plan_story_puts_each_frames_prompt_on_every_call(policy):
    script = _script()
    plan = plan_story(script, fps=8, policy=policy)
    check_plan(plan)
    per_frame = script.prompts_per_frame(8)
    assert plan.num_frames == 224 and plan.prompts == tuple(per_frame)
    assert plan.fps == 8
    for call in plan.calls:
        assert call.prompts == tuple(per_frame[min(f, 223)] for f in call.frames)
    assert plan.prompt_changes() == [(0, "a"), (80, "b"), (160, "c")]


def test_plan_story_length_and_gap_options():
    script = _script()
    plan = plan_story(script, fps=4, num_frames=50)
    assert plan.num_frames == 50 and len(plan.prompts) == 50
    with pytest.raises(ValueError, match="17.5–20 s"):
        plan_story(script, fps=8, gaps="error")
    with pytest.raises(ValueError, match="depth does not apply"):
        plan_story(script, fps=8, policy="autoregressive", depth=2)


def test_summary_and_json():
    plan = plan_story(_script(), fps=8)
    text = plan.summary()
    assert "224 frames (28.00 s at 8 fps)" in text
    assert "total: 16 model calls in 2 sequential rounds" in text
    data = json.loads(plan.to_json())
    assert data["model_calls"] == 16 and data["rounds"] == 2
    assert [lv["calls"] for lv in data["levels"]] == [1, 15]
    assert data["levels"][0]["spacing_s"] == pytest.approx(223 / 15 / 8)
    assert len(data["calls"]) == 16 and data["calls"][0]["prompts"][0] == "a"


# --------------------------------------------------------------------------- CLI
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _cli(*argv: str) -> int:
    from storygen import plan_cli

    parser = argparse.ArgumentParser(prog="storygen")
    plan_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", *argv])
    return args.func(args)


def test_cli_prints_levels_totals_and_prompt_changes(capsys):
    assert _cli(str(EXAMPLES / "shapes_story.yaml")) == 0
    out = capsys.readouterr().out
    assert "224 frames (28.00 s at 8 fps)" in out
    assert "total: 16 model calls in 2 sequential rounds" in out
    assert "frame     56      7.000 s  a yellow star growing on a navy background" in out
    assert "sliding windows (overlap 1) would need 15 model calls in 15 sequential rounds" in out


def test_cli_json_matches_the_library(capsys):
    assert _cli(str(EXAMPLES / "shapes_story.srt"), "--fps", "8", "--frames", "3376", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    expected = build_plan(3376)
    assert (data["model_calls"], data["rounds"]) == (expected.model_calls, expected.rounds)
    assert [c["frames"] for c in data["calls"]] == [list(c.frames) for c in expected.calls]
    assert data["autoregressive"] == {"overlap": 1, "model_calls": 225, "rounds": 225}


def test_cli_duration_and_trim(capsys):
    assert _cli(str(EXAMPLES / "shapes_story.json"), "--duration", "12.5", "--policy", "trim") == 0
    assert "100 frames (12.50 s at 8 fps)" in capsys.readouterr().out


def test_cli_errors_are_one_line_and_exit_2(capsys, tmp_path):
    # a model folder without sampling.json gives no fps either
    assert _cli(str(EXAMPLES / "shapes_story.srt"), "--model", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "sets no fps (SRT never does)" in err and err.rstrip().endswith("pass --fps")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "segments:\n  - {start: 0, end: 2, prompt: a}\n  - {start: 1, end: 3, prompt: b}\n"
    )
    assert _cli(str(bad), "--fps", "8") == 2
    assert "segment 2 (line 3): overlaps segment 1 (line 2)" in capsys.readouterr().err
    assert _cli(str(EXAMPLES / "shapes_story.yaml"), "--depth", "1") == 2
    assert "depth 1 with 16 frames per call makes at most 16" in capsys.readouterr().err


def test_cli_warns_about_segments_the_output_cannot_show(capsys, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "fps: 4\nsegments:\n  - {start: 0, end: 1.05, prompt: a}\n"
        "  - {start: 1.05, end: 1.1, prompt: too short}\n  - {start: 1.1, end: 4, prompt: c}\n"
        "  - {start: 4, end: 6, prompt: late}\n"
    )
    assert _cli(str(path), "--duration", "4") == 0
    out = capsys.readouterr().out
    assert (
        f"{path}: segment 2 (line 4): not shown at 4 fps (16 frames): 1.05–1.1 s falls between "
        "two frames (1 s and 1.25 s)"
    ) in out
    assert (
        f"{path}: segment 4 (line 6): not shown at 4 fps (16 frames): it starts at 4 s, after "
        "the output's last frame (frame 15 at 3.75 s)"
    ) in out
    assert "segment 3" not in out.split("warnings:")[1]


@pytest.mark.parametrize(
    ("segments", "flags", "unshown"),
    [
        # 10.1 s at 4 fps is 40 frames, the last at 9.75 s: the one at 10 s is not made
        ("[{start: 0, end: 9.9, prompt: a}, {start: 9.9, end: 10.1, prompt: b}]", [], [2]),
        (
            "[{start: 0, end: 7.4, prompt: a}, {start: 7.4, end: 8, prompt: b},"
            " {start: 8, end: 10, prompt: c}]",
            ["--duration", "7.5"],
            [2, 3],
        ),
    ],
)
def test_cli_warns_of_segments_past_the_last_frame_even_when_they_start_before_the_end(
    capsys, tmp_path, segments, flags, unshown
):
    path = tmp_path / "s.yaml"
    path.write_text(f"fps: 4\nsegments: {segments}\n")
    assert _cli(str(path), *flags, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["prompts"]) == {"a"}
    assert [w.split(": ")[1] for w in data["warnings"]] == [
        f"segment {i} (line 2)" for i in unshown
    ]
    assert all("after the output's last frame" in w for w in data["warnings"])


def test_a_segment_held_over_the_frames_before_it_is_shown_and_not_warned_of(tmp_path):
    from storygen.plan_cli import segment_warnings

    # at 8 fps no frame falls inside [0.01, 0.06), but frame 0, before the first segment,
    # takes the first segment's prompt
    script = StoryScript((Segment(0.01, 0.06, "flash"), Segment(0.06, 4.0, "blue")), 8)
    plan = plan_story(script, fps=8)
    assert plan.prompt_changes()[0] == (0, "flash")
    assert segment_warnings(script, plan, 8) == []
    # a segment between two frames that a gap after it holds is shown too; one that the next
    # segment follows at once is not
    script = StoryScript(
        (
            Segment(0, 1, "a"),
            Segment(1.05, 1.1, "held"),
            Segment(2, 3, "b"),
            Segment(3.05, 3.1, "c"),
        )
        + (Segment(3.1, 4, "d"),),
        4,
    )
    plan = plan_story(script, fps=4)
    assert "held" in plan.prompts and "c" not in plan.prompts
    assert segment_warnings(script, plan, 4) == [
        "segment 4: not shown at 4 fps (16 frames): 3.05–3.1 s falls between two frames "
        "(3 s and 3.25 s)"
    ]


def test_warnings_name_the_file_and_the_segment_as_its_reader_labels_it(tmp_path):
    from storygen.plan_cli import segment_warnings
    from storygen.script import load_script, save_script

    srt = tmp_path / "s.srt"
    srt.write_text(
        "7\n00:00:00,000 --> 00:00:02,010\nred\n\n8\n00:00:02,010 --> 00:00:02,060\nflash\n\n"
        "9\n00:00:02,060 --> 00:00:04,000\nblue\n"
    )
    table = save_script(load_script(srt), tmp_path / "s.parquet", fps=25)
    for path, label in ((srt, "cue 8 (line 5)"), (table, "story 's' segment 1")):
        script = load_script(path)
        plan = plan_story(script, fps=8)
        assert segment_warnings(script, plan, 8) == [
            f"{path}: {label}: not shown at 8 fps (32 frames): 2.01–2.06 s falls between two "
            "frames (2 s and 2.125 s)"
        ]


@pytest.mark.parametrize("policy", ["stretch", "trim", "autoregressive"])
def test_json_round_trip_and_check(policy):
    plan = plan_story(_script(), fps=8, policy=policy, frames_per_call=8)
    plan.check()
    back = Plan.from_dict(json.loads(plan.to_json()))
    assert back.calls == plan.calls
    assert (back.num_frames, back.rounds, back.model_calls, back.dropped, back.prompts) == (
        plan.num_frames,
        plan.rounds,
        plan.model_calls,
        plan.dropped,
        plan.prompts,
    )


def test_check_names_the_broken_call():
    data = build_plan(226).to_dict()
    data["calls"][3]["known"][0] = False  # frame made again at level 1
    with pytest.raises(ValueError, match=r"level 1 call 2 .*: frame 30 is made twice"):
        Plan.from_dict(data)
    data = build_plan(226).to_dict()
    del data["calls"][5]
    with pytest.raises(ValueError, match="plan never makes 14 of its 226 frames"):
        Plan.from_dict(data)
    data = build_plan(226).to_dict()
    data["calls"][0]["known"][4] = True
    with pytest.raises(ValueError, match="frame 60 is given but no earlier level made it"):
        Plan.from_dict(data)


def test_segment_progress_runs_through_each_run_of_equal_prompts():
    from storygen.plan import segment_progress

    got = segment_progress(["a", "a", "a", "b", "c", "c"])
    assert got == [0.0, 0.5, 1.0, 0.5, 0.0, 1.0]
    assert segment_progress([]) == []


def test_calls_carry_the_progress_of_their_frames():
    from storygen.plan import segment_progress, with_prompts

    prompts = ["a"] * 40 + ["b"] * 60 + ["c"] * 26
    plan = with_prompts(build_plan(126, frames_per_call=16), prompts)
    every = segment_progress(prompts)
    for call in plan.calls:
        assert call.progress == tuple(every[f] for f in call.frames)
    keyframes = plan.levels[0].calls[0]
    assert keyframes.progress[0] == 0.0 and keyframes.progress[-1] == 1.0


@pytest.mark.parametrize("policy", ["stretch", "autoregressive"])
def test_side_by_side_plans_keep_every_story_to_itself(policy):
    lengths = [40, 226, 17]

    def plan_of(n, tag):
        plan = (
            autoregressive_plan(n, frames_per_call=16)
            if policy == "autoregressive"
            else build_plan(n, frames_per_call=16, policy=policy)
        )
        return with_prompts(plan, [f"{tag} {k // 9}" for k in range(n)], fps=8)

    plans = [plan_of(n, f"story {i}") for i, n in enumerate(lengths)]
    merged, starts = side_by_side(plans)
    merged.check()
    assert starts == [0, 40, 266] and merged.num_frames == sum(lengths)
    assert merged.rounds == max(p.rounds for p in plans)
    for k, level in enumerate(merged.levels):
        assert len(level.calls) == sum(len(p.levels[k].calls) for p in plans if k < p.rounds)
    for plan, start in zip(plans, starts):
        own = [c for c in merged.calls if start <= c.frames[0] < start + plan.num_frames]
        # each story's calls come back shifted, prompts, progress and known frames intact
        assert [
            (c.level, tuple(f - start for f in c.frames), c.known, c.prompts, c.progress)
            for c in own
        ] == [(c.level, c.frames, c.known, c.prompts, c.progress) for c in plan.calls]
        assert all(c.frames[-1] < start + plan.num_frames for c in own)
    assert merged.prompts == tuple(x for p in plans for x in p.prompts)


def test_side_by_side_refuses_plans_that_do_not_line_up():
    a = build_plan(40, frames_per_call=16)
    with pytest.raises(ValueError, match="plan 1: policy 'autoregressive'"):
        side_by_side([a, autoregressive_plan(40, frames_per_call=16)])
    with pytest.raises(ValueError, match="plan 1: .* 8 frames per call"):
        side_by_side([a, build_plan(40, frames_per_call=8)])
    trimmed = build_plan(41, frames_per_call=4, policy="trim")
    assert trimmed.dropped
    with pytest.raises(ValueError, match="plan 0 makes frames past its end"):
        side_by_side([trimmed, trimmed])
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([])


def test_cli_refuses_a_model_folder_that_does_not_exist(capsys, tmp_path):
    typo = tmp_path / "shapes-storygne"
    assert _cli(str(EXAMPLES / "shapes_story.yaml"), "--model", str(typo)) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"storygen plan: error: {typo}: no such model folder"
