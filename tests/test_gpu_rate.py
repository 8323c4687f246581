from __future__ import annotations

import pytest

from benchmarks.gpu_rate import matmul_rate, sustained_matmul_rate, sustained_rate


def test_a_sustained_rate_tells_the_settled_second_half_from_the_whole():
    """A chip that slows down part-way (its power limit reached): the whole window's rate
    mixes both clocks, the second half's is the one it keeps."""
    now = [0.0]
    durations = iter([1.0] * 5 + [2.0] * 100)  # 10 FLOPs a chunk: 10/s, then 5/s

    def chunk() -> float:
        now[0] += next(durations)
        return 10.0

    rate = sustained_rate(chunk, 20.0, clock=lambda: now[0])
    # chunks end at 1..5, then 7, 9, ..., 21: the first end at or past 20 s stops it
    assert rate["chunks"] == 13 and rate["seconds"] == 21.0
    assert rate["flops_per_s"] == pytest.approx(130 / 21)
    # started at or after 10.5 s: those at 11, 13, 15, 17, 19
    assert rate["second_half_flops_per_s"] == pytest.approx(50 / 10)


def test_one_chunk_longer_than_the_window_has_no_second_half():
    now = [0.0]

    def chunk() -> float:
        now[0] += 5.0
        return 1.0

    rate = sustained_rate(chunk, 2.0, clock=lambda: now[0])
    assert rate["chunks"] == 1 and rate["flops_per_s"] == pytest.approx(0.2)
    assert rate["second_half_flops_per_s"] is None


def test_no_matrix_rate_on_a_cpu():
    assert matmul_rate("cpu", None) is None
    assert sustained_matmul_rate("cpu", None, seconds=1.0) is None
