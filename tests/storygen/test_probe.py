"""The pixel probe against rendered ground truth: real frames score at the ceiling, frames that
do not belong to the story score near chance."""

from __future__ import annotations

import numpy as np
import pytest

from storygen.training.probe import (
    ceiling,
    held_out_stories,
    read_story,
    render_truth,
    summarize,
)


def test_held_out_stories_cover_their_length_and_cut_visibly():
    stories = held_out_stories(6, num_frames=226)
    assert stories == held_out_stories(6, num_frames=226)  # same seed, same stories
    assert stories != held_out_stories(6, num_frames=226, seed=7)
    for story in stories:
        assert story.segments[0][0] == 0 and story.segments[-1][1] == 226
        for (_, end, a), (start, _, b) in zip(story.segments, story.segments[1:]):
            assert end == start
            assert a.color != b.color and a.background != b.background
        assert all(end - start >= 24 for start, end, _ in story.segments)
        assert len(story.prompts()) == 226


@pytest.mark.parametrize("size", [64, 96])
def test_real_frames_score_at_the_ceiling(size):
    stories = held_out_stories(3, num_frames=120)
    got = ceiling(stories, size)
    assert got["color"] == 1.0 and got["background"] == 1.0
    assert got["shape"] >= 0.95 and got["all"] >= 0.95
    assert got["motion"] >= 0.9 and got["identity"] >= 0.95
    assert got["seam_ratio"] is None  # nothing was given to a model


def test_frames_of_another_story_score_near_chance():
    a, b = held_out_stories(2, num_frames=120)
    got = read_story(render_truth(b, 64), a)
    assert got["all"] < 0.15 and got["color"] < 0.35


def test_shuffled_frames_lose_order_and_identity():
    story = held_out_stories(1, num_frames=120)[0]
    frames = render_truth(story, 64)
    shuffled = frames[np.random.default_rng(0).permutation(len(frames))]
    real, mixed = read_story(frames, story), read_story(shuffled, story)
    assert mixed["all"] < 0.6 * real["all"]
    assert mixed["identity"] < 0.8
    assert mixed["flicker"] > 5 * real["flicker"]


def test_seam_ratio_sees_jumps_next_to_given_frames():
    story = held_out_stories(1, num_frames=40, lengths=(40, 40))[0]
    drift = np.full((40, 64, 64, 3), 100, np.uint8)
    drift += np.arange(40, dtype=np.uint8)[:, None, None, None]  # one level a frame
    jump = drift.copy()
    jump[20:] += 30  # a jump after frame 19, next to the given frame 20
    smooth = read_story(drift, story, known={10})
    jumpy = read_story(jump, story, known={20})
    assert smooth["seam_ratio"] == pytest.approx(1.0)
    assert jumpy["seam_ratio"] > 5


def test_summaries_weight_stories_by_frames():
    rows = [
        {
            "frames": 10,
            "color": 1.0,
            "shape": 1.0,
            "background": 1.0,
            "all": 1.0,
            "identity": 1.0,
            "flicker": 1.0,
            "motion": 1.0,
            "motion_segments": 1,
            "seam_ratio": None,
            "quarters_all": [1.0] * 4,
            "tenths_all": [1.0] * 10,
        },
        {
            "frames": 30,
            "color": 0.0,
            "shape": 0.0,
            "background": 0.0,
            "all": 0.0,
            "identity": 0.0,
            "flicker": 3.0,
            "motion": 0.0,
            "motion_segments": 3,
            "seam_ratio": 2.0,
            "quarters_all": [0.0] * 4,
            "tenths_all": [0.0] * 10,
        },
    ]
    got = summarize(rows)
    assert got["color"] == pytest.approx(0.25) and got["flicker"] == pytest.approx(2.5)
    assert got["motion"] == pytest.approx(0.25) and got["seam_ratio"] == pytest.approx(2.0)


def test_any_prompted_render_is_read_segment_by_segment():
    from storygen.training.probe import probe_prompted

    story = held_out_stories(1, num_frames=60)[0]
    frames = render_truth(story, 64)
    prompts = story.prompts()
    got = probe_prompted(frames, prompts, size=64)
    assert got["color"] == 1.0 and got["background"] == 1.0 and got["frames_unread"] == 0
    assert got["ceiling"]["color"] == 1.0
    # a segment whose prompt names no scene is left out, not counted wrong
    first = story.segments[0][1]
    got = probe_prompted(frames, ["a sunset over the sea"] * first + prompts[first:])
    assert got["frames_unread"] == first and got["color"] == 1.0
    with pytest.raises(ValueError, match="frames for"):
        probe_prompted(frames, prompts[:-1])


def test_real_keyframes_mode_puts_the_real_frames_at_every_keyframe(tmp_path):
    from storygen.pipeline import StoryVideoPipeline
    from storygen.presets import new_model
    from storygen.training.probe import (
        REAL_KEYFRAMES,
        evaluate,
        render_story,
        render_with_real_keyframes,
    )

    story = held_out_stories(1, num_frames=22)[0]
    # a 32 px pixel-space model (the shapes renderer draws 32 px and up)
    folder = new_model(tmp_path / "m", preset="tiny", mode="masked", texts=story.prompts())
    pipe = StoryVideoPipeline.from_pretrained(folder)
    settings = {"num_inference_steps": 2, "guidance_scale": 1.0, "frames_per_call": 8}
    frames, known = render_with_real_keyframes(pipe, story, settings=settings, seed=0)
    truth = render_truth(story, 32)
    keyframes = sorted(known)
    assert len(keyframes) == 8 and keyframes[0] == 0 and keyframes[-1] == 21
    # a pixel-space model: the real keyframes come back exactly; the frames between do not
    np.testing.assert_array_equal(frames[keyframes], truth[keyframes])
    between = [f for f in range(22) if f not in known]
    assert np.abs(frames[between].astype(int) - truth[between]).mean() > 5
    # the pipeline's own sampler is back afterwards: a plain render samples its keyframes
    plain, _ = render_story(pipe, story, mode="hierarchical", settings=settings, seed=0)
    assert not np.array_equal(plain[keyframes], truth[keyframes])
    report = evaluate(pipe, [story], settings=settings, modes=(REAL_KEYFRAMES,))
    assert report[REAL_KEYFRAMES]["frames"] == 22


def test_global_keyframes_are_the_first_calls_frames(tmp_path):
    from storygen.pipeline import StoryVideoPipeline
    from storygen.presets import new_model
    from storygen.training.probe import global_keyframes, render_story

    story = held_out_stories(1, num_frames=22)[0]
    folder = new_model(tmp_path / "m", preset="tiny", mode="masked", texts=story.prompts())
    pipe = StoryVideoPipeline.from_pretrained(folder)
    settings = {"num_inference_steps": 2, "guidance_scale": 1.0, "frames_per_call": 8}
    frames, positions = global_keyframes(pipe, story, settings=settings, seed=3)
    plan = pipe.build_plan(
        story.prompts(), num_frames=22, fps=None, frames_per_call=8, depth=None, policy="stretch"
    )
    assert positions == plan.levels[0].calls[0].frames and frames.shape == (8, 32, 32, 3)
    # a pixel-space model: the whole render keeps its keyframes as the global call drew them
    whole, _ = render_story(pipe, story, mode="hierarchical", settings=settings, seed=3)
    np.testing.assert_array_equal(frames, whole[list(positions)])


def test_keyframe_motion_reads_the_real_keyframes_right_and_reversed_ones_wrong(monkeypatch):
    """Ground truth through the readers: the real story's frames at the keyframe positions
    read at the ceiling; the same keyframes in reverse order show every motion backwards."""
    from storygen.training import probe

    stories = held_out_stories(6, num_frames=226)
    positions = tuple(round(k * 225 / 15) for k in range(16))
    truth = {s.story_id: render_truth(s, 64) for s in stories}

    def real(pipe, story, *, settings, seed, reverse=False):
        frames = truth[story.story_id][list(positions)]
        return (frames[::-1] if reverse else frames), positions

    settings = {"height": 64, "num_inference_steps": 1, "guidance_scale": 1.0}
    monkeypatch.setattr(probe, "global_keyframes", real)
    right = probe.keyframe_motion(None, stories, settings=settings)
    assert right["segments"] >= 6 and right["motion"] == right["motion_ceiling"] == 1.0
    assert right["color"] == 1.0
    monkeypatch.setattr(probe, "global_keyframes", lambda *a, **k: real(*a, **k, reverse=True))
    backwards = probe.keyframe_motion(None, stories, settings=settings)
    assert backwards["motion"] <= 0.2 and backwards["motion_ceiling"] == 1.0


def test_the_probe_renders_with_the_known_frame_sampling_it_is_given(tmp_path):
    """Reconstruction guidance from the settings reaches the render: the keyframes (the
    global call knows no frame) stay as they were, the frames between change."""
    from storygen.pipeline import StoryVideoPipeline
    from storygen.presets import new_model
    from storygen.training.probe import render_story

    story = held_out_stories(1, num_frames=22)[0]
    folder = new_model(tmp_path / "m", preset="tiny", mode="masked", texts=story.prompts())
    pipe = StoryVideoPipeline.from_pretrained(folder)
    settings = {"num_inference_steps": 2, "guidance_scale": 1.0, "frames_per_call": 8}
    plain, known = render_story(pipe, story, mode="hierarchical", settings=settings, seed=0)
    pulled, again = render_story(
        pipe,
        story,
        mode="hierarchical",
        settings=settings | {"reconstruction_guidance": 5.0},
        seed=0,
    )
    assert known == again
    keyframes = sorted(known)
    np.testing.assert_array_equal(pulled[keyframes], plain[keyframes])
    between = [f for f in range(22) if f not in known]
    assert not np.array_equal(pulled[between], plain[between])


@pytest.mark.parametrize("mode", ["hierarchical", "autoregressive"])
def test_stories_rendered_side_by_side_do_not_see_each_other(tmp_path, mode):
    from storygen.pipeline import StoryVideoPipeline
    from storygen.presets import new_model
    from storygen.training.probe import probe_rows, render_stories, render_story

    a, b, c = held_out_stories(3, num_frames=22)
    texts = sorted({p for s in (a, b, c) for p in s.prompts()})
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=texts)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    settings = {
        "num_inference_steps": 2,
        "guidance_scale": 2.0,
        "frames_per_call": 8,
        "height": 32,
        "width": 32,
    }
    with_b = render_stories(pipe, [a, b], mode=mode, settings=settings, seed=3)
    with_c = render_stories(pipe, [a, c], mode=mode, settings=settings, seed=3)
    alone = [render_story(pipe, s, mode=mode, settings=settings, seed=3) for s in (a, b)]
    for (frames, known), (solo, solo_known) in zip(with_b, alone):
        assert frames.shape == solo.shape and known == solo_known
    # the first story's calls keep their place in every level: its video does not depend on
    # what renders beside it
    np.testing.assert_allclose(with_b[0][0], with_c[0][0], atol=1)
    assert not np.array_equal(with_b[1][0], with_c[1][0])
    rows = probe_rows(
        pipe, [a, b, c], mode=mode, settings=settings | {"stories_per_render": 2}, seeds=[3, 4, 5]
    )
    assert [r["frames"] for r in rows] == [22, 22, 22]
