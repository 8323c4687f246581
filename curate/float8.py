"""Float8 linear layers through torchao, for every model storyloom runs in float8 (CLIP's image
tower, the storygen UNet): whether this device can, and the conversion itself (dynamic per-row
activation scales, per-row weight scales)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

__all__ = ["fp8_unavailable", "linears_to_fp8"]


def fp8_unavailable(device: Any) -> str | None:
    """Why float8 matrix products cannot run on ``device`` (None: they can): they need a CUDA
    GPU of compute capability 8.9 or newer and torchao."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return "float8 matrix products need a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"float8 needs compute capability 8.9 or newer, this GPU has {major}.{minor}"
    if importlib.util.find_spec("torchao") is None:
        return "float8 needs torchao (pip install 'storyloom[gpu]')"
    return None


def linears_to_fp8(module: Any, filter_fn: Callable[[Any, str], bool] | None = None) -> int:
    """The ``nn.Linear`` layers of ``module`` that ``filter_fn(layer, name)`` picks (default:
    every one) in float8; returns how many."""
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def picked(m: Any, fqn: str) -> bool:
        return isinstance(m, torch.nn.Linear) and (filter_fn is None or filter_fn(m, fqn))

    count = sum(1 for name, m in module.named_modules() if picked(m, name))
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), picked)
    return count
