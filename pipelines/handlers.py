"""``RunInference`` model handler for CLIP caption scoring.

The handler's examples are whole videos (:class:`~curate.work.VideoWork`): Beam batches
videos, and :class:`curate.scoring.VideoScorer` embeds all sampled frames of a batch in shared
forward passes. One video whose scoring raises is retried alone, so a bad video fails by itself
and never takes its batch along. With ``share_model=True`` (a large model on a GPU) Beam keeps
one model per machine, served to every worker process, instead of one per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler

from curate.isolation import traceback_tail
from curate.scoring import VideoScorer
from curate.work import VideoWork, failure_from_exception

logger = logging.getLogger(__name__)


class VideoBatch:
    """Videos batched by hand for ``RunInference`` (a list would be flattened by some runners)."""

    def __init__(self, items: list[VideoWork]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[VideoWork]:
        return iter(self.items)

    def __getitem__(self, i: int) -> VideoWork:
        return self.items[i]


class ClipModelHandler(ModelHandler[VideoWork, VideoWork, VideoScorer]):
    """Scores every clip of a batch of videos with a :class:`~curate.scoring.VideoScorer`.

    ``factory(**kwargs)`` builds its scorer (default :class:`curate.clip_score.ClipScorer`);
    ``captioner`` and ``dedup`` are the scorer's captioner and dedup-signature settings.
    """

    def __init__(
        self,
        factory: Callable[..., Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        max_batch_videos: int = 8,
        share_model: bool = False,
        dedup: Mapping[str, Any] | None = None,
        prebatched: bool = False,
        captioner: Mapping[str, Any] | None = None,
    ) -> None:
        if max_batch_videos < 1:
            raise ValueError(f"max_batch_videos must be >= 1, got {max_batch_videos!r}")
        super().__init__(
            min_batch_size=1,
            max_batch_size=max_batch_videos,
            large_model=share_model,
        )
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.dedup = dict(dedup) if dedup is not None else None
        self.prebatched = prebatched
        self.captioner = dict(captioner) if captioner else None

    def should_skip_batching(self) -> bool:
        # prebatched: each element is already a list of videos (see ScoreCaptions)
        return self.prebatched

    def load_model(self) -> VideoScorer:
        start = time.perf_counter()
        scorer = VideoScorer(self.factory, self.kwargs, captioner=self.captioner, dedup=self.dedup)
        scorer.setup()
        logger.info("scorer loaded in %.1f s", time.perf_counter() - start)
        return scorer

    def run_inference(
        self,
        batch: Sequence[VideoWork],
        model: VideoScorer,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[VideoWork]:
        records = [dict(c) for w in batch for c in w.clips]
        try:
            scored, seconds = model.score_timed(records)
        except Exception:
            # one bad video must not fail the batch: score each alone to find it
            return [self._score_one(w, model) for w in batch]
        out, i = [], 0
        # a batch's time, shared out by clip count
        for work in batch:
            n = len(work.clips)
            share = n / max(1, len(records))
            out.append(
                self._done(work, scored[i : i + n], {k: v * share for k, v in seconds.items()})
            )
            i += n
        return out

    def _score_one(self, work: VideoWork, model: VideoScorer) -> VideoWork:
        try:
            scored, seconds = model.score_timed([dict(c) for c in work.clips])
        except Exception as exc:
            logger.warning("%s: scoring failed: %s", work.video_id, exc)
            return work.fail(
                failure_from_exception(
                    work.video, exc, stage="clip-score", traceback=traceback_tail(exc)
                )
            )
        return self._done(work, scored, seconds)

    @staticmethod
    def _done(
        work: VideoWork, scored: list[dict[str, Any]], seconds: Mapping[str, float]
    ) -> VideoWork:
        """``seconds``: per stage (``score``, ``captioner``), added to the video's timings."""
        out = VideoWork(video=work.video, clips=scored, timings=dict(work.timings))
        for stage, s in seconds.items():
            out.timings[stage] = out.timings.get(stage, 0.0) + s
        return out

    def get_num_bytes(self, batch: Sequence[VideoWork]) -> int:
        # the default pickles the whole batch just to measure it
        return sum(w.frame_bytes() for w in batch)

    def get_metrics_namespace(self) -> str:
        return "storyloom_clip"

    def share_model_across_processes(self) -> bool:
        return bool(getattr(self, "_large_model", False))
