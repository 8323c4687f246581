"""Training windows from ``curate export`` shards, in the batch format of :mod:`.windows`.

``storygen train --shards DIR`` reads the tar shards of an export (``DIR/_export.json`` lists
them) instead of drawing stories from the shapes renderer. Each DataLoader worker streams its
own share of the shards (a new shard order every pass, from the seed), mixes samples through
a shuffle buffer, decodes each sample's mp4 (decord, else PyAV, else OpenCV:
:func:`curate.export.decode_mp4`) and draws one window from it, as the plan's calls see windows:

- a call of ``f`` frames (most calls hold ``frames``, some fewer, as in :mod:`.windows`);
- spacing 1 (contiguous frames at the export fps) half the time, otherwise a spacing drawn
  uniformly up to what the sample holds, ``(n - 1) / (f - 1)`` for a sample of ``n`` frames
  (a sample of exactly ``f`` frames gives spacing 1 only);
- the role (global, local, autoregressive) and its mask drawn as :mod:`.windows` draws them;
- each frame's prompt is the prompt of the sample segment it falls in, and its progress is
  how far it is into that segment's whole clip (``segment_spans``; a sample written without
  them counts from the sample's own segment bounds).

Yields ``(frames uint8 (B, F, H, W, 3), prompts [[str] * F] * B, mask (B, F), spacing (B,),
progress (B, F))``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storygen.training.windows import ROLE_WEIGHTS, ROLES, draw_call_length

logger = logging.getLogger(__name__)

#: samples held by each worker's shuffle buffer
SHUFFLE_BUFFER = 256
#: distinct samples a worker reads (or all of its share, when fewer) before it judges the
#: share of bad ones; also the reads after which a worker with no good sample gives up
JUDGE_AFTER = 64
#: the share of bad samples, among the distinct ones read, past which the export is refused
MAX_BAD_SHARE = 0.5


class BadSample(ValueError):
    """A sample that cannot serve as training windows (what is wrong with it is the message)."""


@dataclass
class _Tally:
    """The distinct samples a worker has read, good and bad, and the first bad one's story."""

    good: set[str] = field(default_factory=set)
    bad: set[str] = field(default_factory=set)
    reads: int = 0
    first_bad: str = ""


def export_info(folder: str | Path) -> dict[str, Any]:
    """``_export.json`` of a finished export, with a clear error when there is none."""
    path = Path(folder) / "_export.json"
    if not path.is_file():
        raise ValueError(
            f"{folder}: no _export.json; --shards takes the --out folder of a finished "
            "`curate export`"
        )
    return json.loads(path.read_text())


def export_fps(folder: str | Path) -> float:
    """The frame rate of an export's samples (its settings' ``fps``): what a model trained on
    its shards records as its frame rate (``sampling.json``, ``training.json``)."""
    fps = export_info(folder).get("settings", {}).get("fps")
    number = isinstance(fps, int | float) and not isinstance(fps, bool)
    if not (number and math.isfinite(fps) and fps > 0):
        raise ValueError(f"{folder}: _export.json gives no frame rate (settings.fps is {fps!r})")
    return float(fps)


def frame_prompts(meta: dict[str, Any]) -> list[str]:
    """One prompt per frame of a sample, from its timed segments."""
    prompts = [""] * int(meta["frames"])
    for seg in meta["segments"]:
        for k in range(int(seg["start_frame"]), min(int(seg["end_frame"]), len(prompts))):
            prompts[k] = seg["prompt"]
    return prompts


def frame_progress(meta: dict[str, Any]) -> np.ndarray:
    """How far each frame of a sample is into its prompt's segment, 0 to 1: measured on the
    segment's whole clip span (``segment_spans``) where the sample has it, else on the
    segment's frames in the sample."""
    n = int(meta["frames"])
    out = np.full(n, 0.5, np.float32)
    spans = meta.get("segment_spans") or [
        [s["start_frame"], s["end_frame"]] for s in meta["segments"]
    ]
    for seg, (a, b) in zip(meta["segments"], spans):
        k = np.arange(int(seg["start_frame"]), min(int(seg["end_frame"]), n))
        length = float(b) - float(a)
        if length > 1:
            out[k] = np.clip((k - float(a)) / (length - 1), 0.0, 1.0)
    return out


def draw_window(
    rng: np.random.Generator,
    frames: np.ndarray,
    prompts: list[str],
    f: int,
    progress: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray, float, np.ndarray]:
    """One window of ``f`` frames from a sample's decoded ``frames`` (n, H, W, 3), with the
    progress of its frames (``progress`` per sample frame, default 0.5)."""
    n = len(frames)
    if n < f:
        raise ValueError(f"a sample of {n} frames cannot hold a window of {f}")
    widest = (n - 1) / (f - 1) if f > 1 else 1.0
    spacing = 1.0 if widest <= 1.0 or rng.random() < 0.5 else float(rng.uniform(1.0, widest))
    positions = np.round(np.arange(f) * spacing).astype(np.int64)
    positions += int(rng.integers(0, n - int(positions[-1])))
    role = str(rng.choice(ROLES, p=ROLE_WEIGHTS))
    mask = np.zeros(f, np.float32)
    if role == "local":
        mask[0] = mask[-1] = 1.0
    elif role == "autoregressive":
        mask[: int(rng.integers(1, min(4, f - 1) + 1))] = 1.0
    real_spacing = float(positions[-1] - positions[0]) / max(f - 1, 1)
    if progress is None:
        progress = np.full(n, 0.5, np.float32)
    return (
        frames[positions],
        [prompts[int(p)] for p in positions],
        mask,
        real_spacing,
        progress[positions].astype(np.float32),
    )


class ShardWindows(torch.utils.data.IterableDataset):
    """Endless batches of windows from export shards (each DataLoader worker its share).

    The export's frame size must equal ``size`` and its samples must hold at least
    ``frames`` frames; both are checked when the dataset is built.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        batch_size: int,
        frames: int,
        size: int,
        seed: int,
        uncond: float = 0.1,
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        info = export_info(folder)
        settings = info["settings"]
        if (settings["width"], settings["height"]) != (size, size):
            raise ValueError(
                f"{folder}: shards hold {settings['width']}x{settings['height']} frames, "
                f"training asks for {size}x{size} (export again with --size {size})"
            )
        if settings["frames"] < frames:
            raise ValueError(
                f"{folder}: samples hold {settings['frames']} frames, fewer than the "
                f"{frames} frames per call asked for"
            )
        listed = [s for s in info["shards"] if s["samples"]]
        if not listed:
            raise ValueError(f"{folder}: the export holds no samples")
        for shard in listed:
            path = Path(folder) / shard["path"]
            if not path.is_file():
                raise ValueError(
                    f"{folder}: shard {shard['path']} is missing (_export.json lists it with "
                    f"{shard['samples']} samples); export again"
                )
            held = path.stat().st_size
            if shard.get("bytes") is not None and held != shard["bytes"]:
                raise ValueError(
                    f"{folder}: shard {shard['path']} holds {held} bytes, _export.json says "
                    f"{shard['bytes']}: it was cut short or changed after the export; "
                    "export again"
                )
        self.paths = [str(Path(folder) / s["path"]) for s in listed]
        #: each shard's samples, as _export.json lists them (a shard giving fewer is logged)
        self.counts = [int(s["samples"]) for s in listed]
        self.folder = str(folder)
        self.batch_size, self.frames, self.size = batch_size, frames, size
        self.seed, self.uncond, self.shuffle_buffer = seed, uncond, shuffle_buffer
        self.samples = int(info["counts"]["samples"])

    def _stream(self, rng: np.random.Generator, worker: int, workers: int) -> Iterator[dict]:
        """This worker's samples, pass after pass, each pass in a new shard order.

        A shard that gives fewer samples than ``_export.json`` lists, or is damaged, is logged
        in the first pass only (a warning a pass would flood the log). A pass that gives this
        worker no sample (its share of the shards damaged) reads every shard instead, and
        when that gives none either, no shard can be read: ``ValueError``, not an endless
        loop over nothing."""
        from curate.export import iter_samples

        if self.samples < workers:  # too few to share out: every worker reads them all
            worker, workers = 0, 1
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch, 31]).permutation(len(self.paths))
            paths = [self.paths[i] for i in order]
            counts = [self.counts[i] for i in order]
            warn = epoch == 0
            given = 0
            if len(paths) >= workers:
                mine = iter_samples(
                    paths[worker::workers], expected=counts[worker::workers], warn=warn
                )
                for sample in mine:
                    given += 1
                    yield sample
            else:  # fewer shards than workers: every worker reads all, keeps its share
                for i, sample in enumerate(iter_samples(paths, expected=counts, warn=warn)):
                    if i % workers == worker:
                        given += 1
                        yield sample
            if not given:
                for sample in iter_samples(paths, expected=counts, warn=False):
                    given += 1
                    yield sample
            if not given:
                raise ValueError(
                    f"{self.folder}: no sample could be read from its {len(paths)} shards "
                    "(damaged, or not the files the export wrote); export again"
                )
            epoch += 1

    def _shuffled(self, rng: np.random.Generator, worker: int, workers: int) -> Iterator[dict]:
        buffer: list[dict] = []
        for sample in self._stream(rng, worker, workers):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = int(rng.integers(0, len(buffer)))
            buffer[i], sample = sample, buffer[i]
            yield sample

    def _read(self, sample: dict[str, Any]) -> tuple[np.ndarray, list[str], np.ndarray]:
        """A sample's decoded frames (n, H, W, 3), per-frame prompts and progress;
        :class:`BadSample` when it cannot serve."""
        from curate.export import decode_mp4

        missing = [ext for ext in ("mp4", "json") if ext not in sample]
        if missing:
            raise BadSample(f"no {' or '.join(missing)} in the shard")
        meta = sample["json"]
        try:
            expected = int(meta["frames"])
            prompts, progress = frame_prompts(meta), frame_progress(meta)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadSample(f"its json does not read ({type(exc).__name__}: {exc})") from None
        if expected < self.frames:
            raise BadSample(f"{expected} frames, fewer than the {self.frames} of a call")
        try:
            frames = decode_mp4(sample["mp4"])
        except ImportError:  # no decoder at all: not the sample's fault
            raise
        except Exception as exc:  # each decoder fails its own way on a broken file
            raise BadSample(f"its mp4 does not decode ({type(exc).__name__}: {exc})") from None
        if len(frames) != expected:
            raise BadSample(f"{len(frames)} frames decoded, its json says {expected}")
        if frames.shape[1:] != (self.size, self.size, 3):
            raise BadSample(f"frames of {frames.shape[1:]}, the export's are {self.size} px")
        return frames, prompts, progress

    def _skip(self, tally: _Tally, key: str, why: str, share: int) -> None:
        """Count a bad sample (a warning the first time it is read); ``ValueError`` when bad
        samples pass :data:`MAX_BAD_SHARE` of the distinct ones read (judged once ``share``,
        this worker's samples, or :data:`JUDGE_AFTER` of them are read) or no good one came
        in :data:`JUDGE_AFTER` reads."""
        if key not in tally.bad:
            tally.bad.add(key)
            tally.first_bad = tally.first_bad or f"{key}: {why}"
            logger.warning(
                "%s: skipping sample %s: %s (%s of %s distinct samples read are bad)",
                self.folder,
                key,
                why,
                len(tally.bad),
                len(tally.bad) + len(tally.good),
            )
        seen = len(tally.bad) + len(tally.good)
        judged = seen >= min(JUDGE_AFTER, share) and len(tally.bad) > MAX_BAD_SHARE * seen
        if judged or (tally.reads >= JUDGE_AFTER and not tally.good):
            raise ValueError(
                f"{self.folder}: {len(tally.bad)} of the {seen} distinct samples read cannot "
                f"serve as training windows (the first, {tally.first_bad}); export again"
            )

    def __iter__(
        self,
    ) -> Iterator[tuple[torch.Tensor, list[list[str]], torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, worker, 15485863])
        samples = self._shuffled(rng, worker, workers)
        share = self.samples if self.samples < workers else max(1, self.samples // workers)
        tally = _Tally()
        while True:
            f = draw_call_length(rng, self.frames)
            batch: list[tuple[np.ndarray, list[str], np.ndarray, float, np.ndarray]] = []
            while len(batch) < self.batch_size:
                sample = next(samples)
                key = str(sample.get("__key__"))
                tally.reads += 1
                try:
                    frames, texts, progress = self._read(sample)
                except BadSample as exc:
                    self._skip(tally, key, str(exc), share)
                    continue
                tally.good.add(key)
                batch.append(draw_window(rng, frames, texts, f, progress))
            prompts = [[""] * f if rng.random() < self.uncond else w[1] for w in batch]
            yield (
                torch.from_numpy(np.stack([w[0] for w in batch])),
                prompts,
                torch.from_numpy(np.stack([w[2] for w in batch])),
                torch.tensor([w[3] for w in batch], dtype=torch.float32),
                torch.from_numpy(np.stack([w[4] for w in batch])),
            )
