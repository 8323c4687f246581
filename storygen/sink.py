"""Where a render's frames go: decoded in order as they become final, streamed to a video file
(:class:`storygen.export.VideoWriter`) and / or kept in memory in the requested output type.

A frame is final once the level that makes it has run; frames are emitted in index order, a
chunk at a time, so a long video is written while it is still being generated and only the
frames not yet written (and those later levels still need) are held. Encoding runs on a
background thread (the encoder releases the GIL), one chunk in flight at a time, so the file is
written while the next batches sample; an encoder error surfaces at the next chunk or at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from storygen.export import VideoWriter
from storygen.plan import Plan

#: what ``output_type`` may ask for; None keeps no frames (they only stream to a file)
OUTPUT_TYPES = ("np", "pt", "pil", "latent", None)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "n c h w -> n h w c").cpu().numpy()


class FrameSink:
    """Decodes final frames in order and streams them to a file and / or keeps them.

    ``decode``: model space (n, C, h, w) -> pixels (n, 3, H, W) in [-1, 1].
    """

    def __init__(
        self,
        plan: Plan,
        *,
        decode: Callable[[torch.Tensor], torch.Tensor],
        output_type: str | None,
        output_path: str | os.PathLike | None,
        fps: float | None,
        chunk: int = 16,
    ) -> None:
        self.plan = plan
        self.decode = decode
        self.output_type = output_type
        self.output_path = output_path
        self.fps = fps or 8.0
        self.chunk = chunk
        self.next = 0
        self.kept: list[Any] = []
        #: seconds spent decoding frames, and waiting for (or doing) the file's writing on
        #: the calling thread (the encoder otherwise writes in the background)
        self.decode_s = 0.0
        self.write_wait_s = 0.0
        self.writer: VideoWriter | None = None
        self.keyframe_ids = (
            {f for c in plan.levels[0].calls for f in c.new_frames} if plan.levels else set()
        )
        self.keyframes: dict[int, np.ndarray] = {}
        #: the encoder's thread and the chunk it is writing (one in flight: memory stays bounded)
        self._encoder: ThreadPoolExecutor | None = None
        self._writing: Future | None = None

    def __enter__(self) -> FrameSink:
        if self.output_path is not None:
            Path(self.output_path).parent.mkdir(parents=True, exist_ok=True)
            self.writer = VideoWriter(self.output_path, fps=self.fps)
            self.writer.__enter__()
            self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storygen-mp4")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writer is None:
            return
        failure: BaseException | None = None
        try:
            self._wait_for_writer()
        except BaseException as err:  # the file must not appear: close as failed
            failure = err
        finally:
            if self._encoder is not None:
                self._encoder.shutdown(wait=True)
        if failure is not None and exc[0] is None:
            self.writer.__exit__(type(failure), failure, failure.__traceback__)
            raise failure
        self.writer.__exit__(*exc)

    def _wait_for_writer(self) -> None:
        """Wait for the chunk being encoded; re-raises the encoder's error."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            t0 = time.perf_counter()
            try:
                writing.result()
            finally:
                self.write_wait_s += time.perf_counter() - t0

    def _write(self, frames: np.ndarray) -> None:
        assert self.writer is not None
        self._wait_for_writer()  # in order, one chunk in flight
        if self._encoder is None:
            t0 = time.perf_counter()
            self.writer.write(frames)
            self.write_wait_s += time.perf_counter() - t0
        else:
            self._writing = self._encoder.submit(self.writer.write, frames)

    def offer(self, store: dict[int, torch.Tensor], *, flush: bool = False) -> None:
        """Emit the frames from ``next`` on that are final, in order, a chunk at a time."""
        end = self.next
        while end < self.plan.num_frames and end in store:
            end += 1
        if end - self.next < self.chunk and end < self.plan.num_frames and not flush:
            return
        for a in range(self.next, end, self.chunk):
            b = min(a + self.chunk, end)
            self.emit(a, torch.stack([store[f] for f in range(a, b)]))
        self.next = end

    def emit(self, start: int, samples: torch.Tensor) -> None:
        """Frames ``start, start + 1, ...`` in model space: (n, C, h, w)."""
        if self.output_type == "latent":
            self.kept.append(samples.clone())
        if self.writer is None and self.output_type in ("latent", None):
            # no pixels asked for: only the keyframes' (the render's preview) are decoded
            self.decode_keyframes(start, samples)
            return
        t0 = time.perf_counter()
        pixels = self.decode(samples)
        frames = to_uint8(pixels)
        self.decode_s += time.perf_counter() - t0
        for k, frame in enumerate(frames):
            if start + k in self.keyframe_ids:
                self.keyframes[start + k] = frame
        if self.writer is not None:
            self._write(frames)
        if self.output_type in ("np", "pil"):
            self.kept.append(frames)
        elif self.output_type == "pt":
            self.kept.append(((pixels + 1) / 2).clamp(0, 1))

    def decode_keyframes(self, start: int, samples: torch.Tensor) -> None:
        """Decode the keyframes among frames ``start, start + 1, ...`` only."""
        rows = [k for k in range(len(samples)) if start + k in self.keyframe_ids]
        if not rows:
            return
        t0 = time.perf_counter()
        frames = to_uint8(self.decode(samples[rows]))
        self.decode_s += time.perf_counter() - t0
        for k, frame in zip(rows, frames):
            self.keyframes[start + k] = frame

    def result(self) -> Any:
        if self.output_type is None:
            return None
        if self.output_type in ("pt", "latent"):
            return torch.cat(self.kept)
        frames = np.concatenate(self.kept)
        if self.output_type == "pil":
            from PIL import Image

            return [Image.fromarray(f) for f in frames]
        return frames
