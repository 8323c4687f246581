"""Float8 linear layers, for every model storyloom runs in float8 (CLIP's image tower, the
storygen UNet): whether this device can, and two conversions with the same arithmetic
(per-row weight scales fixed at conversion, per-row activation scales at every call, float32
accumulation): torchao's (:func:`linears_to_fp8`, CLIP's) and :class:`RowwiseFloat8Linear`
(:func:`linears_to_rowwise_fp8`, the UNet's), a plain module over ``torch._scaled_mm`` that
``torch.compile`` traces like any other layer: through torchao's tensor subclasses a
ModelScope-size UNet had not finished compiling after 9 minutes."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "FLOAT8",
    "RowwiseFloat8Linear",
    "fp8_unavailable",
    "linears_to_fp8",
    "linears_to_rowwise_fp8",
]

#: the float8 format of weights and activations (4 exponent, 3 mantissa bits: ±448)
FLOAT8 = "float8_e4m3fn"


def fp8_unavailable(device: Any, torchao: bool = True) -> str | None:
    """Why float8 matrix products cannot run on ``device`` (None: they can): they need a CUDA
    GPU of compute capability 8.9 or newer, and torchao for :func:`linears_to_fp8`
    (``torchao=False``: :func:`linears_to_rowwise_fp8`, plain PyTorch)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "float8 matrix products need a CUDA GPU"
    if not torch.cuda.is_available():
        return "float8 matrix products need a CUDA GPU, and this torch sees none"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"float8 needs compute capability 8.9 or newer, this GPU has {major}.{minor}"
    if torchao and importlib.util.find_spec("torchao") is None:
        return "float8 needs torchao (pip install 'storyloom[gpu]')"
    return None


def linears_to_fp8(module: Any, filter_fn: Callable[[Any, str], bool] | None = None) -> int:
    """The ``nn.Linear`` layers of ``module`` that ``filter_fn(layer, name)`` picks (default:
    every one) in float8; returns how many."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def picked(m: Any, fqn: str) -> bool:
        return isinstance(m, torch.nn.Linear) and (filter_fn is None or filter_fn(m, fqn))

    count = sum(1 for name, m in module.named_modules() if picked(m, name))
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), picked)
    return count


def _rowwise(t: Any) -> tuple[Any, Any]:
    """``t`` (…, k) in float8 with one float32 scale per row: ``t ≈ q · scale``."""
    dtype = getattr(torch, FLOAT8)
    t = t.float()
    scale = t.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / torch.finfo(dtype).max
    return (t / scale).to(dtype), scale


class RowwiseFloat8Linear(torch.nn.Module):
    """An ``nn.Linear`` in float8: its weight quantized once with one scale per output feature,
    each call's input quantized with one scale per row, the product by ``torch._scaled_mm``
    (float32 accumulation, written in bf16, returned in the input's dtype), the bias added in
    that dtype.
    ``torch.compile`` fuses the input's scaling into the kernels around it."""

    weight_f8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _rowwise(linear.weight.detach())
        self.register_buffer("weight_f8", weight)  # (out, in), rows contiguous
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())
        self.bias = linear.bias

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # a device move applies to the float8 weight and its scales, a dtype cast (``.to(
        # torch.bfloat16)`` of the model) only to the bias: float8 counts as floating point
        weight, scale = self.weight_f8, self.weight_scale
        super()._apply(fn, recurse)
        self.weight_f8 = weight.to(self.weight_f8.device)
        self.weight_scale = scale.to(self.weight_scale.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = _rowwise(x.reshape(-1, self.in_features))
        out = torch._scaled_mm(
            q,
            self.weight_f8.t(),  # (in, out), column-major as the kernel wants it
            scale_a=scale,
            scale_b=self.weight_scale,
            out_dtype=torch.bfloat16,  # what row-wise scaling writes on CUDA
        ).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {FLOAT8}"


def linears_to_rowwise_fp8(
    module: torch.nn.Module, filter_fn: Callable[[Any, str], bool] | None = None
) -> int:
    """Replace the ``nn.Linear`` layers of ``module`` that ``filter_fn(layer, name)`` picks
    (default: every one) by :class:`RowwiseFloat8Linear` in place; returns how many."""
    picked = [
        (name, m)
        for name, m in module.named_modules()
        if type(m) is torch.nn.Linear and (filter_fn is None or filter_fn(m, name))
    ]
    for name, m in picked:
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, RowwiseFloat8Linear(m))
    return len(picked)
