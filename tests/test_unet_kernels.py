"""benchmarks/unet_kernels.py on the CPU: the variants that run there agree with the eager
pass, float8 says why it cannot run, and the FLOP split adds up."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import unet_kernels


def test_unet_kernels_on_cpu(tmp_path, monkeypatch):
    from storygen import attention

    packed_calls = []
    flex = attention._flex

    def spy(*args, **kwargs):
        packed_calls.append(args[0].shape)
        return flex(*args, **kwargs)

    monkeypatch.setattr(attention, "_flex", spy)
    out = tmp_path / "k.json"
    autotune = torch.backends.cudnn.benchmark  # whatever an earlier test left
    result = unet_kernels.main(
        [
            "--variants",
            "eager,eager-tuned,eager-cl,eager-fp8,eager+tconv+qkv+tattn,eager-upconv,eager-xkv,eager-pattn-xkv",
        ]
        + ["--rows", "3"]
        + ["--frames-per-call", "8", "--warmup", "0", "--reps", "1", "--profile", "--out", str(out)]
    )
    assert json.loads(out.read_text())["rows"] == 3
    assert result["sample_shape"][0] == 3 and result["sample_shape"][2] == 8
    rows = {r["variant"]: r for r in result["variants"]}
    assert rows["eager"]["relative_error"] == 0.0
    assert rows["eager-cl"]["relative_error"] < 1e-5
    assert rows["eager-cl"]["cosine"] > 0.99999
    assert "CUDA" in rows["eager-fp8"]["skipped"]
    # the speed-ups compute the same to rounding, and say which layers they changed
    fast = rows["eager+tconv+qkv+tattn"]
    assert fast["relative_error"] < 1e-5 and fast["cosine"] > 0.99999
    assert min(fast["changed_layers"].values()) > 0
    flops = result["flops_per_pass"]
    # upconv: the same numbers for 5/9 fewer of the upsampling convolutions' FLOPs, which are
    # all outside the regional blocks
    up = rows["eager-upconv"]
    assert up["relative_error"] < 1e-5 and up["changed_layers"]["upconv"] > 0
    saved = flops["convolution"] - up["flops_counted"]["convolution"]
    upsampling = [v for k, v in result["flops_outside_blocks_by_layer"].items() if "upsampl" in k]
    assert upsampling and saved == pytest.approx(5 / 9 * sum(upsampling))
    assert up["flops_counted"]["linear"] == flops["linear"]
    # xkv: the same numbers, the cross-attention's keys and values projected per distinct
    # prompt of the call instead of per frame (its exact count: test_speedups)
    kv = rows["eager-xkv"]
    assert kv["relative_error"] < 1e-5 and kv["changed_layers"]["xkv"] > 0
    assert kv["flops_counted"]["convolution"] == flops["convolution"]
    assert 0 < flops["linear"] - kv["flops_counted"]["linear"] < 0.5 * flops["linear"]
    # with packed attention too: the count takes the plain attention it replaces (its eager
    # kernel compiles on its own, which a FLOP counter cannot trace on CUDA), and the timed
    # passes still pack
    packed = rows["eager-pattn-xkv"]
    assert packed["relative_error"] < 1e-5 and packed["changed_layers"]["pattn"] > 0
    assert packed["flops_counted"] == kv["flops_counted"]
    assert packed_calls  # the timed passes packed: the count gave the layers back
    assert flops["convolution"] > 0 and flops["linear"] > 0 and flops["attention"] > 0
    parts = flops["convolution"] + flops["linear"] + flops["attention"] + flops["other"]
    assert parts == pytest.approx(flops["total"])
    assert rows["eager"]["tflops_per_s"] == pytest.approx(
        flops["total"] / (rows["eager"]["ms_per_pass"] / 1e3) / 1e12
    )
    assert rows["eager"]["share_of_matmul_peak"] is None  # no matrix rate measured on a CPU
    # the autotuner only picks among exact algorithms: the same output
    assert rows["eager-tuned"]["relative_error"] < 1e-5
    assert torch.backends.cudnn.benchmark is autotune  # set for the variant only
    split = result["time_split_ms"]
    assert split["convolution"] > 0 and split["linear"] > 0
    parts = sum(v for k, v in split.items() if k not in unet_kernels.NOT_KINDS)
    assert parts == pytest.approx(split["total"])
    # the ops of a pass take most of its measured wall time (the profiler adds a little)
    assert 0.3 * rows["eager"]["ms_per_pass"] < split["total"] < 3 * rows["eager"]["ms_per_pass"]


@pytest.mark.parametrize(
    "variant", ["turbo", "eager-turbo", "eager-mm1x1", "eager-cdt", "eager-mat", "eager-reg"]
)
def test_unknown_variant_is_refused(variant, capsys):
    with pytest.raises(SystemExit):
        unet_kernels.main(["--variants", f"eager,{variant}"])
    assert variant in capsys.readouterr().err


@pytest.mark.slow
def test_regional_compile_variant_agrees_with_eager(tmp_path, monkeypatch):
    """``compile-reg``: the repeated blocks compiled one by one, the pass the eager one's."""
    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    result = unet_kernels.main(
        ["--variants", "eager,compile-reg", "--rows", "2", "--frames-per-call", "8"]
        + ["--warmup", "1", "--reps", "1", "--out", str(tmp_path / "k.json")]
    )
    row = {r["variant"]: r for r in result["variants"]}["compile-reg"]
    assert row["relative_error"] < 1e-4 and row["cosine"] > 0.9999
    # the first pass compiled the blocks: many times a pass (an eager first pass is one)
    assert row["first_pass_s"] > 20 * row["ms_per_pass"] / 1e3


def test_a_backend_modifier_holds_the_eager_pass_to_that_backend(tmp_path, monkeypatch):
    """``eager-flash``: the timed passes run inside ``sdpa_kernel`` with flash attention only."""
    import contextlib

    held: list = []

    @contextlib.contextmanager
    def recording(backends):
        held.append(list(backends))
        yield

    monkeypatch.setattr(unet_kernels, "sdpa_kernel", recording)
    result = unet_kernels.main(
        ["--variants", "eager,eager-flash", "--rows", "2", "--frames-per-call", "8"]
        + ["--warmup", "0", "--reps", "1", "--out", str(tmp_path / "k.json")]
    )
    assert [r["variant"] for r in result["variants"]] == ["eager", "eager-flash"]
    flash = unet_kernels.SDPBackend.FLASH_ATTENTION
    assert held and all(b == [flash] for b in held)


def test_flops_outside_the_regional_blocks_are_the_layers_left_eager():
    """The FLOPs ``--compile regional`` leaves eager: those of the convolutions and linear
    layers outside its blocks, counted here from their shapes by forward hooks."""
    from storygen.accel import REPEATED_BLOCKS

    ns = unet_kernels.parse_args(["--rows", "2", "--frames-per-call", "4"])
    unet, a, kw = unet_kernels.call_arguments(ns)
    torch.set_grad_enabled(False)
    blocks = unet_kernels.block_paths(unet)
    assert blocks and all(type(unet.get_submodule(p)).__name__ in REPEATED_BLOCKS for p in blocks)
    expected: list[float] = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            expected.append(2.0 * inputs[0].numel() // module.in_features * module.weight.numel())
        else:  # a convolution: 2 multiply-adds per weight per output position
            per_out = module.weight[0].numel()
            expected.append(2.0 * output.numel() * per_out)

    handles = []
    for name, module in unet.named_modules():
        if any(name == p or name.startswith(p + ".") for p in blocks):
            continue
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d | torch.nn.Conv3d):
            handles.append(module.register_forward_hook(count))
    try:
        split, outside, by_layer = unet_kernels.flop_split(unet, a, kw)
    finally:
        for h in handles:
            h.remove()
    assert expected, "the UNet has layers outside its blocks (conv_in, samplers, ...)"
    assert outside == pytest.approx(sum(expected))
    # every FLOP left eager is a layer's, listed most first
    assert sum(by_layer.values()) == pytest.approx(outside)
    assert list(by_layer.values()) == sorted(by_layer.values(), reverse=True)
    assert not any(name.startswith(p + ".") for name in by_layer for p in blocks)
    assert 0 < outside < split["total"]


def test_the_eager_variant_runs_the_unet_as_loaded():
    """The pipeline call that gives the UNet's arguments applies no speed-up to it (a CPU's
    tconv in place, say): ``eager`` is the plain UNet, ``eager-tconv`` another pass."""
    from storygen.accel import applied_speedups

    ns = unet_kernels.parse_args(["--rows", "2", "--frames-per-call", "4"])
    unet, a, kw = unet_kernels.call_arguments(ns)
    assert applied_speedups(unet) == {}
    assert not unet._forward_pre_hooks


def test_a_text_to_video_unet_runs_block_by_block(tmp_path):
    """``--mode t2v``: a diffusers text-to-video UNet, timed and counted on the pass sampling
    runs (its blocks one by one, a prompt per frame), speed-ups and all."""
    result = unet_kernels.main(
        ["--mode", "t2v", "--variants", "eager,eager-tconv,eager-xkv", "--rows", "2"]
        + ["--frames-per-call", "4", "--warmup", "0", "--reps", "1"]
        + ["--out", str(tmp_path / "k.json")]
    )
    assert result["model"] == "random micro (t2v)"
    flops = result["flops_per_pass"]
    assert flops["convolution"] > 0 and flops["linear"] > 0 and flops["attention"] > 0
    # the layers outside the regional blocks are named under the UNet, as for a masked one
    assert "conv_in" in result["flops_outside_blocks_by_layer"]
    rows = {r["variant"]: r for r in result["variants"]}
    assert rows["eager"]["relative_error"] == 0.0
    for name in ("eager-tconv", "eager-xkv"):
        assert rows[name]["relative_error"] < 1e-5 and min(rows[name]["changed_layers"].values())


def test_a_copy_leaves_the_base_unets_weights_out_of_its_peak(tmp_path):
    """``eager`` runs the UNet itself, any other variant a copy beside it: what its peak memory
    leaves out is the base UNet's weights, for that variant alone."""
    result = unet_kernels.main(
        ["--variants", "eager,eager-tconv,eager-cl", "--rows", "2", "--frames-per-call", "4"]
        + ["--warmup", "0", "--reps", "1", "--out", str(tmp_path / "k.json")]
    )
    weights = result["unet_weight_bytes"]
    assert weights > 0
    rows = {r["variant"]: r for r in result["variants"]}
    assert rows["eager"]["beside_bytes"] == 0
    assert rows["eager-tconv"]["beside_bytes"] == rows["eager-cl"]["beside_bytes"] == weights


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_of_a_copy_is_that_of_its_own_unet(tmp_path):
    """A variant other than ``eager`` runs a copy of the UNet beside the base one: its peak
    leaves the base's weights out, so it compares with eager's (tconv: the same sums, in 2-D
    convolutions). The ModelScope shape: 2.8 GB of weights, far more than a 1-row pass's
    activations."""
    result = unet_kernels.main(
        ["--device", "cuda", "--preset", "modelscope", "--variants", "eager,eager-tconv"]
        + ["--rows", "1", "--frames-per-call", "4", "--warmup", "0", "--reps", "1"]
        + ["--out", str(tmp_path / "k.json")]
    )
    weights = result["unet_weight_bytes"] / 1e9
    rows = {r["variant"]: r for r in result["variants"]}
    eager, tconv = rows["eager"]["peak_memory_gb"], rows["eager-tconv"]["peak_memory_gb"]
    assert abs(tconv - eager) < 0.25 * weights
