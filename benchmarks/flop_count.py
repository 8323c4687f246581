"""PyTorch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``) with the attention
kernel it leaves out counted too: on a CPU, ``scaled_dot_product_attention`` runs
``aten._scaled_dot_product_flash_attention_for_cpu``, which the counter has no formula for, so
a pass's attention products counted as nothing there (3 % of a ModelScope-shape UNet pass).
They count as the CUDA flash kernel's do."""

from __future__ import annotations

from typing import Any


def flop_counter(**kwargs: Any) -> Any:
    """A ``FlopCounterMode`` (same arguments) that also counts the CPU's flash attention."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    aten = torch.ops.aten
    mapping = dict(kwargs.pop("custom_mapping", None) or {})
    cpu = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu is not None and cpu not in flop_registry and cpu not in mapping:
        # the CUDA flash kernel's formula, over the same (query, key, value) arguments; it
        # takes the tensors as they come (its registration already maps them to shapes)
        flash = flop_registry[aten._scaled_dot_product_flash_attention]

        def formula(*args: Any, **kw: Any) -> int:
            return flash(*args, **kw)

        formula._get_raw = True  # type: ignore[attr-defined]
        mapping[cpu] = formula
    return FlopCounterMode(custom_mapping=mapping, **kwargs)
