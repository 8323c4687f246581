"""Compiling the UNet (``torch.compile``), with a compile cache on disk.

``compile="on"`` (``storygen render --compile on``) compiles a render's UNet in place, once
(``nn.Module.compile``: the module keeps its class, so every caller still sees a
``MaskedUNet3D`` or ``UNet3DConditionModel``), with static shapes: every forward pass is padded
to a power-of-two number of rows (:func:`padded_rows`; the padding repeats the last row and is
dropped from the output), so a render compiles one graph per row bucket and call length (a
3,376-frame plan at micro-batch 16: 2 graphs) instead of one per batch size. Compiled graphs
are kept in Inductor's cache (:func:`compile_cache_dir`, by default
``~/.cache/storyloom/inductor``), so a second run of the same model and shapes pays a fraction
of the first compile.

It is off by default. Measured on one H200 with dynamic shapes (``benchmarks/storygen_speed.py
--device cuda --preset modelscope --steps 5 --lengths 3376 --compile on``, bf16, before the
padding): the autoregressive baseline's batch-1 calls ran 1.5x faster compiled (96.9 s
against 144.3 s eager), the hierarchical levels' batched calls slower (66 TFLOP/s after a
136 s warm-up, against about 180 TFLOP/s eager); with ``TORCH_LOGS=recompiles`` the shipped
model recompiled for every new batch size (2, 30, 114 rows: "tensor 'mask' size mismatch at
index 0"), about a minute each. The static, padded shapes are not yet measured on a GPU.
"""

from __future__ import annotations

import logging
from typing import Any

from curate.compile_cache import CACHE_ENV, compile_cache_dir, use_compile_cache

__all__ = [
    "CACHE_ENV",
    "COMPILE_CHOICES",
    "compile_cache_dir",
    "compile_unet",
    "is_compiled",
    "padded_rows",
    "resolve_compile",
]

logger = logging.getLogger(__name__)

#: the choices of ``compile`` (``storygen render --compile``)
COMPILE_CHOICES = ("on", "off")
_COMPILED_FLAG = "_storyloom_compiled"


def resolve_compile(choice: str | bool | None) -> bool:
    """Whether a render compiles its UNet: ``"on"`` / ``True``, or ``"off"`` / ``False`` /
    ``None`` (the default)."""
    if choice in (True, "on"):
        return True
    if choice in (None, False, "off"):
        return False
    raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {choice!r}")


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


def padded_rows(rows: int) -> int:
    """The rows a compiled forward pass runs: the next power of two (2 -> 2, 30 -> 32,
    114 -> 128), so that batches of nearby sizes share one static graph."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows!r}")
    return 1 << (rows - 1).bit_length()
