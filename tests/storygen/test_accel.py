"""Compiling the UNet (storygen.accel): only when asked, and it changes nothing."""

from __future__ import annotations

import pytest
import torch

from storygen.accel import (
    CompilePolicy,
    beside_sampling,
    compile_cache_dir,
    cudnn_autotune,
    is_compiled,
    resolve_compile,
    row_bucket,
)
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


def new_pipe_unet() -> torch.nn.Module:
    """A micro-preset masked UNet with random weights."""
    from storygen.presets import build_components

    return build_components("micro", mode="masked", texts=PROMPTS)["unet"]


def new_pipe(tmp_path, preset: str = "micro", device: str = "cpu") -> StoryVideoPipeline:
    """A freshly made model of ``preset`` (masked), loaded as a pipeline on ``device``."""
    folder = new_model(tmp_path / "m", preset=preset, mode="masked", texts=PROMPTS)
    return StoryVideoPipeline.from_pretrained(folder).to(device)


def test_compile_auto_is_on_for_cuda_only():
    assert resolve_compile(None) == "off"
    assert resolve_compile("off") == "off" and resolve_compile(False) == "off"
    assert resolve_compile("on") == "on" and resolve_compile(True) == "on"
    assert resolve_compile("all") == "all"
    assert resolve_compile("regional") == "regional"
    assert resolve_compile("auto", "cuda") == "regional"
    assert resolve_compile("auto", "cpu") == "off" and resolve_compile("auto") == "off"
    assert CompilePolicy("auto", device_type="cuda").enabled
    assert not CompilePolicy("auto", device_type="cpu").enabled
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("fast")


def test_compile_where_it_repays():
    """ "on" compiles a row bucket once the render holds enough passes of it: a 3,376-frame
    hierarchical plan at 25 steps with guidance (levels of 1, 15 and 225 calls, micro-batch
    64: 2, 30 and 4 x ~113 rows) compiles the last level's bucket only, every batch of it
    padded to the bucket of the largest; the autoregressive baseline's batch-1 windows compile
    from the third window on; a short render stays eager; "all" compiles every bucket; "off"
    none."""
    hier = CompilePolicy("on")
    hier.plan([(2, 25)])
    hier.plan([(30, 25)])
    assert hier.rows == {} and hier.buckets == set()
    hier.plan([(114, 25), (114, 25), (112, 25), (110, 25)])
    assert hier.buckets == {114} and hier.passes == {2: 25, 30: 25, 114: 100}
    assert hier.rows == {114: 114, 112: 114, 110: 114}
    ar = CompilePolicy("on")
    chosen = []
    for _ in range(4):  # one window a level
        ar.plan([(2, 25)])
        chosen.append(dict(ar.rows))
    assert chosen == [{}, {2: 2}, {2: 2}, {2: 2}]
    short = CompilePolicy("on")
    short.plan([(2, 12), (8, 12), (8, 12)])
    assert short.rows == {} and short.passes == {8: 36}
    every = CompilePolicy("all")
    every.plan([(2, 1)])
    every.plan([(29, 1), (28, 1)])
    assert every.buckets == {2, 30} and every.rows == {2: 2, 29: 30, 28: 30}
    regional = CompilePolicy("regional")  # every bucket, as "all"
    regional.plan([(2, 1)])
    regional.plan([(29, 1), (28, 1)])
    assert regional.buckets == {2, 30} and regional.rows == {2: 2, 29: 30, 28: 30}
    # "auto" on CUDA: block by block, but only where it repays, as "on"
    auto = CompilePolicy("auto", device_type="cuda")
    assert auto.choice == "regional" and auto.auto and not auto.every_bucket
    for level in ([(2, 25)], [(30, 25)], [(114, 25), (114, 25), (112, 25), (110, 25)]):
        auto.plan(level)
    assert auto.buckets == {114} and auto.rows == hier.rows
    assert regional.every_bucket and not regional.auto and not hier.every_bucket
    # block by block where the UNet has the blocks and no CUDA graphs replay whole passes
    unet = new_pipe_unet()
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert auto.regional_for(unet, ("tconv", "qkv"))
    assert not auto.regional_for(unet, ("tconv", "cgraph"))
    assert not auto.regional_for(plain)
    assert regional.regional_for(unet, ("cgraph",)) and regional.regional_for(plain)
    assert not hier.regional_for(unet) and not every.regional_for(unet)
    off = CompilePolicy("off")
    off.plan([(128, 10_000)])
    assert not off.enabled and off.rows == {} and off.buckets == set()


def test_kernel_tuning_goes_to_the_bucket_that_carries_the_render():
    """The cdt / mat options tune only the compiled bucket with half the render's work
    (rows × passes) or more: a 3,376-frame plan at 25 steps with guidance, compiled "all"
    (241 calls: 12,050 rows × passes), puts 10,500 in its 210-row bucket; the 2- and 30-row
    buckets compile without tuning. A short render holds no compiled bucket to tune."""
    every = CompilePolicy("all")
    every.expect(241 * 2 * 25)
    every.plan([(2, 25)])
    every.plan([(30, 25)])
    assert every.tuned == set()
    every.plan([(210, 25), (210, 25)])
    every.plan([(30, 25)])  # the drained 15 calls
    assert every.buckets == {2, 30, 210} and every.tuned == {210}
    assert every.work == {2: 50, 30: 1500, 210: 10500}
    on = CompilePolicy("on")
    on.expect(20)
    on.plan([(2, 2)])
    on.plan([(4, 2), (4, 2)])  # 16 of 20, but 4 passes: not compiled, so not tuned
    assert on.buckets == set() and on.tuned == set()
    unknown = CompilePolicy("all")  # no total expected: nothing tuned
    unknown.plan([(4, 2)])
    assert unknown.buckets == {4} and unknown.tuned == set()


def test_tuning_options_reach_only_the_graphs_compiled_inside_the_tuned_block(monkeypatch):
    """BucketTuning: Inductor with the speed-ups' options, the kernel-tuning ones only for
    graphs compiled inside tuning_compiles (the tuned bucket's first pass)."""
    import torch._inductor.compile_fx as cfx

    from storygen.accel import BucketTuning, inductor_options, tuning_compiles

    seen = []
    real = cfx.compile_fx

    def spy(gm, example_inputs, **kwargs):
        if "config_patches" in kwargs:  # the backend's call (compile_fx then calls itself)
            seen.append((example_inputs[0].shape[0], kwargs["config_patches"]))
        return real(gm, example_inputs, **kwargs)

    monkeypatch.setattr(cfx, "compile_fx", spy)
    options = inductor_options(("mm1x1", "cdt"))
    f = torch.compile(lambda x: torch.tanh(x) * 2 + 1, backend=BucketTuning(options), dynamic=False)
    a, b = torch.randn(3, 5), torch.randn(7, 5)
    torch.testing.assert_close(f(a), torch.tanh(a) * 2 + 1)
    with tuning_compiles():
        torch.testing.assert_close(f(b), torch.tanh(b) * 2 + 1)
    torch.testing.assert_close(f(b), torch.tanh(b) * 2 + 1)  # compiled already: no new graph
    assert seen == [
        (3, {"conv_1x1_as_mm": True}),
        (7, {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True}),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("compile_", ["all", "regional"])
def test_a_render_tunes_the_kernels_of_its_bulk_bucket_only(tmp_path, monkeypatch, compile_):
    """--speedups cdt: the graphs of the bucket that carries the render (17 frames: the
    4-row level's 16 of 20 rows × passes) compile with coordinate-descent tuning, the 2-row
    global call's without; the frames are the eager ones (tuning picks kernel launch
    settings, on a CPU none)."""
    import torch._inductor.compile_fx as cfx

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    tuned_flags = []
    real = cfx.compile_fx

    def spy(gm, example_inputs, **kwargs):
        if "config_patches" in kwargs:
            tuned_flags.append(kwargs["config_patches"].get("coordinate_descent_tuning", False))
        return real(gm, example_inputs, **kwargs)

    monkeypatch.setattr(cfx, "compile_fx", spy)
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    want = StoryVideoPipeline.from_pretrained(folder)(PROMPTS, 17, compile="off", **RUN)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    got = pipe(PROMPTS, 17, compile=compile_, speedups="cdt", **RUN)
    assert got.stats.compiled_rows == [2, 4]
    # the global call's graphs first, untuned, then as many of the 4-row bucket's, tuned
    half = len(tuned_flags) // 2
    assert half and tuned_flags == [False] * half + [True] * half
    torch.testing.assert_close(got.frames, want.frames, atol=1e-4, rtol=0)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("STORYLOOM_COMPILE_CACHE")
    assert compile_cache_dir().parts[-3:] == (".cache", "storyloom", "inductor")


def test_a_render_stays_eager_by_default(tmp_path):
    pipe = new_pipe(tmp_path)
    out = pipe(PROMPTS, 17, **RUN)
    assert out.stats.compiled is False and not is_compiled(pipe.unet)
    # every batch is timed by its shape: 1 global call of 5 frames, 2 batches of 2 local calls
    assert out.stats.batch_times_s.keys() == {"1x5", "2x5"}
    assert len(out.stats.batch_times_s["2x5"]) == 2
    # by the shape the UNet sees: rows = calls x 2 guidance branches
    assert out.stats.bucket_times_s.keys() == {"2x5", "4x5"}
    assert [c for c, _ in out.stats.bucket_times_s["4x5"]] == [2, 2]


def test_warmup_is_the_first_batch_beyond_its_calls_at_the_later_per_call_time():
    """57 then 56-call batches share one 114-row graph: the first batch's extra time is the
    compile, found even though no other batch has 57 calls."""
    from storygen.runner import GenerationStats

    stats = GenerationStats(num_frames=1, model_calls=1, rounds=1)
    stats.bucket_times_s = {"114x16": [[57, 157.0], [56, 56.0], [56, 56.0], [56, 56.0]]}
    stats.bucket_times_s["16x16"] = [[1, 3.0]]  # one batch: nothing to compare it with
    assert stats.warmup_s() == pytest.approx(100.0)


def test_a_compile_part_way_through_a_shape_is_warm_up():
    """Autoregressive windows of one shape run eager until their pass count repays a
    compile; the compiled batches are keyed apart, so the compile is their first batch."""
    from storygen.runner import GenerationStats

    stats = GenerationStats(num_frames=1, model_calls=1, rounds=1)
    stats.bucket_times_s = {
        "2x16": [[1, 0.62]] * 9,
        "2x16 compiled": [[1, 176.4]] + [[1, 0.38]] * 215,
    }
    assert stats.warmup_s() == pytest.approx(176.4 - 0.38)


def test_row_buckets_pad_little():
    """Powers of two up to 8 rows, then even counts: a level of 57- and 56-call batches
    with guidance (114 and 112 rows) runs 114-row passes, not 120 or 128."""
    sizes = (1, 2, 3, 4, 5, 8, 9, 29, 30, 32, 33, 112, 113, 114)
    assert [row_bucket(n) for n in sizes] == [1, 2, 4, 4, 8, 8, 10, 30, 30, 32, 34, 112, 114, 114]
    with pytest.raises(ValueError):
        row_bucket(0)


def _compiled_matches_eager(tmp_path, device: str, atol: float) -> None:
    from torch._dynamo.utils import counters

    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    eager = StoryVideoPipeline.from_pretrained(folder).to(torch.device(device))
    want = eager(PROMPTS, 17, compile="off", **RUN)
    fast = StoryVideoPipeline.from_pretrained(folder).to(torch.device(device))
    graphs = counters["stats"]["unique_graphs"]
    short = fast(PROMPTS, 17, compile="on", **RUN)  # 2 steps: nothing repays a compile
    assert short.stats.compiled and short.stats.compiled_rows == []
    assert short.stats.compile_s == 0  # nothing compiled, nothing counted
    assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(short.frames, want.frames, atol=atol, rtol=0)
    got = fast(PROMPTS, 17, compile="all", **RUN)
    # compiled: the pipeline's UNet, or the render's copy where a speed-up changes modules
    assert got.stats.compiled and got.stats.compiled_rows == [2, 4]
    assert got.stats.compile_s > 0 and got.stats.compile_s < got.stats.wall_time_s
    # by phase: the outermost is the compile time itself, dynamo's tracing inside it
    phases = got.stats.compile_phases_s
    assert phases["_compile.compile_inner"] == pytest.approx(got.stats.compile_s)
    assert 0 < phases["bytecode_tracing"] < got.stats.compile_s
    assert short.stats.compile_phases_s == {}
    # compiled batches are timed under their own keys (their first batch holds the compile)
    assert short.stats.bucket_times_s.keys() == {"2x5", "4x5"}
    assert got.stats.bucket_times_s.keys() == {"2x5 compiled", "4x5 compiled"}
    torch.testing.assert_close(got.frames, want.frames, atol=atol, rtol=0)
    # static shapes, one graph per row bucket: the global call (1 call x 2 guidance branches
    # = 2 rows) and the local batches (2 calls = 4 rows)
    assert counters["stats"]["unique_graphs"] - graphs == 2
    more = {**RUN, "micro_batch": 4}  # the 4 local calls in one batch: 8 rows, a third graph
    again = fast(PROMPTS, 17, compile="all", **more)
    torch.testing.assert_close(again.frames, want.frames, atol=atol, rtol=0)
    assert counters["stats"]["unique_graphs"] - graphs == 3
    repeat = fast(PROMPTS, 17, compile="all", **RUN)  # compiled graphs are reused
    torch.testing.assert_close(repeat.frames, got.frames, atol=0, rtol=0)
    assert repeat.stats.compile_s < 0.1 * got.stats.compile_s  # the graphs were reused
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


def _auto_regional_compiles_what_repays(tmp_path, monkeypatch, device: str, atol: float) -> None:
    """``compile="auto"`` where it is ``"regional"`` (CUDA; on a CPU by a patched default): the
    blocks compile for the row buckets the render holds enough passes of, and the other buckets
    run them eager (no graph of their shapes), with the eager frames throughout."""
    from storygen import accel, runner
    from storygen.accel import REPEATED_BLOCKS

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    monkeypatch.setattr(accel, "default_compile", lambda device_type: "regional")
    if device == "cuda":
        # float32 throughout: cuDNN's TF32 convolutions (on by default) round the eager and
        # the compiled blocks' inputs apart by up to 4e-3 on these frames (see test_speedups'
        # CUDA test), which is not what this test is about
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    policies = []

    def policy(choice, device_type="cpu"):  # the 4-row level's 4 passes repay, the 2-row 2 not
        policies.append(CompilePolicy(choice, min_passes=4, device_type=device_type))
        return policies[-1]

    monkeypatch.setattr(runner, "CompilePolicy", policy)
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    # on CUDA without the speed-ups, which render on a copy of the UNet
    run = RUN | ({"speedups": "none"} if device == "cuda" else {})
    want = StoryVideoPipeline.from_pretrained(folder).to(device)(PROMPTS, 17, compile="off", **run)
    pipe = StoryVideoPipeline.from_pretrained(folder).to(device)
    unet = pipe.unet
    blocks = [m for m in unet.modules() if type(m).__name__ in REPEATED_BLOCKS]
    compiled_calls = []
    real_compile = unet.compile_repeated_blocks

    def spied(*args, **kwargs):  # count the blocks' compiled calls
        real_compile(*args, **kwargs)
        for block in blocks:
            inner = block._compiled_call_impl

            def counted(*a, _inner=inner, **k):
                compiled_calls.append(1)
                return _inner(*a, **k)

            block._compiled_call_impl = counted

    monkeypatch.setattr(unet, "compile_repeated_blocks", spied)
    got = pipe(PROMPTS, 17, compile="auto", **run)
    assert policies[-1].passes == {2: 2, 4: 4}
    assert got.stats.compiled_rows == [4] and got.stats.compile_s > 0
    assert all(isinstance(b._compiled_call_impl, accel._GatedBlock) for b in blocks)
    # the 4-row bucket's 4 passes ran every block compiled; the 2-row bucket's 2 passes none
    assert len(compiled_calls) == 4 * len(blocks)
    torch.testing.assert_close(got.frames, want.frames, atol=atol, rtol=0)


@pytest.mark.slow
def test_auto_regional_compiles_only_the_buckets_that_repay(tmp_path, monkeypatch):
    _auto_regional_compiles_what_repays(tmp_path, monkeypatch, "cpu", atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_regional_compiles_only_the_buckets_that_repay_on_cuda(tmp_path, monkeypatch):
    _auto_regional_compiles_what_repays(tmp_path, monkeypatch, "cuda", atol=1e-3)


@pytest.mark.slow
def test_regional_compile_compiles_the_blocks_and_renders_the_same_frames(tmp_path, monkeypatch):
    """``compile="regional"``: the UNet's repeated blocks compiled one by one, its own forward
    left eager; the frames are the eager ones, every bucket runs compiled, and a second
    render reuses the blocks' graphs."""
    from storygen.accel import REPEATED_BLOCKS

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    want = StoryVideoPipeline.from_pretrained(folder)(PROMPTS, 17, compile="off", **RUN)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    got = pipe(PROMPTS, 17, compile="regional", **RUN)
    assert got.stats.compiled_rows == [2, 4]
    assert is_compiled(pipe.unet) and pipe.unet._compiled_call_impl is None
    blocks = [m for m in pipe.unet.modules() if type(m).__name__ in REPEATED_BLOCKS]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    assert got.stats.compile_s > 0
    torch.testing.assert_close(got.frames, want.frames, atol=1e-4, rtol=0)
    again = pipe(PROMPTS, 17, compile="regional", **RUN)
    torch.testing.assert_close(again.frames, got.frames, atol=0, rtol=0)
    assert again.stats.compile_s < 0.1 * got.stats.compile_s


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["all", "pre"])
def test_a_text_to_video_unet_compiles_its_blocks_where_a_whole_unet_is_asked(
    tmp_path, monkeypatch, choice
):
    """Sampling calls a diffusers text-to-video UNet block by block (a prompt per frame), so
    its whole forward never runs: asked to compile it whole, a render compiles its blocks
    one by one instead, says so, and gives the eager frames."""
    from storygen import accel
    from storygen.accel import REPEATED_BLOCKS

    compiled_calls = []
    gated = accel._GatedBlock.__call__

    def spy(self, *args, **kwargs):
        compiled_calls.append(not accel._EAGER_BLOCKS.on)
        return gated(self, *args, **kwargs)

    monkeypatch.setattr(accel._GatedBlock, "__call__", spy)
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    folder = new_model(tmp_path / "m", preset="micro-latent", mode="t2v", texts=PROMPTS)
    want = StoryVideoPipeline.from_pretrained(folder)(PROMPTS, 17, compile="off", **RUN)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    got = pipe(PROMPTS, 17, compile=choice, **RUN)
    [why] = got.stats.compile_fallbacks
    assert why.startswith(f"compile={choice!r}: sampling calls a UNet3DConditionModel")
    assert "its blocks compile one by one instead" in why
    assert got.stats.compiled_rows == [2, 4]
    blocks = [m for m in pipe.unet.modules() if type(m).__name__ in REPEATED_BLOCKS]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert compiled_calls and all(compiled_calls)  # every pass ran the blocks' graphs
    torch.testing.assert_close(got.frames, want.frames, atol=1e-4, rtol=1e-4)


def _aot_of(pipe: StoryVideoPipeline):
    """The packages the last render's UNet ran: the pipeline's own, or the copy its speed-ups
    made (fused projections on CUDA)."""
    from storygen.accel import AotForward
    from storygen.runner import _SPEEDUP_COPIES

    unets = [pipe.unet, *_SPEEDUP_COPIES.get(pipe.unet, {}).values()]
    found = [u._compiled_call_impl for u in unets if isinstance(u._compiled_call_impl, AotForward)]
    assert len(found) == 1
    return found[0]


def _first_aot_render(tmp_path, monkeypatch, device: str):
    """A micro model's eager render and its first ``compile="aot"`` render on an empty
    compile cache: (the loader of a pipeline on ``device``, the model's folder, the eager
    result, the pipeline that compiled, its result)."""
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))

    def load(path) -> StoryVideoPipeline:
        return StoryVideoPipeline.from_pretrained(path).to(torch.device(device))

    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    want = load(folder)(PROMPTS, 17, compile="off", **RUN)
    pipe = load(folder)
    got = pipe(PROMPTS, 17, compile="aot", **RUN)
    assert got.stats.compiled_rows == [2, 4]
    return load, folder, want, pipe, got


def _aot_renders_and_reloads(tmp_path, monkeypatch, device: str, atol: float) -> None:
    """``compile="aot"``: each row bucket's forward is exported and compiled into a package
    on disk; the frames are the eager ones. A pipeline that starts afresh (as a new process
    does) loads the packages instead of compiling, and a model with other weights of the same
    shapes runs the same packages with its own weights. A package that cannot be read is
    compiled again."""
    from storygen.accel import AOT_DIR, AOT_PHASES

    load, folder, want, pipe, got = _first_aot_render(tmp_path, monkeypatch, device)
    assert not got.stats.compile_fallbacks, got.stats.compile_fallbacks
    aot = _aot_of(pipe)
    assert aot.fallback is None
    assert sorted(aot.sources.values()) == ["built", "built"]
    packages = sorted((tmp_path / "inductor" / AOT_DIR).glob("*.pt2"))
    assert len(packages) == 2  # one per bucket, nothing left half written
    # each loaded by a child process first, and marked so
    assert all(p.with_name(p.name + ".ok").exists() for p in packages)
    phases = got.stats.compile_phases_s
    assert phases["aot_export"] > 0 and phases["aot_compile"] > phases["aot_export"]
    assert phases["aot_probe"] > 0 and phases["aot_load"] > 0
    assert got.stats.compile_s == pytest.approx(sum(phases[p] for p in AOT_PHASES if p in phases))
    assert "_compile.compile_inner" not in phases  # no dynamo
    torch.testing.assert_close(got.frames, want.frames, atol=atol, rtol=0)

    fresh = load(folder)
    again = fresh(PROMPTS, 17, compile="aot", **RUN)
    assert sorted(_aot_of(fresh).sources.values()) == ["loaded", "loaded"]
    assert set(again.stats.compile_phases_s) <= {"aot_load", "aot_wait"}  # no child this time
    assert again.stats.compile_s < 0.05 * got.stats.compile_s
    torch.testing.assert_close(again.frames, got.frames, atol=0, rtol=0)

    other = new_model(tmp_path / "o", preset="micro", mode="masked", texts=PROMPTS, seed=7)
    want_other = load(other)(PROMPTS, 17, compile="off", **RUN)
    assert not torch.allclose(want_other.frames, want.frames, atol=1e-2)
    other_pipe = load(other)
    got_other = other_pipe(PROMPTS, 17, compile="aot", **RUN)
    assert sorted(_aot_of(other_pipe).sources.values()) == ["loaded"] * 2
    torch.testing.assert_close(got_other.frames, want_other.frames, atol=atol, rtol=0)
    # weights changed in place (biases and norms too) are what the next call reads
    scaled = load(other)
    for unet in (other_pipe.unet, scaled.unet):
        with torch.no_grad():
            for p in unet.parameters():
                p.mul_(0.5)
    want_scaled = scaled(PROMPTS, 17, compile="off", **RUN)
    assert not torch.allclose(want_scaled.frames, want_other.frames, atol=1e-2)
    got_scaled = other_pipe(PROMPTS, 17, compile="aot", **RUN)
    torch.testing.assert_close(got_scaled.frames, want_scaled.frames, atol=atol, rtol=0)

    packages[0].write_bytes(b"torn")
    torn = load(folder)
    redone = torn(PROMPTS, 17, compile="aot", **RUN)
    assert sorted(_aot_of(torn).sources.values()) == ["built", "loaded"]
    torch.testing.assert_close(redone.frames, got.frames, atol=atol, rtol=0)


@pytest.mark.slow
def test_aot_compile_packages_each_bucket_and_a_new_process_loads_them(tmp_path, monkeypatch):
    _aot_renders_and_reloads(tmp_path, monkeypatch, "cpu", atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_aot_compile_on_cuda_renders_the_eager_frames_and_reloads(tmp_path, monkeypatch):
    _aot_renders_and_reloads(tmp_path, monkeypatch, "cuda", atol=1e-3)


def _precompiled_renders_and_reloads(tmp_path, monkeypatch, device: str, atol: float) -> None:
    """``compile="aot"`` where AOTInductor's loader dies: each row bucket's forward is traced
    whole by dynamo, compiled and saved instead; the frames are the eager ones, the render
    says why, and a pipeline that starts afresh loads the saved graphs without tracing."""
    from storygen import accel
    from storygen.accel import AOT_DIR, OUTER_PHASE, PRE_SUFFIX, PrecompiledForward

    monkeypatch.setattr(accel, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    load, folder, want, pipe, got = _first_aot_render(tmp_path, monkeypatch, device)
    [why] = got.stats.compile_fallbacks
    assert "SIGSEGV" in why and "runs precompiled graphs" in why
    pre = _aot_of(pipe).fallback
    assert isinstance(pre, PrecompiledForward) and pre.whole is None
    assert sorted(pre.sources.values()) == ["built", "built"]
    assert len(list((tmp_path / "inductor" / AOT_DIR).glob(f"*{PRE_SUFFIX}"))) == 2
    assert got.stats.compile_phases_s["pre_compile"] > 0
    torch.testing.assert_close(got.frames, want.frames, atol=atol, rtol=0)

    fresh = load(folder)
    again = fresh(PROMPTS, 17, compile="aot", **RUN)
    assert sorted(_aot_of(fresh).fallback.sources.values()) == ["loaded", "loaded"]
    phases = again.stats.compile_phases_s
    # no dynamo: the loads of the graphs' compiled kernels are all there is
    assert phases["pre_load"] > 0 and OUTER_PHASE not in phases
    assert "bytecode_tracing" not in phases and "pre_compile" not in phases
    assert again.stats.compile_s < 0.2 * got.stats.compile_s
    torch.testing.assert_close(again.frames, got.frames, atol=0, rtol=0)
    # compile="pre" asks for these files from the start: no package, no child, no warning
    monkeypatch.setattr(accel, "_probe", None)
    packages = sorted((tmp_path / "inductor" / AOT_DIR).glob("*.pt2"))
    asked = load(folder)
    pre_run = asked(PROMPTS, 17, compile="pre", **RUN)
    assert not pre_run.stats.compile_fallbacks
    assert sorted(_aot_of(asked).fallback.sources.values()) == ["loaded", "loaded"]
    assert sorted((tmp_path / "inductor" / AOT_DIR).glob("*.pt2")) == packages
    torch.testing.assert_close(pre_run.frames, got.frames, atol=0, rtol=0)


@pytest.mark.slow
def test_aot_precompiles_where_the_package_loader_dies_and_a_new_pipeline_loads(
    tmp_path, monkeypatch
):
    _precompiled_renders_and_reloads(tmp_path, monkeypatch, "cpu", atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_aot_precompiles_on_cuda_where_the_package_loader_dies(tmp_path, monkeypatch):
    _precompiled_renders_and_reloads(tmp_path, monkeypatch, "cuda", atol=1e-3)


_TWO_PROCESSES = """
import json, sys, torch
from storygen.accel import AotForward
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
x = torch.linspace(-1, 1, 24).reshape(3, 8)
aot = AotForward(net)
with torch.no_grad():
    got = aot(x)
    print(json.dumps({"source": list(aot.sources.values()), "diff": float((got - net(x)).abs().max())}))
"""


@pytest.mark.slow
def test_aot_packages_are_built_once_by_processes_that_share_the_cache(tmp_path):
    """Two processes that start together on one cache: one builds the package, the other
    waits for it and loads it, and both get the eager output."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "STORYLOOM_COMPILE_CACHE": str(tmp_path), "PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_PROCESSES], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o["source"][0] for o in outs) == ["built", "loaded"]
    assert all(o["diff"] < 1e-5 for o in outs)
    assert len(list((tmp_path / "aot").glob("*.pt2"))) == 1


def test_aot_compile_refuses_cuda_graphs_and_keys_what_the_code_depends_on():
    """A package's key changes with the shapes, a patched forward or processor, a parameter's
    dtype and the Inductor options; it does not change with the weights' values."""
    from storygen.accel import AotForward, call_signature, compile_unet

    with pytest.raises(ValueError, match="do not replay CUDA graphs.*cgraph"):
        compile_unet(torch.nn.Linear(2, 2), {"triton.cudagraphs": True}, aot=True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    x = torch.zeros(3, 4)
    key = AotForward(net).key(call_signature(x))
    assert AotForward(net).key(call_signature(x)) == key
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert AotForward(net).key(call_signature(x)) == key  # values are not in the package
    assert AotForward(net).key(call_signature(torch.zeros(5, 4))) != key
    assert AotForward(net).key(call_signature(x.double())) != key
    assert AotForward(net, {"conv_1x1_as_mm": True}).key(call_signature(x)) != key
    patched = AotForward(net)
    net[1].forward = lambda v: v  # type: ignore[method-assign]
    assert patched.key(call_signature(x)) != key
    del net[1].forward
    net.half()
    assert AotForward(net).key(call_signature(x)) != key


@pytest.mark.parametrize("precompile", [False, True])
def test_a_call_to_differentiate_runs_the_modules_own_forward_under_aot_and_pre(
    tmp_path, monkeypatch, precompile
):
    """Reconstruction guidance differentiates the UNet's output by its noisy input; graphs
    built ahead of time run without autograd, so such a call runs the module's forward (and
    builds nothing): the gradient is eager's."""
    from storygen.accel import AotForward, needs_gradient

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    x = torch.randn(2, 4)

    def gradient(fn):
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            out = fn(xr)
            (g,) = torch.autograd.grad((xr - 0.5 * out).square().sum(), xr)
        return out, g

    want_out, want = gradient(net)
    aot = AotForward(net, precompile=precompile)
    got_out, got = gradient(aot)
    assert got_out.requires_grad
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_out, want_out)
    assert not aot.sources and not (aot.fallback.sources if precompile else {})
    wanted = x.clone().requires_grad_(True)
    assert needs_gradient(((x, wanted),), {}) and needs_gradient((), {"known": [wanted]})
    assert not needs_gradient((x,), {"known": x})
    with torch.no_grad():
        assert not needs_gradient((wanted,), {})


def test_aot_follows_weights_changed_in_place_under_inference_mode(tmp_path, monkeypatch):
    """A module made inside ``torch.inference_mode`` has weights without a version counter:
    the package would fold its constants from them once and keep them after an in-place
    change. They are made ordinary tensors of the same values, so the change is seen."""
    from storygen.accel import AotForward

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    with torch.inference_mode():
        net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).eval()
        assert net[0].weight.is_inference()
        aot = AotForward(net)
        x = torch.randn(3, 8)
        torch.testing.assert_close(aot(x), net(x))
        assert not any(t.is_inference() for t in net.state_dict().values())
        net[0].weight.mul_(3.0)
        net[1].bias.add_(1.0)
        torch.testing.assert_close(aot(x), net(x))
    assert list(aot.sources.values()) == ["built"]


def test_a_signature_holds_a_context_tables_shapes_not_its_values():
    """A :class:`ContextTable` argument (``xkv``) enters a call's signature as its type and
    its tensors' shapes, dtypes and devices: tables of other values share a graph and a
    package, a table of more rows or a plain tuple does not; a precompiled file finds the
    CUDA device of a tensor inside the table."""
    from storygen.accel import AotForward, _tensor_entries, call_signature
    from storygen.attention import ContextTable

    def table(rows: int, fill: float) -> ContextTable:
        return ContextTable(torch.full((rows, 77, 16), fill), torch.zeros(2, 5, dtype=torch.long))

    x = torch.zeros(2, 3)
    sig = call_signature(x, table(8, 0.0))
    assert sig == call_signature(x, table(8, 1.0)) and hash(sig) == hash(
        call_signature(x, table(8, 1.0))
    )
    assert sig != call_signature(x, table(16, 0.0))
    assert sig != call_signature(x, tuple(table(8, 0.0)))
    assert [e[0] for e in _tensor_entries(sig)] == [(2, 3), (8, 77, 16), (2, 5)]
    net = torch.nn.Linear(3, 4)
    assert AotForward(net).key(sig) == AotForward(net).key(call_signature(x, table(8, 1.0)))
    assert AotForward(net).key(sig) != AotForward(net).key(call_signature(x, table(16, 0.0)))
    # a table on another device is a device entry like any tensor's
    moved = sig[:1] + (
        ("ContextTable", tuple((e[0], e[1], torch.device("cuda", 1), e[3]) for e in sig[1][1])),
    )
    assert {e[2].type for e in _tensor_entries(moved)} == {"cpu", "cuda"}


def test_a_signature_tells_apart_what_a_graph_without_guards_would_confuse(monkeypatch):
    """Graphs built ahead of time keep no guards: their signature tells apart the strides of
    a tensor (a transposed or expanded input), numbers of other types that compare equal
    (True, 1, 1.0), lists and dicts by their items, and the module's training mode; a
    package's key also holds its weights' strides (a channels-last copy), the CPU's vector
    instruction set and whether float32 products run in TF32."""
    from storygen import accel
    from storygen.accel import AotForward, call_signature

    x = torch.zeros(4, 4)
    assert call_signature(x) != call_signature(x.t())
    assert call_signature(x) != call_signature(torch.zeros(1, 4).expand(4, 4))
    assert len({call_signature(v) for v in (True, 1, 1.0)}) == 3
    assert call_signature([x, 2]) == call_signature([torch.ones(4, 4), 2])
    assert call_signature([x, 2]) != call_signature((x, 2))
    assert call_signature({"a": x}) != call_signature({"a": x.t()})
    assert call_signature({"a": x}) != call_signature({"b": x})
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Dropout(0.5))
    aot = AotForward(net)
    evaluating = aot.signature((x,), {}, net.eval())
    assert evaluating != aot.signature((x,), {}, net.train())
    key = aot.key(evaluating)
    # a CPU of another vector instruction set, TF32 products: other code
    monkeypatch.setattr(accel, "_vector_isa", lambda: "another")
    assert aot.key(evaluating) != key
    monkeypatch.undo()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = not tf32
        assert aot.key(evaluating) != key
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert aot.key(evaluating) == key
    assert AotForward(net.to(memory_format=torch.channels_last)).key(evaluating) != key


@pytest.mark.parametrize("regional", [False, True])
def test_a_copy_of_a_compiled_unet_compiles_anew(regional):
    """``nn.Module`` drops compiled calls from a copy (a render's UNet for another device, a
    speed-up copy): the copy is not taken for compiled, and compiling it sets its own calls."""
    import copy

    from storygen.accel import compile_unet

    unet = new_pipe_unet()
    compile_unet(unet, regional=regional)
    assert is_compiled(unet)
    twin = copy.deepcopy(unet)
    assert not is_compiled(twin)
    compile_unet(twin, regional=regional)
    assert is_compiled(twin) and is_compiled(unet)
    calls = [m._compiled_call_impl for m in twin.modules() if m._compiled_call_impl is not None]
    own = [m._compiled_call_impl for m in unet.modules() if m._compiled_call_impl is not None]
    assert calls and len(calls) == len(own)
    assert not any(c is o for c, o in zip(calls, own, strict=True))


def test_regional_compile_names_the_blocks_a_model_lacks():
    from storygen.accel import compile_unet

    limit = torch._dynamo.config.recompile_limit
    with pytest.raises(ValueError, match="has none of the blocks it compiles.*Transformer2D"):
        compile_unet(torch.nn.Sequential(torch.nn.Linear(2, 2)), regional=True)
    assert torch._dynamo.config.recompile_limit == limit  # refused before changing anything


def test_a_padded_batch_gives_each_call_what_it_gives_alone(tmp_path):
    """The padding a compiled bucket adds (the last row repeated) never reaches the calls:
    three calls padded to a bucket of 8 rows with guidance get the outputs they get unpadded.
    (The padding path is taken with the UNet marked compiled, its compiled call the eager one.)"""
    from storygen.accel import _COMPILED_FLAG, use_compiled_rows
    from storygen.loading import load_pipeline
    from storygen.sampling import CallInputs, guided_output

    pipe = load_pipeline(new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS))
    unet = pipe.unet.eval()
    g = torch.Generator().manual_seed(0)
    c, s, d = unet.sample_channels, 77, unet.config.cross_attention_dim
    b, f, h = 3, 5, 8
    mask = torch.zeros(b, f)
    mask[:, 0] = mask[:, -1] = 1
    inputs = CallInputs(
        noise=torch.zeros(b, c, f, h, h),
        known=torch.randn(b, c, f, h, h, generator=g),
        mask=mask,
        context=torch.randn(b, f, s, d, generator=g),
        spacing=torch.tensor([1.0, 4.0, 16.0]),
        progress=torch.rand(b, f, generator=g),
    )
    x = torch.randn(b, c, f, h, h, generator=g)
    t = torch.tensor(500)
    negative = torch.randn(1, 1, s, d, generator=g)
    seen: list[int] = []
    unet.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        plain = guided_output(unet, x, t, inputs, 2.0, negative)
        setattr(unet, _COMPILED_FLAG, True)
        unet._compiled_call_impl = unet._call_impl  # compiled, as far as the padding goes
        use_compiled_rows(unet, {2 * b: row_bucket(2 * b)})
        padded = guided_output(unet, x, t, inputs, 2.0, negative)
    assert seen == [6, 8]  # the second pass ran the 8-row bucket
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=0)


def _gated_unet(tmp_path):
    """The micro UNet marked compiled (its compiled call the eager one: nothing compiles), with
    a hook that records when each pass starts and ends on which thread, and holds a pass while
    ``hold`` names its rows."""
    import threading
    import time

    from storygen.accel import _COMPILED_FLAG, use_compiled_rows
    from storygen.loading import load_pipeline
    from storygen.sampling import CallInputs, guided_output

    pipe = load_pipeline(new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS))
    unet = pipe.unet.eval()
    setattr(unet, _COMPILED_FLAG, True)
    unet._compiled_call_impl = unet._call_impl
    use_compiled_rows(unet, {r: row_bucket(r) for r in (2, 4, 6)})
    c, s, d = unet.sample_channels, 77, unet.config.cross_attention_dim
    f, h = 5, 8
    log: list[tuple[str, int, float]] = []
    hold: dict[int, float] = {}
    entered = threading.Event()

    def pre(_, args):
        log.append(("start", args[0].shape[0], time.perf_counter()))
        entered.set()
        time.sleep(hold.get(args[0].shape[0], 0.0))

    unet.register_forward_pre_hook(pre)
    unet.register_forward_hook(
        lambda _, args, out: log.append(("end", args[0].shape[0], time.perf_counter()))
    )

    def call(calls: int) -> torch.Tensor:
        mask = torch.zeros(calls, f)
        mask[:, 0] = 1
        inputs = CallInputs(
            noise=torch.zeros(calls, c, f, h, h),
            known=torch.zeros(calls, c, f, h, h),
            mask=mask,
            context=torch.zeros(calls, f, s, d),
            spacing=torch.ones(calls),
            progress=torch.zeros(calls, f),
        )
        x = torch.zeros(calls, c, f, h, h)
        with torch.no_grad():
            return guided_output(unet, x, torch.tensor(500), inputs, 2.0, torch.zeros(1, 1, s, d))

    return call, log, hold, entered, unet


def _span(log, rows):
    start = next(t for e, r, t in log if e == "start" and r == rows)
    end = next(t for e, r, t in log if e == "end" and r == rows)
    return start, end


def _beside(gated, hold: dict[int, float], worker_calls: int, calls: int) -> list:
    """A pass of ``worker_calls`` calls on a worker thread, held as ``hold`` says, and one of
    ``calls`` on this thread once the worker's has started; the log of both."""
    import threading

    call, log, held, entered, _ = gated
    held.clear()
    held.update(hold)
    entered.clear()
    log.clear()
    worker = threading.Thread(target=call, args=(worker_calls,))
    worker.start()
    assert entered.wait(10)
    call(calls)
    worker.join()
    return list(log)


def test_a_compiling_pass_runs_alone_in_the_process(tmp_path):
    """A compiled module's first pass of a shape (the one that compiles) runs alone: a pass of
    a compiled shape on another thread waits for it to end, and it waits for one running.
    A compile traces with process-wide state, so a compiled pass running beside it fails."""
    gated = _gated_unet(tmp_path)
    gated[0](1)  # 2 rows with guidance: compiled from here on
    # a first pass of 4 rows (compiling) on a worker thread, a 2-row pass meanwhile
    log = _beside(gated, {4: 0.5}, 2, 1)
    assert _span(log, 2)[0] >= _span(log, 4)[1]
    # a 2-row pass running on a worker thread, the first pass of 6 rows (8 padded) meanwhile
    log = _beside(gated, {2: 0.5}, 1, 3)
    assert _span(log, 8)[0] >= _span(log, 2)[1]


def test_passes_of_compiled_shapes_run_side_by_side(tmp_path):
    """Only a compile runs alone: two passes of compiled shapes on two threads overlap."""
    gated = _gated_unet(tmp_path)
    gated[0](1)
    gated[0](2)
    log = _beside(gated, {2: 0.5, 4: 0.5}, 2, 1)
    (start4, end4), start2 = _span(log, 4), _span(log, 2)[0]
    assert start4 < start2 < end4  # the 2-row pass started while the 4-row one ran


def test_a_failed_compiling_pass_compiles_again(tmp_path):
    """A first pass that fails leaves its shape to compile on the next pass, and holds no
    other pass back."""
    from storygen.accel import warm_calls

    call, log, hold, _, unet = _gated_unet(tmp_path)
    hold[2] = -1.0  # time.sleep raises on a negative time: the pass fails
    with pytest.raises(ValueError):
        call(1)
    assert not warm_calls(unet)
    call(2)  # a first pass of another shape gets through
    hold.clear()
    call(1)
    call(1)
    assert len(warm_calls(unet)) == 2  # 2 and 4 rows


def test_a_copy_starts_cold_and_a_call_to_differentiate_is_another_first_call():
    """The gate's record of a module's compiled calls: a call with autograd on is a first
    call (dynamo compiles another graph for it) even where the same shapes ran without, and
    a copy of the module (a render's sped-up copy, compiled anew) has run none."""
    import copy

    from storygen.accel import compiled_call, warm_calls

    net = torch.nn.Linear(2, 2)
    x = torch.zeros(1, 2)
    firsts = []
    for grad in (False, False, True, True):
        with torch.set_grad_enabled(grad), compiled_call(net, x) as first:
            firsts.append(first)
    assert firsts == [True, False, True, False] and len(warm_calls(net)) == 2
    twin = copy.deepcopy(net)
    assert not warm_calls(twin)
    with torch.no_grad(), compiled_call(twin, x) as first:
        assert first


def test_a_forked_child_compiles_though_the_parent_was_mid_call():
    """A child forked while a parent's thread was inside a compiled call has no such call:
    its first call (a compile) runs at once instead of waiting for it forever."""
    import subprocess
    import sys

    code = """
import multiprocessing, threading, time, torch
from storygen.accel import compiled_call
module = torch.nn.Identity()
with compiled_call(module, 1):  # a first call: the signature is compiled from here on
    pass
inside = threading.Event()
def warm_call():
    with compiled_call(module, 1):
        inside.set()
        time.sleep(3)
threading.Thread(target=warm_call).start()
inside.wait()
def child():
    with compiled_call(module, 2) as first:
        return first
with multiprocessing.get_context("fork").Pool(1) as pool:
    print("child compiled", pool.apply_async(child).get(timeout=20))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "child compiled True" in done.stdout


def test_compile_phases_are_the_time_spent_between_two_records():
    from storygen.accel import phases_since

    before = {"_compile.compile_inner": 2.0, "bytecode_tracing": 1.0, "load": 0.5}
    after = {"_compile.compile_inner": 7.0, "bytecode_tracing": 1.5, "load": 0.5, "new": 3.0}
    spent = phases_since(before, after)
    assert spent == {"_compile.compile_inner": 5.0, "new": 3.0, "bytecode_tracing": 0.5}
    assert list(spent) == ["_compile.compile_inner", "new", "bytecode_tracing"]  # longest first


def test_cudnn_autotune_is_for_the_block_only():
    before = torch.backends.cudnn.benchmark
    with cudnn_autotune(True) as on:
        assert on and torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before
    with cudnn_autotune(False) as on:
        assert on == before
    assert torch.backends.cudnn.benchmark == before


def test_cpu_renders_leave_cudnn_alone(tmp_path):
    pipe = new_pipe(tmp_path)
    out = pipe(PROMPTS, 17, **RUN)
    assert out.stats.cudnn_autotune is False  # nothing to tune on a CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_renders_autotune_and_give_the_same_frames(tmp_path):
    pipe = new_pipe(tmp_path, device="cuda")
    tuned = pipe(PROMPTS, 17, **RUN)
    plain = pipe(PROMPTS, 17, **RUN, cudnn_autotune=False)
    assert tuned.stats.cudnn_autotune is True and plain.stats.cudnn_autotune is False
    torch.testing.assert_close(tuned.frames, plain.frames, atol=1e-3, rtol=1e-3)


def test_work_beside_sampling_changes_nothing_on_a_cpu():
    x = torch.randn(2, 3)
    with beside_sampling("cpu") as stream:
        assert stream is None
        y = x * 2
    assert torch.equal(y, x + x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_work_beside_sampling_does_not_wait_for_the_default_stream():
    conv = torch.nn.Conv2d(4, 8, 3).cuda()
    host = torch.randn(16, 4, 32, 32)
    expected = conv(host.cuda()).cpu()
    with beside_sampling("cuda"):  # the stream's first use allocates (cudaMalloc waits for all)
        conv(host.to("cuda")).cpu()
    torch.cuda.synchronize()
    torch.cuda._sleep(1_000_000_000)  # the sampling's passes: the default stream busy a while
    with beside_sampling("cuda") as stream:
        got = conv(host.to("cuda")).cpu()  # host in, host out, as a decode's chunk
    assert stream is not None and stream.priority < 0
    assert not torch.cuda.current_stream().query(), "waited for the default stream"
    torch.cuda.synchronize()
    torch.testing.assert_close(got, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decoding_beside_sampling_gives_the_frames_of_the_default_stream(tmp_path):
    pipe = new_pipe(tmp_path, "micro-latent", "cuda")
    latents = torch.randn(20, 4, 16, 16)
    on_cuda = latents.cuda()  # made on the default stream: the decode must wait for it
    side = pipe.decode(on_cuda)
    with torch.no_grad():
        plain = torch.cat(
            [pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample for z in on_cuda.split(16)]
        )
    torch.testing.assert_close(side, plain.float().cpu().clamp(-1, 1))


def test_aot_compiles_in_process_where_the_package_loader_dies(tmp_path, monkeypatch):
    """AOTInductor's loader is native code: where it dies loading a package (a signal, as on
    a mismatched CUDA set-up), the render's process would die with it. A child process loads
    each package first; where it dies, the module compiles in process instead, says why,
    and the record spares later renders with this PyTorch the packages."""
    import json

    from storygen import accel
    from storygen.accel import (
        AOT_DIR,
        PRE_SUFFIX,
        AotForward,
        AotUnavailable,
        PrecompiledForward,
        aot_fallbacks,
    )

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path))
    monkeypatch.setattr(accel, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    aot = AotForward(net)
    folder = tmp_path / AOT_DIR
    folder.mkdir()
    package = folder / f"{aot.key(aot.signature((x,), {}, net))}.pt2"
    package.write_bytes(b"a package its loader cannot run")
    before = len(aot_fallbacks())
    with torch.no_grad():
        got = aot(x)
        torch.testing.assert_close(got, net(x))
        assert aot.sources == {}  # no package loaded in process
        torch.testing.assert_close(aot(2 * x), net(2 * x))
    # the calls run graphs dynamo traced whole and saved beside the packages instead
    assert isinstance(aot.fallback, PrecompiledForward)
    assert sorted(aot.fallback.sources.values()) == ["built"]
    [why] = aot_fallbacks()[before:]
    assert "SIGSEGV" in why and package.name in why and "Sequential runs precompiled" in why
    assert [p.name for p in folder.glob(f"*{PRE_SUFFIX}")] == [package.stem + PRE_SUFFIX]
    assert not package.with_name(package.name + ".ok").exists()
    record = json.loads((folder / "unavailable-cpu.json").read_text())
    assert record == {
        "torch": torch.__version__,
        "package": package.name,
        "reason": f"AOTInductor's loader died with SIGSEGV loading {package.name}",
    }

    # a later render's module falls back at once: no child, no package built
    def no_probe(*_):
        raise AssertionError("probed again")

    monkeypatch.setattr(accel, "_probe", no_probe)
    other = AotForward(torch.nn.Linear(4, 3))
    with torch.no_grad():
        torch.testing.assert_close(other(x), other.module(x))
    assert isinstance(other.fallback, PrecompiledForward)
    assert "delete it to try again" in aot_fallbacks()[-1]
    # a later module of the same structure loads the saved graph, and runs its own weights
    torch.manual_seed(1)
    same = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    later = AotForward(same)
    with torch.no_grad():
        torch.testing.assert_close(later(x), same(x))
        assert not torch.allclose(same(x), net(x))
    assert sorted(later.fallback.sources.values()) == ["loaded"]
    # another PyTorch's record is dropped, and nothing is refused
    record["torch"] = "0.0"
    (folder / "unavailable-cpu.json").write_text(json.dumps(record))
    accel._refuse_where_unavailable(folder, "cpu")
    assert not (folder / "unavailable-cpu.json").exists()
    monkeypatch.setattr(accel, "_probe", lambda *_: (False, "died"))
    with pytest.raises(AotUnavailable, match="died"):
        AotForward(net)._checked(package, ("cpu", -1))


_LOAD_PRECOMPILED = """
import json, sys, torch
from storygen.accel import AotForward, PrecompiledForward, compile_phases
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
x = torch.linspace(-1, 1, 8).reshape(2, 4)
pre = PrecompiledForward(net, {}, AotForward(net).key)
with torch.no_grad():
    got = pre(x)
    diff = float((got - net(x)).abs().max())
print(json.dumps({"source": list(pre.sources.values()), "diff": diff, "phases": compile_phases()}))
"""


def test_precompiled_calls_are_saved_loaded_without_tracing_and_rebuilt_when_torn(
    tmp_path, monkeypatch
):
    """:class:`PrecompiledForward`: a signature's first call traces the module whole, compiles
    and saves it; a new process loads the file and runs it without dynamo tracing anything;
    another signature gets its own file; a torn file is traced again."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from storygen.accel import AOT_DIR, OUTER_PHASE, PRE_SUFFIX, AotForward, PrecompiledForward

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    pre = PrecompiledForward(net, {}, AotForward(net).key)
    with torch.no_grad():
        torch.testing.assert_close(pre(x), net(x))
        torch.testing.assert_close(pre(3 * x), net(3 * x))  # the same graph
        torch.testing.assert_close(pre(x[:1]), net(x[:1]))  # a graph of its own
    assert sorted(pre.sources.values()) == ["built", "built"]
    files = sorted((tmp_path / AOT_DIR).glob(f"*{PRE_SUFFIX}"))
    assert len(files) == 2
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "STORYLOOM_COMPILE_CACHE": str(tmp_path), "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_PRECOMPILED], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["source"] == ["loaded"] and out["diff"] < 1e-6
    assert out["phases"]["pre_load"] > 0 and out["phases"].get(OUTER_PHASE, 0.0) == 0.0
    # a torn file: traced and saved again
    key = AotForward(net).key(AotForward.signature((x,), {}, net))
    torn = tmp_path / AOT_DIR / f"{key}{PRE_SUFFIX}"
    assert torn in files
    torn.write_bytes(torn.read_bytes()[:100])
    again = PrecompiledForward(net, {}, AotForward(net).key)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x))
    assert list(again.sources.values()) == ["built"] and torn.stat().st_size > 100


class _Breaks(torch.nn.Module):
    """A module dynamo cannot trace as one graph (a value read back to Python)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if float(y.sum()) > 1e9:  # data-dependent branch: a graph break
            return y
        return y * 2


def test_a_module_dynamo_cannot_trace_whole_compiles_in_process_and_says_why(tmp_path, monkeypatch):
    from storygen.accel import AotForward, PrecompiledForward, aot_fallbacks

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = _Breaks()
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    pre = PrecompiledForward(net, {}, AotForward(net).key)
    before = len(aot_fallbacks())
    with torch.no_grad():
        torch.testing.assert_close(pre(x), net(x))
        torch.testing.assert_close(pre(x[:1]), net(x[:1]))
    assert pre.whole is not None and pre.sources == {}
    [why] = aot_fallbacks()[before:]
    assert "cannot precompile it as one graph" in why and "_Breaks compiles in process" in why


def test_aot_probe_tells_a_torn_package_from_a_loader_that_dies(tmp_path):
    """A file the loader rejects with an error is compiled again (loads: True, with why);
    only a loader that dies makes the package unusable (loads: False)."""
    from storygen import accel

    torn = tmp_path / "torn.pt2"
    torn.write_bytes(b"torn")
    loads, why = accel._probe(torn, -1)
    assert loads and why  # an error message from the loader, not a death
