"""Where ``torch.compile`` keeps its compiled graphs, for every model storyloom compiles (CLIP's
image tower, the captioner's, the storygen UNet): one folder on disk, so that a second run of
the same model and shapes pays a fraction of the first compile."""

from __future__ import annotations

import os
from pathlib import Path

#: the environment variable that overrides where compiled graphs are cached
CACHE_ENV = "STORYLOOM_COMPILE_CACHE"


def compile_cache_dir() -> Path:
    """Where Inductor keeps compiled graphs: ``$STORYLOOM_COMPILE_CACHE``, else
    ``$TORCHINDUCTOR_CACHE_DIR``, else ``~/.cache/storyloom/inductor``."""
    given = os.environ.get(CACHE_ENV) or os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(given) if given else Path.home() / ".cache" / "storyloom" / "inductor"


def use_compile_cache() -> Path:
    """Point Inductor at :func:`compile_cache_dir` (created) before a compile; returns it."""
    cache = compile_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    return cache
