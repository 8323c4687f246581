"""Hierarchical (diffusion over diffusion) vs autoregressive generation: speed and consistency.

For each length (default 16, 226 and 3376 frames, L = 16 frames per call) both modes render
the same per-frame prompts with the same model; the table gives model calls, sequential
rounds, batched UNet passes, wall time, peak memory and two temporal-consistency numbers
(mean absolute difference of consecutive frames, as VBench's flicker measures it, and the
seam ratio: the mean frame difference at frames adjacent to a given (known) frame, divided by
the mean elsewhere; 1.0 means seams are invisible in this statistic).

    python benchmarks/storygen_speed.py                       # CPU, random micro model, 2 steps
    python benchmarks/storygen_speed.py --model models/shapes-storygen --lengths 16,226
    python benchmarks/storygen_speed.py --device cuda:0 --devices cuda:0,cuda:1 --preset modelscope \\
        --steps 25 --lengths 226,3376                         # one GPU against two
    python benchmarks/storygen_speed.py --device cuda --preset modelscope --steps 5 \\
        --out benchmarks/results/storygen_speed_gpu.json     # ModelScope-size UNet, bf16
    python benchmarks/storygen_speed.py --device cuda --preset modelscope --steps 25 \
        --lengths 3376 --skip autoregressive --warmup-steps 1  # compile first, then time warm

Per render the JSON also holds the UNet's FLOP rate against a matrix product timed in the same
run, over all batches and over the batched level alone (``batched_level``: the bucket of the
most rows, after its first batch where it ran more than one), each counting a call's FLOPs at
its own frames, the compile time, the peak memory with the rows of the largest batch, the
per-stage split, and on CUDA the chip's SM clock, power and temperature over the render
(``gpu_clocks``, from ``nvidia-smi``), which tell a power-capped clock apart from work between
passes.

With random weights the consistency numbers only show that the machinery runs; speed numbers
are what this measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_clock import GpuClocks, describe  # noqa: E402
from benchmarks.gpu_rate import matmul_rate, sustained_matmul_rate  # noqa: E402
from benchmarks.peak_rss import PeakRSS  # noqa: E402
from schemas.cli import auto_or_positive_int, positive_int  # noqa: E402
from storygen import accel, runner, sampling  # noqa: E402
from storygen.accel import (  # noqa: E402
    COMPILE_CHOICES,
    compile_phases,
    compile_seconds,
    is_compiled,
    phases_since,
    resolve_speedups,
)
from storygen.models import unet3d_forward  # noqa: E402
from storygen.pipeline import StoryVideoPipeline  # noqa: E402
from storygen.presets import build_components  # noqa: E402
from storygen.sampling import runs_whole_forward  # noqa: E402

PROMPTS = [
    "a red circle moving right on a navy background",
    "a yellow star growing on a black background",
    "a white square moving down on a brown background",
    "a cyan ring shrinking on a gray background",
]


def story_prompts(n: int) -> list[str]:
    """Four scenes of equal length."""
    return [PROMPTS[min(i * len(PROMPTS) // n, len(PROMPTS) - 1)] for i in range(n)]


def consistency(frames: np.ndarray, plan: Any) -> dict[str, float]:
    x = frames.astype(np.float32)
    diffs = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))  # diffs[i]: frame i -> i + 1
    if len(diffs) == 0:
        return {"flicker": 0.0, "seam_ratio": 1.0}
    known = {f for call in plan.calls for f, k in zip(call.frames, call.known) if k}
    seam = np.zeros(len(diffs), bool)
    for f in known:
        for i in (f - 1, f):
            if 0 <= i < len(diffs):
                seam[i] = True
    ratio = (
        float(diffs[seam].mean() / max(diffs[~seam].mean(), 1e-9))
        if seam.any() and (~seam).any()
        else 1.0
    )
    return {"flicker": float(diffs.mean()), "seam_ratio": ratio}


def load(args: argparse.Namespace) -> tuple[StoryVideoPipeline, str]:
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    if args.model:
        from storygen.loading import load_pipeline

        pipe = load_pipeline(args.model, torch_dtype=dtype)
        name = str(args.model)
    else:
        with device:  # initialise the weights where they will live: 1.4 B parameters
            parts = build_components(args.preset, mode=args.mode, texts=PROMPTS, seed=0)
        parts["unet"].to(dtype)
        if parts["vae"] is not None:
            parts["vae"].to(dtype)
        pipe = StoryVideoPipeline(**parts)
        name = f"random {args.preset} ({args.mode})"
    pipe.to(device)
    return pipe, name


class BlockByBlock(torch.nn.Module):
    """A diffusers text-to-video UNet as sampling runs it: its blocks one by one with a prompt
    per frame (:func:`storygen.models.unet3d_forward`), where its own forward takes one prompt
    per video."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, *a: Any, **kw: Any) -> Any:
        return unet3d_forward(self.unet, *a, **kw)


def unet_pass(unet: Any) -> Any:
    """``unet``'s forward pass as sampling runs it: ``unet`` itself (a :class:`MaskedUNet3D`),
    else its blocks one by one (:class:`BlockByBlock`)."""
    return unet if runs_whole_forward(unet) else BlockByBlock(unet)


@contextlib.contextmanager
def first_pass_of(unet: Any, seen: list[tuple[tuple, dict]]) -> Iterator[None]:
    """Inside, the arguments of ``unet``'s first pass go to ``seen``: those of its forward,
    or for a UNet that sampling runs block by block those of
    :func:`storygen.models.unet3d_forward`, for :func:`unet_pass`."""
    if runs_whole_forward(unet):

        def grab(module: Any, a: tuple, kw: dict) -> None:
            if not seen:
                seen.append((a, kw))

        handle = unet.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
        return
    real = sampling.unet3d_forward

    def recording(module: Any, *a: Any, **kw: Any) -> Any:
        if module is unet and not seen:
            seen.append((a, kw))
        return real(module, *a, **kw)

    sampling.unet3d_forward = recording  # type: ignore[assignment]
    try:
        yield
    finally:
        sampling.unet3d_forward = real


def first_unet_call(
    pipe: StoryVideoPipeline, frames_per_call: int, guidance: float, frames: int | None = None
) -> tuple[tuple, dict]:
    """The arguments of the first UNet pass (:func:`unet_pass`) of a real one-call, one-step
    render of ``frames`` frames (default ``frames_per_call``: a whole call). The render runs
    the UNet as loaded, without speed-ups, compiling or cuDNN's autotuner, so it leaves the
    UNet's modules as they were and no speed-up copy behind."""
    seen: list[tuple[tuple, dict]] = []
    frames = frames or frames_per_call
    with first_pass_of(pipe.unet, seen):
        pipe(
            story_prompts(frames),
            frames,
            frames_per_call=frames_per_call,
            num_inference_steps=1,
            guidance_scale=guidance,
            generator=0,
            output_type=None,
            progress=False,
            compile="off",
            speedups="none",
            cudnn_autotune=False,
        )
    return seen[0]


def unet_flops_per_call(
    pipe: StoryVideoPipeline, args: argparse.Namespace, frames: int | None = None
) -> float:
    """FLOPs of one UNet evaluation of one model call of ``frames`` frames (default
    ``--frames-per-call``; one guidance branch), counted by PyTorch's FLOP counter on the
    arguments of a real call of the pipeline. The first such call is also the benchmark's
    warm-up (kernels, allocator, lazy imports)."""
    from benchmarks.flop_count import flop_counter

    a, kw = first_unet_call(pipe, args.frames_per_call, args.guidance, frames)
    batch = a[0].shape[0]
    with flop_counter(display=False) as counter:
        unet_pass(pipe.unet)(*a, **kw)
    return counter.get_total_flops() / batch


def call_lengths(
    pipe: StoryVideoPipeline, args: argparse.Namespace, lengths: list[int], modes: set[str]
) -> list[int]:
    """The frame counts of the model calls the renders of ``lengths`` in ``modes`` make (their
    plans: a level's last calls can be shorter than ``--frames-per-call``), and a whole
    call's."""
    counts = {args.frames_per_call}
    for n in lengths:
        for mode in modes:
            plan = pipe.build_plan(
                story_prompts(n),
                num_frames=n,
                fps=None,
                frames_per_call=args.frames_per_call,
                depth=None,
                policy="autoregressive" if mode == "autoregressive" else "stretch",
                overlap=args.overlap if mode == "autoregressive" else 1,
            )
            counts.update(len(call) for call in plan.calls)
    return sorted(counts)


def _latents(pipe: StoryVideoPipeline, frames: int) -> torch.Tensor:
    h, w = (side // pipe.vae_scale for side in pipe.default_size())
    gen = torch.Generator().manual_seed(0)
    return torch.randn(frames, pipe.sample_channels, h, w, generator=gen)


def decode_flops(pipe: StoryVideoPipeline) -> float:
    """FLOPs of the VAE decode of one frame (PyTorch's FLOP counter, the eager decoder)."""
    from benchmarks.flop_count import flop_counter

    with flop_counter(display=False) as counter:
        pipe.decode(_latents(pipe, 1))
    return float(counter.get_total_flops())


def bucket_rows(key: str) -> int:
    """The UNet rows of a bucket's key (``"<rows>x<frames>"``, ``" compiled"`` after a padded
    one)."""
    return int(key.split("x", 1)[0])


def bucket_frames(key: str) -> int:
    """The frames of each call of a bucket, from its key."""
    return int(key.split("x", 1)[1].split()[0])


def largest_rows(bucket_times_s: dict[str, Any]) -> int:
    """The most UNet rows any batch of a render ran, from its buckets' keys."""
    return max(map(bucket_rows, bucket_times_s), default=0)


def call_flops(flops_per_call_pass: float | Mapping[int, float], key: str) -> float:
    """One call's FLOPs in the bucket ``key``: ``flops_per_call_pass`` itself, or its entry
    for the bucket's frames (a call of 3 frames costs a fifth of one of 16)."""
    if isinstance(flops_per_call_pass, Mapping):
        return flops_per_call_pass[bucket_frames(key)]
    return flops_per_call_pass


def useful_flops(
    bucket_times_s: dict[str, Any], flops_per_call_pass: float | Mapping[int, float], passes: int
) -> float:
    """The useful UNet FLOPs of a render's batches: each call's at its own frame count
    (:func:`call_flops`) over ``passes`` forward passes, not a compiled bucket's padding
    rows."""
    return sum(
        calls * call_flops(flops_per_call_pass, key) * passes
        for key, entries in bucket_times_s.items()
        for calls, _ in entries
    )


def largest_bucket_rate(
    bucket_times_s: dict[str, Any], flops_per_call_pass: float | Mapping[int, float], passes: int
) -> dict[str, Any] | None:
    """The sustained UNet rate of the render's batched level: its bucket of the most rows
    (the last level's batches; of two with as many, the compiled one, then the one of more
    batches), over its batches after the first (which compiles or autotunes, where there are
    later ones: ``first_batch_included`` where there are not), counting the useful FLOPs of
    the calls it ran (``flops_per_call_pass``: one call's forward over its guidance branches,
    or those by the call's frames; ``passes``: forward passes per batch, the sampling steps)
    and not a compiled bucket's padding rows. None for a render without batches."""
    if not bucket_times_s:
        return None
    key = max(
        bucket_times_s,
        key=lambda k: (bucket_rows(k), k.endswith(" compiled"), len(bucket_times_s[k])),
    )
    entries = bucket_times_s[key]
    steady = entries[1:] or entries
    calls = sum(c for c, _ in steady)
    seconds = sum(t for _, t in steady)
    flops = calls * call_flops(flops_per_call_pass, key) * passes
    return {
        "bucket": key,
        "batches": len(steady),
        "first_batch_included": len(entries) == 1,
        "calls": calls,
        "seconds": seconds,
        "tflops_per_s": flops / max(seconds, 1e-9) / 1e12,
    }


def describe_level(level: dict[str, Any]) -> str:
    """What :func:`largest_bucket_rate` timed: its bucket and batches."""
    if level.get("first_batch_included"):
        return f"{level['bucket']}, its only batch, compiling or autotuning included"
    n = level["batches"]
    return f"{level['bucket']}, {n} batch{'es' if n != 1 else ''} after the first"


@contextlib.contextmanager
def batch_spans() -> Iterator[list[tuple[float, float]]]:
    """Inside, the start and end (``time.perf_counter``) of every batch of calls a render runs
    (``PlanRunner.run_batch``, on each device's worker thread) go to the list it gives."""
    spans: list[tuple[float, float]] = []
    real = runner.PlanRunner.run_batch

    def timed(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(self, *a, **kw)
        finally:
            spans.append((t0, time.perf_counter()))

    runner.PlanRunner.run_batch = timed  # type: ignore[method-assign]
    try:
        yield spans
    finally:
        runner.PlanRunner.run_batch = real  # type: ignore[method-assign]


def covered_s(spans: list[tuple[float, float]]) -> float:
    """Seconds in which at least one of ``spans`` ran (their union: batches of several
    devices run at once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


@contextlib.contextmanager
def decoder_compiling(pipe: StoryVideoPipeline) -> Iterator[list[float]]:
    """Inside, the compile seconds PyTorch records in each call of a compiled VAE decoder
    (the ``vdec`` speed-up) go to the list it gives. They are read inside the decoder's
    compiled call, which :func:`storygen.accel.compiled_call` lets run alone while it
    compiles, so a UNet's compile (which a decode may wait for before it) is not among them."""
    spent: list[float] = []
    vae = pipe.vae
    if vae is None:
        yield spent
        return
    own = vae.__dict__.get("decode")
    real = vae.decode

    def timed(*a: Any, **kw: Any) -> Any:
        decoder = getattr(vae, "decoder", None)
        impl = getattr(decoder, "_compiled_call_impl", None)
        if impl is None or not is_compiled(decoder):
            return real(*a, **kw)

        def counted(*x: Any, **y: Any) -> Any:
            before = compile_phases()
            try:
                return impl(*x, **y)
            finally:
                spent.append(compile_seconds(phases_since(before, compile_phases())))

        decoder._compiled_call_impl = counted
        try:
            return real(*a, **kw)
        finally:
            decoder._compiled_call_impl = impl

    vae.decode = timed
    try:
        yield spent
    finally:
        if own is None:
            del vae.decode
        else:
            vae.decode = own


def decode_rate(pipe: StoryVideoPipeline, device: str, frames: int = 64) -> float:
    """Frames a second of the VAE decode alone (``pipe.decode``: its 16-frame chunks and the
    copy to the host), timed on an idle device. In a render the decode shares the device with
    the next batch's UNet passes, so its stage time there includes waiting for them; this is
    its own cost."""
    z = _latents(pipe, frames)
    pipe.decode(z[:16])  # warm-up: kernels, cuDNN's choices, the allocator
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    pipe.decode(z)  # ends with a copy to the host: waits for the device
    return frames / (time.perf_counter() - t0)


@contextlib.contextmanager
def compile_as_for(steps: int, warmup_steps: int) -> Iterator[None]:
    """Renders inside compile the row buckets a render of ``steps`` steps would (a bucket
    compiles once it holds :data:`~storygen.accel.COMPILE_MIN_PASSES` passes, and a render of
    fewer steps holds fewer), so a short warm-up render (``--warmup-steps``) compiles the graphs
    the timed renders then run warm."""
    scale = warmup_steps / steps

    class Policy(accel.CompilePolicy):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            if not self.every_bucket:
                self.min_passes = self.min_passes * scale

    saved = runner.CompilePolicy
    runner.CompilePolicy = Policy  # type: ignore[misc]
    try:
        yield
    finally:
        runner.CompilePolicy = saved  # type: ignore[misc]


def run(
    args: argparse.Namespace, on_run: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Render every length and mode ``--repeats`` times; ``on_run`` gets the result so far
    after each render (``"complete": False`` until the last), so a run cut short keeps what
    it measured."""
    torch.set_grad_enabled(False)
    pipe, name = load(args)
    dtype = next(pipe.unet.parameters()).dtype
    peak = matmul_rate(args.device, dtype)
    branches = 2 if args.guidance != 1.0 else 1
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    lengths = [int(v) for v in args.lengths.split(",")]
    modes = {"hierarchical", "autoregressive"} - set(args.skip)
    # one call's FLOPs by its frames: a level's last calls can be shorter than a whole call
    flops_by_frames = {
        f: unet_flops_per_call(pipe, args, f) for f in call_lengths(pipe, args, lengths, modes)
    }
    flops_call = flops_by_frames[args.frames_per_call]
    flops_pass = {f: v * branches for f, v in flops_by_frames.items()}
    sustained = (
        sustained_matmul_rate(args.device, dtype, args.sustained_matmul)
        if args.sustained_matmul
        else None
    )
    decoding = {
        "decode_frames_per_s": decode_rate(pipe, args.device),
        "decode_gflop_per_frame": decode_flops(pipe) / 1e9,
    }
    rows = []
    # with --devices, the hierarchical mode runs again spread over all of them (the
    # autoregressive baseline cannot use a second device for one video: its windows are
    # sequential)
    runs = [("hierarchical", None), ("autoregressive", None)]
    if args.devices:
        runs.append(("hierarchical", args.devices))
    todo = [
        (n, mode, devices, k)
        for n in lengths
        for mode, devices in runs
        for k in range(args.repeats)
        if mode not in args.skip
    ]
    header = {
        "model": name,
        "unet_parameters": n_params,
        "device": (
            torch.cuda.get_device_name(args.device)
            if args.device.startswith("cuda")
            else f"cpu ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)"
        ),
        "dtype": args.dtype,
        "height_width": list(pipe.default_size()),
        "frames_per_call": args.frames_per_call,
        "overlap": args.overlap,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "micro_batch": args.micro_batch,
        "compile": args.compile,
        "cudnn_autotune": args.cudnn_autotune == "on",
        "speedups": args.speedups,
        # what that choice meant on this device (auto's meaning changes between versions)
        "speedups_resolved": list(resolve_speedups(args.speedups, torch.device(args.device).type)),
        "unet_tflop_per_call_forward": flops_call / 1e12,
        # the same by the frames of a call (those of the calls the renders make)
        "unet_tflop_per_call_forward_by_frames": {
            str(f): v / 1e12 for f, v in flops_by_frames.items()
        },
        **decoding,
        "matmul_peak_tflops_per_s": peak / 1e12 if peak else None,
        # the same products back to back for --sustained-matmul seconds, with the chip's clock
        "matmul_sustained": sustained,
        "torch": torch.__version__,
        "devices": args.devices or [args.device],
        "repeats": args.repeats,
        "warmup_steps": args.warmup_steps,
    }

    def render(n: int, mode: str, devices: list[str] | None, steps: int) -> Any:
        out = pipe(
            story_prompts(n),
            n,
            frames_per_call=args.frames_per_call,
            policy="autoregressive" if mode == "autoregressive" else "stretch",
            overlap=args.overlap if mode == "autoregressive" else 1,
            num_inference_steps=steps,
            guidance_scale=args.guidance,
            generator=args.seed,
            micro_batch=args.micro_batch,
            devices=devices,
            output_type="np",
            progress=args.progress,
            compile=args.compile,
            speedups=args.speedups,
            cudnn_autotune=args.cudnn_autotune == "on",
        )
        if args.device.startswith("cuda"):
            for d in devices or [args.device]:
                torch.cuda.synchronize(d)
        return out

    if args.warmup_steps:
        header["warmup_renders"] = []
        for n, mode, devices in dict.fromkeys(
            (n, mode, tuple(devices) if devices else None) for n, mode, devices, _ in todo
        ):
            t0 = time.perf_counter()
            with compile_as_for(args.steps, args.warmup_steps):
                out = render(n, mode, list(devices) if devices else None, args.warmup_steps)
            warm = {
                "frames": n,
                "mode": mode if devices is None else f"{mode} x{len(devices)}",
                "steps": args.warmup_steps,
                "wall_time_s": time.perf_counter() - t0,
                "compiled": out.stats.compiled,
                "compiled_rows": out.stats.compiled_rows,
                "compile_s": out.stats.compile_s,
                # where compiling went, kernel tuning included (which compile_s leaves out)
                "compile_phases_s": out.stats.compile_phases_s,
            }
            header["warmup_renders"].append(warm)
            print(
                f"  {n:>5} frames  {warm['mode']:<14} warm-up render of {args.warmup_steps} "
                f"steps: {warm['wall_time_s']:.1f} s, compiling {warm['compile_s']:.1f} s",
                flush=True,
            )
            if warm["compile_phases_s"]:
                top = list(warm["compile_phases_s"].items())[:6]
                print(
                    "         compiling: " + ", ".join(f"{k} {v:.1f} s" for k, v in top),
                    flush=True,
                )
            del out

    for n, mode, devices, repeat in todo:
        if args.device.startswith("cuda"):
            for d in devices or [args.device]:
                torch.cuda.synchronize(d)
                torch.cuda.reset_peak_memory_stats(d)
        with (
            PeakRSS() as rss,
            GpuClocks(args.device) as clocks,
            batch_spans() as spans,
            decoder_compiling(pipe) as decoder_compile,
        ):
            t0 = time.perf_counter()
            out = render(n, mode, devices, args.steps)
            wall = time.perf_counter() - t0
        stats = out.stats
        # summed over the batches: device-seconds where several devices run batches at once
        unet_s = sum(sum(v) for v in stats.batch_times_s.values())
        # the wall time in which any device ran a batch
        unet_wall = covered_s(spans)
        warmup = stats.warmup_s()
        # compiling the VAE's decoder (vdec), which no batch's time holds
        decoder_s = sum(decoder_compile)
        unet_flops = useful_flops(stats.bucket_times_s, flops_pass, args.steps)
        steady_unet_s = max(unet_s - warmup, 1e-9)
        level = largest_bucket_rate(stats.bucket_times_s, flops_pass, args.steps)
        if level is not None:
            level["utilisation_of_matmul_peak"] = (
                level["tflops_per_s"] * 1e12 / peak if peak else None
            )
            if sustained and sustained["second_half_flops_per_s"]:
                level["utilisation_of_sustained_matmul"] = (
                    level["tflops_per_s"] * 1e12 / sustained["second_half_flops_per_s"]
                )
        row = {
            "frames": n,
            "mode": mode if devices is None else f"{mode} x{len(devices)}",
            # renders of the same length and mode in this process: the first compiles
            # (or autotunes), the later ones find its graphs warm
            "repeat": repeat,
            "devices": devices or [args.device],
            "calls_per_device": out.stats.calls_per_device,
            "model_calls": out.plan.model_calls,
            "rounds": out.plan.rounds,
            "unet_passes": out.stats.unet_forwards,
            "wall_time_s": wall,
            "compiled": stats.compiled,
            "compiled_rows": stats.compiled_rows,
            # the first batch of each shape beyond its median batch: compiling, autotuning
            "warmup_s": warmup,
            # compiling as PyTorch records it (graphs of every shape, the decoder's too)
            "compile_s": stats.compile_s,
            # where it went, by the phases PyTorch times (nested: they overlap)
            "compile_phases_s": stats.compile_phases_s,
            # compile="aot" where AOTInductor could not load packages: compiled in process
            "compile_fallbacks": stats.compile_fallbacks,
            # of compile_s, the VAE decoder's (vdec), which warmup_s does not hold
            "decoder_compile_s": decoder_s,
            "wall_time_after_warmup_s": wall - warmup - decoder_s,
            # the batches' seconds summed (device-seconds, with several devices)
            "unet_batches_s": unet_s,
            # the wall time in which batches ran (on any device), and the rest of it
            "unet_wall_s": unet_wall,
            "other_s": max(0.0, wall - unet_wall),
            # from the last batch's end to the render's: the last frames' decode and write
            "tail_s": stats.tail_s,
            # over the batches' summed seconds: a device's rate, with several devices too
            "unet_tflops_per_s": unet_flops / steady_unet_s / 1e12,
            "utilisation_of_matmul_peak": (unet_flops / steady_unet_s / peak if peak else None),
            # the batched level alone (its largest bucket, after its first batch): the rate
            # the level-by-level plan is built to reach
            "batched_level": level,
            "s_per_frame": wall / n,
            "peak_rss_bytes": rss.peak,
            "peak_cuda_bytes": (
                max(
                    stats.peak_memory_bytes,
                    *(torch.cuda.max_memory_allocated(d) for d in devices or [args.device]),
                )
                if args.device.startswith("cuda")
                else None
            ),
            # the chip's clock, power and temperature over the render (CUDA with nvidia-smi)
            "gpu_clocks": clocks.summary(),
            "micro_batches": stats.micro_batches,
            # the UNet rows of the largest batch (calls × guidance branches, padded where
            # compiled): what the peak memory follows
            "largest_batch_rows": largest_rows(stats.bucket_times_s),
            # per UNet input shape, [calls, seconds] of every batch (compile in the first)
            "bucket_times_s": stats.bucket_times_s,
            # text encoding, UNet batches, VAE decode, waiting for the video writer, the rest
            "stages_s": stats.stage_times_s,
            "call_bytes": stats.call_bytes,
            **consistency(out.frames, out.plan),
        }
        rows.append(row)
        print(
            f"  {n:>5} frames  {mode:<14} {row['model_calls']:>4} calls "
            f"{row['rounds']:>4} rounds  run {repeat + 1}  {wall:8.1f} s (warm-up {warmup:.1f} s, "
            f"compiling {stats.compile_s:.1f} s, "
            f"UNet {row['unet_tflops_per_s']:.0f} TFLOP/s, peak "
            f"{(row['peak_cuda_bytes'] or row['peak_rss_bytes']) / 2**30:.1f} GiB "
            f"at {row['largest_batch_rows']} rows)",
            flush=True,
        )
        print(
            "         stages: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in stats.stage_times_s.items())
            + f"; after the last batch {stats.tail_s:.1f} s",
            flush=True,
        )
        if stats.compile_phases_s:
            top = list(stats.compile_phases_s.items())[:6]
            print("         compiling: " + ", ".join(f"{k} {v:.1f} s" for k, v in top), flush=True)
        for why in stats.compile_fallbacks:
            print(f"         {why}", flush=True)
        if row["gpu_clocks"]:
            print(f"         GPU: {describe(row['gpu_clocks'])}", flush=True)
        if level is not None:
            share = level["utilisation_of_matmul_peak"]
            print(
                f"         batched level ({describe_level(level)}): "
                f"{level['tflops_per_s']:.0f} TFLOP/s"
                + (f", {100 * share:.1f} % of peak" if share else "")
                + (
                    f", {100 * level['utilisation_of_sustained_matmul']:.1f} % of the sustained "
                    "matrix rate"
                    if level.get("utilisation_of_sustained_matmul")
                    else ""
                ),
                flush=True,
            )
        del out
        if on_run is not None:
            on_run({**header, "complete": False, "rows": rows, **summarise(rows, lengths)})
    if is_compiled(getattr(pipe.vae, "decoder", None)):  # a render compiled it (vdec)
        header["decode_compiled_frames_per_s"] = decode_rate(pipe, args.device)
    return {**header, "complete": True, "rows": rows, **summarise(rows, lengths)}


def summarise(rows: list[dict[str, Any]], lengths: list[int]) -> dict[str, Any]:
    """Each length's median run per mode and the ratios between the modes."""
    ratios = {}
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for n in lengths:
        runs_of: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["frames"] == n:
                runs_of.setdefault(r["mode"], []).append(r)
        # each mode by its median run (by wall time; of the repeats, --repeats)
        by_mode = {mode: median_run(rs) for mode, rs in runs_of.items()}
        medians[str(n)] = {
            mode: {
                "runs": len(rs),
                "wall_time_s": by_mode[mode]["wall_time_s"],
                "wall_time_after_warmup_s": by_mode[mode]["wall_time_after_warmup_s"],
                "all_wall_times_s": [r["wall_time_s"] for r in rs],
                # a later run that compiled (a new batch size, say) is no warm repeat
                "compiled_again": compiled_again(rs),
            }
            for mode, rs in runs_of.items()
        }
        if "hierarchical" in by_mode and "autoregressive" in by_mode:
            h, a = by_mode["hierarchical"], by_mode["autoregressive"]
            ratios[str(n)] = {
                "wall_time_autoregressive_over_hierarchical": a["wall_time_s"] / h["wall_time_s"],
                "after_warmup_autoregressive_over_hierarchical": (
                    a["wall_time_after_warmup_s"] / h["wall_time_after_warmup_s"]
                ),
                "rounds_autoregressive_over_hierarchical": a["rounds"] / h["rounds"],
                "calls_autoregressive_over_hierarchical": a["model_calls"] / h["model_calls"],
            }
        # the spread mode ("hierarchical x2") by its median run too
        spread = next((r for mode, r in by_mode.items() if " x" in mode), None)
        if spread is not None and "hierarchical" in by_mode:
            ratios.setdefault(str(n), {})["speedup_over_one_device"] = (
                by_mode["hierarchical"]["wall_time_s"] / spread["wall_time_s"]
            )
            if "autoregressive" in by_mode:
                ratios[str(n)]["autoregressive_one_device_over_spread"] = (
                    by_mode["autoregressive"]["wall_time_s"] / spread["wall_time_s"]
                )
    return {"medians": medians, "ratios": ratios}


def compiled_again(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs after a mode's first that compiled: their number (1-based), compile seconds
    and largest batch's rows (and the first run's, to compare). Warm repeats compile nothing,
    so a median over such runs is not the median of warm renders."""
    first = runs[0].get("largest_batch_rows") if runs else None
    return [
        {
            "run": k + 1,
            "compile_s": r["compile_s"],
            "largest_batch_rows": r.get("largest_batch_rows"),
            "first_run_largest_batch_rows": first,
        }
        for k, r in enumerate(runs)
        if k and (r.get("compile_s") or 0) > 0
    ]


#: what two runs must share to be compared (--merge)
SAME_SETTINGS = (
    "model",
    "device",
    "dtype",
    "height_width",
    "frames_per_call",
    "overlap",
    "steps",
    "guidance_scale",
    "micro_batch",
    "compile",
    "speedups_resolved",
    "cudnn_autotune",
    # a warm-up render first or none: the timed renders compile, or find the graphs warm
    "warmup_steps",
)
#: settings recorded later than others: their value in results made before
SETTING_BEFORE_RECORDED = {"cudnn_autotune": True, "warmup_steps": None}


def merge(
    results: list[dict[str, Any]], names: list[str], *, per_mode_speedups: bool = False
) -> dict[str, Any]:
    """One result of the runs of several (separate processes or machines: one mode each, when
    a time limit allows no more), with each length's medians and ratios over all their runs.
    ValueError, naming the setting and the files, where they did not run alike.

    ``per_mode_speedups``: each mode may run its own speed-ups (each at its best: CUDA graphs
    pay for the baseline's 2-row passes, say), the same for all of a mode's runs; recorded as
    ``speedups_by_mode``. Every other setting must still agree. Each mode's ``--repeats`` (of
    each file that ran it) are recorded as ``repeats_by_mode``, and ``repeats`` is theirs where
    all agree (else None)."""
    settings = [k for k in SAME_SETTINGS if not (per_mode_speedups and k == "speedups_resolved")]
    by_mode: dict[str, list[str]] = {}
    repeats: dict[str, list[int | None]] = {}
    for name, result in zip(names, results, strict=True):
        if "speedups_resolved" not in result:
            raise ValueError(
                f"{name} does not record 'speedups_resolved': cannot tell it ran alike"
            )
        for mode in sorted({row["mode"] for row in result["rows"]}):
            repeats.setdefault(mode, []).append(result.get("repeats"))
            mine = by_mode.setdefault(mode, result["speedups_resolved"])
            if mine != result["speedups_resolved"]:
                raise ValueError(
                    f"{name}'s {mode} runs used speed-ups {result['speedups_resolved']!r}, "
                    f"another file's {mine!r}: one mode's runs must run alike"
                )
    results = [{**SETTING_BEFORE_RECORDED, **r} for r in results]
    first = results[0]
    for name, other in zip(names[1:], results[1:], strict=True):
        for key in settings:
            if key not in first or key not in other:
                missing = names[0] if key not in first else name
                raise ValueError(f"{missing} does not record {key!r}: cannot tell it ran alike")
            if first[key] != other[key]:
                raise ValueError(
                    f"{names[0]} and {name} differ in {key}: {first[key]!r} against "
                    f"{other[key]!r}; their times do not compare"
                )
    rows = [row for r in results for row in r["rows"]]
    lengths = sorted({row["frames"] for row in rows})
    keep = {k: v for k, v in first.items() if k not in ("rows", "medians", "ratios")}
    if per_mode_speedups:
        keep["speedups_resolved"] = None
    counts = {r.get("repeats") for r in results}
    keep["repeats"] = counts.pop() if len(counts) == 1 else None
    return {
        **keep,
        "complete": all(r.get("complete", True) for r in results),
        "merged_from": names,
        "speedups_by_mode": by_mode,
        "repeats_by_mode": repeats,
        "rows": rows,
        **summarise(rows, lengths),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["wall_time_s"])
    return ordered[(len(ordered) - 1) // 2]


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['model']} ({result['unet_parameters'] / 1e6:.2f} M UNet parameters) on "
        f"{result['device']}, {result['dtype']}, {result['height_width'][0]} px, "
        f"L={result['frames_per_call']}, {result['steps']} steps, "
        f"guidance {result['guidance_scale']}, micro-batch {result['micro_batch']}, "
        f"compile {result['compile']}; UNet {result['unet_tflop_per_call_forward']:.3f} "
        f"TFLOP per call per guidance branch"
        + (
            f"; matmul peak here {result['matmul_peak_tflops_per_s']:.0f} TFLOP/s"
            if result["matmul_peak_tflops_per_s"]
            else ""
        )
    )
    speedups = result.get("speedups_by_mode") or {}
    if speedups:
        print(
            "speed-ups: "
            + "; ".join(f"{mode} {','.join(names) or 'none'}" for mode, names in speedups.items())
        )
    sustained = result.get("matmul_sustained")
    if sustained:
        late = sustained["second_half_flops_per_s"]
        print(
            f"matrix products sustained for {sustained['seconds']:.0f} s: "
            f"{sustained['flops_per_s'] / 1e12:.0f} TFLOP/s"
            + (f", {late / 1e12:.0f} in the second half" if late else "")
            + (f"; {describe(sustained['gpu_clocks'])}" if sustained["gpu_clocks"] else "")
        )
    rate = result["decode_frames_per_s"]
    compiled = result.get("decode_compiled_frames_per_s")
    print(
        f"VAE decode alone: {rate:.0f} frames/s ({result['decode_gflop_per_frame']:.1f} GFLOP a "
        f"frame, {rate * result['decode_gflop_per_frame'] / 1e3:.1f} TFLOP/s)"
        + (f", compiled (vdec) {compiled:.0f} frames/s" if compiled else "")
        + "; in a render it shares the device with the UNet, so its stage time there includes "
        "waiting for it"
    )
    head = (
        f"{'frames':>6} {'mode':<16} {'calls':>6} {'rounds':>6} {'passes':>7} "
        f"{'wall s':>9} {'warm-up':>8} {'TFLOP/s':>8} {'of peak':>8} {'ms/frame':>9} "
        f"{'peak mem':>10} {'flicker':>8} {'seam':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        mem = r["peak_cuda_bytes"] if r["peak_cuda_bytes"] is not None else r["peak_rss_bytes"]
        print(
            f"{r['frames']:>6} {r['mode']:<16} {r['model_calls']:>6} {r['rounds']:>6} "
            f"{r['unet_passes']:>7} {r['wall_time_s']:>9.2f} {r['warmup_s']:>8.1f} "
            f"{r['unet_tflops_per_s']:>8.1f} "
            f"{(r['utilisation_of_matmul_peak'] or 0) * 100:>7.0f}% "
            f"{1000 * r['s_per_frame']:>9.1f} "
            f"{mem / 2**20:>8.0f}MB {r['flicker']:>8.2f} {r['seam_ratio']:>6.2f}"
        )
    for n, by_mode in result.get("medians", {}).items():
        for mode, m in by_mode.items():
            if m["runs"] > 1:
                print(
                    f"{n:>6} frames {mode}: median of {m['runs']} runs "
                    f"{m['wall_time_s']:.2f} s ({m['wall_time_after_warmup_s']:.2f} s after "
                    f"warm-up; all: {', '.join(f'{w:.2f}' for w in m['all_wall_times_s'])})"
                )
            for c in m.get("compiled_again", []):
                print(
                    f"{n:>6} frames {mode}: run {c['run']} compiled again ({c['compile_s']:.1f} s; "
                    f"largest batch {c['largest_batch_rows']} rows, run 1's "
                    f"{c['first_run_largest_batch_rows']}): not a warm repeat"
                )
    for n, q in result["ratios"].items():
        if "wall_time_autoregressive_over_hierarchical" in q:
            print(
                f"{n:>6} frames: autoregressive / hierarchical = "
                f"{q['wall_time_autoregressive_over_hierarchical']:.2f}x wall time, "
                f"{q['rounds_autoregressive_over_hierarchical']:.1f}x sequential rounds, "
                f"{q['calls_autoregressive_over_hierarchical']:.2f}x model calls"
            )
        if "speedup_over_one_device" in q:
            print(
                f"{n:>6} frames: hierarchical on {len(result['devices'])} devices is "
                f"{q['speedup_over_one_device']:.2f}x one device"
                + (
                    f", {q['autoregressive_one_device_over_spread']:.2f}x the autoregressive "
                    "baseline"
                    if "autoregressive_one_device_over_spread" in q
                    else ""
                )
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="16,226,3376")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--devices",
        default=None,
        help="also run the hierarchical mode spread over these devices (cuda:0,cuda:1) and "
        "report its speed-up over --device alone",
    )
    p.add_argument("--preset", default="micro", help="random model size (storygen.presets)")
    p.add_argument("--mode", choices=("masked", "t2v"), default="masked")
    p.add_argument("--model", default=None, help="a model folder instead of a random preset")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--frames-per-call", type=int, default=16)
    p.add_argument("--overlap", type=int, default=1, help="known frames per autoregressive window")
    p.add_argument("--steps", type=int, default=None, help="default 2 on CPU, 10 on GPU")
    p.add_argument("--guidance", type=float, default=None, help="default 1 on CPU, 7.5 on GPU")
    p.add_argument(
        "--micro-batch",
        type=auto_or_positive_int,
        default="auto",
        help="calls per forward pass, or auto (16 on the CPU, from free memory on CUDA)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="renders of each length and mode in this process (the first compiles or "
        "autotunes, the later find it warm); the ratios compare each mode's median run",
    )
    p.add_argument(
        "--warmup-steps",
        type=positive_int,
        default=None,
        help="before the timed renders, render each length and mode once with this many "
        "steps, compiling what a render of --steps compiles (reported apart, as "
        "warmup_renders): the timed renders then run warm in one process, where --repeats "
        "would pay a whole render for it",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default="auto",
        help="compile the UNet (both modes alike): on = the batch shapes run 50+ passes, "
        "all = every shape, regional = every shape, block by block, aot = every shape, "
        "ahead of time into packages on disk, auto = on's shapes, block by block, for CUDA "
        "(default)",
    )
    p.add_argument(
        "--speedups",
        default="auto",
        help="UNet speed-ups, both modes alike (storygen.accel.SPEEDUPS, comma separated), "
        "auto = the device's defaults, none (default: auto)",
    )
    p.add_argument(
        "--cudnn-autotune",
        choices=("on", "off"),
        default="on",
        help="cuDNN's autotuner on CUDA (on, as renders run by default; off: the same "
        "convolution algorithms in every process, so frames repeat across processes)",
    )
    p.add_argument(
        "--sustained-matmul",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also run the matrix products of the peak rate back to back for this long "
        "(CUDA): the rate a chip held at its power limit keeps over minutes, as a render's "
        "passes run, with its clock; the batched level is then also quoted against it "
        "(default 0: not measured)",
    )
    p.add_argument("--skip", default="", help="modes to skip, comma separated")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="render nothing: merge these results (one mode each, say, from separate calls) "
        "into one, with medians and ratios over all their runs; refused where they differ in "
        "a setting (model, device, steps, speed-ups as resolved, warm-up steps, ...)",
    )
    p.add_argument(
        "--per-mode-speedups",
        action="store_true",
        help="with --merge: each mode may have run its own speed-ups (the baseline at its "
        "best, say, with cgraph), the same across that mode's runs; the table names them",
    )
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=None, help="default benchmarks/results/storygen_speed.json")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.steps = args.steps or (10 if gpu else 2)
    args.guidance = args.guidance if args.guidance is not None else (7.5 if gpu else 1.0)
    args.skip = {s for s in args.skip.split(",") if s}
    args.devices = [d for d in (args.devices or "").split(",") if d] or None
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out or ROOT / "benchmarks" / "results" / "storygen_speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        try:
            result = merge(
                [json.loads(Path(f).read_text()) for f in args.merge],
                args.merge,
                per_mode_speedups=args.per_mode_speedups,
            )
        except (OSError, ValueError) as exc:
            p.error(f"--merge: {exc}")
        print_table(result)
        out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {out}")
        return 0
    result = run(args, on_run=lambda partial: out.write_text(json.dumps(partial, indent=2)))
    print_table(result)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
