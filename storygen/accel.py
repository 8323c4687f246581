"""Compiling the UNet for long renders (``torch.compile``), with a compile cache on disk.

A story of thousands of frames runs the same UNet on the same shapes hundreds of times, so
compiling it repays its cost (a minute or two for a ModelScope-size UNet); a short render does
not, so it stays eager. :func:`resolve_compile` makes that choice from the plan (``"auto"``:
on a CUDA device, for plans of at least :data:`COMPILE_MIN_CALLS` model calls), and
:func:`compile_unet` compiles a UNet in place once (``nn.Module.compile``: the module keeps its
class, so every caller still sees a ``MaskedUNet3D`` or ``UNet3DConditionModel``). The batch
dimension is marked dynamic after the first shape change (PyTorch's automatic dynamic shapes),
so a level's last, smaller batch does not cost a second full compile per size.

Compiled graphs are kept in Inductor's cache (:func:`compile_cache_dir`, by default
``~/.cache/storyloom/inductor``), so a second run of the same model and shapes pays a fraction
of the first compile.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: the choices of ``compile`` (``storygen render --compile``)
COMPILE_CHOICES = ("auto", "on", "off")
#: "auto" compiles plans of at least this many model calls (226 frames at L = 16: 16 calls,
#: eager; 3,376 frames: 241 calls, compiled)
COMPILE_MIN_CALLS = 64
#: the environment variable that overrides where compiled graphs are cached
CACHE_ENV = "STORYLOOM_COMPILE_CACHE"
_COMPILED_FLAG = "_storyloom_compiled"


def compile_cache_dir() -> Path:
    """Where Inductor keeps compiled graphs: ``$STORYLOOM_COMPILE_CACHE``, else
    ``$TORCHINDUCTOR_CACHE_DIR``, else ``~/.cache/storyloom/inductor``."""
    given = os.environ.get(CACHE_ENV) or os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(given) if given else Path.home() / ".cache" / "storyloom" / "inductor"


def resolve_compile(choice: str | bool | None, devices: list[Any], model_calls: int) -> bool:
    """Whether a render compiles its UNet: ``"on"`` / ``True`` always (where torch.compile
    exists), ``"off"`` / ``False`` never, ``"auto"`` / ``None`` on CUDA devices for plans of
    at least :data:`COMPILE_MIN_CALLS` calls."""
    if choice in (None, "auto"):
        return (
            bool(devices)
            and all(str(d).startswith("cuda") for d in devices)
            and model_calls >= COMPILE_MIN_CALLS
        )
    if choice in (True, "on"):
        return True
    if choice in (False, "off"):
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
