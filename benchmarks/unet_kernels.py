"""Where a storygen UNet forward pass spends its time at the shape of a level's batch, and what
the usual levers buy: ``torch.compile``, channels-last convolutions, float8 linear layers.

The UNet and its arguments are those of a real pipeline call (a random preset, as
``benchmarks/storygen_speed.py`` builds it, or a model folder), the batch repeated to
``--rows`` rows (the last level of a 3,376-frame plan at guidance: 114-120 rows). Per variant:
milliseconds per forward pass (median of ``--reps`` timed passes after warm-up), the FLOPs of
one pass (PyTorch's FLOP counter, split into convolutions, linear layers and attention),
TFLOP/s and their share of the chip's measured bf16 matrix rate, the first pass's time (the
compile, for compiled variants), peak memory, and the output's relative error and cosine
against the eager pass in the model's dtype.

    python benchmarks/unet_kernels.py                          # CPU, micro preset, eager only
    python benchmarks/unet_kernels.py --device cuda --preset modelscope --rows 120 \\
        --variants eager,eager-cl,compile,compile-fp8 --out benchmarks/results/unet_kernels_h200.json

Variants: ``eager``; ``eager-tuned`` and ``compile-tuned`` (cuDNN's autotuner on,
``torch.backends.cudnn.benchmark``: each convolution shape times the algorithms once, in the
first pass, as CUDA renders do); ``eager-cl`` (convolution weights and inputs channels-last,
2-D and 3-D);
``compile`` (``torch.compile``, static shapes; Inductor picks convolution layouts itself);
``compile-fp8`` and ``eager-fp8`` (every ``nn.Linear`` whose sizes allow it in float8 through
torchao, dynamic per-row activation scales and per-row weight scales, as ``ClipScorer``'s fp8;
CUDA with compute capability 8.9+ and torchao, else reported as skipped with the reason).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_rate import matmul_rate  # noqa: E402

VARIANTS = (
    "eager",
    "eager-tuned",
    "eager-cl",
    "compile",
    "compile-tuned",
    "compile-fp8",
    "eager-fp8",
)
#: FLOP-counter ops by kind
KINDS = {
    "convolution": ("convolution",),
    "linear": ("addmm", "mm"),
    "attention": ("bmm", "baddbmm", "_scaled_dot_product"),
}


def call_arguments(args: argparse.Namespace) -> tuple[Any, tuple, dict]:
    """(unet, positional args, keyword args) of one UNet evaluation of a real pipeline call,
    its batch repeated to ``args.rows`` rows."""
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


#: how :func:`time_split` files an operator by its name (first match wins)
TIME_KINDS = (
    ("attention", ("attention", "flash", "sdpa", "softmax")),
    ("convolution", ("conv", "cudnn")),
    ("linear", ("mm", "linear", "matmul", "gemm")),
    ("norm", ("norm",)),
)


def time_split(unet: Any, a: tuple, kw: dict, device: torch.device) -> dict[str, float]:
    """Where one eager pass spends its time, by kind of op: each operator's own time (on the
    GPU its kernels' device time, on the CPU its CPU time; PyTorch's profiler), in ms per
    kind, beside the pass's total ("other": element-wise ops, copies, reshapes)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    unet(*a, **kw)  # warm: allocator, autotuning
    _sync(device)
    with profile(activities=activities) as prof:
        unet(*a, **kw)
        _sync(device)
    out = {kind: 0.0 for kind, _ in TIME_KINDS} | {"other": 0.0}
    for event in prof.key_averages():
        us = float(
            getattr(event, "self_device_time_total", 0.0)
            if cuda
            else getattr(event, "self_cpu_time_total", 0.0)
        )
        if us <= 0:
            continue
        name = event.key.lower()
        kind = next((k for k, words in TIME_KINDS if any(w in name for w in words)), "other")
        out[kind] += us / 1e3
    out["total"] = sum(out.values())
    return out


def flop_split(unet: Any, a: tuple, kw: dict) -> dict[str, float]:
    """FLOPs of one pass, in all and by kind of op."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        unet(*a, **kw)
    ops = counter.get_flop_counts()["Global"]
    total = float(counter.get_total_flops())
    split = {"total": total}
    for kind, names in KINDS.items():
        split[kind] = float(
            sum(v for k, v in ops.items() if str(k).split(".")[1].startswith(names))
        )
    split["other"] = total - sum(split[k] for k in KINDS)
    return split


def fp8_unavailable(device: torch.device) -> str | None:
    """Why float8 linear layers cannot run here (None: they can)."""
    import importlib.util

    if device.type != "cuda":
        return "float8 matrix products need a CUDA GPU"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return f"float8 needs compute capability 8.9 or newer, this GPU has {capability}"
    if importlib.util.find_spec("torchao") is None:
        return "float8 needs torchao (pip install 'storyloom[gpu]')"
    return None


def to_fp8(unet: Any) -> int:
    """Every ``nn.Linear`` whose sizes are multiples of 16 in float8 (torchao); returns how many."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def fits(m: Any, fqn: str) -> bool:
        return (
            isinstance(m, torch.nn.Linear) and m.in_features % 16 == 0 and m.out_features % 16 == 0
        )

    count = sum(1 for name, m in unet.named_modules() if fits(m, name))
    quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), fits)
    return count


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


def time_variant(
    name: str, base: Any, a: tuple, kw: dict, reference: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    device = reference.device
    why = fp8_unavailable(device) if "fp8" in name else None
    if why is not None:
        return {"variant": name, "skipped": why}
    unet = base if name == "eager" else copy.deepcopy(base)
    row: dict[str, Any] = {"variant": name}
    tuned = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = name.endswith("-tuned")
    try:
        return _timed(name, unet, row, a, kw, reference, args)
    finally:
        torch.backends.cudnn.benchmark = tuned


def _timed(
    name: str,
    unet: Any,
    row: dict[str, Any],
    a: tuple,
    kw: dict,
    reference: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    device = reference.device
    if name.endswith("-cl"):
        channels_last(unet)
    if "fp8" in name:
        row["fp8_linears"] = to_fp8(unet)
    fn = unet
    if name.startswith("compile"):
        torch._dynamo.reset()
        fn = torch.compile(unet, dynamic=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    _sync(device)
    row["first_pass_s"] = time.perf_counter() - t0
    for _ in range(args.warmup):
        fn(*a, **kw)
    times = []
    for _ in range(args.reps):
        _sync(device)
        t0 = time.perf_counter()
        fn(*a, **kw)
        _sync(device)
        times.append(time.perf_counter() - t0)
    row["ms_per_pass"] = 1e3 * statistics.median(times)
    out = out.float()
    ref = reference.float()
    row["relative_error"] = float((out - ref).norm() / ref.norm().clamp(min=1e-12))
    row["cosine"] = float(
        torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    )
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    unet, a, kw = call_arguments(args)
    unet.eval()
    flops = flop_split(unet, a, kw)
    reference = unet(*a, **kw)
    times = time_split(unet, a, kw, device) if args.profile else None
    peak = matmul_rate(args.device, unet.dtype)
    rows = []
    for name in args.variants:
        row = time_variant(name, unet, a, kw, reference, args)
        if "ms_per_pass" in row:
            rate = flops["total"] / (row["ms_per_pass"] / 1e3)
            row["tflops_per_s"] = rate / 1e12
            row["share_of_matmul_peak"] = rate / peak if peak else None
        rows.append(row)
        print(format_row(row), flush=True)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": args.model or f"random {args.preset} ({args.mode})",
        "dtype": str(unet.dtype).removeprefix("torch."),
        "rows": args.rows,
        "frames_per_call": args.frames_per_call,
        "sample_shape": list(a[0].shape),
        "flops_per_pass": flops,
        "flop_shares": {k: v / flops["total"] for k, v in flops.items() if k != "total"},
        "matmul_peak_tflops_per_s": peak / 1e12 if peak else None,
        "time_split_ms": times,
        "variants": rows,
    }


def format_row(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"{row['variant']:<12} skipped: {row['skipped']}"
    share = row.get("share_of_matmul_peak")
    return (
        f"{row['variant']:<12} {row['ms_per_pass']:>10.2f} ms {row['tflops_per_s']:>9.3f} TFLOP/s"
        f" {'' if share is None else f'{100 * share:5.1f} % of peak'}"
        f"  first pass {row['first_pass_s']:7.2f} s  error {row['relative_error']:.2e}"
        f"  cosine {row['cosine']:.6f}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="micro", help="random model size (storygen.presets)")
    p.add_argument("--mode", choices=("masked", "t2v"), default="masked")
    p.add_argument("--model", default=None, help="a model folder instead of a random preset")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--frames-per-call", type=int, default=16)
    p.add_argument("--rows", type=int, default=None, help="batch rows (default 120 GPU, 4 CPU)")
    p.add_argument("--variants", default=None, help=f"comma separated, of {', '.join(VARIANTS)}")
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
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    args.variants = names
    result = run(args)
    shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in result["flop_shares"].items())
    print(
        f"{result['model']}, {result['dtype']}, {args.rows} rows of {result['sample_shape'][1:]}: "
        f"{result['flops_per_pass']['total'] / 1e9:.1f} GFLOP a pass ({shares})"
    )
    if result["time_split_ms"]:
        split = result["time_split_ms"]
        print(
            "time of an eager pass by op: "
            + ", ".join(
                f"{k} {100 * v / split['total']:.0f} %" for k, v in split.items() if k != "total"
            )
            + f" (of {split['total']:.1f} ms in ops)"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
