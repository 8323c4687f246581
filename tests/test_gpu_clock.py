"""benchmarks/gpu_clock.py: the GPU's clock and power over a block, read from nvidia-smi."""

from __future__ import annotations

import stat
import time

import pytest

from benchmarks.gpu_clock import FIELDS, GpuClocks, describe, device_index

# a stand-in nvidia-smi: checks the arguments a real one takes, then prints rows of the
# queried fields in a loop until it is stopped, one of them unreadable as a real one can
FAKE = """#!/bin/sh
echo "$@" > "{args}"
case "$*" in *"--query-gpu={fields}"*"--format=csv,noheader,nounits"*"--id=1"*) ;; *) exit 2;; esac
i=0
while true; do
  if [ $i -eq 1 ]; then echo "[N/A], 1980, [N/A], 700.00, 51"; fi
  echo "1980, 1980, 690.5, 700.00, 60"
  echo "1500, 1980, 700.0, 700.00, 66"
  echo "1700, 1980, 699.0, 700.00, 64"
  i=$((i+1))
  sleep 0.05
done
"""


def fake_smi(tmp_path):
    exe = tmp_path / "nvidia-smi"
    exe.write_text(FAKE.format(args=tmp_path / "args", fields=",".join(FIELDS)))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_samples_summarise_clock_power_and_temperature(tmp_path):
    exe = fake_smi(tmp_path)
    with GpuClocks("cuda:1", interval_ms=50, command=str(exe)) as clocks:
        deadline = time.monotonic() + 10
        while len(clocks.rows) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "--loop-ms=50" in (tmp_path / "args").read_text()
    got = clocks.summary()
    sm = [r[0] for r in clocks.rows if r[0] is not None]
    assert len(sm) >= 6 and set(sm) == {1980.0, 1500.0, 1700.0}
    assert got["samples"] == len(sm)
    assert got["sm_mhz_min"] == 1500.0 and got["sm_mhz_max_clock"] == 1980.0
    assert got["sm_mhz_median"] == 1700.0  # as many of each clock, then the middle one
    assert got["sm_share_of_max"] == pytest.approx(1700 / 1980)
    assert got["power_limit_w"] == 700.0 and 690.5 <= got["power_w_median"] <= 700.0
    assert got["temperature_c_max"] == 66.0
    line = describe(got)
    assert "1700 MHz (86 % of 1980)" in line and "of 700" in line and "66 C" in line
    # the sampler is gone once the block is
    assert clocks._proc.poll() is not None


def test_no_samples_without_a_cuda_device_or_nvidia_smi(tmp_path, monkeypatch):
    exe = fake_smi(tmp_path)
    with GpuClocks("cpu", command=str(exe)) as clocks:
        pass
    assert clocks.summary() is None and not (tmp_path / "args").exists()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with GpuClocks("cuda") as clocks:
        pass
    assert clocks.summary() is None and describe(None) == ""


def test_a_sampler_that_fails_leaves_no_summary(tmp_path):
    """A real nvidia-smi refuses arguments it does not know; the block still runs."""
    exe = fake_smi(tmp_path)
    with GpuClocks("cuda:0", interval_ms=50, command=str(exe)) as clocks:  # not --id=1
        time.sleep(0.3)
    assert clocks.summary() is None


def test_device_index():
    assert [device_index(d) for d in ("cuda", "cuda:3", "cpu", "mps")] == [0, 3, None, None]
