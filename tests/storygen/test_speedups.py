"""The UNet speed-ups (storygen.accel.SPEEDUPS, storygen.attention): each computes what the
UNet computed before to rounding, a render applies them without touching the pipeline's own
UNet, and a bad choice is refused with the choices named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storygen.accel import (
    COMPILE_MIN_PASSES,
    DEFAULT_SPEEDUPS,
    apply_speedups,
    compile_decoder,
    decoder_compiles,
    fast_temporal_convs,
    resolve_speedups,
    warm_calls,
)
from storygen.attention import (
    PackedSequenceAttnProcessor,
    ShortSequenceAttnProcessor,
    pack_eager,
    packed_temporal_attention,
    short_temporal_attention,
)
from storygen.pipeline import StoryVideoPipeline
from storygen.presets import build_components, new_model

# the same story and settings as the compile tests
from tests.storygen.test_accel import PROMPTS, RUN  # noqa: E402


def _unet_and_call(seed: int = 0):
    """A micro UNet with every weight random (diffusers zero-initialises the last temporal
    convolution, which would hide a wrong one) and the arguments of one call."""
    torch.manual_seed(seed)
    unet = build_components("micro", mode="masked", texts=PROMPTS)["unet"].eval()
    gen = torch.Generator().manual_seed(seed)
    for p in unet.parameters():
        p.data.copy_(0.1 * torch.randn(p.shape, generator=gen))
    b, f, h = 2, 6, unet.config.sample_size
    sample = torch.randn(b, unet.config.in_channels, f, h, h, generator=gen)
    context = torch.randn(b, 7, unet.config.cross_attention_dim, generator=gen)
    return unet, (sample, torch.tensor(500), context)


def _forward(unet, call):
    from storygen.models import unet3d_forward

    with torch.no_grad():
        return unet3d_forward(unet, *call)


def test_temporal_convs_as_2d_compute_the_same():
    from diffusers.models.resnet import TemporalConvLayer

    unet, call = _unet_and_call()
    want = _forward(unet, call)
    layers = [m for m in unet.modules() if isinstance(m, TemporalConvLayer)]
    conv3d_calls = []
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(lambda *_: conv3d_calls.append(1))
    assert fast_temporal_convs(unet) == len(layers) > 0
    assert fast_temporal_convs(unet) == 0  # once
    got = _forward(unet, call)
    assert conv3d_calls == []  # no 3-D convolution ran
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    # the weights stay where they were: the state dict is the model's
    assert any(k.endswith("conv4.3.weight") for k in unet.state_dict())


def _layers_with(unet, kind):
    """The attention layers of ``unet`` with a ``kind`` processor: some, not all (the temporal
    ones)."""
    from diffusers.models.attention_processor import Attention

    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    picked = [m for m in layers if isinstance(m.processor, kind)]
    assert 0 < len(picked) < len(layers)
    return picked


def test_short_temporal_attention_computes_the_same_and_leaves_long_sequences_alone():
    unet, call = _unet_and_call(1)
    want = _forward(unet, call)
    n = short_temporal_attention(unet)
    temporal = _layers_with(unet, ShortSequenceAttnProcessor)
    assert n == len(temporal) > 0
    got = _forward(unet, call)
    assert not torch.equal(got, want)  # a different computation ran ...
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)  # ... to the same result
    # a sequence longer than the processor takes goes to the processor it replaced
    for m in temporal:
        m.processor.max_len = 4  # 6 frames
    assert torch.equal(_forward(unet, call), want)


def test_packed_temporal_attention_computes_the_same_and_packs_only_what_divides():
    unet, call = _unet_and_call(3)
    want = _forward(unet, call)
    n = packed_temporal_attention(unet)
    packed = _layers_with(unet, PackedSequenceAttnProcessor)
    assert n == len(packed) > 0 and packed_temporal_attention(unet) == 0  # once
    rows = []
    for m in packed:  # every call packs several sequences into a row
        m.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[:2]))
    got = _forward(unet, call)
    assert rows and all(m.processor.pack(b, f) > 1 for b, f in rows)
    assert not torch.equal(got, want)  # a different computation ran ...
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)  # ... to the same result
    # packing: as many whole sequences as a row holds and the batch divides into
    proc = packed[0].processor
    assert proc.pack(122880, 16) == 8 and proc.pack(512, 6) == 16 and proc.pack(7, 16) == 7
    assert proc.pack(131, 16) == 1  # a prime batch: nothing divides it
    assert proc.pack(4, 100) == 1  # longer than half a row
    from storygen.attention import _kernel_head_dim  # on CUDA, others keep their processor

    assert [_kernel_head_dim(d) for d in (2, 8, 16, 40, 64, 128)] == [
        False,
        False,
        True,
        False,
        True,
        True,
    ]
    # eager passes of a render that compiles its bulk keep the replaced processor ...
    assert pack_eager(unet, False) == len(packed)
    assert torch.equal(_forward(unet, call), want)
    pack_eager(unet, True)
    assert torch.allclose(_forward(unet, call), got, atol=1e-6)
    # ... as do calls it cannot pack
    for m in packed:
        m.processor.row = 8  # 6-frame sequences, one to a row
    assert torch.equal(_forward(unet, call), want)


# dynamo's default, whatever a compiled render earlier in this process raised it to
@torch._dynamo.config.patch(recompile_limit=8)
def test_eager_packed_attention_compiles_a_kernel_for_every_shape_of_a_render():
    """On CUDA an eager pass's packed attention runs FlexAttention compiled on its own, one
    kernel a shape; an eager render has more shapes (resolutions × row counts) than dynamo's
    default of eight recompiles, after which FlexAttention fell back to its unfused
    reference. Traced here with dynamo's eager backend, which counts recompiles the same."""
    import warnings

    from storygen.attention import FLEX_SHAPES, _compiled_flex, _same_sequence_score

    flex = _compiled_flex("eager")
    score = _same_sequence_score(16)
    shapes = torch._dynamo.config.recompile_limit + 4
    assert shapes < FLEX_SHAPES
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rows in range(1, shapes + 1):
            q, k, v = (torch.randn(rows, 2, 32, 16, generator=gen) for _ in range(3))
            got = flex(q, k, v, score_mod=score)
            # two 16-frame sequences to a row, each attending to itself only
            want = torch.cat(
                [
                    torch.nn.functional.scaled_dot_product_attention(
                        q[..., s : s + 16, :], k[..., s : s + 16, :], v[..., s : s + 16, :]
                    )
                    for s in (0, 16)
                ],
                dim=2,
            )
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    unfused = [w for w in caught if "without torch.compile" in str(w.message)]
    assert not unfused, "a shape past dynamo's recompile limit ran the unfused reference"


def test_speedups_together_with_fused_projections():
    unet, call = _unet_and_call(2)
    want = _forward(unet, call)
    done = apply_speedups(unet, ("tconv", "qkv", "tattn"))
    assert done["tconv"] > 0 and done["qkv"] > 0 and done["tattn"] > 0
    assert apply_speedups(unet, ("tconv", "qkv", "tattn")) == done  # once
    assert torch.allclose(_forward(unet, call), want, atol=1e-5, rtol=1e-4)
    # packed attention over fused projections (and over the matrix-product one it wraps)
    assert apply_speedups(unet, ("qkv", "pattn"))["pattn"] == done["tattn"]
    assert torch.allclose(_forward(unet, call), want, atol=1e-5, rtol=1e-4)


def test_fusing_projections_later_drops_the_processors_it_replaces():
    """``qkv`` applied in a later call sets the fused processor on every attention layer:
    the speed-ups that had set processors (``xkv``, ``tattn``) are no longer in the record
    (a context table would reach a processor that cannot read one), and asked for again in
    the same call they are set again over the fused projections."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from storygen.accel import applied_speedups
    from storygen.attention import TableCrossAttnProcessor

    unet, call = _unet_and_call(3)
    want = _forward(unet, call)
    assert apply_speedups(unet, ("xkv", "tattn"))["xkv"] == len(_kv_layers(unet))
    apply_speedups(unet, ("qkv",))
    assert set(applied_speedups(unet)) == {"qkv"}
    assert {type(p) for p in unet.attn_processors.values()} == {FusedAttnProcessor2_0}
    torch.testing.assert_close(_forward(unet, call), want, atol=1e-5, rtol=1e-4)
    again = apply_speedups(unet, ("qkv", "xkv"))
    assert again["xkv"] == len(_kv_layers(unet)) and "tattn" not in again
    assert all(isinstance(m.processor, TableCrossAttnProcessor) for m in _kv_layers(unet))
    torch.testing.assert_close(_forward(unet, call), want, atol=1e-5, rtol=1e-4)


def test_renders_with_processor_speedups_leave_the_pipelines_unet_as_loaded(tmp_path):
    """``tattn`` and ``pattn`` set attention processors, so a render applies them to its own
    copy: the pipeline's UNet keeps its processors, and a later render without speed-ups is
    the plain render bit for bit and reports none."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    plain = pipe(PROMPTS, 17, speedups="none", **RUN)
    for speedups in ("tattn", "pattn"):
        fast = pipe(PROMPTS, 17, speedups=speedups, **RUN)
        assert fast.stats.speedups[speedups] > 0
        torch.testing.assert_close(fast.frames, plain.frames, atol=1e-5, rtol=1e-5)
        assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
        after = pipe(PROMPTS, 17, speedups="none", **RUN)
        assert after.stats.speedups == {}
        torch.testing.assert_close(after.frames, plain.frames, atol=0, rtol=0)


def test_a_pipeline_loaded_under_inference_mode_renders_with_a_copy_and_follows_it(tmp_path):
    """Weights loaded inside ``torch.inference_mode`` keep no version counter, which the
    speed-up copy's stamp reads: such a pipeline renders with ``qkv`` (the default on CUDA)
    the plain frames, and a state dict loaded into it inside ``inference_mode`` reaches the
    next render's copy."""
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    with torch.inference_mode():
        pipe = StoryVideoPipeline.from_pretrained(folder)
        plain = pipe(PROMPTS, 17, speedups="none", **RUN)
        fast = pipe(PROMPTS, 17, speedups="qkv", **RUN)
        torch.testing.assert_close(fast.frames, plain.frames, atol=1e-5, rtol=1e-5)
        pipe.unet.load_state_dict({k: 1.5 * v for k, v in pipe.unet.state_dict().items()})
        changed = pipe(PROMPTS, 17, speedups="none", **RUN)
        assert not torch.allclose(changed.frames, plain.frames, atol=1e-3)
        fast = pipe(PROMPTS, 17, speedups="qkv", **RUN)
        torch.testing.assert_close(fast.frames, changed.frames, atol=1e-5, rtol=1e-5)


def test_a_renders_copy_follows_the_pipelines_unet_when_it_changes(tmp_path):
    """A render's sped-up copy of the UNet is kept for later renders (its compiled graphs
    with it) while the UNet stays as it was; once its weights change in place (a training
    step, a loaded state dict) or it is cast, the next render copies it again and renders
    with its weights as they are."""
    from storygen.runner import _SPEEDUP_COPIES

    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    loaded = pipe(PROMPTS, 17, speedups="none", **RUN)
    pipe(PROMPTS, 17, speedups="qkv", **RUN)
    [first] = _SPEEDUP_COPIES[pipe.unet].values()
    pipe(PROMPTS, 17, speedups="qkv", **RUN)
    assert list(_SPEEDUP_COPIES[pipe.unet].values()) == [first]  # kept
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.mul_(1.5)
    plain = pipe(PROMPTS, 17, speedups="none", **RUN)
    fast = pipe(PROMPTS, 17, speedups="qkv", **RUN)
    [second] = _SPEEDUP_COPIES[pipe.unet].values()
    assert second is not first
    torch.testing.assert_close(fast.frames, plain.frames, atol=1e-5, rtol=1e-5)
    pipe.unet.load_state_dict(StoryVideoPipeline.from_pretrained(folder).unet.state_dict())
    reloaded = pipe(PROMPTS, 17, speedups="qkv", **RUN)
    assert not torch.allclose(loaded.frames, fast.frames, atol=1e-3)
    torch.testing.assert_close(reloaded.frames, loaded.frames, atol=1e-5, rtol=1e-5)
    pipe.unet.to(torch.float64)
    pipe(PROMPTS, 17, speedups="qkv", **RUN)
    [cast] = _SPEEDUP_COPIES[pipe.unet].values()
    assert next(cast.parameters()).dtype == torch.float64
    # other speed-ups: a copy in place of that one (a copy is a whole UNet's memory)
    pipe(PROMPTS, 17, speedups="qkv,tattn", **RUN)
    [other] = _SPEEDUP_COPIES[pipe.unet].values()
    assert other is not cast


def test_naming_the_device_the_unet_is_on_another_way_copies_nothing(tmp_path, monkeypatch):
    """``cpu:0`` is the ``cpu`` the pipeline's UNet lives on: a render there without
    speed-ups that change modules runs the pipeline's UNet, not a copy of it."""
    import storygen.runner as runner

    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    copied: list[object] = []
    real = runner.copy.deepcopy

    def spy(obj, *args, **kwargs):
        if obj is pipe.unet:
            copied.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(runner.copy, "deepcopy", spy)
    plain = pipe(PROMPTS, 17, speedups="tconv", **RUN)
    named = pipe(PROMPTS, 17, speedups="tconv", devices=["cpu:0"], **RUN)
    assert not copied and named.stats.devices == ["cpu"]
    torch.testing.assert_close(named.frames, plain.frames, atol=0, rtol=0)


def test_float8_linears_approximate_the_unet_and_survive_a_dtype_cast():
    """The fp8 speed-up's layers (torch._scaled_mm, which a CPU runs too): every linear layer
    whose sizes are multiples of 16 becomes float8, the UNet's output stays close (float8 keeps
    3 mantissa bits: a few per cent per product), and casting the UNet to bf16 leaves the
    float8 weights as they are."""
    from curate.float8 import RowwiseFloat8Linear

    unet, call = _unet_and_call(4)
    want = _forward(unet, call)
    fits = [
        m
        for m in unet.modules()
        if type(m) is torch.nn.Linear and m.in_features % 16 == 0 and m.out_features % 16 == 0
    ]
    assert apply_speedups(unet, ("fp8",))["fp8"] == len(fits) > 0
    layers = [m for m in unet.modules() if isinstance(m, RowwiseFloat8Linear)]
    assert len(layers) == len(fits)
    got = _forward(unet, call)
    err = float((got - want).norm() / want.norm())
    assert 0 < err < 0.1
    unet.to(torch.bfloat16)
    assert {m.weight_f8.dtype for m in layers} == {torch.float8_e4m3fn}
    assert {m.weight_scale.dtype for m in layers} == {torch.float32}
    half = _forward(unet, tuple(c.to(torch.bfloat16) if c.is_floating_point() else c for c in call))
    assert half.dtype == torch.bfloat16
    assert float((half.float() - want).norm() / want.norm()) < 0.1


def test_speedup_choices():
    assert resolve_speedups("auto", "cuda") == DEFAULT_SPEEDUPS["cuda"]
    assert resolve_speedups("auto", "cpu") == DEFAULT_SPEEDUPS["cpu"]
    assert resolve_speedups(None, "mps") == DEFAULT_SPEEDUPS["cpu"]
    assert resolve_speedups("none", "cuda") == ()
    assert resolve_speedups(" none ", "cuda") == resolve_speedups(["none"], "cuda") == ()
    assert resolve_speedups("", "cuda") == ()
    assert resolve_speedups("qkv, tconv", "cpu") == ("tconv", "qkv")
    assert resolve_speedups("qkv,tconv,", "cpu") == ("tconv", "qkv")  # a trailing comma
    with pytest.raises(ValueError, match="'none' goes alone"):
        resolve_speedups("none,qkv", "cpu")
    assert resolve_speedups(["tattn"], "cpu") == ("tattn",)
    assert set(resolve_speedups("auto,cgraph", "cuda")) == {*DEFAULT_SPEEDUPS["cuda"], "cgraph"}
    assert resolve_speedups("qkv,auto", "cpu") == ("tconv", "qkv")
    with pytest.raises(ValueError, match="unknown speed-ups.*turbo.*choose from tconv"):
        resolve_speedups("tconv,turbo", "cuda")
    with pytest.raises(ValueError, match="fp8 speed-up needs a CUDA device"):
        resolve_speedups("fp8", "cpu")


def test_compiler_speedups_are_inductor_options_and_leave_the_modules_alone():
    from storygen.accel import inductor_options

    assert inductor_options(("tconv", "qkv")) == {}
    assert inductor_options(("cgraph",)) == {"triton.cudagraphs": True}
    assert inductor_options(("mm1x1", "cdt")) == {
        "conv_1x1_as_mm": True,
        "coordinate_descent_tuning": True,
    }
    mat = inductor_options(("mat",))
    assert mat["max_autotune_gemm"] is True and "TRITON" in mat["max_autotune_gemm_backends"]
    unet = build_components("micro", mode="masked")["unet"]
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    assert apply_speedups(unet, ("mm1x1", "cdt", "mat", "cgraph")) == {}
    after = unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.slow
def test_a_render_compiled_with_tuned_kernels_gives_the_plain_frames(tmp_path, monkeypatch):
    """Coordinate-descent tuning and autotuned matrix products change which kernels run, not
    what they compute."""
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    plain = pipe(PROMPTS, 17, speedups="none", compile="off", **RUN)
    # CUDA graphs (cgraph) are an option of Inductor's CUDA code: harmless on a CPU
    tuned = pipe(PROMPTS, 17, speedups="tconv,mm1x1,cdt,mat,cgraph", compile="all", **RUN)
    assert set(tuned.stats.speedups) == {"tconv", "mm1x1", "cdt", "mat", "cgraph"}
    assert tuned.stats.compiled_rows
    torch.testing.assert_close(tuned.frames, plain.frames, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_render_compiled_with_subpixel_upsampling_gives_the_plain_frames(tmp_path, monkeypatch):
    """``upconv`` traces into the compiled graph (the kernels' summing too) and renders the
    frames of the plain render; the pipeline's own UNet keeps the usual upsampling."""
    from diffusers.models.upsampling import Upsample2D

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    plain = pipe(PROMPTS, 17, speedups="none", compile="off", **RUN)
    fast = pipe(PROMPTS, 17, speedups="tconv,upconv", compile="all", **RUN)
    assert fast.stats.speedups["upconv"] > 0 and fast.stats.compiled_rows
    torch.testing.assert_close(fast.frames, plain.frames, atol=1e-4, rtol=1e-4)
    eager = pipe(PROMPTS, 17, speedups="upconv", compile="off", **RUN)
    torch.testing.assert_close(eager.frames, plain.frames, atol=1e-4, rtol=1e-4)
    samplers = [m for m in pipe.unet.modules() if isinstance(m, Upsample2D)]
    assert samplers and not any(getattr(m, "_storyloom_subpixel", False) for m in samplers)


def test_a_render_with_speedups_leaves_the_pipelines_unet_alone(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor2_0

    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    plain = pipe(PROMPTS, 17, speedups="none", **RUN)
    assert plain.stats.speedups == {}
    fast = pipe(PROMPTS, 17, speedups="tconv,upconv,qkv,tattn", **RUN)
    assert set(fast.stats.speedups) == {"tconv", "upconv", "qkv", "tattn"}
    assert fast.stats.speedups["upconv"] > 0
    np.testing.assert_allclose(fast.frames, plain.frames, atol=1e-4, rtol=1e-4)
    # fused projections and the upsampling went to the render's copy; the pipeline's UNet
    # is as loaded
    processors = {type(p) for p in pipe.unet.attn_processors.values()}
    assert processors == {AttnProcessor2_0}
    assert not any(k.endswith("to_qkv.weight") for k in pipe.unet.state_dict())
    assert not any(getattr(m, "_storyloom_subpixel", False) for m in pipe.unet.modules())
    # a second render with the same speed-ups reuses that copy
    from storygen.runner import _SPEEDUP_COPIES

    again = pipe(PROMPTS, 17, speedups="qkv,upconv,tattn,tconv", **RUN)
    assert len(_SPEEDUP_COPIES[pipe.unet]) == 1
    np.testing.assert_array_equal(again.frames, fast.frames)
    # the default on a CPU: temporal convolutions only, which change no module
    auto = pipe(PROMPTS, 17, **RUN)
    assert auto.stats.speedups == {"tconv": auto.stats.speedups["tconv"]}
    np.testing.assert_allclose(auto.frames, plain.frames, atol=1e-4, rtol=1e-4)


def test_a_bad_speedup_is_refused_before_the_render(tmp_path):
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="unknown speed-ups"):
        pipe(PROMPTS, 17, speedups="warp", **RUN)
    with pytest.raises(ValueError, match="compile must be one of"):
        pipe(PROMPTS, 17, compile="fast", **RUN)
    with pytest.raises(ValueError, match="compile='aot'.*do not replay CUDA graphs"):
        pipe(PROMPTS, 17, compile="aot", speedups="auto,cgraph", **RUN)


def test_a_render_says_where_its_time_went(tmp_path):
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    run = {**RUN, "output_type": "np"}
    out = pipe(PROMPTS, 17, output_path=tmp_path / "v.mp4", fps=8, **run)
    stages = out.stats.stage_times_s
    assert list(stages) == ["text", "unet", "decode", "write", "rest"]
    assert min(stages.values()) >= 0
    assert stages["unet"] > 0 and stages["decode"] > 0 and stages["text"] > 0
    batches = sum(sum(v) for v in out.stats.batch_times_s.values())
    assert stages["unet"] == pytest.approx(batches)
    assert stages["unet"] + stages["text"] <= out.stats.wall_time_s
    assert (tmp_path / "v.mp4").stat().st_size > 0


@pytest.mark.slow
def test_a_compiled_cpu_render_with_packed_attention_keeps_the_usual_attention(
    tmp_path, monkeypatch
):
    """Inductor's CPU template does not lower FlexAttention: a compiled CPU graph keeps the
    processor packed attention replaced, so the render runs and gives the plain frames."""
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    plain = pipe(PROMPTS, 17, speedups="none", **RUN)
    packed = pipe(PROMPTS, 17, speedups="pattn", compile="all", **RUN)
    assert packed.stats.speedups["pattn"] > 0 and packed.stats.compiled_rows
    np.testing.assert_allclose(packed.frames, plain.frames, atol=1e-4, rtol=1e-4)


def test_the_decoder_compiles_where_the_render_decodes_enough_chunks():
    enough = COMPILE_MIN_PASSES * 16
    assert decoder_compiles("on", enough, 16)
    assert decoder_compiles("on", enough - 15, 16)  # a short last chunk counts
    assert not decoder_compiles("on", enough - 16, 16)
    assert decoder_compiles("all", 1, 16)
    assert decoder_compiles("regional", 1, 16)  # chosen as such: every bucket
    # "auto"'s regional (every_bucket False) compiles it where it repays, as "on"
    assert not decoder_compiles("regional", enough - 16, 16, every_bucket=False)
    assert decoder_compiles("regional", enough, 16, every_bucket=False)
    assert not decoder_compiles("off", 10 * enough, 16)


def test_a_compiled_decoder_decodes_the_same_frames_with_one_graph(monkeypatch, tmp_path):
    """``vdec``: the decoder compiled with static shapes; a short last chunk is padded to a
    full one (no second graph) and its padding dropped."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    pipe = StoryVideoPipeline(**build_components("micro-latent", mode="masked", texts=PROMPTS))
    h, w = (side // pipe.vae_scale for side in pipe.default_size())
    z = torch.randn(21, pipe.sample_channels, h, w, generator=torch.Generator().manual_seed(1))
    want = pipe.decode(z)  # a chunk of 16 and one of 5
    assert compile_decoder(pipe.vae) and not compile_decoder(pipe.vae)
    counters.clear()
    got = pipe.decode(z)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    short = pipe.decode(z[:3])
    assert counters["stats"]["unique_graphs"] == graphs  # the short chunk reused the graph
    # its calls passed the compile gate as one signature, the first of them alone
    assert len(warm_calls(pipe.vae.decoder)) == 1
    assert got.shape == want.shape and short.shape == (3, *want.shape[1:])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short, want[:3], atol=1e-5, rtol=1e-5)


def test_a_render_compiles_its_decoder_only_when_asked_and_compiling(tmp_path):
    folder = new_model(tmp_path / "m", preset="micro-latent", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    run = {**RUN, "compile": "off"}
    assert not pipe(PROMPTS, 17, speedups="vdec", **run).stats.decoder_compiled
    # compiling, but 17 frames are 2 chunks, far under what repays a compile
    run["compile"] = "on"
    assert not pipe(PROMPTS, 17, speedups="vdec", **run).stats.decoder_compiled


def test_a_decoder_an_earlier_render_compiled_serves_only_renders_that_ask(tmp_path):
    """The decoder is compiled in place, once; a later render without ``vdec``, or with
    compile off, decodes through its eager forward and says so, and the compiled call is
    still there for the next render that asks for it."""
    from storygen.accel import _COMPILED_FLAG

    folder = new_model(tmp_path / "m", preset="micro-latent", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    decoder = pipe.vae.decoder
    calls: list[int] = []

    def compiled(*args, **kwargs):  # stands for the compiled graph: counts, runs eager
        calls.append(1)
        return decoder.forward(*args, **kwargs)

    decoder._compiled_call_impl = compiled
    setattr(decoder, _COMPILED_FLAG, True)
    run = {**RUN, "output_type": "np"}
    plain = pipe(PROMPTS, 17, speedups="none", **run)
    assert not calls and not plain.stats.decoder_compiled
    off = pipe(PROMPTS, 17, speedups="vdec", compile="off", **run)
    assert not calls and not off.stats.decoder_compiled
    assert decoder._compiled_call_impl is compiled and getattr(decoder, _COMPILED_FLAG)
    asked = pipe(PROMPTS, 17, speedups="vdec", compile="on", **run)
    assert calls and asked.stats.decoder_compiled
    # the compiled decoder's short last chunk is padded to a full one: rounding differs
    assert np.abs(asked.frames.astype(int) - plain.frames.astype(int)).max() <= 1


@pytest.mark.slow
def test_a_compiled_render_with_a_compiled_decoder_gives_the_plain_frames(tmp_path, monkeypatch):
    """The UNet compiling on the device's worker thread while the main thread compiles and
    runs the decoder: the render runs through and its frames are the plain ones."""
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    folder = new_model(tmp_path / "m", preset="micro-latent", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    run = {**RUN, "output_type": "np"}
    plain = pipe(PROMPTS, 17, speedups="none", **run)
    fast = pipe(PROMPTS, 17, speedups="tconv,vdec", compile="all", **run)
    assert fast.stats.decoder_compiled and fast.stats.compiled_rows
    assert not plain.stats.decoder_compiled
    assert fast.stats.compile_s > 0 and plain.stats.compile_s == 0
    diff = np.abs(fast.frames.astype(int) - plain.frames.astype(int))
    assert diff.max() <= 1  # uint8 frames: rounding at most one level


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_speedups_compiled_give_the_same_frames(tmp_path, monkeypatch):
    """Every exact speed-up together, compiled, against the plain eager render; float8
    linear layers within a stated error."""
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    # float32 throughout: cuDNN's TF32 convolutions (on by default) in the eager render and
    # 1x1 convolutions as float32 matrix products in the compiled one differ by TF32's
    # rounding (up to 4e-3 on these frames), which is not what this test is about
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder).to("cuda")
    plain = pipe(PROMPTS, 17, speedups="none", compile="off", **RUN)
    fast = pipe(PROMPTS, 17, speedups="tconv,upconv,qkv,tattn,mm1x1,xkv", compile="all", **RUN)
    assert fast.stats.compiled_rows == [2, 4]
    assert set(fast.stats.speedups) == {"tconv", "upconv", "qkv", "tattn", "mm1x1", "xkv"}
    torch.testing.assert_close(fast.frames, plain.frames, atol=1e-3, rtol=1e-3)
    # replayed as CUDA graphs: the same kernels; each pass's output is read before the next
    # pass overwrites the graph's buffer (float32 here: no cast copies it)
    graphed = pipe(PROMPTS, 17, speedups="tconv,qkv,mm1x1,cgraph", compile="all", **RUN)
    torch.testing.assert_close(graphed.frames, plain.frames, atol=1e-3, rtol=1e-3)
    # the sliding windows, where CUDA graphs pay: each window's output feeds the next
    ar = {**RUN, "policy": "autoregressive"}
    plain_ar = pipe(PROMPTS, 17, speedups="none", compile="off", **ar)
    graphed_ar = pipe(PROMPTS, 17, speedups="tconv,qkv,mm1x1,cgraph", compile="all", **ar)
    torch.testing.assert_close(graphed_ar.frames, plain_ar.frames, atol=1e-3, rtol=1e-3)
    for compile_ in ("off", "all"):  # packed FlexAttention: its own kernel, and in the graph
        packed = pipe(PROMPTS, 17, speedups="tconv,qkv,pattn", compile=compile_, **RUN)
        assert packed.stats.speedups["pattn"] > 0
        torch.testing.assert_close(packed.frames, plain.frames, atol=1e-3, rtol=1e-3)
    from storygen.accel import fp8_unavailable

    if (
        fp8_unavailable("cuda", torchao=False) is None
    ):  # float8 linears against bf16 ones, as renders run
        from storygen.loading import load_pipeline

        bf16 = load_pipeline(folder, torch_dtype=torch.bfloat16).to("cuda")
        want = bf16(PROMPTS, 17, speedups="tconv", compile="off", **RUN)
        fp8 = bf16(PROMPTS, 17, speedups="tconv,fp8", compile="off", **RUN)
        assert fp8.stats.speedups["fp8"] > 0
        err = (fp8.frames.float() - want.frames.float()).norm() / want.frames.float().norm()
        assert float(err) < 0.1


def _conv_flops(counter) -> int:
    return sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))


def test_upsampling_convs_as_four_small_ones_compute_the_same():
    """``upconv``: a 2x nearest-neighbour upsampling and its 3x3 convolution as four 2x2
    convolutions of the input, the same numbers to rounding for 4/9 of the multiply-adds,
    at odd sizes and other channel counts too; an explicit other output size runs as before."""
    from diffusers.models.upsampling import Upsample2D

    from benchmarks.flop_count import flop_counter
    from storygen.accel import subpixel_upsamplers

    gen = torch.Generator().manual_seed(0)
    for cin, cout, h, w in ((8, 8, 5, 7), (4, 6, 1, 1), (3, 5, 6, 4)):
        layer = Upsample2D(cin, use_conv=True, out_channels=cout).eval()
        x = torch.randn(2, cin, h, w, generator=gen)
        with torch.no_grad(), flop_counter(display=False) as before:
            want = layer(x)
        with torch.no_grad():
            odd = layer(x, (2 * h + 1, 2 * w))
        assert subpixel_upsamplers(layer) == 1
        assert subpixel_upsamplers(layer) == 0  # once
        with torch.no_grad(), flop_counter(display=False) as after:
            got = layer(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # the convolutions' FLOPs (the counter also sees the kernels' summing, an einsum)
        assert 9 * _conv_flops(after) == 4 * _conv_flops(before) > 0
        with torch.no_grad():
            torch.testing.assert_close(layer(x, (2 * h + 1, 2 * w)), odd)
    # layers it cannot take are left as they are: no convolution, a transposed one, a norm
    plain = Upsample2D(4, use_conv=False)
    transposed = Upsample2D(4, use_conv_transpose=True)
    normed = Upsample2D(4, use_conv=True, norm_type="rms_norm", eps=1e-6, elementwise_affine=True)
    assert sum(subpixel_upsamplers(m) for m in (plain, transposed, normed)) == 0


def test_upsampling_speedup_in_a_unet_computes_the_same():
    from diffusers.models.upsampling import Upsample2D

    unet, call = _unet_and_call()
    want = _forward(unet, call)
    samplers = [m for m in unet.modules() if isinstance(m, Upsample2D)]
    done = apply_speedups(unet, ("upconv",))
    assert done["upconv"] == len(samplers) > 0
    torch.testing.assert_close(_forward(unet, call), want, atol=1e-5, rtol=1e-4)


def _kv_layers(unet):
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]


@pytest.mark.parametrize("fused", [False, True])
def test_cross_attention_from_a_context_table_computes_the_same_with_fewer_flops(fused):
    """``xkv``: keys and values projected once per row of a table of distinct embeddings and
    gathered per frame give the per-frame context's output, and the projections' FLOPs fall
    from one per frame to one per table row. A per-frame context still goes to the processor
    replaced; an index that does not fit the sample is refused."""
    from torch.utils.flop_counter import FlopCounterMode

    from storygen.attention import ContextTable, reads_context_tables, table_cross_attention

    unet, (sample, t, _) = _unet_and_call()
    if fused:
        unet.fuse_qkv_projections()
    b, f = sample.shape[0], sample.shape[2]
    tokens, dim = 7, unet.config.cross_attention_dim
    table = torch.randn(3, tokens, dim, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([[0, 0, 1, 1, 1, 2], [2, 2, 2, 0, 0, 0]])
    assert index.shape == (b, f)
    per_frame = table[index]  # (B, F, S, D)
    want = _forward(unet, (sample, t, per_frame))
    layers = _kv_layers(unet)
    assert not reads_context_tables(unet)
    assert table_cross_attention(unet) == len(layers) > 0
    assert table_cross_attention(unet) == 0 and reads_context_tables(unet)  # once
    got = _forward(unet, (sample, t, ContextTable(table, index)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_forward(unet, (sample, t, per_frame)), want, atol=0, rtol=0)

    def flops(states) -> int:
        with FlopCounterMode(display=False) as counter:
            _forward(unet, (sample, t, states))
        return counter.get_total_flops()

    # each layer's keys and values: 2 · tokens · dim · 2C multiply-adds per embedding
    per_row = sum(2 * tokens * dim * 2 * m.to_q.out_features for m in layers)
    saved = flops(per_frame) - flops(ContextTable(table, index))
    assert saved == (b * f - len(table)) * per_row
    with pytest.raises(ValueError, match=r"rows have shape \(2, 5\); expected \(2, 6\)"):
        _forward(unet, (sample, t, ContextTable(table, index[:, :5])))


def test_a_render_with_context_tables_gives_the_per_frame_frames(tmp_path, monkeypatch):
    """A render with ``xkv`` hands its cross-attention the batch's distinct prompts as a table
    (the unconditional one among them) and renders the frames of a render without; the
    pipeline's own UNet keeps its processors."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from storygen import attention

    seen: list[int] = []
    call = attention.TableCrossAttnProcessor.__call__

    def spy(self, attn, hidden_states, *args, **kwargs):
        states = kwargs.get("encoder_hidden_states", args[0] if args else None)
        if isinstance(states, attention.ContextTable):
            seen.append(int(states.rows.max()))
        return call(self, attn, hidden_states, *args, **kwargs)

    monkeypatch.setattr(attention.TableCrossAttnProcessor, "__call__", spy)
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    plain = pipe(PROMPTS, 17, speedups="none", **RUN)
    assert not seen
    for speedups in ("xkv", "qkv,xkv"):
        fast = pipe(PROMPTS, 17, speedups=speedups, **RUN)
        assert fast.stats.speedups["xkv"] == len(_kv_layers(pipe.unet)) > 0
        torch.testing.assert_close(fast.frames, plain.frames, atol=1e-5, rtol=1e-5)
    # every cross-attention call read a table; with guidance its rows are the unconditional
    # embedding and the story's two prompts, so some frames read row 2
    assert seen and max(seen) == len(set(PROMPTS))
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}


def test_every_batch_of_a_render_reads_one_table_of_the_storys_prompts(tmp_path, monkeypatch):
    """With ``xkv`` each batch of a render gets the table of the story's distinct prompts, not
    of its own: a story of 17 prompts, one a frame, whose first call reads 5 of them and whose
    last level's batch reads all 17, hands every batch the same table shape (the prompts, the
    negative one and the unconditional row, padded to 24 rows), so a compiled graph that reads
    it compiles once per bucket; the frames are those of the per-frame render."""
    from storygen import attention

    shapes: list[tuple[int, ...]] = []
    call = attention.TableCrossAttnProcessor.__call__

    def spy(self, attn, hidden_states, *args, **kwargs):
        states = kwargs.get("encoder_hidden_states", args[0] if args else None)
        if isinstance(states, attention.ContextTable):
            shapes.append(tuple(states.table.shape))
        return call(self, attn, hidden_states, *args, **kwargs)

    monkeypatch.setattr(attention.TableCrossAttnProcessor, "__call__", spy)
    story = [f"shape number {i} on a plain background" for i in range(17)]
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=story)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    plain = pipe(story, 17, speedups="none", **RUN)
    fast = pipe(story, 17, speedups="xkv", **RUN)
    assert set(shapes) == {(24, 77, 16)}
    torch.testing.assert_close(fast.frames, plain.frames, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("compile_mode", ["all", "regional", "aot", "pre"])
def test_a_compiled_render_with_context_tables_gives_the_plain_frames(
    tmp_path, monkeypatch, compile_mode
):
    """``xkv`` in compiled graphs, the whole UNet's or its blocks', or built ahead of time
    (the table and its index the graphs' inputs): the frames those of the plain render, and a
    second render compiles nothing. Graphs built ahead of time take the table as an argument
    (their signature names its shapes, 8 rows: the unconditional embedding, the story's two
    prompts, padding) and a new pipeline loads them from the disk."""
    from storygen.accel import AotForward
    from storygen.runner import _SPEEDUP_COPIES

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=PROMPTS)
    pipe = StoryVideoPipeline.from_pretrained(folder)
    plain = pipe(PROMPTS, 17, speedups="none", compile="off", **RUN)
    fast = pipe(PROMPTS, 17, speedups="tconv,qkv,xkv", compile=compile_mode, **RUN)
    assert fast.stats.speedups["xkv"] > 0 and fast.stats.compiled_rows == [2, 4]
    assert not fast.stats.compile_fallbacks
    torch.testing.assert_close(fast.frames, plain.frames, atol=1e-4, rtol=1e-4)
    again = pipe(PROMPTS, 17, speedups="tconv,qkv,xkv", compile=compile_mode, **RUN)
    torch.testing.assert_close(again.frames, fast.frames, atol=0, rtol=0)
    assert again.stats.compile_s < 0.1 * fast.stats.compile_s
    if compile_mode not in ("aot", "pre"):
        return

    def graphs(p: StoryVideoPipeline) -> dict:
        [copy] = _SPEEDUP_COPIES[p.unet].values()
        impl = copy._compiled_call_impl
        assert isinstance(impl, AotForward)
        return (impl.fallback or impl).sources

    built = graphs(pipe)
    assert sorted(built.values()) == ["built", "built"]
    tables = [[v for v in sig if isinstance(v, tuple) and v[0] == "ContextTable"] for sig in built]
    assert sorted(t[0][1][0][0] for t in tables) == [(8, 77, 16)] * 2
    assert sorted(t[0][1][1][0] for t in tables) == [(2, 5), (4, 5)]
    fresh = StoryVideoPipeline.from_pretrained(folder)
    loaded = fresh(PROMPTS, 17, speedups="tconv,qkv,xkv", compile=compile_mode, **RUN)
    assert sorted(graphs(fresh).values()) == ["loaded", "loaded"]
    assert loaded.stats.compile_s < 0.1 * fast.stats.compile_s
    torch.testing.assert_close(loaded.frames, fast.frames, atol=0, rtol=0)
