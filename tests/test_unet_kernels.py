"""benchmarks/unet_kernels.py on the CPU: the variants that run there agree with the eager
pass, float8 says why it cannot run, and the FLOP split adds up."""

from __future__ import annotations

import json

import pytest

from benchmarks import unet_kernels


def test_unet_kernels_on_cpu(tmp_path):
    out = tmp_path / "k.json"
    result = unet_kernels.main(
        ["--variants", "eager,eager-cl,eager-fp8", "--rows", "3", "--frames-per-call", "8"]
        + ["--warmup", "0", "--reps", "1", "--out", str(out)]
    )
    assert json.loads(out.read_text())["rows"] == 3
    assert result["sample_shape"][0] == 3 and result["sample_shape"][2] == 8
    rows = {r["variant"]: r for r in result["variants"]}
    assert rows["eager"]["relative_error"] == 0.0
    assert rows["eager-cl"]["relative_error"] < 1e-5
    assert rows["eager-cl"]["cosine"] > 0.99999
    assert "CUDA" in rows["eager-fp8"]["skipped"]
    flops = result["flops_per_pass"]
    assert flops["convolution"] > 0 and flops["linear"] > 0
    parts = flops["convolution"] + flops["linear"] + flops["attention"] + flops["other"]
    assert parts == pytest.approx(flops["total"])
    assert rows["eager"]["tflops_per_s"] == pytest.approx(
        flops["total"] / (rows["eager"]["ms_per_pass"] / 1e3) / 1e12
    )
    assert rows["eager"]["share_of_matmul_peak"] is None  # no matrix rate measured on a CPU


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        unet_kernels.main(["--variants", "eager,turbo"])
