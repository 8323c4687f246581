"""Compiling the UNet (storygen.accel): only when asked, and it changes nothing."""

from __future__ import annotations

import pytest
import torch

from storygen.accel import compile_cache_dir, is_compiled, padded_rows, resolve_compile
from storygen.pipeline import StoryVideoPipeline
from storygen.presets import new_model

PROMPTS = ["a red circle moving left"] * 9 + ["a blue square on a striped background"] * 8
RUN = {
    "frames_per_call": 5,
    "num_inference_steps": 2,
    "guidance_scale": 2.0,
    "generator": 3,
    "progress": False,
    "output_type": "latent",
    "micro_batch": 3,  # a level of 4 calls: batches of 2 and 2, the global level 1
}


def test_compile_is_off_unless_asked():
    assert resolve_compile(None) is False
    assert resolve_compile("off") is False and resolve_compile(False) is False
    assert resolve_compile("on") is True and resolve_compile(True) is True
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("auto")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("STORYLOOM_COMPILE_CACHE")
    assert compile_cache_dir().parts[-3:] == (".cache", "storyloom", "inductor")


def test_a_render_stays_eager_by_default(tmp_path):
    pipe = StoryVideoPipeline.from_pretrained(
        new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    )
    out = pipe(PROMPTS, 17, **RUN)
    assert out.stats.compiled is False and not is_compiled(pipe.unet)
    # every batch is timed by its shape: 1 global call of 5 frames, 2 batches of 2 local calls
    assert out.stats.batch_times_s.keys() == {"1x5", "2x5"}
    assert len(out.stats.batch_times_s["2x5"]) == 2


def test_rows_are_padded_to_powers_of_two():
    assert [padded_rows(n) for n in (1, 2, 3, 4, 5, 30, 32, 33, 114)] == [
        1,
        2,
        4,
        4,
        8,
        32,
        32,
        64,
        128,
    ]
    with pytest.raises(ValueError):
        padded_rows(0)


def _compiled_matches_eager(tmp_path, device: str, atol: float) -> None:
    from torch._dynamo.utils import counters

    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    eager = StoryVideoPipeline.from_pretrained(folder).to(torch.device(device))
    want = eager(PROMPTS, 17, compile="off", **RUN)
    fast = StoryVideoPipeline.from_pretrained(folder).to(torch.device(device))
    graphs = counters["stats"]["unique_graphs"]
    got = fast(PROMPTS, 17, compile="on", **RUN)
    assert got.stats.compiled and is_compiled(fast.unet)
    torch.testing.assert_close(got.frames, want.frames, atol=atol, rtol=0)
    # static shapes, one graph per row bucket: the global call (1 call x 2 guidance branches
    # = 2 rows) and the local batches (2 calls = 4 rows; a batch of 3 would pad to 4 as well)
    assert counters["stats"]["unique_graphs"] - graphs == 2
    more = {**RUN, "micro_batch": 4}  # the 4 local calls in one batch: 8 rows, a third graph
    again = fast(PROMPTS, 17, compile="on", **more)
    torch.testing.assert_close(again.frames, want.frames, atol=atol, rtol=0)
    assert counters["stats"]["unique_graphs"] - graphs == 3
    repeat = fast(PROMPTS, 17, compile="on", **RUN)  # compiled graphs are reused
    torch.testing.assert_close(repeat.frames, got.frames, atol=0, rtol=0)
    assert counters["stats"]["unique_graphs"] - graphs == 3


@pytest.mark.slow
def test_compiled_unet_renders_the_same_frames_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    _compiled_matches_eager(tmp_path, "cpu", atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_unet_renders_the_same_frames_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    _compiled_matches_eager(tmp_path, "cuda", atol=1e-3)
