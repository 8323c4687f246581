"""Training-free mode over a tiny random model in the ModelScope (TextToVideoSDPipeline) layout."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from storygen.pipeline import CallResult, StoryVideoPipeline
from storygen.presets import new_model
from storygen.training_free import TrainingFreeStoryPipeline, load_pipeline, renoise

PROMPTS = ["a red circle moving left"] * 9 + ["a blue square on a striped background"] * 8
RUN = {
    "frames_per_call": 5,
    "num_inference_steps": 2,
    "guidance_scale": 1.0,
    "generator": 3,
    "progress": False,
}


@pytest.fixture(scope="module")
def t2v_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("t2v") / "modelscope-layout"
    return new_model(path, preset="micro-latent", mode="t2v", texts=PROMPTS)


def test_folder_is_in_the_modelscope_layout(t2v_dir):
    from diffusers import TextToVideoSDPipeline

    index = json.loads((t2v_dir / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    assert index["unet"] == ["diffusers", "UNet3DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    # diffusers' own pipeline reads it, so a real ModelScope checkpoint reads the same way
    stock = TextToVideoSDPipeline.from_pretrained(t2v_dir)
    assert type(stock.unet).__name__ == "UNet3DConditionModel"


def test_loads_as_training_free_pipeline_and_renders(t2v_dir):
    pipe = StoryVideoPipeline.from_pretrained(t2v_dir)
    assert isinstance(pipe, TrainingFreeStoryPipeline) and not pipe.masked
    calls: list[CallResult] = []
    out = pipe(
        PROMPTS,
        17,
        output_type="latent",
        micro_batch=4,
        callback_on_call_end=lambda p, r: calls.append(r),
        **RUN,
    )
    assert out.frames.shape == (17, 4, 16, 16)
    # the known end frames of every local call are the earlier level's frames, bit for bit
    n_known = 0
    for r in calls:
        for k, known in enumerate(r.call.known):
            if known:
                n_known += 1
                assert torch.equal(r.sample[:, k], out.frames[r.call.frames[k]])
    assert n_known == 8
    # resampling: level 1 denoises each step twice (RePaint, resample_steps=2)
    assert out.stats.unet_forwards == 2 + 2 * 2
    pixels = pipe(PROMPTS, 17, micro_batch=4, **RUN).frames
    assert pixels.shape == (17, 32, 32, 3)


def test_resampling_settings_change_the_local_levels_only(t2v_dir):
    pipe = load_pipeline(t2v_dir)
    plain = pipe(PROMPTS, 17, output_type="latent", resample_steps=1, **RUN)
    more = pipe(PROMPTS, 17, output_type="latent", resample_steps=3, jump_length=2, **RUN)
    keyframes = [0, 4, 8, 12, 16]
    assert torch.equal(plain.frames[keyframes], more.frames[keyframes])
    assert not torch.allclose(plain.frames[1:4], more.frames[1:4])
    assert plain.stats.unet_forwards == 2 + 2
    assert more.stats.unet_forwards == 2 + 2 * 3


def test_renoise_variance_preserving_matches_the_forward_process():
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    sched.set_timesteps(10)
    t_from, t_to = sched.timesteps[5], sched.timesteps[4]  # t_to is the noisier one
    ratio = float(sched.alphas_cumprod[int(t_to)] / sched.alphas_cumprod[int(t_from)])
    x = torch.full((200_000,), 2.0)
    out = renoise(sched, x, t_from=t_from, t_to=t_to, noise=torch.randn(200_000))
    assert out.mean().item() == pytest.approx(2.0 * math.sqrt(ratio), abs=0.01)
    assert out.var().item() == pytest.approx(1.0 - ratio, rel=0.02)
    # from a clean sample (past the last step) the marginal is q(x_t | x_0)
    clean = renoise(sched, x, t_from=None, t_to=t_to, noise=torch.randn(200_000))
    a = float(sched.alphas_cumprod[int(t_to)])
    assert clean.var().item() == pytest.approx(1.0 - a, rel=0.02)


def test_renoise_variance_exploding_for_euler():
    sched = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    sched.set_timesteps(10)
    t_from, t_to = sched.timesteps[5], sched.timesteps[4]
    s_from, s_to = float(sched.sigmas[5]), float(sched.sigmas[4])
    x = torch.zeros(200_000)
    out = renoise(sched, x, t_from=t_from, t_to=t_to, noise=torch.randn(200_000))
    assert out.var().item() == pytest.approx(s_to**2 - s_from**2, rel=0.02)


def test_missing_weight_file_is_named(t2v_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(t2v_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"unet.*no weights"):
        StoryVideoPipeline.from_pretrained(broken)
    (broken / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(broken)


@pytest.mark.parametrize(
    ("scheduler_cls", "prediction_type"),
    [
        (DDIMScheduler, "epsilon"),
        (DDIMScheduler, "v_prediction"),
        (EulerDiscreteScheduler, "epsilon"),
        (EulerDiscreteScheduler, "v_prediction"),
    ],
)
def test_predict_x0_inverts_the_forward_process(scheduler_cls, prediction_type):
    from storygen.training_free import predict_x0, shift_x0

    sched = scheduler_cls(
        num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type
    )
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    x = sched.add_noise(x0, eps, t.reshape(1))
    if prediction_type == "epsilon":
        out = eps
    elif scheduler_cls is DDIMScheduler:
        out = sched.get_velocity(x0, eps, t.reshape(1))
    else:  # Euler's v: x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)
        s = float(sched.sigmas[3])
        out = (x / (s**2 + 1) - x0) * (s**2 + 1) ** 0.5 / s
    torch.testing.assert_close(predict_x0(sched, x, out, t), x0, rtol=1e-4, atol=1e-4)
    # shifting the output moves the implied clean sample by exactly delta
    delta = torch.randn(2, 8, generator=g)
    moved = predict_x0(sched, x, shift_x0(sched, out, delta, t), t)
    torch.testing.assert_close(moved, x0 + delta, rtol=1e-4, atol=1e-4)


def test_reconstruction_guidance_changes_only_the_local_levels(t2v_dir):
    pipe = load_pipeline(t2v_dir)
    base = pipe(PROMPTS, 17, output_type="latent", resample_steps=1, **RUN)
    guided = pipe(
        PROMPTS, 17, output_type="latent", resample_steps=1, reconstruction_guidance=5.0, **RUN
    )
    keyframes = [0, 4, 8, 12, 16]
    assert torch.equal(base.frames[keyframes], guided.frames[keyframes])
    assert not torch.allclose(base.frames[1:4], guided.frames[1:4])
    assert guided.stats.unet_forwards == base.stats.unet_forwards
    with pytest.raises(ValueError, match="reconstruction_guidance"):
        pipe(PROMPTS, 17, reconstruction_guidance=-1.0, **RUN)
