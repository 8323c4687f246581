"""Training-free mode over a tiny random model in the ModelScope (TextToVideoSDPipeline) layout."""

from __future__ import annotations

import json
import re

import pytest
import torch

from storygen.loading import load_pipeline
from storygen.pipeline import StoryVideoPipeline, TrainingFreeStoryPipeline
from storygen.presets import new_model
from storygen.runner import CallResult

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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON (Expecting property name enclosed in double quotes, line 1)"),
        ("[]", "expected a JSON object naming the pipeline class in '_class_name'"),
        ("{}", "got an object without '_class_name'"),
        ('{"_class_name": 3}', "got an object without '_class_name'"),
    ],
)
def test_damaged_model_index_names_the_file(tmp_path, text, message):
    from storygen.training_free import check_model_files, is_t2v_layout, read_model_index

    (tmp_path / "model_index.json").write_text(text)
    for read in (read_model_index, is_t2v_layout, check_model_files):
        with pytest.raises(ValueError, match=re.escape(message)) as exc:
            read(tmp_path)
        assert str(exc.value).startswith(f"{tmp_path / 'model_index.json'}: ")


def test_render_names_a_damaged_model_index(tmp_path, capsys):
    from storygen.cli import main

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("[]")
    (tmp_path / "s.yaml").write_text("fps: 4\nsegments: [{start: 0, end: 2, prompt: a}]\n")
    argv = ["render", str(tmp_path / "s.yaml"), "--model", str(tmp_path / "model")]
    assert main([*argv, "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert f"storygen render: {tmp_path / 'model' / 'model_index.json'}: expected" in err
    assert "Traceback" not in err
