"""Where a storygen UNet forward pass spends its time at the shape of a level's batch, and what
the usual levers buy: ``torch.compile``, channels-last convolutions, float8 linear layers.

The UNet and its arguments are those of a real pipeline call (a random preset, as
``benchmarks/storygen_speed.py`` builds it, or a model folder), the batch repeated to
``--rows`` rows (the last level of a 3,376-frame plan at guidance: 114-120 rows). Per variant:
milliseconds per forward pass (median of ``--reps`` timed passes after warm-up), the FLOPs of
one pass (PyTorch's FLOP counter, split into convolutions, linear layers and attention, and
the share outside the blocks ``--compile regional`` compiles, which runs eager there),
TFLOP/s and their share of the chip's measured bf16 matrix rate, the first pass's time (the
compile, for compiled variants), peak memory (a variant's own: a copy of the UNet runs beside
the eager one, whose weights it leaves out), and the output's relative error and cosine
against the eager pass in the model's dtype; on CUDA, the SM clock and power over the timed
passes (``gpu_clocks``, from ``nvidia-smi``).

    python benchmarks/unet_kernels.py                          # CPU, micro preset, eager only
    python benchmarks/unet_kernels.py --device cuda --preset modelscope --rows 120 \\
        --variants eager,eager-cl,compile,compile-fp8 --out benchmarks/results/unet_kernels_h200.json

A variant is a base, ``eager`` or ``compile`` (``torch.compile``, static shapes), and modifiers
joined with ``-`` or ``+`` (``compile-tuned-tconv-fp8``):

- ``tuned``: cuDNN's autotuner on (``torch.backends.cudnn.benchmark``: each convolution shape
  times the algorithms once, in the first pass, as CUDA renders do);
- ``cl``: convolution weights and the input channels-last (2-D and 3-D);
- ``tconv``: temporal convolutions as 2-D ones (:func:`storygen.accel.fast_temporal_convs`);
- ``upconv``: each 2x upsampling and its 3x3 convolution as four 2x2 convolutions of the
  input (:func:`storygen.accel.subpixel_upsamplers`: 4/9 of those multiply-adds);
- ``qkv``: attention projections fused (diffusers' ``fuse_qkv_projections``);
- ``xkv``: the cross-attention's keys and values projected once per distinct prompt of the
  call and gathered per frame (:class:`storygen.attention.TableCrossAttnProcessor`; the call's
  context handed over as a table of its distinct embeddings);
- ``tattn``: temporal attention as matrix products (:mod:`storygen.attention`);
- ``pattn``: temporal attention packed eight sequences to a FlexAttention row (the same);
- ``flash``, ``eff``, ``cudnn``: scaled-dot-product attention on that backend only (flash,
  memory-efficient, cuDNN) instead of PyTorch's pick;
- ``mm1x1``: Inductor runs 1x1 convolutions as matrix products (``conv_1x1_as_mm``);
- ``cdt``: Inductor's coordinate-descent tuning of its kernels (a longer compile);
- ``mat``: Inductor times its Triton matrix-product templates against cuBLAS for every linear
  layer's shape and keeps the faster, which lets it fuse the element-wise work after a product
  (bias, GEGLU's gate, residual adds) into the product's kernel (``max_autotune_gemm``: a
  much longer compile);
- ``reg``: the UNet's repeated blocks compiled one by one instead of its whole forward
  (``storygen render --compile regional``: :data:`storygen.accel.REPEATED_BLOCKS`), which
  compiles in a fraction of the time; what the blocks' boundaries cost a pass is what it
  measures;
- ``fp8``: every ``nn.Linear`` whose sizes allow it in float8 (``RowwiseFloat8Linear``:
  ``torch._scaled_mm`` with per-row activation and weight scales, the arithmetic of
  ``ClipScorer``'s fp8; CUDA with compute capability 8.9+, else reported as skipped with the
  reason).

``--profile`` adds, per variant, where one pass spends its device time: by kind of op and the
kernels that take the most.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_clock import GpuClocks, describe  # noqa: E402
from benchmarks.gpu_rate import matmul_rate  # noqa: E402
from storygen.accel import SPEEDUPS, fp8_unavailable  # noqa: E402

BASES = ("eager", "compile")
MODIFIERS = (
    "tuned",
    "cl",
    "tconv",
    "upconv",
    "qkv",
    "tattn",
    "pattn",
    "mm1x1",
    "cdt",
    "mat",
    "reg",
    "fp8",
    "xkv",
    "flash",
    "eff",
    "cudnn",
)
#: modifiers that pick the backend of PyTorch's scaled-dot-product attention
SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "eff": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}
#: modifiers that only mean something to the compiler
COMPILER_ONLY = ("mm1x1", "cdt", "mat", "reg")
#: FLOP-counter ops by kind
KINDS = {
    "convolution": ("convolution",),
    "linear": ("addmm", "mm"),
    "attention": ("bmm", "baddbmm", "_scaled_dot_product"),
}


def parse_variant(name: str) -> tuple[str, set[str]]:
    """(base, modifiers) of a variant name; ValueError when it is not one."""
    base, *mods = re.split(r"[-+]", name)
    if base not in BASES:
        raise ValueError(f"{name}: a variant starts with one of {', '.join(BASES)}")
    unknown = [m for m in mods if m not in MODIFIERS]
    if unknown:
        raise ValueError(f"{name}: unknown modifiers {unknown}; choose from {', '.join(MODIFIERS)}")
    if base == "eager" and set(mods) & set(COMPILER_ONLY):
        raise ValueError(f"{name}: {', '.join(COMPILER_ONLY)} only apply to compile")
    return base, set(mods)


def call_arguments(args: argparse.Namespace) -> tuple[Any, tuple, dict]:
    """(unet, positional args, keyword args) of one UNet evaluation of a real pipeline call,
    its batch repeated to ``args.rows`` rows: the arguments of its pass as sampling runs it
    (:func:`benchmarks.storygen_speed.unet_pass`: a diffusers text-to-video UNet block by
    block)."""
    from benchmarks.storygen_speed import first_unet_call, load

    pipe, _ = load(args)
    a, kw = first_unet_call(pipe, args.frames_per_call, guidance=1.0)
    batch = a[0].shape[0]

    def grow(v: Any) -> Any:
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == batch:
            reps = -(-args.rows // batch)
            return v.repeat(reps, *([1] * (v.ndim - 1)))[: args.rows].contiguous()
        return v

    return pipe.unet, tuple(grow(v) for v in a), {k: grow(v) for k, v in kw.items()}


#: how :func:`time_split` files a kernel (on a CPU: an operator) by its name, first match wins:
#: cuDNN's convolution kernels are "fprop" / "implicit gemm" ones and its layout transposes
#: "nchwToNhwc"; cuBLAS's on Hopper "nvjet" or "gemm"; Inductor's fused kernels "triton_poi"
#: (element-wise), "triton_red" / "triton_per" (reductions: the norms), "triton_tem" (its
#: matrix-product templates)
TIME_KINDS = (
    ("attention", ("attention", "flash", "fmha", "sdpa", "softmax")),
    ("convolution", ("conv", "cudnn", "fprop", "implicit", "nchwtonhwc", "nhwctonchw")),
    ("linear", ("gemm", "nvjet", "cutlass", "triton_tem", "mm", "linear", "matmul")),
    ("norm", ("norm", "moments", "triton_red", "triton_per")),
)


#: profiler events on the GPU timeline that are not kernels
SKIP_EVENTS = ("aten::", "Command Buffer")
#: entries of a time split that are not a kind's milliseconds
NOT_KINDS = ("total", "kernels", "attention_calls")


def kernel_kind(name: str) -> str:
    name = name.lower()
    return next((k for k, words in TIME_KINDS if any(w in name for w in words)), "other")


def time_split(fn: Any, a: tuple, kw: dict, device: torch.device, top: int = 15) -> dict[str, Any]:
    """Where one pass of ``fn`` spends its time: each kernel's device time on a GPU (each
    operator's own CPU time on a CPU; PyTorch's profiler), in ms by kind of op
    (:data:`TIME_KINDS`; "other": element-wise ops, copies, reshapes) beside the pass's total,
    and the ``top`` kernels that take the most (name, kind, ms, launches)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn(*a, **kw)  # warm: allocator, autotuning
    _sync(device)
    with profile(activities=activities, record_shapes=True) as prof:
        fn(*a, **kw)
        _sync(device)
    out: dict[str, Any] = {kind: 0.0 for kind, _ in TIME_KINDS} | {"other": 0.0}
    kernels = []
    for event in prof.key_averages():
        if cuda:  # the kernels themselves (operators would count their kernels again)
            if event.device_type != DeviceType.CUDA or event.key.startswith(SKIP_EVENTS):
                continue
            us = float(event.self_device_time_total)
        else:
            us = float(event.self_cpu_time_total)
        if us <= 0:
            continue
        kind = kernel_kind(event.key)
        out[kind] += us / 1e3
        kernels.append(
            {"name": event.key[:120], "kind": kind, "ms": us / 1e3, "launches": event.count}
        )
    out["total"] = sum(out.values())
    out["kernels"] = sorted(kernels, key=lambda k: -k["ms"])[:top]
    # the attention operators by their inputs' shapes (which layers the attention time is in)
    calls = []
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key.startswith("aten::") and "attention" in event.key:
            us = float(event.self_device_time_total if cuda else event.self_cpu_time_total)
            if us > 0:
                shapes = [s for s in event.input_shapes or [] if s][:3]
                calls.append(
                    {"op": event.key, "shapes": shapes, "ms": us / 1e3, "calls": event.count}
                )
    out["attention_calls"] = sorted(calls, key=lambda c: -c["ms"])[:top]
    return out


def block_paths(unet: Any) -> list[str]:
    """The module paths of the blocks ``--compile regional`` compiles
    (:data:`storygen.accel.REPEATED_BLOCKS`), outermost only."""
    from storygen.accel import REPEATED_BLOCKS

    paths: list[str] = []
    for name, module in unet.named_modules():
        inside = any(name.startswith(p + ".") for p in paths)
        if type(module).__name__ in REPEATED_BLOCKS and not inside:
            paths.append(name)
    return paths


def flop_split(unet: Any, a: tuple, kw: dict) -> tuple[dict[str, float], float, dict[str, float]]:
    """FLOPs of one pass, in all and by kind of op; the FLOPs outside the blocks ``--compile
    regional`` compiles (:func:`block_paths`), which run eager there; and those by layer
    (the layers outside the blocks that count any, most first)."""
    from benchmarks.flop_count import flop_counter
    from benchmarks.storygen_speed import unet_pass
    from storygen.attention import pack_eager

    # packed attention's eager kernel compiles on its own, which a FLOP counter's mode cannot
    # trace: the count takes the plain attention it replaces (the same sums), and the layers
    # pack again after it
    layers = [m.processor for m in unet.modules() if hasattr(m, "processor")]
    eager = [getattr(p, "eager", None) for p in layers]
    pack_eager(unet, False)
    forward = unet_pass(unet)
    try:
        with flop_counter(display=False, depth=None) as counter:
            forward(*a, **kw)
    finally:
        for processor, on in zip(layers, eager, strict=True):
            if on is not None:
                processor.eager = on
    counts = counter.get_flop_counts()
    ops = counts["Global"]
    total = float(counter.get_total_flops())
    split = {"total": total}
    for kind, names in KINDS.items():
        split[kind] = float(
            sum(v for k, v in ops.items() if str(k).split(".")[1].startswith(names))
        )
    split["other"] = total - sum(split[k] for k in KINDS)
    # the counter names a module by its path under the root's class name (the UNet's, or the
    # pass's around it)
    root = type(unet).__name__
    if forward is not unet:
        root = f"{type(forward).__name__}.unet"
    blocks = block_paths(unet)
    in_blocks = sum(sum(counts.get(f"{root}.{p}", {}).values()) for p in blocks)
    layers = {}
    for name, module in unet.named_modules():
        if next(module.children(), None) is not None:  # layers only
            continue
        if any(name.startswith(p + ".") or name == p for p in blocks):
            continue
        if flops := float(sum(counts.get(f"{root}.{name}", {}).values())):
            layers[name] = flops
    by_layer = dict(sorted(layers.items(), key=lambda kv: -kv[1]))
    return split, total - float(in_blocks), by_layer


def channels_last(unet: Any) -> None:
    """Convolution weights channels-last (2-D convolutions) or channels-last-3d (3-D ones)."""
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        elif isinstance(m, torch.nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def context_table(context: torch.Tensor) -> Any:
    """A call's per-frame context (B, F, S, D) as a :class:`storygen.attention.ContextTable`
    of its distinct embeddings, the form the ``xkv`` speed-up's layers read."""
    from storygen.attention import ContextTable

    flat = context.reshape(context.shape[0] * context.shape[1], -1)
    table, index = torch.unique(flat, dim=0, return_inverse=True)
    return ContextTable(table.reshape(-1, *context.shape[2:]), index.reshape(context.shape[:2]))


def time_variant(
    name: str, base: Any, a: tuple, kw: dict, reference: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    device = reference.device
    _, mods = parse_variant(name)
    why = fp8_unavailable(device, torchao=False) if "fp8" in mods else None
    if why is not None:
        return {"variant": name, "skipped": why}
    unet = base if name == "eager" else copy.deepcopy(base)
    # a copy runs beside the base UNet, whose weights the peak then leaves out: every variant's
    # peak is that of its own UNet
    apart = 0 if unet is base else weight_bytes(base)
    row: dict[str, Any] = {"variant": name}
    tuned = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = "tuned" in mods
    try:
        return _timed(name, unet, row, a, kw, reference, args, apart=apart)
    finally:
        torch.backends.cudnn.benchmark = tuned
        del unet
        if device.type == "cuda":
            torch.cuda.empty_cache()


def weight_bytes(module: Any) -> int:
    """Bytes of ``module``'s parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class _on_backend(torch.nn.Module):
    """``unet`` with scaled-dot-product attention held to ``backends``."""

    def __init__(self, unet: Any, backends: list[Any]) -> None:
        super().__init__()
        self.unet = unet
        self.backends = backends

    def forward(self, *a: Any, **kw: Any) -> Any:
        with sdpa_kernel(self.backends):
            return self.unet(*a, **kw)


def _timed(
    name: str,
    unet: Any,
    row: dict[str, Any],
    a: tuple,
    kw: dict,
    reference: torch.Tensor,
    args: argparse.Namespace,
    *,
    apart: int = 0,
) -> dict[str, Any]:
    """Time variant ``name`` on ``unet`` (the base UNet or a copy of it); ``apart``: bytes held
    beside it (the base UNet's weights, beside a copy) that its peak memory leaves out."""
    from benchmarks.storygen_speed import unet_pass
    from storygen.accel import apply_speedups, inductor_options, tuning_compiles

    device = reference.device
    base, mods = parse_variant(name)
    # held beside this variant's UNet, which its peak memory leaves out
    row["beside_bytes"] = apart
    if "cl" in mods:
        channels_last(unet)
        a = (a[0].contiguous(memory_format=torch.channels_last_3d),) + tuple(a[1:])
    row["changed_layers"] = apply_speedups(unet, tuple(m for m in mods if m in SPEEDUPS))
    if row["changed_layers"].get("xkv"):  # the call's prompts as a table, as a render gives
        a = (*a[:2], context_table(a[2]), *a[3:])
    if row["changed_layers"].get("upconv") or row["changed_layers"].get("xkv"):
        # the work it does (the TFLOP/s column stays the plain pass's FLOPs over the time)
        row["flops_counted"], _, _ = flop_split(unet, a, kw)
    module = unet
    unet = unet_pass(unet)  # a diffusers text-to-video UNet: block by block, as sampling runs it
    backend = [getattr(SDPBackend, SDPA_BACKENDS[m]) for m in mods if m in SDPA_BACKENDS]
    if backend:
        unet = _on_backend(unet, backend)
    fn = unet
    if base == "compile":
        from curate.compile_cache import use_compile_cache
        from storygen.accel import compile_unet

        use_compile_cache()  # the graphs a render of this shape would load
        torch._dynamo.reset()
        options = inductor_options(tuple(mods))
        if "reg" in mods:  # the blocks compiled in place, the forward around them eager
            compile_unet(module, options, regional=True)
        else:
            fn = torch.compile(unet, dynamic=False, options=options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    # the pass timed is a render's bulk bucket: the one whose graphs take the kernel-tuning
    # options (cdt, mat) where the blocks compile as a render compiles them (reg)
    with tuning_compiles():
        out = fn(*a, **kw)
    _sync(device)
    row["first_pass_s"] = time.perf_counter() - t0
    for _ in range(args.warmup):
        fn(*a, **kw)
    times = []
    with GpuClocks(device, interval_ms=100) as clocks:
        for _ in range(args.reps):
            _sync(device)
            t0 = time.perf_counter()
            fn(*a, **kw)
            _sync(device)
            times.append(time.perf_counter() - t0)
    # the clock the timed passes ran at (CUDA with nvidia-smi), beside a render's sustained one
    row["gpu_clocks"] = clocks.summary()
    row["ms_per_pass"] = 1e3 * statistics.median(times)
    out = out.float()
    ref = reference.float()
    row["relative_error"] = float((out - ref).norm() / ref.norm().clamp(min=1e-12))
    row["cosine"] = float(
        torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    )
    if device.type == "cuda":
        row["peak_memory_gb"] = (torch.cuda.max_memory_allocated(device) - apart) / 1e9
    if args.profile:
        row["time_split_ms"] = time_split(fn, a, kw, device)
    return row


def fill_zero_weights(unet: Any, seed: int = 0) -> int:
    """Give a random preset's all-zero weight matrices (diffusers zero-initialises the last
    convolution of each temporal convolution layer) small random values, so every layer
    computes something and a variant that changed one would show in its error; returns how
    many."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for p in unet.parameters():
        if p.ndim > 1 and not p.any():
            p.data.copy_(0.02 * torch.randn(p.shape, generator=gen).to(p.dtype))
            count += 1
    return count


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.storygen_speed import unet_pass

    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    unet, a, kw = call_arguments(args)
    unet.eval()
    filled = 0 if args.model else fill_zero_weights(unet)
    flops, outside_blocks, outside_layers = flop_split(unet, a, kw)
    forward = unet_pass(unet)
    reference = forward(*a, **kw)
    times = time_split(forward, a, kw, device) if args.profile else None
    peak = matmul_rate(args.device, unet.dtype)
    rows: list[dict[str, Any]] = []
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": args.model or f"random {args.preset} ({args.mode})",
        "dtype": str(unet.dtype).removeprefix("torch."),
        "rows": args.rows,
        "frames_per_call": args.frames_per_call,
        "sample_shape": list(a[0].shape),
        "flops_per_pass": flops,
        "flop_shares": {k: v / flops["total"] for k, v in flops.items() if k != "total"},
        # the part of a pass that --compile regional (reg) leaves eager
        "flops_outside_blocks": outside_blocks,
        "flop_share_outside_blocks": outside_blocks / flops["total"],
        "flops_outside_blocks_by_layer": outside_layers,
        "matmul_peak_tflops_per_s": peak / 1e12 if peak else None,
        "zero_weights_filled": filled,
        # the UNet's parameters and buffers (a variant's copy runs beside them)
        "unet_weight_bytes": weight_bytes(unet),
        "time_split_ms": times,
        "variants": rows,
    }
    for name in args.variants:
        row = time_variant(name, unet, a, kw, reference, args)
        if "ms_per_pass" in row:
            rate = flops["total"] / (row["ms_per_pass"] / 1e3)
            row["tflops_per_s"] = rate / 1e12
            row["share_of_matmul_peak"] = rate / peak if peak else None
        rows.append(row)
        print(format_row(row), flush=True)
        if row.get("time_split_ms"):
            print(format_split(row["time_split_ms"]), flush=True)
        if args.out:  # as it goes: a run stopped part-way keeps the variants it timed
            write(args.out, result)
    return result


def write(path: str, result: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def format_split(split: dict[str, Any]) -> str:
    kinds = ", ".join(
        f"{k} {100 * v / split['total']:.0f} %" for k, v in split.items() if k not in NOT_KINDS
    )
    lines = [f"  time by op: {kinds} (of {split['total']:.1f} ms in ops)"]
    for k in split.get("kernels", [])[:8]:
        lines.append(f"    {k['ms']:9.2f} ms {k['launches']:5d}x {k['kind']:<11} {k['name'][:90]}")
    for c in split.get("attention_calls", [])[:6]:
        lines.append(f"    {c['ms']:9.2f} ms {c['calls']:5d}x {c['op']} {c['shapes']}")
    return "\n".join(lines)


def format_row(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"{row['variant']:<24} skipped: {row['skipped']}"
    share = row.get("share_of_matmul_peak")
    return (
        f"{row['variant']:<24} {row['ms_per_pass']:>10.2f} ms {row['tflops_per_s']:>9.3f} TFLOP/s"
        f" {'' if share is None else f'{100 * share:5.1f} % of peak'}"
        f"  first pass {row['first_pass_s']:7.2f} s  error {row['relative_error']:.2e}"
        f"  cosine {row['cosine']:.6f}"
        + (f"\n{'':<24} {describe(row['gpu_clocks'])}" if row.get("gpu_clocks") else "")
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, its defaults filled in for the device."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="micro", help="random model size (storygen.presets)")
    p.add_argument("--mode", choices=("masked", "t2v"), default="masked")
    p.add_argument("--model", default=None, help="a model folder instead of a random preset")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--frames-per-call", type=int, default=16)
    p.add_argument("--rows", type=int, default=None, help="batch rows (default 120 GPU, 4 CPU)")
    p.add_argument(
        "--variants",
        default=None,
        help="comma separated: eager or compile, each with modifiers joined by - or + (of "
        f"{', '.join(MODIFIERS)}; see above), e.g. eager-tuned,compile-tuned-tconv",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--profile",
        action="store_true",
        help="also split one eager pass's time by kind of op (PyTorch profiler), beside the FLOPs",
    )
    p.add_argument("--out", default=None, help="JSON to write")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.rows = args.rows or (120 if gpu else 4)
    names = (args.variants or ("eager,eager-cl,compile,compile-fp8" if gpu else "eager")).split(",")
    for name in names:
        try:
            parse_variant(name)
        except ValueError as e:
            p.error(str(e))
    args.variants = names
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in result["flop_shares"].items())
    print(
        f"{result['model']}, {result['dtype']}, {args.rows} rows of {result['sample_shape'][1:]}: "
        f"{result['flops_per_pass']['total'] / 1e9:.1f} GFLOP a pass ({shares}; "
        f"{100 * result['flop_share_outside_blocks']:.1f} % outside the blocks regional "
        "compiles)"
    )
    total = result["flops_per_pass"]["total"]
    top = list(result["flops_outside_blocks_by_layer"].items())[:4]
    if top:
        print(
            "outside the blocks, most first: "
            + ", ".join(f"{name} {100 * flops / total:.2f} %" for name, flops in top)
        )
    if result["time_split_ms"]:
        print("eager pass:\n" + format_split(result["time_split_ms"]))
    if args.out:
        write(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
