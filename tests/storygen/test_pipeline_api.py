"""StoryVideoPipeline's diffusers-facing API: per-pipeline settings, argument checks, loading
a folder trained as text-to-video, defaults keyed on the UNet, ``return_dict``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from storygen.autoregressive import AutoregressiveStoryPipeline, generate_autoregressive
from storygen.loading import load_pipeline
from storygen.pipeline import StoryVideoPipeline, TrainingFreeStoryPipeline
from storygen.presets import build_components, new_model
from storygen.script import Segment, StoryScript

PROMPTS = ["a red circle moving left"] * 9 + ["a blue square on a striped background"] * 8
RUN = {
    "frames_per_call": 3,
    "num_inference_steps": 1,
    "guidance_scale": 1.0,
    "generator": 7,
    "progress": False,
    "output_type": "latent",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "model"
    return new_model(path, preset="micro", mode="masked", texts=PROMPTS)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return StoryVideoPipeline.from_pretrained(model_dir)


# ------------------------------------------------------------------ 1. sampling per pipeline
def test_sampling_settings_belong_to_each_pipeline(pipe):
    q = StoryVideoPipeline(**pipe.components)
    r = StoryVideoPipeline(**pipe.components)
    q.sampling["num_inference_steps"] = 1
    assert "num_inference_steps" not in r.sampling
    assert "num_inference_steps" not in StoryVideoPipeline(**pipe.components).sampling
    assert pipe.sampling.get("num_inference_steps") != 1 or "num_inference_steps" in q.sampling
    assert q.sampling is not pipe.sampling and q.sampling is not r.sampling


# ------------------------------------------------------------------ 2. negative_prompt
def test_negative_prompt_none_is_the_empty_prompt(pipe):
    cfg = {**RUN, "guidance_scale": 3.0}
    empty = pipe(PROMPTS[:5], 5, negative_prompt="", **cfg).frames
    none = pipe(PROMPTS[:5], 5, negative_prompt=None, **cfg).frames
    assert torch.equal(empty, none)


@pytest.mark.parametrize("negative", [["blurry"], 3, ("a", "b")])
def test_a_negative_prompt_that_is_not_a_string_is_named(pipe, negative):
    with pytest.raises(ValueError, match="negative_prompt must be a string or None"):
        pipe(PROMPTS[:5], 5, negative_prompt=negative, **RUN)


# ------------------------------------------------------------------ 3. encode_prompt
def test_encode_prompt_takes_a_string_as_one_prompt(pipe):
    text, negative = pipe.encode_prompt("a red ball", "")
    assert set(text.index) == {"a red ball", ""}  # the prompt and the negative, not letters
    listed, negative2 = pipe.encode_prompt(["a red ball"], None)
    assert torch.equal(text.table(), listed.table()) and torch.equal(negative, negative2)


# ------------------------------------------------------------------ 4. num_frames
@pytest.mark.parametrize("num_frames", [2.5, True, -3, 0, "5", 5.0])
def test_num_frames_with_a_prompt_string_must_be_a_positive_integer(pipe, num_frames):
    with pytest.raises(
        ValueError, match=rf"num_frames must be an integer >= 1, got {num_frames!r}"
    ):
        pipe("a red circle moving left", num_frames, **RUN)


def test_a_huge_num_frames_meets_the_frame_limit_before_any_allocation(pipe):
    with pytest.raises(ValueError, match="num_frames=1,000,000,000 more than the limit"):
        pipe("a red circle moving left", 10**9, **RUN)


def test_a_numpy_num_frames_renders(pipe):
    out = pipe("a red circle moving left", np.int64(5), **RUN)
    assert out.frames.shape[0] == 5


# ------------------------------------------------------------------ 5. numbers
def test_a_negative_guidance_scale_is_refused(pipe):
    with pytest.raises(ValueError, match=r"guidance_scale must be a finite number >= 0, got -2.0"):
        pipe(PROMPTS[:5], 5, **{**RUN, "guidance_scale": -2.0})


def test_numpy_numbers_are_taken_as_python_numbers(pipe):
    ref = pipe(PROMPTS[:5], 5, **RUN).frames
    out = pipe(
        PROMPTS[:5],
        5,
        **{
            **RUN,
            "guidance_scale": np.float32(1.0),
            "num_inference_steps": np.int64(1),
            "frames_per_call": np.int32(3),
            "generator": np.int64(7),
            "height": np.int64(16),
        },
    )
    assert torch.equal(out.frames, ref)
    assert isinstance(out.stats, type(pipe(PROMPTS[:5], 5, **RUN).stats))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": True}, "guidance_scale"),
        ({"num_inference_steps": np.bool_(True)}, "num_inference_steps"),
        ({"generator": True}, "generator"),
        ({"reconstruction_guidance": -1.0}, "reconstruction_guidance"),
    ],
)
def test_bad_numbers_are_named(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(PROMPTS[:5], 5, **{**RUN, **kwargs})


# ------------------------------------------------------------------ 6. types
@pytest.mark.parametrize("prompt", [5, {"a": 1}, np.array(["a", "b", "c"]), b"bytes"])
def test_a_prompt_of_another_type_is_named(pipe, prompt):
    with pytest.raises(ValueError, match="prompt must be a string, a list of per-frame prompts"):
        pipe(prompt, 3, **RUN)


def test_a_story_script_is_still_a_prompt(pipe):
    script = StoryScript([Segment(0.0, 1.0, "a red circle moving left")], fps=5)
    assert pipe(script, **RUN).frames.shape[0] == 5


def test_one_device_as_a_string_is_a_list_of_one(pipe):
    ref = pipe(PROMPTS[:5], 5, **RUN).frames
    assert torch.equal(pipe(PROMPTS[:5], 5, devices="cpu", **RUN).frames, ref)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"height": 16.0}, r"height must be a positive number of pixels, got 16.0"),
        ({"width": True}, r"width must be a positive number of pixels, got True"),
        ({"height": 100000, "width": 100000}, r"height 100000 is larger than the limit"),
        ({"height": -16}, r"height must be a positive number of pixels, got -16"),
    ],
)
def test_frame_sizes_are_checked_before_allocating(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(PROMPTS[:5], 5, **{**RUN, **kwargs})


# ------------------------------------------------------------------ 7. text-to-video training
@pytest.fixture(scope="module")
def t2v_trained(tmp_path_factory):
    src = tmp_path_factory.mktemp("lat") / "model"
    new_model(src, preset="micro-latent", mode="masked", texts=PROMPTS)
    dst = tmp_path_factory.mktemp("t2v") / "model"
    shutil.copytree(src, dst)
    (dst / "training.json").write_text(
        json.dumps({"runs": [{"part": "unet", "text_to_video": True}]})
    )
    return dst


def test_from_pretrained_loads_a_text_to_video_trained_folder_as_load_pipeline(t2v_trained):
    loaded = load_pipeline(t2v_trained, progress=False)
    direct = StoryVideoPipeline.from_pretrained(t2v_trained)
    assert type(direct) is type(loaded) is TrainingFreeStoryPipeline
    assert type(direct.unet) is type(loaded.unet)
    a = direct(PROMPTS[:5], 5, **RUN).frames
    b = loaded(PROMPTS[:5], 5, **RUN).frames
    assert torch.equal(a, b)


# ------------------------------------------------------------------ 8. defaults on the UNet
def test_the_autoregressive_pipeline_resamples_a_text_to_video_unet_by_default():
    parts = build_components("micro-latent", mode="t2v", texts=PROMPTS)
    args = {**RUN, "num_inference_steps": 2}
    ar = AutoregressiveStoryPipeline(**parts)(PROMPTS[:5], 5, overlap=1, **args)
    tf = generate_autoregressive(TrainingFreeStoryPipeline(**parts), PROMPTS[:5], 5, **args)
    # window 1: 2 steps; window 2 has a known frame: each step twice (resample_steps=2)
    assert ar.stats.unet_forwards == tf.stats.unet_forwards == 2 + 2 * 2
    assert torch.equal(ar.frames, tf.frames)


def test_a_masked_unet_does_not_resample_by_default(pipe):
    args = {**RUN, "num_inference_steps": 2}
    out = AutoregressiveStoryPipeline(**pipe.components)(PROMPTS[:5], 5, overlap=1, **args)
    assert out.stats.unet_forwards == 2 * 2


# ------------------------------------------------------------------ 9. return_dict
def test_return_dict_false_gives_a_tuple(pipe):
    out = pipe(PROMPTS[:5], 5, **RUN)
    frames, plan, stats, keyframes = pipe(PROMPTS[:5], 5, return_dict=False, **RUN)
    assert torch.equal(frames, out.frames)
    assert plan.model_calls == out.plan.model_calls and stats.calls_run == out.stats.calls_run
    assert sorted(keyframes) == sorted(out.keyframes)
    none = pipe(PROMPTS[:5], 5, return_dict=False, **{**RUN, "output_type": None})
    assert len(none) == 4 and none[0] is None


def test_the_frame_size_cap_is_the_one_in_force():
    """``--max-frame-size`` raises the cap for the render it wraps (the CLI checks the size
    before loading, then renders inside ``frame_size_limit``)."""
    from types import SimpleNamespace

    from storygen.settings import MAX_FRAME_SIZE, check_frame_size, frame_size_limit

    side = MAX_FRAME_SIZE + 512
    args = (SimpleNamespace(vae_scale=8), "a dog", 16, 8, 10, 7.5, side, side, 1, None, 1, 1)
    with pytest.raises(ValueError, match=f"height {side} is larger than the limit"):
        StoryVideoPipeline.check_inputs(*args)
    with frame_size_limit(2 * MAX_FRAME_SIZE):
        StoryVideoPipeline.check_inputs(*args)
        check_frame_size(side, side)
    with pytest.raises(ValueError, match="larger than the limit"):
        check_frame_size(side, side)
