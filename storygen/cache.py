"""The disk cache of finished model calls, so that an interrupted render resumes.

``cache_dir/<key>/level0001-calls00016-00031.pt`` holds the outputs (model space, (C, F, h, w)
each) of calls 16..31 of level 1, by call index. The key hashes everything that determines the
frames (the components' classes, configs and weights, the scheduler, the plan with its prompts,
and :meth:`RenderSettings.output_fields <storygen.settings.RenderSettings.output_fields>`) and
nothing that does not (micro-batch, devices, output type), so a run resumes with other batching
and a changed setting never reads stale frames.

The key is the same in every process and from every working directory: the keys diffusers and
transformers add to a loaded config (those starting with ``_``: the folder as it was typed,
which keys took their defaults, in an order that changes with the process's string hashing)
are left out; the class is keyed by itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storygen.plan import Plan
from storygen.settings import RenderSettings

logger = logging.getLogger(__name__)

#: the pipeline components whose weights determine the frames
KEYED_COMPONENTS = ("unet", "local_unet", "vae", "text_encoder")
#: speed-ups that approximate the model (not only round differently): frames made with them
#: are another render's, so they enter the key
APPROXIMATE_SPEEDUPS = ("fp8",)


def _fingerprint(module: torch.nn.Module | None) -> str:
    """A cheap fingerprint of a module's weights (sum and squared norm of every tensor)."""
    if module is None:
        return "none"
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in module.state_dict().items():
            t = p.detach().float()
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(np.float64(t.sum().item()).tobytes())
            h.update(np.float64(t.square().sum().item()).tobytes())
    return h.hexdigest()[:16]


def _config_dict(module: Any) -> Any:
    """The module's config without the keys the loaders add (``_name_or_path``,
    ``_use_default_values``, ``_class_name``, ``_diffusers_version``, ...): what it says about
    the model, the same whichever process loaded it from whichever path."""
    config = getattr(module, "config", None)
    if config is None:
        return None
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    config = {k: v for k, v in config.items() if not str(k).startswith("_")}
    return json.loads(json.dumps(config, default=str, sort_keys=True))


def cache_key(pipe: Any, plan: Plan, settings: RenderSettings) -> str:
    """A hash of everything that determines ``pipe``'s output for ``plan`` and ``settings``."""
    comps: dict[str, Any] = {}
    for name in KEYED_COMPONENTS:
        module = getattr(pipe, name, None)
        comps[name] = (
            None
            if module is None
            else {
                "class": type(module).__name__,
                "config": _config_dict(module),
                "weights": _fingerprint(module),
                "dtype": str(module.dtype),
            }
        )
    comps["scheduler"] = {
        "class": type(pipe.scheduler).__name__,
        "config": _config_dict(pipe.scheduler),
    }
    payload = {
        "format": 1,
        "components": comps,
        "plan": plan.to_dict(calls=True),
        "settings": settings.output_fields(),
    }
    approximate = approximations(settings.speedups)
    if approximate:  # only then: the keys of exact renders stay as they were
        payload["approximate"] = approximate
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def approximations(speedups: str | Sequence[str]) -> list[str]:
    """The :data:`APPROXIMATE_SPEEDUPS` among a render's speed-ups, as given (``auto`` holds
    none of them)."""
    raw = speedups.split(",") if isinstance(speedups, str) else list(speedups)
    names = {n.strip() for n in raw}
    return [n for n in APPROXIMATE_SPEEDUPS if n in names]


class CallCache:
    """The finished calls of one run (one key), one file per batch of calls."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self, level: int) -> dict[int, torch.Tensor]:
        """The level's finished calls by call index; a torn file is skipped (recomputed)."""
        if not self.path.exists():
            return {}
        found: dict[int, torch.Tensor] = {}
        for path in sorted(self.path.glob(f"level{level:04d}-*.pt")):
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a torn file: recompute those calls
                logger.warning("ignoring unreadable cache file %s: %s", path, exc)
                continue
            found.update({int(k): v for k, v in data.items()})
        return found

    def save(self, level: int, indices: Sequence[int], samples: torch.Tensor) -> None:
        """Keep the outputs of calls ``indices`` of ``level`` (samples: (B, C, F, h, w)).

        A file that cannot be written (a full disk, a folder removed meanwhile) leaves nothing
        behind and raises OSError naming it and why (errno ENOSPC for a full disk)."""
        name = f"level{level:04d}-calls{indices[0]:05d}-{indices[-1]:05d}.pt"
        tmp = self.path / (name + ".tmp")
        try:
            # made in memory, then written: a full disk raises the write's OSError (ENOSPC),
            # where torch writing the file itself fails on a short write with a RuntimeError
            buffer = io.BytesIO()
            torch.save({str(i): s.clone() for i, s in zip(indices, samples)}, buffer)
            self.path.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
            os.replace(tmp, self.path / name)  # atomic: a crash never leaves half a file
        except (OSError, RuntimeError) as exc:
            with contextlib.suppress(OSError):  # the error to tell is the write's
                tmp.unlink(missing_ok=True)
            code = getattr(exc, "errno", None)  # ENOSPC: the disk is full
            why = os.strerror(code) if code else str(exc) or type(exc).__name__
            raise OSError(code, why, str(self.path / name)) from exc
