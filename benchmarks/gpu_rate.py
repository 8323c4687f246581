"""The chip's practical matrix-product rate, measured in the same run as a benchmark, against
which the benchmarks quote their FLOP-based utilisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def _operands(device: str, dtype: Any, n: int) -> tuple[Any, Any]:
    """Two random ``n`` × ``n`` matrices on ``device``, multiplied a few times (kernels
    chosen, clocks up)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    return a, b


def matmul_rate(device: str, dtype: Any, n: int = 8192, reps: int = 20) -> float | None:
    """FLOP/s of large square matrix products on ``device`` (the chip's practical peak in
    ``dtype``); None on CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    a, b = _operands(device, dtype, n)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sustained_rate(
    chunk: Callable[[], float], seconds: float, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float | None]:
    """Runs ``chunk`` (it does some work, waits for it and returns its FLOPs) back to back for
    ``seconds``: the rate over all of it and over its second half, where a chip held at its
    power limit has settled to the clock it keeps."""
    start = clock()
    chunks: list[tuple[float, float, float]] = []  # (start, end, flops) of each chunk
    now = start
    while now - start < seconds:
        flops = chunk()
        chunks.append((now, clock(), flops))
        now = chunks[-1][1]
    total = now - start
    late = [c for c in chunks if c[0] >= start + total / 2]  # started in the second half
    return {
        "seconds": total,
        "chunks": len(chunks),
        "flops_per_s": sum(f for _, _, f in chunks) / total,
        "second_half_flops_per_s": (
            sum(f for _, _, f in late) / (now - late[0][0]) if late else None
        ),
    }


def sustained_matmul_rate(
    device: str, dtype: Any, seconds: float = 60.0, n: int = 8192, reps: int = 20
) -> dict[str, Any] | None:
    """The rate :func:`matmul_rate`'s products keep for ``seconds`` back to back (a few
    seconds of them run at the chip's top clock; minutes of them, as a render's passes, run
    at the clock its power limit allows), with the chip's clock and power over that time
    (:class:`~benchmarks.gpu_clock.GpuClocks`); None on CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    from benchmarks.gpu_clock import GpuClocks

    a, b = _operands(device, dtype, n)

    def chunk() -> float:
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize(device)
        return 2.0 * n**3 * reps

    with GpuClocks(device) as clocks:
        rate = sustained_rate(chunk, seconds)
    return {**rate, "gpu_clocks": clocks.summary()}
