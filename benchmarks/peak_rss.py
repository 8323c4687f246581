"""Peak resident memory while a block runs, sampled from a thread (the benchmarks' one meter)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import psutil


class PeakRSS:
    """Largest RSS seen while the block runs: of this process, or of ``pid`` while it lives;
    with ``tree``, summed over the process and all its descendants. ``base`` is the value at
    the start (0 for another process), ``growth_mb`` the rise above it."""

    def __init__(self, pid: int | None = None, *, interval: float = 0.02, tree: bool = False):
        self.proc = psutil.Process(pid or os.getpid())
        self.own = pid is None
        self.interval, self.tree = interval, tree
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> int:
        procs = [self.proc]
        if self.tree:
            with contextlib.suppress(psutil.Error):
                procs += self.proc.children(recursive=True)
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakRSS:
        self.base = self._sample() if self.own else 0
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20
