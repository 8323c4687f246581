"""Compiling the UNet (``torch.compile``), with a compile cache on disk.

``compile="on"`` (``storygen render --compile on``) compiles a render's UNet where it repays:
the forward passes of each row bucket are counted as the plan's levels are batched, and a
bucket is compiled once the render holds :data:`COMPILE_MIN_PASSES` passes of it (a
3,376-frame plan at 25 steps: the last level's 4 batches × 25 steps compile, the global and
middle levels' 25 passes each stay eager; the autoregressive baseline's batch-1 windows compile
from its third window on; a short render stays eager). ``compile="all"`` compiles every
bucket from its first pass. The UNet is compiled in place (``nn.Module.compile``: it keeps its
class, so every caller still sees a ``MaskedUNet3D`` or ``UNet3DConditionModel``; an eager
pass calls its ``forward`` directly), with static shapes: every batch of a level is padded to
the level's row bucket (:func:`row_bucket` of its largest batch: a power of two up to 8 rows,
then a multiple of 8; the padding repeats the last row and is dropped from the output), so a
render compiles one graph per level shape instead of one per batch size. A level's batches
are as even as they can be (225 calls in 4 batches of 57 and 56, 114 and 112 rows with
guidance), so padded to their own bucket they run 480 rows for 450 (6 % spare) where the
next power of two ran 512 (12 %). Compiled graphs are kept in Inductor's cache
(:func:`compile_cache_dir`, by default ``~/.cache/storyloom/inductor``), so a second run of the
same model and shapes pays a fraction of the first compile.

It is off by default. Measured on one H200 with dynamic shapes (``benchmarks/storygen_speed.py
--device cuda --preset modelscope --steps 5 --lengths 3376 --compile on``, bf16, before the
padding): the autoregressive baseline's batch-1 calls ran 1.5x faster compiled (96.9 s
against 144.3 s eager), the hierarchical levels' batched calls slower (66 TFLOP/s after a
136 s warm-up, against about 180 TFLOP/s eager); with ``TORCH_LOGS=recompiles`` the shipped
model recompiled for every new batch size (2, 30, 114 rows: "tensor 'mask' size mismatch at
index 0"), about a minute each. With static shapes and every bucket compiled, a 25-step
3,376-frame render of that UNet had not finished compiling after 395 s (cold cache), which is
why ``"on"`` compiles only the buckets that carry the work.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from curate.compile_cache import CACHE_ENV, compile_cache_dir, use_compile_cache

__all__ = [
    "CACHE_ENV",
    "COMPILE_CHOICES",
    "COMPILE_MIN_PASSES",
    "CompilePolicy",
    "compile_cache_dir",
    "compile_unet",
    "compiled_rows",
    "cudnn_autotune",
    "is_compiled",
    "row_bucket",
    "resolve_compile",
    "use_compiled_rows",
]

logger = logging.getLogger(__name__)

#: the choices of ``compile`` (``storygen render --compile``)
COMPILE_CHOICES = ("on", "all", "off")
#: ``compile="on"``: forward passes of one row bucket a render must hold before that bucket is
#: compiled (a cold compile of a large UNet costs a minute or two per graph; a pass of a full
#: batch saves a fraction of a second to a few seconds)
COMPILE_MIN_PASSES = 50
_COMPILED_FLAG = "_storyloom_compiled"
_BUCKETS_ATTR = "_storyloom_compiled_rows"


def resolve_compile(choice: str | bool | None) -> str:
    """A render's compile setting: ``"on"`` / ``True`` (where it repays), ``"all"`` (every
    row bucket), or ``"off"`` / ``False`` / ``None`` (the default)."""
    if choice in (True, "on"):
        return "on"
    if choice == "all":
        return "all"
    if choice in (None, False, "off"):
        return "off"
    raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {choice!r}")


class CompilePolicy:
    """Which row buckets of a render run compiled: counts the forward passes each bucket is
    planned to take, level by level, and compiles a bucket once the count reaches
    ``min_passes`` (``"all"``: from the first). ``rows`` is the set a compiled UNet reads."""

    def __init__(self, choice: str, min_passes: int = COMPILE_MIN_PASSES) -> None:
        self.choice = resolve_compile(choice)
        self.min_passes = 1 if self.choice == "all" else int(min_passes)
        #: forward passes planned per row bucket
        self.passes: dict[int, int] = {}
        #: the buckets compiled so far
        self.buckets: set[int] = set()
        #: batch rows -> the compiled bucket they are padded to (what a compiled UNet reads);
        #: a level planned later may map a row count anew (levels run one after another)
        self.rows: dict[int, int] = {}

    @property
    def enabled(self) -> bool:
        return self.choice != "off"

    def plan(self, batches: list[tuple[int, int]]) -> None:
        """Count a level's batches, ``(rows, passes)`` each (rows: calls × guidance branches;
        passes: the denoising steps of the batch), and choose whether their bucket (the
        :func:`row_bucket` of the largest) is compiled."""
        if not self.enabled or not batches:
            return
        bucket = row_bucket(max(rows for rows, _ in batches))
        self.passes[bucket] = self.passes.get(bucket, 0) + sum(p for _, p in batches)
        if self.passes[bucket] >= self.min_passes:
            self.buckets.add(bucket)
            self.rows.update({rows: bucket for rows, _ in batches})


def compiled_rows(unet: Any) -> dict[int, int]:
    """Batch rows a compiled UNet runs compiled, each mapped to the bucket it is padded to
    (empty: every pass eager)."""
    if not is_compiled(unet):
        return {}
    return getattr(unet, _BUCKETS_ATTR, {})


def use_compiled_rows(unet: Any, rows: dict[int, int]) -> None:
    """Let ``unet`` (compiled) run the batch rows in ``rows`` compiled, padded to their
    bucket (the mapping is read live)."""
    setattr(unet, _BUCKETS_ATTR, rows)


def compile_unet(unet: Any) -> None:
    """Compile ``unet``'s forward in place, once, with static shapes (the graphs themselves
    compile lazily, on the first call of each row bucket and call length)."""
    if is_compiled(unet):
        return
    import torch._dynamo

    cache = use_compile_cache()
    # one graph per (row bucket, call length): a handful, more than dynamo's default of 8
    # would only be reached by plans of many uneven call lengths
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 32))
    unet.compile(fullgraph=False, dynamic=False)
    setattr(unet, _COMPILED_FLAG, True)
    logger.info("compiling the UNet (graphs cached in %s)", cache)


def is_compiled(unet: Any) -> bool:
    return bool(getattr(unet, _COMPILED_FLAG, False))


def row_bucket(rows: int) -> int:
    """The rows a compiled forward pass of a level runs, from its largest batch: the next
    power of two up to 8 (1, 2, 4, 8), then the next multiple of 8 (30 -> 32, 114 -> 120), so
    a level pads little and nearby batch sizes share a graph."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows!r}")
    if rows <= 8:
        return 1 << (rows - 1).bit_length()
    return -(-rows // 8) * 8


@contextlib.contextmanager
def cudnn_autotune(enabled: bool) -> Iterator[bool]:
    """cuDNN's autotuner (``torch.backends.cudnn.benchmark``) on inside the block when
    ``enabled``, the process's own setting back afterwards; yields whether it is on.

    Each convolution shape then times cuDNN's algorithms on its first pass and keeps the
    fastest (a render runs a handful of shapes many times). Every algorithm computes the same
    convolution, but the pick is made by timing and may differ from run to run, so repeated
    renders agree to floating-point rounding rather than bit for bit (turn it off for bit-exact
    repeats). CUDA renders turn it on by default; on a CPU it does nothing."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or enabled
    try:
        yield torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before
