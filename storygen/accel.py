"""Compiling the UNet (``torch.compile``), with a compile cache on disk.

``compile="on"`` (``storygen render --compile on``) compiles a render's UNet in place, once
(``nn.Module.compile``: the module keeps its class, so every caller still sees a
``MaskedUNet3D`` or ``UNet3DConditionModel``). Compiled graphs are kept in Inductor's cache
(:func:`compile_cache_dir`, by default ``~/.cache/storyloom/inductor``), so a second run of the
same model and shapes pays a fraction of the first compile.

It is off by default. Measured on one H200 (``benchmarks/storygen_speed.py --device cuda
--preset modelscope --steps 5 --lengths 3376 --compile on``, bf16): the autoregressive
baseline's batch-1 calls run 1.5x faster compiled (96.9 s against 144.3 s eager), but the
hierarchical levels' batched calls ran slower compiled (66 TFLOP/s after a 136 s warm-up,
against about 180 TFLOP/s eager). With ``TORCH_LOGS=recompiles`` the shipped model at 3,376
frames recompiled for every new batch size (2, 30, 114 rows: "tensor 'mask' size mismatch at
index 0"), about a minute each, instead of making the batch dimension dynamic as it does on
the CPU; fixed batch shapes per level (padding the last batch) are the next step.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: the choices of ``compile`` (``storygen render --compile``)
COMPILE_CHOICES = ("on", "off")
#: the environment variable that overrides where compiled graphs are cached
CACHE_ENV = "STORYLOOM_COMPILE_CACHE"
_COMPILED_FLAG = "_storyloom_compiled"


def compile_cache_dir() -> Path:
    """Where Inductor keeps compiled graphs: ``$STORYLOOM_COMPILE_CACHE``, else
    ``$TORCHINDUCTOR_CACHE_DIR``, else ``~/.cache/storyloom/inductor``."""
    given = os.environ.get(CACHE_ENV) or os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(given) if given else Path.home() / ".cache" / "storyloom" / "inductor"


def resolve_compile(choice: str | bool | None) -> bool:
    """Whether a render compiles its UNet: ``"on"`` / ``True``, or ``"off"`` / ``False`` /
    ``None`` (the default)."""
    if choice in (True, "on"):
        return True
    if choice in (None, False, "off"):
        return False
    raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {choice!r}")


def compile_unet(unet: Any, *, mode: str | None = None) -> float:
    """Compile ``unet``'s forward in place, once; returns the seconds spent here (the graphs
    themselves compile lazily, on the first call of each shape)."""
    if getattr(unet, _COMPILED_FLAG, False):
        return 0.0
    started = time.perf_counter()
    cache = compile_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    unet.compile(mode=mode, fullgraph=False)
    setattr(unet, _COMPILED_FLAG, True)
    logger.info("compiling the UNet (graphs cached in %s)", cache)
    return time.perf_counter() - started


def is_compiled(unet: Any) -> bool:
    return bool(getattr(unet, _COMPILED_FLAG, False))
