"""``RunInference`` model handler for CLIP caption scoring.

The handler's examples are whole videos (:class:`~pipelines.records.VideoWork`): Beam batches
videos, and the scorer embeds all sampled frames of a batch in shared forward passes. One video
whose scoring raises is retried alone, so a bad video fails by itself and never takes its batch
along. With ``share_model=True`` (a large model on a GPU) Beam keeps one model per machine,
served to every worker process, instead of one per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler

from .records import VideoWork, failure_from_exception

logger = logging.getLogger(__name__)


class ScorerService:
    """The loaded scorer behind one plain method, so that it also works as a shared proxy.

    Beam's cross-process sharing proxies method calls; a generator (``process_all``) does not
    survive that, a list does.
    """

    def __init__(
        self,
        factory: Callable[..., Any],
        kwargs: Mapping[str, Any],
        signature: Callable[[Mapping[str, Any]], Any] | None = None,
        captioner: Mapping[str, Any] | None = None,
    ) -> None:
        self.scorer = factory(**dict(kwargs))
        self.signature = signature
        if hasattr(self.scorer, "setup"):
            self.scorer.setup()
        self.captioner: Any = None
        if captioner:
            from curate.captioner import Captioner

            self.captioner = Captioner(**dict(captioner))
            self.captioner.setup()

    def score(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = list(self.scorer.process_all(records))
        if self.captioner is not None:
            # the captioner reads the sampled frames, which only this stage has; its caption
            # travels with the committed work to the re-captioner
            have = [r for r in out if r.get("frames") is not None and len(r["frames"])]
            texts = self.captioner.caption_scenes([r["frames"] for r in have])
            for record, text in zip(have, texts):
                record["generated_caption"] = text
        for record in out:
            if self.signature is not None:
                # dedup compares pixels too; this is the last stage that has them
                record["dedup_signature"] = [float(x) for x in self.signature(record)]
            record.pop("frames", None)
        return out


class ClipModelHandler(ModelHandler[VideoWork, VideoWork, ScorerService]):
    """Scores every clip of a batch of videos with a CLIP scorer.

    ``factory(**kwargs)`` builds the scorer (by default :class:`curate.clip_score.ClipScorer`):
    it has ``setup()`` and ``process_all(records) -> records`` filling ``caption_score``,
    ``frame_scores``, ``embedding`` and ``frame_embeddings`` (and ``scene_embedding`` for a
    model that reads storyboards). With ``captioner`` (:class:`curate.captioner.Captioner`
    keyword arguments) every scene also gets the captioner's ``generated_caption``.
    """

    def __init__(
        self,
        factory: Callable[..., Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        max_batch_videos: int = 8,
        share_model: bool = False,
        signature: Callable[[Mapping[str, Any]], Any] | None = None,
        prebatched: bool = False,
        captioner: Mapping[str, Any] | None = None,
    ) -> None:
        if max_batch_videos < 1:
            raise ValueError(f"max_batch_videos must be >= 1, got {max_batch_videos!r}")
        if factory is None:
            from curate.clip_score import ClipScorer

            factory = ClipScorer
        super().__init__(
            min_batch_size=1,
            max_batch_size=max_batch_videos,
            large_model=share_model,
        )
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.signature = signature
        self.prebatched = prebatched
        self.captioner = dict(captioner) if captioner else None

    def should_skip_batching(self) -> bool:
        # prebatched: each element is already a list of videos (see ScoreCaptions)
        return self.prebatched

    def load_model(self) -> ScorerService:
        start = time.perf_counter()
        service = ScorerService(self.factory, self.kwargs, self.signature, self.captioner)
        logger.info("scorer loaded in %.1f s", time.perf_counter() - start)
        return service

    def run_inference(
        self,
        batch: Sequence[VideoWork],
        model: ScorerService,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[VideoWork]:
        start = time.perf_counter()
        records = [dict(c) for w in batch for c in w.clips]
        try:
            scored = model.score(records)
        except Exception:
            # one bad video must not fail the batch: score each alone to find it
            return [self._score_one(w, model) for w in batch]
        out, i = [], 0
        per_video = (time.perf_counter() - start) / max(1, len(batch))
        for work in batch:
            n = len(work.clips)
            out.append(self._done(work, scored[i : i + n], per_video))
            i += n
        return out

    def _score_one(self, work: VideoWork, model: ScorerService) -> VideoWork:
        from .isolation import traceback_tail

        start = time.perf_counter()
        try:
            scored = model.score([dict(c) for c in work.clips])
        except Exception as exc:
            logger.warning("%s: scoring failed: %s", work.video_id, exc)
            return work.fail(
                failure_from_exception(
                    work.video, exc, stage="clip-score", traceback=traceback_tail(exc)
                )
            )
        return self._done(work, scored, time.perf_counter() - start)

    @staticmethod
    def _done(work: VideoWork, scored: list[dict[str, Any]], seconds: float) -> VideoWork:
        out = VideoWork(video=work.video, clips=scored, timings=dict(work.timings))
        out.timings["score"] = out.timings.get("score", 0.0) + seconds
        return out

    def get_num_bytes(self, batch: Sequence[VideoWork]) -> int:
        # the default pickles the whole batch just to measure it
        return sum(w.frame_bytes() for w in batch)

    def get_metrics_namespace(self) -> str:
        return "storyloom_clip"

    def share_model_across_processes(self) -> bool:
        return bool(getattr(self, "_large_model", False))
