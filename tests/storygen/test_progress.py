"""Render progress: one labelled bar per level, moving by denoising steps of model calls.

Once, one bar counted whole model calls and moved only when a batch finished (2/46, then 17,
18, 30, 46), with no label and wild ETAs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from storygen.pipeline import StoryVideoPipeline
from storygen.presets import new_model

PROMPTS = ["a red circle moving left"] * 9 + ["a blue square on a striped background"] * 8
RUN = {"frames_per_call": 5, "num_inference_steps": 3, "guidance_scale": 1.0, "generator": 1}


class RecordingBar:
    """Stands in for tqdm and keeps what the runner did with it."""

    made: ClassVar[list[RecordingBar]] = []

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", **kw: Any):
        self.total, self.desc, self.unit, self.kwargs = total, desc, unit, kw
        self.n = 0
        self.updates: list[int] = []
        self.closed = False
        RecordingBar.made.append(self)

    def update(self, n: int = 1) -> None:
        assert not self.closed
        self.updates.append(n)
        self.n += n

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.made = []
    monkeypatch.setattr("storygen.runner.tqdm", RecordingBar)
    return RecordingBar.made


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "model"
    return StoryVideoPipeline.from_pretrained(new_model(path, preset="micro", texts=PROMPTS))


def test_one_labelled_bar_per_level_in_steps(pipe, bars):
    out = pipe(PROMPTS, 17, micro_batch=2, output_type="latent", **RUN)
    assert [len(lv.calls) for lv in out.plan.levels] == [1, 4]
    assert [b.desc for b in bars] == ["level 1/2 (1 call)", "level 2/2 (4 calls)"]
    assert [b.unit for b in bars] == ["step", "step"]
    # calls × steps: 1 × 3, then 4 × 3
    assert [b.total for b in bars] == [3, 12]
    assert all(b.n == b.total and b.closed for b in bars)
    # steady: every UNet evaluation of a batch of 2 calls moves the bar by 2, never a jump
    assert bars[0].updates == [1, 1, 1]
    assert bars[1].updates == [2] * 6


def test_resampled_steps_are_counted(pipe, bars):
    pipe(PROMPTS, 17, micro_batch=4, output_type="latent", resample_steps=2, **RUN)
    # the local calls are given frames, so RePaint repeats each of their steps
    assert [b.total for b in bars] == [3, 4 * 3 * 2]
    assert bars[1].updates == [4] * 6 and bars[1].n == 24


def test_sliding_windows_share_one_bar(pipe, bars):
    out = pipe(PROMPTS, 17, policy="autoregressive", output_type="latent", **RUN)
    calls = out.plan.model_calls
    assert [b.desc for b in bars] == [f"sliding windows ({calls} calls)"]
    assert bars[0].total == bars[0].n == 3 * calls
    assert bars[0].updates == [1] * (3 * calls)


def test_cached_calls_are_named_not_counted(pipe, bars, tmp_path):
    pipe(PROMPTS, 17, cache_dir=tmp_path, output_type="latent", **RUN)
    bars.clear()
    pipe(PROMPTS, 17, cache_dir=tmp_path, output_type="latent", **RUN)
    assert [b.desc for b in bars] == [
        "level 1/2 (0 calls, 1 from cache)",
        "level 2/2 (0 calls, 4 from cache)",
    ]
    assert [b.total for b in bars] == [0, 0] and all(b.closed for b in bars)


def test_progress_bar_config_and_switch_are_honoured(pipe, bars):
    pipe.set_progress_bar_config(disable=True, leave=False)
    try:
        pipe(PROMPTS, 17, output_type="latent", **RUN)
        assert bars and all(b.kwargs == {"disable": True, "leave": False} for b in bars)
    finally:
        pipe.set_progress_bar_config()
    bars.clear()
    pipe(PROMPTS, 17, output_type="latent", progress=False, **RUN)
    assert bars == []


def test_two_devices_count_every_step_once(pipe, bars):
    pipe(PROMPTS, 17, micro_batch=1, devices=["cpu", "cpu"], output_type="latent", **RUN)
    assert [b.n for b in bars] == [3, 12]
    assert sum(bars[1].updates) == 12 and set(bars[1].updates) == {1}
