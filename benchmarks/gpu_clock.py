"""The GPU's clock, power and temperature while a block runs, sampled with ``nvidia-smi``.

A pass timed alone for a few seconds and the same pass sustained for minutes in a render can
run at different clocks: a chip held at its power limit lowers its clock, and with it the
rate of every kernel. This tells that apart from the work between passes::

    with GpuClocks("cuda:0") as clocks:
        render()
    clocks.summary()  # {"samples": 412, "sm_mhz_median": 1755.0, "sm_share_of_max": 0.886, ...}

Where there is no ``nvidia-smi`` (a CPU machine) or the device is not a CUDA one, the summary is
None; a sampler that fails never fails the block it watches.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
from typing import Any

#: what each sample reads, in ``nvidia-smi --query-gpu`` names (all of them in every driver
#: since 2016)
FIELDS = ("clocks.sm", "clocks.max.sm", "power.draw", "power.limit", "temperature.gpu")


def device_index(device: Any) -> int | None:
    """The CUDA index of ``device`` ("cuda", "cuda:1", a torch.device), None for others."""
    text = str(device)
    if not text.startswith("cuda"):
        return None
    _, _, index = text.partition(":")
    return int(index) if index else 0


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


class GpuClocks:
    """Samples :data:`FIELDS` of one GPU every ``interval_ms`` while the block runs."""

    def __init__(self, device: Any, *, interval_ms: int = 200, command: str = "nvidia-smi"):
        self.index = device_index(device)
        self.interval_ms = interval_ms
        self.command = command
        self.rows: list[tuple[float | None, ...]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuClocks:
        exe = shutil.which(self.command) if self.index is not None else None
        if exe is None:
            return self
        try:
            self._proc = subprocess.Popen(
                [
                    exe,
                    f"--query-gpu={','.join(FIELDS)}",
                    "--format=csv,noheader,nounits",
                    f"--loop-ms={self.interval_ms}",
                    f"--id={self.index}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = line.split(",")
            if len(parts) == len(FIELDS):
                self.rows.append(tuple(_number(p) for p in parts))

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any] | None:
        """Median and lowest SM clock (MHz) and the median's share of the chip's top clock,
        median power draw against the power limit (W), highest temperature (C); None without
        samples."""

        def column(name: str) -> list[float]:
            k = FIELDS.index(name)
            return [r[k] for r in self.rows if r[k] is not None]  # type: ignore[misc]

        sm = column("clocks.sm")
        if not sm:
            return None
        top = column("clocks.max.sm")
        power = column("power.draw")
        limit = column("power.limit")
        temp = column("temperature.gpu")
        median = statistics.median(sm)
        return {
            "samples": len(sm),
            "sm_mhz_median": median,
            "sm_mhz_min": min(sm),
            "sm_mhz_max_clock": max(top) if top else None,
            "sm_share_of_max": median / max(top) if top else None,
            "power_w_median": statistics.median(power) if power else None,
            "power_limit_w": max(limit) if limit else None,
            "temperature_c_max": max(temp) if temp else None,
        }


def describe(summary: dict[str, Any] | None) -> str:
    """One line of a :meth:`GpuClocks.summary` for a benchmark's log ("" without one)."""
    if not summary:
        return ""
    text = f"SM clock median {summary['sm_mhz_median']:.0f} MHz"
    if summary["sm_share_of_max"]:
        text += f" ({100 * summary['sm_share_of_max']:.0f} % of {summary['sm_mhz_max_clock']:.0f})"
    text += f", lowest {summary['sm_mhz_min']:.0f}"
    if summary["power_w_median"] is not None:
        text += f"; power median {summary['power_w_median']:.0f} W"
        if summary["power_limit_w"]:
            text += f" of {summary['power_limit_w']:.0f}"
    if summary["temperature_c_max"] is not None:
        text += f"; up to {summary['temperature_c_max']:.0f} C"
    return text
