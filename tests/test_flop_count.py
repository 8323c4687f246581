"""benchmarks/flop_count.py: attention through ``scaled_dot_product_attention`` counts on a CPU
as its two matrix products do, where PyTorch's own counter counts it as nothing."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flop_count import flop_counter


def test_attention_on_a_cpu_counts_as_its_matrix_products():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 50, 8, generator=gen)
    k = torch.randn(2, 3, 40, 8, generator=gen)
    v = torch.randn(2, 3, 40, 8, generator=gen)
    with flop_counter(display=False) as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    # the same attention written out: scores, softmax, weighted values
    with FlopCounterMode(display=False) as products:
        scores = (q @ k.transpose(-1, -2)) / 8**0.5
        manual = scores.softmax(-1) @ v
    torch.testing.assert_close(out, manual)
    assert products.get_total_flops() == 2 * (2 * 2 * 3 * 50 * 40 * 8)
    assert counter.get_total_flops() == products.get_total_flops()


def test_other_ops_and_custom_formulas_count_as_before():
    x, w = torch.randn(4, 16), torch.randn(32, 16)
    with flop_counter(display=False) as counter:
        torch.nn.functional.linear(x, w)
    assert counter.get_total_flops() == 2 * 4 * 16 * 32
    aten = torch.ops.aten
    with flop_counter(display=False, custom_mapping={aten.mm: lambda *a, **k: 7}) as custom:
        x @ w.T
    assert custom.get_total_flops() == 7
