"""The autoregressive baseline on the same models and executor as the hierarchical pipeline."""

from __future__ import annotations

import pytest
import torch

from storygen.autoregressive import AutoregressiveStoryPipeline, generate_autoregressive
from storygen.presets import build_components
from storygen.runner import CallResult

PROMPTS = ["a red circle moving left"] * 9 + ["a blue square on a striped background"] * 8
RUN = {
    "frames_per_call": 5,
    "num_inference_steps": 2,
    "guidance_scale": 1.0,
    "generator": 11,
    "progress": False,
}


@pytest.fixture(scope="module")
def parts():
    return build_components("micro", mode="masked", texts=PROMPTS)


@pytest.mark.parametrize("overlap", [1, 2])
def test_windows_chain_through_their_overlap(parts, overlap):
    pipe = AutoregressiveStoryPipeline(**parts)
    calls: list[CallResult] = []
    out = pipe(
        PROMPTS,
        17,
        overlap=overlap,
        output_type="latent",
        callback_on_call_end=lambda p, r: calls.append(r),
        **RUN,
    )
    plan = out.plan
    assert plan.rounds == plan.model_calls == len(calls)  # nothing runs in parallel
    assert out.frames.shape == (17, 3, 16, 16)
    for prev, cur in zip(calls, calls[1:]):
        known = [f for f, k in zip(cur.call.frames, cur.call.known) if k]
        assert len(known) >= overlap
        assert set(known) <= set(prev.call.frames) | {f for c in calls for f in c.call.frames}
        for k, f in enumerate(cur.call.frames):
            if cur.call.known[k]:
                assert torch.equal(cur.sample[:, k], out.frames[f])
    assert calls[0].call.frames[0] == 0 and calls[-1].call.frames[-1] == 16


def test_same_interface_as_hierarchical_and_fewer_rounds_for_hierarchical(parts):
    from storygen.pipeline import StoryVideoPipeline

    pipe = StoryVideoPipeline(**parts)
    ar = generate_autoregressive(pipe, PROMPTS, 17, overlap=1, **RUN)
    hi = pipe(PROMPTS, 17, **RUN)
    assert ar.frames.shape == hi.frames.shape == (17, 16, 16, 3)
    assert type(ar.stats) is type(hi.stats)
    assert (hi.plan.model_calls, hi.plan.rounds) == (5, 2)
    assert (ar.plan.model_calls, ar.plan.rounds) == (4, 4)  # windows 0-4, 4-8, 8-12, 12-16
    with pytest.raises(ValueError, match="depth"):
        generate_autoregressive(pipe, PROMPTS, 17, depth=2, **RUN)


def test_training_free_model_runs_autoregressively():
    parts = build_components("micro-latent", mode="t2v", texts=PROMPTS)
    pipe = AutoregressiveStoryPipeline(**parts)
    out = pipe(PROMPTS[:9], 9, overlap=1, resample_steps=2, output_type="latent", **RUN)
    assert out.frames.shape == (9, 4, 16, 16)
    assert out.plan.rounds == 2
    # window 2 repeats each step once (resampling) because it has a known frame
    assert out.stats.unet_forwards == 2 + 2 * 2


def test_a_windows_frames_are_decoded_beside_the_next_window(parts, monkeypatch):
    # a window's frames are decoded once the next window's batch is queued, so that the
    # decode runs beside its passes (on CUDA, on a stream of its own), not between them
    from storygen import sink as sink_module

    pipe = AutoregressiveStoryPipeline(**parts)
    log: list[tuple[str, int]] = []
    prepare = pipe.prepare_latents

    def queued(batch, **kwargs):  # called on the calling thread just before the batch is queued
        log.append(("queued", batch.level))
        return prepare(batch, **kwargs)

    emit = sink_module.FrameSink.emit

    def decoded(self, start, samples):
        log.append(("decoded", start + samples.shape[0] - 1))
        return emit(self, start, samples)

    monkeypatch.setattr(pipe, "prepare_latents", queued)
    monkeypatch.setattr(sink_module.FrameSink, "emit", decoded)
    out = pipe(["a red circle moving left"] * 65, 65, overlap=1, output_type="np", **RUN)
    made_by = {
        f: level.index
        for level in out.plan.levels
        for call in level.calls
        for f, known in zip(call.frames, call.known)
        if not known
    }
    last, latest, checked = len(out.plan.levels) - 1, -1, 0
    for kind, value in log:
        if kind == "queued":
            latest = max(latest, value)
        elif made_by[value] < last:  # the last window's frames have no window to run beside
            assert latest > made_by[value], f"frame {value} decoded before the next window"
            checked += 1
    assert checked >= 3 and out.frames.shape[0] == 65
