"""DoFn adapters over the ``curate`` steps, and the composite transforms of the curate pipeline.

Dead letters. Each per-video stage emits failed videos on a ``failures`` output
(``TaggedOutput``) and the rest on its main output; nothing is dropped. Beam 2.77's
``DaskRunner`` hands *every* element of a multi-output ``ParDo`` to each consumer, whatever its
tag, so each output is read through :func:`_only`, a filter on the element's own state: a no-op
on runners that route tags, the difference between right and doubled rows on Dask.

A failed video carries its failures rows with it (:class:`~pipelines.records.VideoWork`), so
the work committer writes a video's clips or its failures in the same atomic file: a rerun
after a crash never finds one without the other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from curate import shards
from curate.captions import CaptionCleaner

from .handlers import ClipModelHandler
from .isolation import IsolatedWorker, Outcome
from .records import (
    TRANSIENT_CLIP_KEYS,
    VideoBatch,
    VideoWork,
    failure_from_exception,
    failure_row,
)

logger = logging.getLogger(__name__)

NAMESPACE = "storyloom"
FAILURES = "failures"


def _only(pcoll: beam.PCollection, *, failed: bool, label: str) -> beam.PCollection:
    return pcoll | label >> beam.Filter(
        lambda w, f=failed: isinstance(w, VideoWork) and w.failed == f
    )


def _split(results: Any, name: str) -> tuple[beam.PCollection, beam.PCollection]:
    ok = _only(results.ok, failed=False, label=f"{name}Ok")
    bad = _only(results[FAILURES], failed=True, label=f"{name}Failed")
    return ok, bad


class Gather(beam.PTransform):
    """All elements as one list (nothing when there are none), through a single-key
    ``GroupByKey``.

    Used instead of ``CombineGlobally`` / ``ToList``: their lifted partial combine emits from
    ``finish_bundle``, which Beam 2.77's DaskRunner drops, so a corpus-level value computed
    through them silently misses whole partitions there. A ``GroupByKey`` is translated
    directly by every runner. Corpus-level values here (scores, prompts, dedup rows) are
    gathered in one place by nature, so nothing is lost in scale.
    """

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (
            pcoll
            | "Key" >> beam.Map(lambda x: (0, x))
            | "Group" >> beam.GroupByKey()
            | "List" >> beam.Map(lambda kv: list(kv[1]))
        )


def _timed(work: VideoWork, stage: str, seconds: float) -> None:
    work.timings[stage] = work.timings.get(stage, 0.0) + seconds
    Metrics.distribution(NAMESPACE, f"{stage}_ms").update(int(seconds * 1000))


# --- read ---------------------------------------------------------------------------------------


class ReadManifest(beam.PTransform):
    """The manifest's usable video rows, minus the ``skip`` set (videos already done).

    The manifest is read when the pipeline is built, as Beam's file sources size themselves
    at construction: the rows become a ``Create``, which every runner can split into bundles
    (a single file element read inside the pipeline would land on one worker on Dask).
    Rows the manifest reader rejected are not emitted here; the corpus phase writes them.
    """

    def __init__(
        self,
        videos: Sequence[Mapping[str, Any]],
        *,
        skip: Iterable[str] = (),
        reshuffle: bool = False,
    ) -> None:
        super().__init__()
        skip = set(skip)
        self.videos = [dict(v) for v in videos if v["video_id"] not in skip]
        self.reshuffle = reshuffle

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        # A reshuffle lets several local workers split the videos, but the local runner then
        # hands the decoded videos on only when the whole stage is done, so commits (and
        # resume points) arrive at the end: it is used only when there are several workers.
        return pbegin | "Videos" >> beam.Create(self.videos, reshuffle=self.reshuffle)


# --- probe and split, isolated -----------------------------------------------------------------


class _DecodeFn(beam.DoFn):
    """Probe, split and sample one video in an isolated child process (see ``isolation``)."""

    def __init__(
        self,
        decoder: Callable[..., Any],
        decoder_kwargs: Mapping[str, Any],
        *,
        timeout_s: float | None,
        isolate: bool,
    ) -> None:
        self.decoder = decoder
        self.decoder_kwargs = dict(decoder_kwargs)
        self.timeout_s = timeout_s
        self.isolate = isolate
        self.videos = Metrics.counter(NAMESPACE, "decode_videos")
        self.clips = Metrics.counter(NAMESPACE, "decode_clips")
        self.failed = Metrics.counter(NAMESPACE, "decode_failed")
        self.crashed = Metrics.counter(NAMESPACE, "decode_crashed")

    def setup(self) -> None:
        if self.isolate:
            self._worker: Any = IsolatedWorker(
                self.decoder, self.decoder_kwargs, timeout_s=self.timeout_s, name="decoder"
            )
            self._worker.start()
        else:
            self._step = self.decoder(**self.decoder_kwargs)
            if hasattr(self._step, "setup"):
                self._step.setup()

    def teardown(self) -> None:
        if self.isolate:
            self._worker.close()
        elif hasattr(self._step, "teardown"):
            self._step.teardown()

    def _call(self, video: dict[str, Any]) -> Outcome:
        if self.isolate:
            return self._worker.call(video)
        from .isolation import traceback_tail

        try:
            return Outcome(value=self._step(video))
        except Exception as exc:  # turned into a failures row below
            return Outcome(
                error=exc,
                error_type=type(exc).__name__,
                message=str(exc),
                traceback=traceback_tail(exc),
            )

    def process(self, video: dict[str, Any]) -> Iterator[Any]:
        self.videos.inc()
        start = time.perf_counter()
        outcome = self._call(video)
        work = VideoWork(video=video)
        _timed(work, "decode", time.perf_counter() - start)
        if outcome.ok:
            clips = list(outcome.value or ())
            if clips:
                work.clips = clips
                self.clips.inc(len(clips))
                yield work
                return
            outcome = Outcome(error_type="NoScenes", message="the splitter found no scene")
        self.failed.inc()
        if outcome.crashed or outcome.timed_out:
            self.crashed.inc()
        row = failure_from_exception(
            video,
            outcome.error,
            stage="decode" if (outcome.crashed or outcome.timed_out) else "probe",
            error_type=outcome.error_type,
            message=(
                outcome.error.reason
                if outcome.error is not None and hasattr(outcome.error, "reason")
                else outcome.message
            ),
            traceback=outcome.traceback,
        )
        yield beam.pvalue.TaggedOutput(FAILURES, work.fail(row))


class ProbeAndSplit(beam.PTransform):
    """Videos rows → ``VideoWork`` with clips and sampled frames, or failed ``VideoWork``."""

    def __init__(
        self,
        decoder: Callable[..., Any],
        decoder_kwargs: Mapping[str, Any],
        *,
        timeout_s: float | None = 300.0,
        isolate: bool = True,
    ) -> None:
        super().__init__()
        self.fn = _DecodeFn(decoder, decoder_kwargs, timeout_s=timeout_s, isolate=isolate)

    def expand(self, videos: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        results = videos | "Decode" >> beam.ParDo(self.fn).with_outputs(FAILURES, main="ok")
        return _split(results, "Decode")


# --- captions ----------------------------------------------------------------------------------


class _CleanCaptionsFn(beam.DoFn):
    def __init__(self) -> None:
        self.dropped = Metrics.counter(NAMESPACE, "caption_unusable")

    def setup(self) -> None:
        self._cleaner = CaptionCleaner()

    def process(self, work: VideoWork) -> Iterator[Any]:
        start = time.perf_counter()
        try:
            clips = list(self._cleaner.process_all(work.clips))
        except Exception as exc:
            from .isolation import traceback_tail

            row = failure_from_exception(
                work.video, exc, stage="caption", traceback=traceback_tail(exc)
            )
            yield beam.pvalue.TaggedOutput(FAILURES, work.fail(row))
            return
        self.dropped.inc(sum(1 for c in clips if c.get("status") == "dropped"))
        work.clips = clips
        _timed(work, "caption", time.perf_counter() - start)
        yield work


class CleanCaptions(beam.PTransform):
    """Normalise source captions; empty or invalid ones mark their clips dropped."""

    def expand(self, works: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        results = works | "Clean" >> beam.ParDo(_CleanCaptionsFn()).with_outputs(
            FAILURES, main="ok"
        )
        return _split(results, "Clean")


# --- CLIP scoring through RunInference -----------------------------------------------------------


class _SplitScoredFn(beam.DoFn):
    def __init__(self) -> None:
        self.scored = Metrics.counter(NAMESPACE, "score_clips")
        self.failed = Metrics.counter(NAMESPACE, "score_failed")

    def process(self, work: VideoWork) -> Iterator[Any]:
        if work.failed:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(FAILURES, work)
        else:
            self.scored.inc(len(work.clips))
            Metrics.distribution(NAMESPACE, "score_ms").update(
                int(work.timings.get("score", 0.0) * 1000)
            )
            yield work


class _BatchFailedFn(beam.DoFn):
    """A batch RunInference itself rejected: every video in it becomes a failures row."""

    def process(self, failed: Any) -> Iterator[VideoWork]:
        batch, exc = failed
        for work in batch if isinstance(batch, (list, tuple, VideoBatch)) else [batch]:
            if isinstance(work, VideoWork):
                yield work.fail(failure_from_exception(work.video, exc, stage="clip-score"))


class ScoreCaptions(beam.PTransform):
    """CLIP caption scores and image embeddings for every clip, via ``RunInference``."""

    def __init__(self, handler: ClipModelHandler) -> None:
        super().__init__()
        self.handler = handler

    def expand(self, works: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        if self.handler.prebatched:
            # Beam 2.77's DaskRunner loses what BatchElements emits from finish_bundle (the
            # last batch of every partition): batches of one video are made here instead
            works = works | "OneVideoBatches" >> beam.Map(lambda w: VideoBatch([w]))
        inference = (
            works
            | "RunInference"
            >> RunInference(self.handler, metrics_namespace=NAMESPACE).with_exception_handling()
        )
        main, dlq = inference
        rejected_works = (
            dlq.failed_inferences
            | "KeepRejected" >> beam.Filter(lambda e: isinstance(e, tuple) and len(e) == 2)
            | "RejectedBatch" >> beam.ParDo(_BatchFailedFn())
        )
        scored = (
            main
            | "OnlyScored" >> beam.Filter(lambda e: isinstance(e, VideoWork))
            | "SplitScored" >> beam.ParDo(_SplitScoredFn()).with_outputs(FAILURES, main="ok")
        )
        ok, bad = _split(scored, "Score")
        bad = (bad, rejected_works) | "ScoreFailures" >> beam.Flatten()
        return ok, bad


# --- commit per-video work -----------------------------------------------------------------------


#: per output folder, (videos seen, videos failed) in this worker process, shared by the
#: committers of the pipeline's branches (successes and failures are committed separately)
_RATE: dict[str, list[int]] = {}
_RATE_LOCK = threading.Lock()


def reset_failure_rate(output: str) -> None:
    """Forget this process's counts for ``output`` (a new run starts counting afresh)."""
    with _RATE_LOCK:
        _RATE.pop(output, None)


class FailureRateExceeded(RuntimeError):
    """Too many inputs failed; the run stops (what is committed stays committed)."""


def work_record(work: VideoWork) -> dict[str, Any]:
    """The committed form of a finished video: table columns only, frames left behind."""
    clips, extras = [], []
    for clip in work.clips:
        clips.append({k: v for k, v in clip.items() if k not in TRANSIENT_CLIP_KEYS})
        fe = clip.get("frame_embeddings")
        se = clip.get("scene_embedding")
        sig = clip.get("dedup_signature")
        extras.append(
            {
                "clip_id": clip.get("clip_id"),
                "fragment": clip.get("fragment"),
                "caption_note": clip.get("caption_note"),
                "frame_embeddings": None if fe is None else [list(map(float, r)) for r in fe],
                "scene_embedding": None if se is None else [float(x) for x in se],
                "generated_caption": clip.get("generated_caption"),
                "dedup_signature": None if sig is None else [float(x) for x in sig],
            }
        )
    return {
        "video_id": work.video_id,
        "video": work.video,
        "clips": clips,
        "clip_extras": extras,
        "failures": work.failures,
    }


class _CommitWorkFn(beam.DoFn):
    """Commit finished videos to ``OUT/_work`` in small atomic batches.

    A batch is committed when it holds ``every`` videos, when ``interval_s`` passed since the
    last commit, and at the end of each bundle; a crash loses at most the batch in flight,
    and a rerun redoes exactly those videos.
    """

    def __init__(
        self,
        output: str,
        *,
        every: int,
        interval_s: float,
        max_failure_rate: float,
        min_inputs: int,
    ) -> None:
        self.output = output
        self.every = every
        self.interval_s = interval_s
        self.max_failure_rate = max_failure_rate
        self.min_inputs = min_inputs
        self.committed = Metrics.counter(NAMESPACE, "committed_videos")
        self.failed = Metrics.counter(NAMESPACE, "failed_videos")
        self.commits = Metrics.counter(NAMESPACE, "work_commits")

    def start_bundle(self) -> None:
        self._buffer: list[dict[str, Any]] = []
        self._last = time.monotonic()

    def _flush(self) -> None:
        if not self._buffer:
            return
        start = time.perf_counter()
        shards.commit_work(self.output, self._buffer)
        Metrics.distribution(NAMESPACE, "commit_ms").update(
            int((time.perf_counter() - start) * 1000)
        )
        self.commits.inc()
        self.committed.inc(len(self._buffer))
        self._buffer = []
        self._last = time.monotonic()
        self._check_rate()

    def _check_rate(self) -> None:
        with _RATE_LOCK:
            seen, failed = _RATE.get(self.output, (0, 0))
        if self.max_failure_rate >= 1.0 or seen < self.min_inputs:
            return
        rate = failed / seen
        if rate > self.max_failure_rate:
            raise FailureRateExceeded(
                f"FailureRateExceeded: {failed} of {seen} videos failed "
                f"({rate:.0%}), above --max-failure-rate {self.max_failure_rate:.0%}; "
                f"stopped. Finished videos are committed under {self.output}; see the "
                f"failures table, fix the inputs, and rerun to resume"
            )

    def process(self, work: VideoWork) -> Iterator[tuple[str, int, bool]]:
        with _RATE_LOCK:
            counts = _RATE.setdefault(self.output, [0, 0])
            counts[0] += 1
            counts[1] += int(work.failed)
        if work.failed:
            self.failed.inc()
        self._buffer.append(work_record(work))
        if len(self._buffer) >= self.every or time.monotonic() - self._last >= self.interval_s:
            self._flush()
        yield work.video_id, len(work.clips), work.failed

    def finish_bundle(self) -> None:
        self._flush()


class CommitWork(beam.PTransform):
    """Per-video results (clips or failures) → committed work files; emits a summary per video."""

    def __init__(
        self,
        output: str,
        *,
        every: int = 8,
        interval_s: float = 30.0,
        max_failure_rate: float = 1.0,
        min_inputs: int = 20,
    ) -> None:
        super().__init__()
        self.fn = _CommitWorkFn(
            output,
            every=every,
            interval_s=interval_s,
            max_failure_rate=max_failure_rate,
            min_inputs=min_inputs,
        )

    def expand(self, works: beam.PCollection) -> beam.PCollection:
        return works | "Commit" >> beam.ParDo(self.fn)


__all__ = [
    "CleanCaptions",
    "CommitWork",
    "FailureRateExceeded",
    "ProbeAndSplit",
    "ReadManifest",
    "ScoreCaptions",
    "failure_row",
    "work_record",
]


# === the corpus phase ===========================================================================


class ReadWork(beam.PTransform):
    """Every committed per-video record under ``output`` whose video is in ``keep``.

    A video committed twice (a retried bundle) is read once: records are keyed by video id and
    the first in file order wins, which makes the choice the same on every runner.
    """

    def __init__(self, files: Sequence[str], *, keep: Iterable[str]) -> None:
        super().__init__()
        self.files = sorted(str(f) for f in files)
        self.keep = frozenset(keep)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        keep = self.keep

        def read(path: str) -> Iterator[tuple[str, tuple[str, dict]]]:
            for record in shards.read_work_file(path):
                if record["video_id"] in keep:
                    yield record["video_id"], (path, record)

        def first(kv: tuple[str, Iterable[tuple[str, dict]]]) -> dict:
            return min(kv[1], key=lambda pr: pr[0])[1]

        return (
            pbegin
            | "Files" >> beam.Create(self.files, reshuffle=False)
            | "Read" >> beam.FlatMap(read)
            | "ByVideo" >> beam.GroupByKey()
            | "Once" >> beam.Map(first)
        )


class CaptionCutoff(beam.PTransform):
    """The corpus's caption-score cut-off, as a one-element PCollection (a side input)."""

    def __init__(self, threshold: Any, steps: Any) -> None:
        super().__init__()
        self.threshold = threshold
        self.steps = steps

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        from .corpus import scorable

        steps, threshold = self.steps, self.threshold
        return (
            records
            | "Scores"
            >> beam.FlatMap(lambda r: [c["caption_score"] for c in r["clips"] if scorable(c)])
            | "AllScores" >> Gather()
            | "Cutoff" >> beam.Map(lambda scores: steps.cutoff(sorted(scores), threshold))
        )


class _FilterFn(beam.DoFn):
    """Per video: every clip's final caption status under the corpus cut-off."""

    def __init__(self, steps: Any) -> None:
        self.steps = steps
        self.kept = Metrics.counter(NAMESPACE, "filter_kept")
        self.dropped = Metrics.counter(NAMESPACE, "filter_dropped")

    def process(self, record: dict, cutoff: float | None) -> Iterator[dict]:
        if not record["clips"]:
            yield record
            return
        clips = self.steps.apply_cutoff(record["clips"], cutoff)
        kept = sum(1 for c in clips if c["status"] == "kept")
        self.kept.inc(kept)
        self.dropped.inc(len(clips) - kept)
        yield {**record, "clips": clips}


class _RecaptionFn(beam.DoFn):
    """Per video: prompts for its scenes and its stories row."""

    def __init__(self, steps: Any) -> None:
        self.steps = steps
        self.stories = Metrics.counter(NAMESPACE, "stories")
        self.failed = Metrics.counter(NAMESPACE, "recaption_failed")

    def process(self, record: dict, bank: Sequence[str] | None) -> Iterator[dict]:
        if not record["clips"]:
            yield {**record, "story": None}
            return
        start = time.perf_counter()
        try:
            clips, story = self.steps.recaption(
                record["video"], record["clips"], record.get("clip_extras") or [], bank=bank
            )
        except Exception as exc:
            from .isolation import traceback_tail

            # the whole video moves to the failures table: no video is in both
            self.failed.inc()
            row = failure_from_exception(
                record["video"], exc, stage="recaption", traceback=traceback_tail(exc)
            )
            yield {**record, "clips": [], "failures": [row], "story": None}
            return
        if story is not None:
            self.stories.inc()
        Metrics.distribution(NAMESPACE, "recaption_ms").update(
            int((time.perf_counter() - start) * 1000)
        )
        yield {**record, "clips": clips, "story": story}


class FilterAndRecaption(beam.PTransform):
    """Per video: the corpus cut-off (a side input), then re-captioning into a story.

    Between the two, the corpus's prompt bank (caption fragments that kept clips were scored
    with, over all videos) is gathered as a side input: a scene whose own caption failed the
    filter gets the bank prompt CLIP finds closest.
    """

    def __init__(self, cutoff: beam.PCollection, steps: Any) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.steps = steps

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        steps = self.steps
        filtered = records | "Filter" >> beam.ParDo(
            _FilterFn(steps), cutoff=beam.pvalue.AsSingleton(self.cutoff, default_value=None)
        )
        bank = (
            filtered
            | "BankPrompts" >> beam.Map(lambda r: steps.bank_prompts(r))
            | "AllPrompts" >> Gather()
            | "Bank" >> beam.Map(lambda lists: sorted({p for ps in lists for p in ps}))
        )
        return filtered | "Recaption" >> beam.ParDo(
            _RecaptionFn(steps), bank=beam.pvalue.AsSingleton(bank, default_value=None)
        )


def _sample(items: list, size: int, seed: int) -> list:
    """A reproducible random sample (in input order) of at most ``size`` items."""
    import numpy as np

    if len(items) <= size:
        return items
    take = np.random.default_rng(seed).choice(len(items), size=size, replace=False)
    return [items[i] for i in sorted(take)]


def dedup_row(clip: Mapping[str, Any], signature: Sequence[float]) -> dict[str, Any]:
    """What dedup needs of a kept clip (its signature and what ranks duplicates)."""
    keys = ("clip_id", "video_id", "scene_index", "caption_score", "status")
    row = {k: clip.get(k) for k in keys}
    row["start_frame"], row["end_frame"] = clip["start_frame"], clip["end_frame"]
    row["dedup_signature"] = list(signature)
    return row


class FindDuplicates(beam.PTransform):
    """``(clip_id, duplicate_of)`` pairs among kept clips (rows from :func:`dedup_row`).

    Up to the exact limit, one exact search over all of them. Above it, k-means centroids are
    trained on a fixed-size random sample, every clip is keyed by its
    nearest centroid (``GroupByKey``) and the search runs inside each group, as large-scale
    pipelines do; pairs that straddle two groups are not found.
    """

    def __init__(
        self,
        steps: Any,
        *,
        threshold: float,
        exact: bool,
        clusters: int = 64,
        sample: int = 50_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.threshold = threshold
        self.exact = exact
        self.clusters = clusters
        self.sample = sample
        self.seed = seed

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        steps, threshold = self.steps, self.threshold
        if self.exact:
            return (
                rows
                | "AllRows" >> Gather()
                | "Exact"
                >> beam.Map(
                    lambda rows: steps.duplicates(
                        sorted(rows, key=lambda r: r["clip_id"]), threshold=threshold
                    )
                )
                | "Pairs" >> beam.FlatMap(lambda d: sorted(d.items()))
            )
        clusters, seed, size = self.clusters, self.seed, self.sample
        centroids = (
            rows
            | "Signatures" >> beam.Map(lambda r: r["dedup_signature"])
            | "AllSignatures" >> Gather()
            | "Train"
            >> beam.Map(
                lambda sigs: steps.train_centroids(
                    _sample(sigs, size, seed), clusters=clusters, seed=seed
                )
            )
        )
        return (
            rows
            | "Assign"
            >> beam.Map(
                lambda r, c: (steps.assign(r["dedup_signature"], c), r),
                c=beam.pvalue.AsSingleton(centroids),
            )
            | "ByCentroid" >> beam.GroupByKey()
            | "InGroup"
            >> beam.FlatMap(
                lambda kv: sorted(
                    steps.duplicates(
                        sorted(kv[1], key=lambda r: r["clip_id"]), threshold=threshold
                    ).items()
                )
            )
        )


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, table: str, count: int, sort_key: Sequence[str]) -> None:
        self.output, self.table, self.count, self.sort_key = output, table, count, list(sort_key)

    def process(self, kv: tuple[int, Iterable[dict]]) -> Iterator[tuple[Any, dict]]:
        from .corpus import table_counts

        index, rows = kv
        rows = list(rows)
        info = shards.write_shard(
            self.output, self.table, index, self.count, rows, sort_key=self.sort_key
        )
        yield info, dict(table_counts(self.table, rows))


class WriteShards(beam.PTransform):
    """Rows of one table → ``count`` shards keyed by video, staged under ``_staging/``."""

    SORT = {
        "clips": ("video_id", "scene_index"),
        "stories": ("story_id",),
        "failures": ("input_id", "stage", "source_line"),
    }
    KEY = {"clips": "video_id", "stories": "story_id", "failures": "input_id"}

    def __init__(self, output: str, table: str, count: int) -> None:
        super().__init__()
        self.output, self.table, self.count = output, table, count

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        key, count = self.KEY[self.table], self.count
        return (
            rows
            | "Key" >> beam.Map(lambda r: (shards.shard_of(str(r[key]), count), r))
            | "ByShard" >> beam.GroupByKey()
            | "Write"
            >> beam.ParDo(_WriteShardFn(self.output, self.table, count, self.SORT[self.table]))
        )
