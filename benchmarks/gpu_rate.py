"""The chip's practical matrix-product rate, measured in the same run as a benchmark, against
which the benchmarks quote their FLOP-based utilisation."""

from __future__ import annotations

import time
from typing import Any


def matmul_rate(device: str, dtype: Any, n: int = 8192, reps: int = 20) -> float | None:
    """FLOP/s of large square matrix products on ``device`` (the chip's practical peak in
    ``dtype``); None on CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)
