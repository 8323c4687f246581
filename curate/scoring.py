"""Scoring scenes while their sampled frames exist.

- :class:`VideoScorer`: everything the per-video phase learns from the sampled frames of a
  batch of scenes before they are dropped: CLIP scores and embeddings (a
  :class:`~curate.clip_score.ClipScorer`), the captioner's caption of each scene, the dedup
  signature. The Beam pipeline runs it behind a ``RunInference`` model handler.
- :func:`score_videos`: ``curate calibrate`` and the quality benchmark score a corpus without
  Beam: each video goes through the scene splitter (or given scenes), the frame sampler and the
  CLIP scorer, and a video that fails at any of them becomes a failures row; the others go on.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.failures import failure_row
from schemas.inputs import read_manifest
from schemas.io import read_parquet

from .captioner import Captioner
from .clip_score import ClipScorer
from .dedup import SIGNATURE_KEY, Deduplicator
from .errors import CurateError
from .scenes import SceneSplitter

logger = logging.getLogger(__name__)


class VideoScorer:
    """Score, caption and sign the clip records of a batch of scenes, then drop their frames.

    ``scorer(**scorer_kwargs)`` builds the scorer (default :class:`ClipScorer`): ``setup()``
    and ``process_all(records) -> records`` filling ``caption_score``, ``frame_scores``,
    ``embedding`` and ``frame_embeddings`` (and ``scene_embedding`` for a model that reads
    storyboards). With ``captioner`` (:class:`~curate.captioner.Captioner` keyword arguments)
    each scene gets the captioner's ``generated_caption``; with ``dedup``
    (:class:`~curate.dedup.Deduplicator` settings) its ``dedup_signature``, which compares
    pixels too. This is the last stage that has the frames.

    :meth:`score` is one plain method returning a list, so that the scorer also works as a
    shared proxy (Beam's cross-process model sharing proxies method calls; a generator does not
    survive that).
    """

    def __init__(
        self,
        scorer: Callable[..., Any] | None = None,
        scorer_kwargs: Mapping[str, Any] | None = None,
        *,
        captioner: Mapping[str, Any] | None = None,
        dedup: Mapping[str, Any] | None = None,
    ) -> None:
        self.factory = scorer or ClipScorer
        self.scorer_kwargs = dict(scorer_kwargs or {})
        self.captioner_kwargs = dict(captioner) if captioner else None
        self.dedup = Deduplicator(**dedup) if dedup is not None else None
        self.scorer: Any = None
        self.captioner: Captioner | None = None

    def setup(self) -> None:
        self.scorer = self.factory(**self.scorer_kwargs)
        if hasattr(self.scorer, "setup"):
            self.scorer.setup()
        if self.captioner_kwargs:
            self.captioner = Captioner(**self.captioner_kwargs)
            self.captioner.setup()

    def score(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.score_timed(records)[0]

    def score_timed(
        self, records: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """:meth:`score`, and the seconds it spent per stage: ``score`` (CLIP and the dedup
        signature) and, with a captioner, ``captioner``."""
        if self.scorer is None:
            self.setup()
        start = time.perf_counter()
        out = list(self.scorer.process_all(records))
        seconds = {"score": time.perf_counter() - start}
        if self.captioner is not None:
            start = time.perf_counter()
            have = [r for r in out if r.get("frames") is not None and len(r["frames"])]
            texts = self.captioner.caption_scenes([r["frames"] for r in have])
            for record, text in zip(have, texts):
                record["generated_caption"] = text
            seconds["captioner"] = time.perf_counter() - start
        start = time.perf_counter()
        for record in out:
            if self.dedup is not None:
                record[SIGNATURE_KEY] = [float(x) for x in self.dedup.signature(record)]
            record.pop("frames", None)
        seconds["score"] += time.perf_counter() - start
        return out, seconds


def score_videos(
    videos: Iterable[dict[str, Any]],
    *,
    scorer: Any,
    sampler: Any,
    splitter: Any | None = None,
    clips_of: Callable[[dict[str, Any]], list[dict]] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> tuple[list[dict], list[dict]]:
    """Split, sample and score every video; a failing video becomes a failures row.

    ``clips_of(video) -> list[clip dict]`` replaces the scene splitter when given (e.g. scenes
    from ground truth). Returns ``(scored clip records, failures rows)``.
    """
    from tqdm import tqdm

    clips_out: list[dict] = []
    failures: list[dict] = []
    for video in tqdm(
        list(videos) if total is None else videos,
        total=total,
        desc="score",
        unit="video",
        disable=not progress,
    ):
        stage = "split-scenes"
        try:
            if clips_of is not None:
                clips = clips_of(video)
            elif splitter is not None:
                clips = list(splitter.process(video))
            else:
                raise ValueError("score_videos needs a splitter or clips_of")
            stage = sampler.stage
            sampled = sampler.sample_video(clips) if clips else []
            stage = scorer.stage
            clips_out.extend(scorer.process_all(sampled))
        except (CurateError, ValueError, OSError) as exc:
            failures.append(
                failure_row(
                    str(video.get("video_id") or video.get("uri")),
                    uri=video.get("uri"),
                    stage=exc.stage if isinstance(exc, CurateError) else stage,
                    error_type=type(exc).__name__,
                    message=str(exc),
                    traceback="".join(traceback.format_exception(exc)[-3:]),
                )
            )
            logger.warning("%s: %s: %s", video.get("video_id"), type(exc).__name__, exc)
    return clips_out, failures


@dataclass
class Scored:
    """Scored clip records of a corpus, and the inputs that failed."""

    records: list[dict]
    failures: list[dict] = field(default_factory=list)

    @property
    def scores(self) -> list[Any]:
        return [r.get("caption_score") for r in self.records]


def _limited(items: Iterable[Any], limit: int | None) -> Iterator[Any]:
    return iter(items) if limit is None else itertools.islice(items, limit)


def score_manifest(
    path: str | os.PathLike[str],
    *,
    scorer: Any,
    sampler: Any,
    detector: str = "fast",
    limit: int | None = None,
    progress: bool = True,
) -> Scored:
    """Split, sample and score the videos of a manifest (at most ``limit`` of them); the
    manifest's rejected rows are failures too."""
    manifest = read_manifest(path)
    videos = list(_limited(manifest.videos, limit))
    with SceneSplitter(detector=detector) as splitter:
        records, failures = score_videos(
            videos, scorer=scorer, sampler=sampler, splitter=splitter, progress=progress
        )
    return Scored(records, list(manifest.failures) + failures)


def score_clips_file(
    path: str | os.PathLike[str],
    *,
    scorer: Any,
    sampler: Any,
    limit: int | None = None,
    progress: bool = True,
) -> Scored:
    """Score again, from their videos, the scenes a clips file lists (its first ``limit``
    videos).

    The rows may come in any order: each video is read once, with all of its clips, videos in
    the order the file first names them and each video's clips in file order."""
    rows = read_parquet(path, "clips").to_pylist()
    by_video: dict[Any, list[dict]] = {}
    for row in rows:
        by_video.setdefault(row["video_id"], []).append(row)
    videos = [
        {"video_id": g[0]["video_id"], "uri": g[0]["uri"], "clips": g}
        for g in _limited(by_video.values(), limit)
    ]
    records, failures = score_videos(
        videos, scorer=scorer, sampler=sampler, clips_of=lambda v: v["clips"], progress=progress
    )
    return Scored(records, failures)


def read_scores(path: str | os.PathLike[str]) -> Scored:
    """The scores a clips file holds already (``ValueError`` when it holds none)."""
    rows = read_parquet(path, "clips").to_pylist()
    if all(r.get("caption_score") is None for r in rows):
        raise ValueError(f"{path} has no caption_score values; use --rescore")
    return Scored(rows)
