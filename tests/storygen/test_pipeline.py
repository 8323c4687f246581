"""StoryVideoPipeline with a tiny random masked model: exactness, reproducibility, resume."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from storygen.loading import load_pipeline
from storygen.pipeline import StoryVideoPipeline, call_seed
from storygen.presets import build_components, new_model
from storygen.runner import CallResult
from storygen.script import Segment, StoryScript

PROMPTS = ["a red circle moving left"] * 9 + ["a blue square on a striped background"] * 8
# guidance 1 (no CFG) halves the cost; test_plan_and_output_shapes covers CFG
RUN = {
    "frames_per_call": 5,
    "num_inference_steps": 2,
    "guidance_scale": 1.0,
    "generator": 7,
    "progress": False,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("masked") / "model"
    return new_model(path, preset="micro", mode="masked", texts=PROMPTS)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return StoryVideoPipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def reference(pipe):
    """17 frames in two levels (1 global call + 4 local calls), model space."""
    return pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN).frames


def test_plan_and_output_shapes(pipe, reference):
    out = pipe(PROMPTS, 17, micro_batch=4, **RUN)
    cfg = pipe(PROMPTS, 17, micro_batch=4, output_type="latent", **{**RUN, "guidance_scale": 5.0})
    assert not torch.allclose(cfg.frames, reference)
    assert out.frames.shape == (17, 16, 16, 3) and out.frames.dtype == np.uint8
    assert reference.shape == (17, 3, 16, 16)
    assert (out.plan.model_calls, out.plan.rounds) == (5, 2)
    assert out.stats.calls_run == 5 and out.stats.unet_forwards == 2 * 2  # 2 levels x 2 steps
    # np output is the model-space output mapped from [-1, 1] to uint8
    expected = ((reference.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    np.testing.assert_array_equal(out.frames, expected.permute(0, 2, 3, 1).numpy())
    assert sorted(out.keyframes) == [0, 4, 8, 12, 16]


def test_save_load_round_trip_gives_identical_video(pipe, reference, tmp_path):
    pipe.save_pretrained(tmp_path / "again")
    again = StoryVideoPipeline.from_pretrained(tmp_path / "again")
    out = again(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN)
    assert torch.equal(out.frames, reference)


def test_known_frames_appear_exactly_at_their_indices(pipe):
    calls: list[CallResult] = []
    out = pipe(
        PROMPTS,
        17,
        output_type="latent",
        callback_on_call_end=lambda p, r: calls.append(r),
        **RUN,
    )
    made = {}  # frame -> the call output it came from
    for r in calls:
        for k, (frame, known) in enumerate(zip(r.call.frames, r.call.known)):
            if known:
                # the call's output holds the earlier level's frame bit for bit
                assert torch.equal(r.sample[:, k], made[frame])
            else:
                made[frame] = r.sample[:, k]
    assert sorted(made) == list(range(17))
    for frame, value in made.items():
        assert torch.equal(out.frames[frame], value)
    assert any(any(r.call.known) for r in calls)


def test_seed_reproduces_and_different_seeds_differ(pipe, reference):
    again = pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN).frames
    assert torch.equal(again, reference)
    other = pipe(PROMPTS, 17, output_type="latent", **{**RUN, "generator": 8}).frames
    assert not torch.allclose(other, reference)
    # a torch.Generator stands for its initial seed
    gen = pipe(
        PROMPTS, 17, output_type="latent", **{**RUN, "generator": torch.Generator().manual_seed(7)}
    ).frames
    assert torch.equal(gen, reference)


@pytest.mark.parametrize("name", ["DDPMScheduler", "EulerAncestralDiscreteScheduler"])
def test_a_stochastic_scheduler_draws_its_step_noise_from_the_seed(model_dir, name):
    """A scheduler whose step adds noise takes it from each call's generator: the same seed
    gives the same video, whatever torch's global generator holds and however the calls are
    batched; a render without a seed leaves the global generator's stream as it was."""
    import diffusers

    pipe = load_pipeline(model_dir)
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    torch.manual_seed(1)
    a = pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN).frames
    torch.manual_seed(2)
    b = pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN).frames
    assert torch.equal(a, b)
    one = pipe(PROMPTS, 17, output_type="latent", micro_batch=1, **RUN).frames
    torch.testing.assert_close(one, a, rtol=0, atol=BATCH_ATOL)
    other = pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **{**RUN, "generator": 8})
    assert not torch.allclose(other.frames, a)
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    pipe(PROMPTS, 17, output_type="latent", **{**RUN, "generator": None})
    assert torch.equal(torch.rand(3), want)


def test_a_scheduler_that_seeds_its_own_step_noise_is_refused(pipe):
    from diffusers import DDIMScheduler

    own = type("DPMSolverSDEScheduler", (DDIMScheduler,), {})
    saved = pipe.scheduler
    pipe.scheduler = own.from_config(saved.config)
    try:
        with pytest.raises(ValueError, match="DPMSolverSDEScheduler.*same seed"):
            pipe(PROMPTS, 17, output_type="latent", **RUN)
    finally:
        pipe.scheduler = saved


def test_call_seeds_depend_on_level_and_call_only():
    seeds = {call_seed(7, level, i) for level in range(3) for i in range(20)}
    assert len(seeds) == 60
    assert call_seed(7, 1, 2) == call_seed(7, 1, 2) != call_seed(8, 1, 2)


# batched kernels round differently from unbatched ones (~1e-5): equal up to that
BATCH_ATOL = 1e-4


def test_micro_batch_size_does_not_change_the_video(pipe, reference):
    one = pipe(PROMPTS, 17, output_type="latent", micro_batch=1, **RUN).frames
    torch.testing.assert_close(one, reference, rtol=0, atol=BATCH_ATOL)


def test_auto_micro_batch_is_sixteen_on_the_cpu(pipe, reference):
    out = pipe(PROMPTS, 17, output_type="latent", **RUN)  # micro_batch="auto" by default
    assert out.stats.micro_batches == [16] * len(out.plan.levels)
    assert out.stats.call_bytes is None  # nothing measured off CUDA
    torch.testing.assert_close(out.frames, reference, rtol=0, atol=BATCH_ATOL)
    with pytest.raises(ValueError, match="micro_batch must be an integer >= 1 or 'auto'"):
        pipe(PROMPTS, 17, output_type="latent", micro_batch="big", **RUN)


def test_auto_micro_batch_on_cuda_fills_half_the_free_memory(monkeypatch):
    """Sized from the tightest device's free memory (plus the allocator's cached slack) and
    the measured bytes per call: as many calls as fit, at most AUTO_MICRO_BATCH_MAX."""
    from types import SimpleNamespace

    from storygen import runner

    gib = 1 << 30
    free = {0: 40 * gib, 1: 20 * gib}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (free[d.index], 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 2 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 1 * gib)
    fake = SimpleNamespace(
        settings=SimpleNamespace(micro_batch="auto"),
        devices=[torch.device("cuda:0"), torch.device("cuda:1")],
        stats=SimpleNamespace(call_bytes=None),
    )
    size = runner.PlanRunner.micro_batch
    assert size(fake) == runner.AUTO_MICRO_BATCH  # nothing measured yet
    fake.stats.call_bytes = 300 * (1 << 20)  # 300 MiB a call: (20 + 1) GiB / 2 / 300 MiB = 35
    assert size(fake) == 35  # as many as fit, not rounded down to 32
    # the H200 case: 146 GB free, 583 or 558 MB a call; both fill two batches of a
    # 225-call level (4 of 57 calls when rounded down to a power of two, 2 of 113 otherwise)
    free[0] = free[1] = 146 * 10**9 - 1 * gib
    sizes = []
    for per_call in (583 * 10**6, 558 * 10**6):
        fake.stats.call_bytes = per_call
        sizes.append(size(fake))
    assert sizes == [125, runner.AUTO_MICRO_BATCH_MAX]
    assert {-(-225 // s) for s in sizes} == {2}
    fake.stats.call_bytes = 10 * (1 << 20)
    assert size(fake) == runner.AUTO_MICRO_BATCH_MAX
    fake.stats.call_bytes = 64 * gib  # one call does not fit: still one
    assert size(fake) == 1
    fake.settings.micro_batch = 5
    assert size(fake) == 5


def _level_batches(devices, compile_choice, micro_batch=128, frames=3376):
    """The batches PlanRunner.batches gives each level of a guided plan, run on a stand-in."""
    from types import SimpleNamespace

    from storygen.accel import CompilePolicy
    from storygen.plan import build_plan
    from storygen.runner import PlanRunner

    plan = build_plan(frames)
    fake = SimpleNamespace(
        plan=plan,
        devices=[torch.device(d) for d in devices],
        negative=torch.zeros(1),  # guided: two rows a call
        settings=SimpleNamespace(micro_batch=micro_batch, num_inference_steps=5, resample_steps=1),
        stats=SimpleNamespace(micro_batches=[], compiled_rows=[]),
        compile=CompilePolicy(compile_choice, device_type=devices[0].split(":")[0]),
        batch_sizes=set(),
        micro_batch=lambda: micro_batch,
    )
    fake.drain = lambda *args: PlanRunner.drain(fake, *args)
    levels = []
    for level in plan.levels:
        todo = list(enumerate(level.calls))
        levels.append([b.indices for b in PlanRunner.batches(fake, level.index, todo)])
    return levels, fake.compile


@pytest.mark.parametrize("compile_choice", ["all", "off"])
def test_a_cuda_renders_last_level_ends_on_a_small_batch_of_a_shape_it_ran(compile_choice):
    # 3,376 frames: levels of 1, 15 and 225 calls. The last level's batches were 113 and 112
    # calls: the second's frames were all left to decode after the last pass
    levels, policy = _level_batches(["cuda"], compile_choice)
    assert [len(level) for level in levels] == [1, 1, 3]
    *rest, small = levels[2]
    assert len(small) == 15 == len(levels[1][0])  # the middle level's size: its shape again
    assert [len(b) for b in rest] == [105, 105]
    assert sorted(i for b in levels[2] for i in b) == list(range(225))  # each call once
    assert small == list(range(210, 225))  # the last calls, run last: frames stay in order
    if compile_choice == "all":  # the small batch runs the middle level's compiled graph
        assert policy.rows[30] == 30 and 30 in policy.buckets
        assert policy.rows[210] == 210


def test_a_small_last_batch_only_where_it_runs_beside_a_decode_on_a_known_shape():
    # a CPU decodes on the cores the passes use; two devices split the level between them
    for devices in (["cpu"], ["cuda:0", "cuda:1"]):
        levels, _ = _level_batches(devices, "off")
        assert [len(b) for b in levels[2]] == [113, 112]
    # compile "on": the middle level's 30 rows stayed eager (25 passes), so no small batch
    # drains into them beside the compiled 226-row graph
    levels, policy = _level_batches(["cuda"], "on", frames=3376)
    assert 30 not in policy.rows and [len(b) for b in levels[2]] == [113, 112]
    # a level of one batch has nothing to decode beside its last
    levels, _ = _level_batches(["cuda"], "off", frames=226)
    assert [len(b) for b in levels[-1]] == [15]


def test_the_tail_is_the_time_after_the_last_batch(pipe, monkeypatch):
    import time

    plain = pipe(PROMPTS, 17, output_type="np", **RUN).stats
    assert 0 < plain.tail_s < plain.wall_time_s
    decode = pipe.decode

    def slow(samples, *args, **kwargs):  # the last frames' decode follows the last batch
        time.sleep(0.5)
        return decode(samples, *args, **kwargs)

    monkeypatch.setattr(pipe, "decode", slow)
    stats = pipe(PROMPTS, 17, output_type="np", **RUN).stats
    assert stats.tail_s >= 0.5 > plain.tail_s
    unet = sum(sum(v) for v in stats.batch_times_s.values())
    assert stats.tail_s <= stats.wall_time_s - unet + 1e-6  # no batch's time in it


def test_two_cpu_devices_give_the_single_device_video(pipe, reference):
    out = pipe(PROMPTS, 17, output_type="latent", micro_batch=4, devices=["cpu", "cpu"], **RUN)
    assert out.stats.devices == ["cpu", "cpu"]
    torch.testing.assert_close(out.frames, reference, rtol=0, atol=BATCH_ATOL)
    # two batches per level at micro_batch 2: each device runs one; identical batching, so
    # the result is bit for bit the single-device one
    a = pipe(PROMPTS, 17, output_type="latent", micro_batch=2, devices=["cpu", "cpu"], **RUN)
    b = pipe(PROMPTS, 17, output_type="latent", micro_batch=2, **RUN)
    assert torch.equal(a.frames, b.frames)


def test_devices_share_each_level_evenly(pipe):
    # 47 frames at 5 per call: calls of equal length per level; at micro_batch 4 a level's
    # batches come in pairs of near-equal size, so the two devices differ by at most one call
    # per level (a level of one call runs on one device)
    out = pipe(PROMPTS[0], 47, output_type="latent", micro_batch=4, devices=["cpu", "cpu"], **RUN)
    level_sizes = [len(level.calls) for level in out.plan.levels]
    per_device = out.stats.calls_per_device
    assert sum(per_device) == out.plan.model_calls == sum(level_sizes)
    assert max(per_device) - min(per_device) <= len(level_sizes)  # at most one call per level
    one = pipe(PROMPTS[0], 47, output_type="latent", micro_batch=4, **RUN)
    assert one.stats.calls_per_device == [out.plan.model_calls]
    torch.testing.assert_close(out.frames, one.frames, rtol=0, atol=BATCH_ATOL)


def test_devices_at_one_call_a_batch_run_every_call_once(pipe):
    """At a micro-batch of one call, a level of an odd number of calls on two devices is as
    many batches as calls (rounding up to a multiple of the devices would leave one empty)."""
    one = pipe(PROMPTS[0], 18, output_type="latent", micro_batch=1, **RUN)
    assert any(len(level.calls) % 2 for level in one.plan.levels[1:])
    out = pipe(PROMPTS[0], 18, output_type="latent", micro_batch=1, devices=["cpu", "cpu"], **RUN)
    assert sum(out.stats.calls_per_device) == out.plan.model_calls
    torch.testing.assert_close(out.frames, one.frames, rtol=0, atol=BATCH_ATOL)


def test_a_device_keeps_its_worker_thread_from_render_to_render(pipe, reference, monkeypatch):
    """cuDNN keeps the algorithms its autotuner picked per thread: a device's batches run on
    one thread, the same in every render, a second device's on another; a batch that fails
    leaves the thread serving the next render."""
    seen: list[threading.Thread] = []
    real = pipe.denoise

    def spy(*args, **kwargs):
        seen.append(threading.current_thread())
        if fail:
            raise _Stop
        return real(*args, **kwargs)

    fail = False
    monkeypatch.setattr(pipe, "denoise", spy)
    pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN)
    first = set(seen)
    assert len(first) == 1 and threading.current_thread() not in first
    seen.clear()
    fail = True
    with pytest.raises(_Stop):
        pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN)
    fail = False
    out = pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN)
    assert set(seen) == first
    torch.testing.assert_close(out.frames, reference, rtol=0, atol=0)
    seen.clear()
    # level 1's four calls in two batches of two: one on each device, each on its own thread
    pipe(PROMPTS, 17, output_type="latent", micro_batch=2, devices=["cpu", "cpu"], **RUN)
    assert len(set(seen)) == 2 and first < set(seen)


class _Stop(Exception):
    pass


def test_interrupted_run_resumes_from_the_cache(pipe, reference, tmp_path):
    def stop_after_level_0(p, level):
        if level == 0:
            raise _Stop

    with pytest.raises(_Stop):
        pipe(
            PROMPTS,
            17,
            output_type="latent",
            micro_batch=4,
            cache_dir=tmp_path,
            callback_on_level_end=stop_after_level_0,
            **RUN,
        )
    (key_dir,) = tmp_path.iterdir()
    assert sorted(p.name for p in key_dir.iterdir()) == ["level0000-calls00000-00000.pt"]
    # resumed with another micro-batch size: the cache key ignores batching
    out = pipe(PROMPTS, 17, output_type="latent", micro_batch=2, cache_dir=tmp_path, **RUN)
    assert out.stats.calls_from_cache == 1 and out.stats.calls_run == 4
    torch.testing.assert_close(out.frames, reference, rtol=0, atol=BATCH_ATOL)
    # a finished run is served from the cache entirely
    again = pipe(PROMPTS, 17, output_type="latent", micro_batch=4, cache_dir=tmp_path, **RUN)
    assert again.stats.calls_run == 0 and again.stats.calls_from_cache == 5
    torch.testing.assert_close(again.frames, reference, rtol=0, atol=BATCH_ATOL)
    # anything that changes the output changes the key
    pipe(PROMPTS, 17, output_type=None, cache_dir=tmp_path, **{**RUN, "generator": 3})
    assert len(list(tmp_path.iterdir())) == 2


def test_the_cache_key_tells_approximate_speedups_apart(pipe):
    """Exact speed-ups (rounding aside) share cached calls; ``fp8`` approximates the model,
    so its calls are another render's and a resume never mixes the two."""
    from dataclasses import replace

    from storygen.cache import cache_key
    from storygen.settings import RenderSettings

    plan = pipe.build_plan(
        PROMPTS, num_frames=17, fps=None, frames_per_call=5, depth=None, policy="stretch"
    )
    base = RenderSettings(
        seed=7,
        negative_prompt="",
        num_inference_steps=2,
        guidance_scale=1.0,
        height=16,
        width=16,
        resample_steps=1,
        jump_length=1,
        reconstruction_guidance=0.0,
    )
    key = cache_key(pipe, plan, base)
    for exact in ("none", "tconv,qkv", ("tconv", "pattn"), "auto,cdt"):
        assert cache_key(pipe, plan, replace(base, speedups=exact)) == key
    fp8 = cache_key(pipe, plan, replace(base, speedups="auto, fp8"))
    assert fp8 != key
    assert cache_key(pipe, plan, replace(base, speedups=("qkv", "fp8"))) == fp8


def test_a_failed_render_keeps_the_batches_that_finished(pipe, reference, tmp_path):
    """A later stage failing on the main thread (here the first call of level 1 taken in
    plan order) leaves the level's other batches to finish on the worker; their calls go to
    the cache, so the resumed render samples only what never ran."""
    sampled: list[int] = []
    real = pipe.denoise

    def spy(unet, inputs, **kwargs):
        out = real(unet, inputs, **kwargs)
        sampled.append(len(inputs.noise))
        return out

    def fail_at_level_1(p, result):
        if result.level == 1:
            time.sleep(0.5)  # the worker finishes the level's second batch meanwhile
            raise _Stop

    pipe.denoise = spy
    try:
        with pytest.raises(_Stop):
            pipe(
                PROMPTS,
                17,
                output_type="latent",
                micro_batch=2,
                cache_dir=tmp_path,
                callback_on_call_end=fail_at_level_1,
                **RUN,
            )
        assert sum(sampled) == 5  # the global call and level 1's four, in two batches
        out = pipe(PROMPTS, 17, output_type="latent", micro_batch=2, cache_dir=tmp_path, **RUN)
    finally:
        del pipe.denoise
    assert out.stats.calls_from_cache == 5 and out.stats.calls_run == 0
    torch.testing.assert_close(out.frames, reference, rtol=0, atol=BATCH_ATOL)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm", "euler"])
def test_every_scheduler_renders(model_dir, scheduler):
    pipe = load_pipeline(model_dir, scheduler=scheduler)
    calls: list[CallResult] = []
    out = pipe(
        PROMPTS,
        17,
        output_type="latent",
        callback_on_call_end=lambda p, r: calls.append(r),
        **{**RUN, "num_inference_steps": 3},
    )
    assert type(pipe.scheduler).__name__.lower().startswith(scheduler[:3])
    assert torch.isfinite(out.frames).all()
    # a random model gives no clean image, but sampling must end near data scale, not noise
    # scale (Euler starts at sigma ~ 14)
    assert out.frames.abs().max() < 20
    for r in calls:
        for k, known in enumerate(r.call.known):
            if known:
                assert torch.equal(r.sample[:, k], out.frames[r.call.frames[k]])


def test_story_script_routes_prompts_per_frame(pipe):
    script = StoryScript(
        (Segment(0.0, 2.0, "a red circle moving left"), Segment(2.0, 4.25, "a green star")),
        fps=4,
    )
    seen: dict[int, str] = {}
    out = pipe(
        script,
        output_type=None,
        callback_on_call_end=lambda p, r: seen.update(zip(r.call.frames, r.call.prompts)),
        **RUN,
    )
    assert out.plan.num_frames == 17 and out.frames is None
    assert all(seen[f] == "a red circle moving left" for f in range(8))
    assert all(seen[f] == "a green star" for f in range(8, 17))


def test_latent_space_model_end_to_end(tmp_path):
    parts = build_components("micro-latent", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline(**parts)
    out = pipe(PROMPTS, 17, micro_batch=4, **RUN)
    assert out.frames.shape == (17, 32, 32, 3)
    latents = pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN).frames
    assert latents.shape == (17, 4, 16, 16)
    decoded = pipe.decode_frames(latents[:3])
    expected = ((decoded + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    # the VAE decodes 16 frames per batch there and 3 here: rounding may differ by one level
    assert np.abs(out.frames[:3].astype(int) - expected).max() <= 1


def test_local_unet_serves_the_local_levels(model_dir):
    pipe = StoryVideoPipeline.from_pretrained(model_dir)
    base = pipe(PROMPTS, 17, output_type="latent", **RUN).frames
    other = build_components("micro", mode="masked", texts=PROMPTS, seed=5)["unet"]
    pipe.local_unet = other
    mixed = pipe(PROMPTS, 17, output_type="latent", **RUN).frames
    keyframes = [0, 4, 8, 12, 16]
    assert torch.equal(mixed[keyframes], base[keyframes])  # level 0: the global unet
    assert not torch.allclose(mixed[1:4], base[1:4])  # level 1: the local unet


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_frames": 16}, "per-frame prompts"),
        ({"micro_batch": 0}, "micro_batch"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"output_type": "mp4"}, "output_type"),
        ({"generator": [1, 2]}, "generator"),
        # an option the policy has no use for is refused, not ignored
        ({"policy": "autoregressive", "depth": 2}, "depth does not apply"),
        ({"overlap": 2}, "overlap applies to the 'autoregressive' policy only"),
        # a 0 is refused, not taken for "the default"
        ({"height": 0}, "height"),
        ({"resample_steps": 0}, "resample_steps"),
        ({"jump_length": 0}, "jump_length"),
    ],
)
def test_bad_arguments_are_named(pipe, kwargs, match):
    args = {"num_frames": 17, **RUN, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(PROMPTS, **args)


def test_a_render_without_pixels_decodes_only_its_keyframes(pipe, monkeypatch):
    """``output_type="latent"`` or None, no file: the decoder sees the keyframes only (the
    preview's), which are those of a render that decodes every frame."""
    decoded: list[int] = []
    real = pipe.decode

    def spy(samples, *args, **kwargs):
        decoded.append(len(samples))
        return real(samples, *args, **kwargs)

    full = pipe(PROMPTS, 17, output_type="np", **RUN)
    monkeypatch.setattr(pipe, "decode", spy)
    for output_type in ("latent", None):
        decoded.clear()
        out = pipe(PROMPTS, 17, output_type=output_type, **RUN)
        keyframes = {f for c in out.plan.levels[0].calls for f in c.new_frames}
        assert sum(decoded) == len(keyframes) < 17
        assert out.keyframes.keys() == full.keyframes.keys() == keyframes
        for f, frame in out.keyframes.items():
            assert np.abs(frame.astype(int) - full.keyframes[f].astype(int)).max() <= 1


def test_streaming_holds_only_the_frames_still_needed(pipe, tmp_path):
    # 65 frames at L = 5: levels of 5, 17 and 65 frames (1 + 4 + 16 calls)
    prompts = ["a red circle moving left"] * 65
    out = pipe(prompts, 65, output_type=None, output_path=tmp_path / "long.mp4", **RUN)
    assert out.frames is None and out.plan.rounds == 3
    import av

    with av.open(str(tmp_path / "long.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 65
    # level 1's 17 frames are needed until the last call; at most one 16-frame chunk (plus
    # one call's frames) waits to be written
    assert out.stats.peak_frames_held <= 17 + 16 + 5
    assert out.stats.peak_frames_held < 65


def test_frames_reach_the_file_in_order_from_the_encoder_thread(pipe, tmp_path):
    import av

    prompts = ["a red circle moving left"] * 65
    kept = pipe(prompts, 65, output_type="np", output_path=tmp_path / "order.mp4", **RUN)
    with av.open(str(tmp_path / "order.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == kept.frames.shape
    # h264 is lossy, but each decoded frame is nearest to the frame of the same index
    err = np.abs(decoded[:, None].astype(np.int16) - kept.frames[None].astype(np.int16))
    nearest = err.reshape(65, 65, -1).mean(axis=2).argmin(axis=1)
    assert (nearest == np.arange(65)).mean() > 0.9


def test_an_encoder_error_fails_the_render_and_leaves_no_file(pipe, tmp_path, monkeypatch):
    from storygen.export import VideoWriter

    calls = {"n": 0}
    real = VideoWriter.write

    def broken(self, frames):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(self, frames)

    monkeypatch.setattr(VideoWriter, "write", broken)
    prompts = ["a red circle moving left"] * 65
    with pytest.raises(OSError, match="disk full"):
        pipe(prompts, 65, output_type=None, output_path=tmp_path / "broken.mp4", **RUN)
    assert not (tmp_path / "broken.mp4").exists()
    assert calls["n"] >= 2


def test_a_failed_preparation_returns_once_the_running_batch_is_done(pipe, monkeypatch):
    """A level's second batch fails to prepare while its first samples: the error reaches the
    caller only once the first batch is done, so nothing runs on behind it."""
    import time

    running, done = [], []
    started = threading.Event()
    real_denoise, real_prepare = pipe.denoise, pipe.prepare_latents

    def slow_denoise(*args, **kwargs):
        running.append(1)
        started.set()
        time.sleep(0.5)
        out = real_denoise(*args, **kwargs)
        done.append(running.pop())
        return out

    def prepare(batch, **kwargs):
        if batch.level == 1 and batch.indices[0] > 0:
            assert started.wait(10)  # the first batch is sampling
            raise _Stop
        if batch.level == 1:
            started.clear()
        return real_prepare(batch, **kwargs)

    monkeypatch.setattr(pipe, "denoise", slow_denoise)
    monkeypatch.setattr(pipe, "prepare_latents", prepare)
    with pytest.raises(_Stop):
        pipe(PROMPTS, 17, output_type="latent", micro_batch=2, **RUN)
    assert not running and len(done) == 2  # level 0's call and level 1's first batch


def test_a_forked_child_renders_on_its_own_worker_thread(model_dir):
    """A process forked after a render (a pool of workers, say) has none of the parent's
    threads: its render starts its own worker instead of waiting on one that is gone. Run in
    a fresh interpreter, away from the threads other tests leave behind."""
    import subprocess
    import sys

    code = f"""
import multiprocessing, torch
from storygen.pipeline import StoryVideoPipeline
RUN = {RUN!r}
PROMPTS = {PROMPTS!r}
pipe = StoryVideoPipeline.from_pretrained({str(model_dir)!r})
def render(child=False):
    if child:  # OpenMP's threads do not survive a fork either
        torch.set_num_threads(1)
    return pipe(PROMPTS, 17, output_type="latent", micro_batch=4, **RUN).frames
parent = render()
with multiprocessing.get_context("fork").Pool(1) as pool:
    child = pool.apply_async(render, (True,)).get(timeout=60)
torch.testing.assert_close(child, parent, rtol=0, atol=1e-5)  # one thread's sums
print("child rendered")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "child rendered" in done.stdout
