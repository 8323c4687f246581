"""``storygen render`` at its edges: a cache that resumes across processes and paths, a cache
disk that fills up, model folders whose weights are damaged or do not fit their configs, frame
sizes the VAE cannot make, the report's sheet, quiet loading, and refusals that leave nothing
behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from storygen.cli import main

from .test_render_cli import SCRIPT, _refused

ROOT = Path(__file__).resolve().parents[2]
#: config keys MaskedUNet3D has defaults for; a folder saved before they existed lacks them,
#: and diffusers lists them in ``_use_default_values`` in an order that follows the
#: process's string hashing
DEFAULTED = (
    "progress_embedding",
    "coordinate_channels",
    "prompt_progress_embedding",
    "progress_channel",
    "frame_position_embedding",
)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    path = tmp_path_factory.mktemp("edges") / "micro"
    assert main(["new-model", str(path), "--preset", "micro"]) == 0
    return path


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    """A model with a VAE (one latent pixel: 2 × 2 pixels)."""
    path = tmp_path_factory.mktemp("edges") / "latent"
    assert main(["new-model", str(path), "--preset", "micro-latent"]) == 0
    return path


def _copy(model: Path, tmp_path: Path, name: str = "model") -> Path:
    folder = tmp_path / name
    shutil.copytree(model, folder)
    return folder


def _edit_config(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _argv(model: Path, tmp_path: Path, *args: str) -> list[str]:
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    argv = ["render", str(script), "--model", str(model), "--frames-per-call", "5"]
    return [*argv, "--steps", "1", "--guidance", "1", "--no-progress", *args]


# --------------------------------------------------------------------------- the cache's key
_KEY = """
import sys
from storygen.cache import cache_key
from storygen.loading import load_pipeline
from storygen.settings import RenderSettings

pipe = load_pipeline(sys.argv[1])
plan = pipe.build_plan(
    "a red circle", num_frames=9, fps=4.0, frames_per_call=5, depth=None, policy="stretch"
)
settings = RenderSettings(
    seed=1, negative_prompt="", num_inference_steps=2, guidance_scale=1.0, height=16,
    width=16, resample_steps=1, jump_length=1, reconstruction_guidance=0.0,
)
print(cache_key(pipe, plan, settings))
"""


@pytest.mark.slow  # two processes that import torch: about 20 s on two cores
def test_the_cache_key_is_the_same_in_every_process_and_from_every_path(micro, tmp_path):
    """The key of a model folder saved before some config keys existed (diffusers lists the
    defaulted keys in an order that changes with PYTHONHASHSEED), loaded by its relative and
    by its absolute path, in two processes: one key."""
    model = _copy(micro, tmp_path)
    config = json.loads((model / "unet" / "config.json").read_text())
    for key in DEFAULTED:
        del config[key]
    (model / "unet" / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _KEY, where],
            cwd=tmp_path,
            env={**env, "PYTHONHASHSEED": seed},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for where, seed in (("model", "1"), (str(model), "2"))
    ]
    keys = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        keys.append(out.strip().splitlines()[-1])
    assert keys[0] == keys[1]


def test_a_second_render_from_another_path_takes_every_call_from_the_cache(
    micro, tmp_path, capsys, monkeypatch
):
    model = _copy(micro, tmp_path)
    args = ["--out", str(tmp_path / "a.mp4"), "--cache-dir", str(tmp_path / "cache")]
    assert main(_argv(model, tmp_path, *args)) == 0
    assert "5 (0 from cache)" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # the same folder, as a relative path
    args[1] = str(tmp_path / "b.mp4")
    assert main(_argv(Path("model"), tmp_path, *args)) == 0
    text = capsys.readouterr().out
    assert "5 (5 from cache)" in text and "0 batched UNet passes" in text
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one key folder, not two
    # no UNet ran, whether or not the progress bars set one up: said so, not "none"
    assert "speed-ups       none needed: every model call came from the cache" in text


# --------------------------------------------------------------------------- a full cache disk
def test_a_cache_that_cannot_be_written_raises_oserror_naming_the_file(tmp_path, monkeypatch):
    import storygen.cache
    from storygen.cache import CallCache

    cache = CallCache(tmp_path / "key")
    name = str(tmp_path / "key" / "level0001-calls00000-00001.pt")

    class Full:  # a disk that fills up part way through the file
        def __init__(self, path, mode):
            self.fh = open(path, mode)  # noqa: SIM115 (closed in __exit__)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storygen.cache, "open", Full, raising=False)
    with pytest.raises(OSError) as caught:
        cache.save(1, [0, 1], torch.zeros(2, 3, 4, 2, 2))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == name
    assert "No space left on device" in str(caught.value)
    assert list((tmp_path / "key").iterdir()) == []  # no .tmp left behind
    monkeypatch.undo()

    def fails(obj, f, *args, **kwargs):  # torch's own error
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(OSError, match="file write failed") as caught:
        cache.save(1, [0, 1], torch.zeros(2, 3, 4, 2, 2))
    assert caught.value.filename == name
    assert list((tmp_path / "key").iterdir()) == []


def test_a_full_cache_disk_warns_once_and_the_video_is_still_written(
    micro, tmp_path, capsys, caplog, monkeypatch
):
    import storygen.cache

    tries = []

    def full(obj, f, *args, **kwargs):
        tries.append(obj)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storygen.cache.torch, "save", full)
    out, cache = tmp_path / "x.mp4", tmp_path / "cache"
    with caplog.at_level("WARNING"):
        assert main(_argv(micro, tmp_path, "--out", str(out), "--cache-dir", str(cache))) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and out.stat().st_size > 0
    assert len(tries) == 1  # not retried: not for the batch, nor for the level after it
    warnings = [r.getMessage() for r in caplog.records if "in the cache" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert f"in the cache {cache} (" in warnings[0]
    assert "the render goes on without the cache" in warnings[0]
    assert "(stopped keeping calls: " in captured.out and "No space left on device" in captured.out
    assert not list(cache.rglob("*.tmp"))


# --------------------------------------------------------------------------- damaged model folders
@pytest.mark.parametrize("size", [0, 1000])
def test_damaged_text_encoder_weights_are_named(micro, tmp_path, capsys, size):
    model = _copy(micro, tmp_path)
    weights = model / "text_encoder" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(size)
    err = _refused(capsys, _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert f"{weights}: a damaged weights file: " in err
    assert ("it is empty" if size == 0 else "cut short") in err
    assert not (tmp_path / "x.mp4").exists()


def test_weights_cut_short_after_their_header_are_named(micro, tmp_path, capsys):
    model = _copy(micro, tmp_path)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size - 100)
    err = _refused(capsys, _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert f"{weights}: a damaged weights file: its tensors take " in err and "cut short" in err


def test_a_text_encoder_config_with_more_layers_than_its_weights_is_refused(
    micro, tmp_path, capsys
):
    """transformers would fill the missing layers with random weights and render."""
    model = _copy(micro, tmp_path)
    _edit_config(model / "text_encoder" / "config.json", num_hidden_layers=3)
    err = _refused(capsys, _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert err.startswith(f"storygen render: {model / 'text_encoder'}: the weights do not fit")
    assert "of the network not in the weights" in err and "encoder.layers.1." in err
    assert not (tmp_path / "x.mp4").exists()


def test_a_text_encoder_config_of_another_width_is_refused(micro, tmp_path, capsys):
    model = _copy(micro, tmp_path)
    _edit_config(model / "text_encoder" / "config.json", hidden_size=32)
    err = _refused(capsys, _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert f"{model / 'text_encoder'}: the weights do not fit the CLIPTextModel" in err
    assert "in the weights, [" in err


def test_a_unet_config_of_another_shape_is_refused_naming_its_folder(micro, tmp_path, capsys):
    model = _copy(micro, tmp_path)
    _edit_config(model / "unet" / "config.json", block_out_channels=[8, 24])
    err = _refused(capsys, _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert f"{model / 'unet'}: the weights do not fit the MaskedUNet3D" in err
    assert "Cannot load  because" not in err and "low_cpu_mem_usage" not in err


def test_a_vae_config_with_more_layers_than_its_weights_is_refused(latent, tmp_path, capsys):
    """diffusers would leave the missing layers on the meta device: a traceback at .to()."""
    model = _copy(latent, tmp_path)
    config = json.loads((model / "vae" / "config.json").read_text())
    _edit_config(model / "vae" / "config.json", layers_per_block=config["layers_per_block"] + 1)
    err = _refused(capsys, _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert f"{model / 'vae'}: the weights do not fit the AutoencoderKL" in err
    assert "of the network not in the weights" in err


def test_a_wrong_class_in_model_index_is_refused_naming_both(latent, tmp_path, capsys):
    model = _copy(latent, tmp_path)
    _edit_config(model / "model_index.json", vae=["diffusers", "UNet2DModel"])
    err = _refused(capsys, _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert f"{model / 'vae'}: the weights do not fit the UNet2DModel" in err
    assert "model_index.json names UNet2DModel, config.json is for AutoencoderKL" in err


def test_extra_tensors_beside_whole_weights_are_warned_of_and_left_unused(micro, tmp_path, caplog):
    """A checkpoint that carries more than its network needs (an EMA copy, a head) still
    renders: its network is whole."""
    from safetensors.torch import load_file, save_file

    from storygen.loading import load_pipeline

    model = _copy(micro, tmp_path)
    weights = model / "text_encoder" / "model.safetensors"
    tensors = load_file(weights)
    save_file({**tensors, "ema.extra.weight": torch.ones(3)}, weights)
    with caplog.at_level("WARNING", logger="storygen.loading"):
        pipe = load_pipeline(model, progress=False)
    assert f"{model / 'text_encoder'}: 1 tensor (ema.extra.weight) in the weights" in caplog.text
    assert "left unused" in caplog.text
    assert not any(p.is_meta for p in pipe.text_encoder.parameters())


def test_a_model_that_fits_loads_with_its_parts_checked(latent):
    from storygen.loading import load_pipeline

    pipe = load_pipeline(latent, progress=False)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert not any(p.is_meta for p in part.parameters())


# --------------------------------------------------------------------------- frame sizes
def test_a_frame_size_the_vae_cannot_make_is_refused_naming_sampling_json(
    latent, tmp_path, capsys, monkeypatch
):
    import storygen.loading

    def never(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(storygen.loading, "load_pipeline", never)
    model = _copy(latent, tmp_path)
    (model / "sampling.json").write_text(json.dumps({"height": 31}))
    err = _refused(capsys, _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert f"height 31 (from the model's sampling.json, {model / 'sampling.json'})" in err
    assert f"is not a multiple of 2: the model's VAE ({model / 'vae' / 'config.json'})" in err
    assert err.endswith("use 30 or 32")
    err = _refused(
        capsys,
        _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4"), "--height", "32", "--width", "1"),
    )
    assert "width 1 (from --width) is not a multiple of 2" in err and err.endswith("use 2")


# --------------------------------------------------------------------------- outputs
def test_the_report_has_the_preview_sheet_without_preview(micro, tmp_path, capsys):
    report = tmp_path / "r.html"
    assert (
        main(_argv(micro, tmp_path, "--out", str(tmp_path / "x.mp4"), "--report", str(report))) == 0
    )
    capsys.readouterr()
    page = report.read_text()
    assert 'id="preview"' in page and "data:image/png;base64," in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "story.yaml", "x.mp4"]


def test_no_progress_hides_the_loading_bars_too(micro, tmp_path, capsys):
    import diffusers
    import transformers

    libraries = (diffusers.utils.logging, transformers.utils.logging)
    before = [lib.is_progress_bar_enabled() for lib in libraries]
    assert main(_argv(micro, tmp_path, "--out", str(tmp_path / "x.mp4"))) == 0
    err = capsys.readouterr().err
    assert "Loading pipeline components" not in err and "Loading weights" not in err
    assert "it/s" not in err
    # the libraries' own setting is as it was, for whatever runs next in the process
    assert [lib.is_progress_bar_enabled() for lib in libraries] == before


def test_a_refused_render_leaves_no_folders_behind(tmp_path, capsys):
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    (tmp_path / "no-model").mkdir()  # refused when it loads: nothing to load
    argv = ["render", str(script), "--model", str(tmp_path / "no-model")]
    argv += ["--out", str(tmp_path / "a" / "b" / "x.mp4")]
    argv += ["--preview", str(tmp_path / "p" / "s.png"), "--cache-dir", str(tmp_path / "c" / "d")]
    argv += [
        "--stats-json",
        str(tmp_path / "s" / "s.json"),
        "--report",
        str(tmp_path / "r" / "r.html"),
    ]
    assert "model_index.json is missing" in _refused(capsys, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-model", "story.yaml"]


def test_a_render_makes_its_output_folders(micro, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "x.mp4"
    args = ["--out", str(out), "--stats-json", str(tmp_path / "s" / "s.json")]
    assert main(_argv(micro, tmp_path, *args)) == 0
    capsys.readouterr()
    assert out.stat().st_size > 0 and (tmp_path / "s" / "s.json").exists()


@pytest.mark.parametrize("name", ["p.jpg", "p.JPEG", "p"])
def test_a_preview_that_is_not_png_is_refused(tmp_path, capsys, name):
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    argv = ["render", str(script), "--out", str(tmp_path / "x.mp4")]
    err = _refused(capsys, [*argv, "--preview", str(tmp_path / name)])
    assert f"--preview {tmp_path / name}: the preview sheet is a PNG image" in err
    assert not (tmp_path / name).exists()


def test_the_png_preview_name_may_be_upper_case(micro, tmp_path, capsys):
    args = ["--out", str(tmp_path / "x.mp4"), "--preview", str(tmp_path / "P.PNG")]
    assert main(_argv(micro, tmp_path, *args)) == 0
    capsys.readouterr()
    assert (tmp_path / "P.PNG").read_bytes().startswith(b"\x89PNG")
