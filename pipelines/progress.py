"""Progress of a running curate job, read from what it has committed.

:class:`RenderProgress` does the same for a batch render, over its finished videos.

Runners report metrics only when a job ends (the local runner) or not at all (Dask), but every
runner commits finished videos to ``OUT/_work``. A background thread polls those commits, so
the same progress bar works whichever runner does the work, and it shows committed progress:
what a crash right now would keep.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from curate import shards

logger = logging.getLogger(__name__)


class WorkProgress:
    """A tqdm bar (or, without a terminal, a log line every ``every_s``) over committed videos."""

    desc = "curate"
    unit = "video"

    def __init__(
        self,
        output: str | Path,
        *,
        total: int,
        already: int = 0,
        enabled: bool = True,
        poll_s: float = 1.0,
        every_s: float = 30.0,
    ) -> None:
        self.output = Path(output)
        self.total = total
        self.already = already
        self.enabled = enabled
        self.poll_s = poll_s
        self.every_s = every_s
        # work committed before this run is counted in ``already`` (the part of it that is
        # still current), not file by file: a rerun may redo some of it
        self._seen: dict[str, tuple[int, int, int]] = {
            f.name: (0, 0, 0) for f in shards.work_files(self.output)
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()

    def snapshot(self) -> tuple[int, int, int]:
        """(videos, clips, failed videos) done so far: ``already`` plus this run's commits."""
        for file in shards.work_files(self.output):
            if file.name in self._seen:
                continue
            try:
                meta = pq.ParquetFile(file).metadata
            except OSError:  # replaced between listing and reading
                continue
            self._seen[file.name] = (
                meta.num_rows,
                shards.leaf_count(meta, "clips.list.element.clip_id"),
                shards.leaf_count(meta, "failures.list.element.input_id"),
            )
        videos = self.already + sum(v for v, _, _ in self._seen.values())
        clips = sum(c for _, c, _ in self._seen.values())
        failed = sum(f for _, _, f in self._seen.values())
        return videos, clips, failed

    def _loop(self) -> None:
        bar = None
        tty = sys.stderr.isatty()
        if tty:
            from tqdm import tqdm

            bar = tqdm(total=self.total, initial=self.already, unit=self.unit, desc=self.desc)
        last_log = time.monotonic()
        try:
            while not self._stop.wait(self.poll_s):
                videos, clips, failed = self.snapshot()
                videos = min(videos, self.total)
                if bar is not None:
                    bar.n = videos
                    bar.set_postfix(self._postfix(clips, failed), refresh=False)
                    bar.refresh()
                elif time.monotonic() - last_log >= self.every_s:
                    last_log = time.monotonic()
                    rate = (videos - self.already) / max(1e-9, time.monotonic() - self._start)
                    self._log(videos, clips, failed, rate * 60)
            if bar is not None:
                videos, clips, failed = self.snapshot()
                bar.n = min(videos, self.total)
                bar.set_postfix(self._postfix(clips, failed), refresh=False)
                bar.refresh()
        finally:
            if bar is not None:
                bar.close()

    def _postfix(self, clips: int, failed: int) -> dict[str, int]:
        return {"clips": clips, "failed": failed}

    def _log(self, videos: int, clips: int, failed: int, per_min: float) -> None:
        logger.info(
            "progress: %d/%d videos committed (%d clips, %d failed), %.1f videos/min",
            videos,
            self.total,
            clips,
            failed,
            per_min,
        )

    def __enter__(self) -> WorkProgress:
        self._start = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="curate-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class RenderProgress(WorkProgress):
    """The same bar over a batch render's finished videos (files ending in ``suffix`` in
    ``folder``; unfinished ones are hidden temporary files).

    ``names``: the file names this run writes (other stories' videos in the folder are not
    counted); ``since``: a time (``time.time()``) before which a file is not this run's (a
    run that renders its stories again, over their old videos)."""

    desc = "render"
    unit = "story"

    def __init__(
        self,
        folder: str | Path,
        *,
        suffix: str = ".mp4",
        names: Collection[str] | None = None,
        since: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(folder, **kwargs)
        self.suffix = suffix
        self.names = None if names is None else frozenset(names)
        self.since = since

    def snapshot(self) -> tuple[int, int, int]:
        if not self.output.is_dir():
            return 0, 0, 0
        done = 0
        for f in self.output.iterdir():
            if f.suffix != self.suffix or f.name.startswith("."):
                continue
            if self.names is not None and f.name not in self.names:
                continue
            if self.since is not None:
                try:
                    if f.stat().st_mtime < self.since:
                        continue
                except OSError:  # replaced between listing and reading
                    continue
            done += 1
        return done, 0, 0

    def _postfix(self, clips: int, failed: int) -> dict[str, int]:
        return {}

    def _log(self, videos: int, clips: int, failed: int, per_min: float) -> None:
        logger.info(
            "progress: %d/%d stories rendered, %.1f stories/min", videos, self.total, per_min
        )
