"""The per-video phase: each video decoded, split, sampled, scored and committed on its own.

::

    ReadManifest → ProbeAndSplit (isolated decoder process) → CleanCaptions
                 → ScoreCaptions (RunInference, CLIP) → CommitWork (OUT/_work, atomic)

Each stage is a DoFn over a ``curate`` step (the decoder, :class:`curate.captions.CaptionCleaner`,
:class:`curate.scoring.VideoScorer` behind a ``RunInference`` handler), built in
``DoFn.setup()``. A failed video carries its failures rows with it
(:class:`~curate.work.VideoWork`), so the committer writes a video's clips or its failures in
the same atomic file: a rerun after a crash never finds one without the other.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from curate import shards
from curate.captions import CaptionCleaner
from curate.errors import VideoOpenFailure
from curate.isolation import IsolatedWorker, Outcome, traceback_tail
from curate.work import VideoWork, failure_from_exception

from ..handlers import ClipModelHandler, VideoBatch
from .common import FAILURES, NAMESPACE, split_outputs, timed

logger = logging.getLogger(__name__)


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

#: the probe's reason for a video named by a URL (the decoder opens local files only)
REMOTE_URL = (
    "remote URLs are not supported: download the videos and point the manifest at local paths"
)


def is_remote_url(uri: str) -> bool:
    """Whether ``uri`` is a URL other than ``file:`` (``http://``, ``s3://``, ``gs://``...);
    a one-letter scheme is a Windows drive letter (``C:``): a path."""
    scheme = urlsplit(uri).scheme
    return len(scheme) > 1 and scheme.lower() != "file"


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
        if is_remote_url(str(video.get("uri") or "")):
            error = VideoOpenFailure(REMOTE_URL, uri=video["uri"], video_id=video["video_id"])
            outcome = Outcome(error=error, error_type=type(error).__name__, message=REMOTE_URL)
        else:
            outcome = self._call(video)
        work = VideoWork(video=video)
        timed(work, "decode", time.perf_counter() - start)
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
        return split_outputs(results, "Decode")


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
            row = failure_from_exception(
                work.video, exc, stage="caption", traceback=traceback_tail(exc)
            )
            yield beam.pvalue.TaggedOutput(FAILURES, work.fail(row))
            return
        self.dropped.inc(sum(1 for c in clips if c.get("status") == "dropped"))
        work.clips = clips
        timed(work, "caption", time.perf_counter() - start)
        yield work


class CleanCaptions(beam.PTransform):
    """Normalise source captions; empty or invalid ones mark their clips dropped."""

    def expand(self, works: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        results = works | "Clean" >> beam.ParDo(_CleanCaptionsFn()).with_outputs(
            FAILURES, main="ok"
        )
        return split_outputs(results, "Clean")


# --- CLIP scoring through RunInference -----------------------------------------------------------


class _SplitScoredFn(beam.DoFn):
    def __init__(self) -> None:
        self.scored = Metrics.counter(NAMESPACE, "score_clips")
        self.failed = Metrics.counter(NAMESPACE, "score_failed")

    def process(self, work: VideoWork) -> Iterator[Any]:
        problem = None if work.failed else work.invalid()
        if problem is not None:
            row = failure_from_exception(
                work.video, None, stage="validate", error_type="InvalidValue", message=problem
            )
            work = work.fail(row)
        if work.failed:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(FAILURES, work)
        else:
            self.scored.inc(len(work.clips))
            for stage in ("score", "captioner"):  # the captioner's time is its own stage
                if stage in work.timings:
                    Metrics.distribution(NAMESPACE, f"{stage}_ms").update(
                        int(work.timings[stage] * 1000)
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
        ok, bad = split_outputs(scored, "Score")
        bad = (bad, rejected_works) | "ScoreFailures" >> beam.Flatten()
        return ok, bad


# --- commit per-video work -----------------------------------------------------------------------


# The failure rate is the whole run's: with --workers N (or a cluster's workers) each process
# commits a share of the videos, so each publishes its counts beside the work it commits
# (``_work/_rate-<run>-<process>.json``) and every check sums the counts of all of them.

#: per (output folder, run id), [videos seen, videos failed] in this worker process, shared by
#: the committers of the pipeline's branches (successes and failures are committed separately)
_RATE: dict[tuple[str, str], list[int]] = {}
_RATE_LOCK = threading.Lock()
#: (pid, id) of this process as its count files name it; a forked child makes its own
_PROCESS: tuple[int, str] | None = None


def _process_id() -> str:
    global _PROCESS
    if _PROCESS is None or _PROCESS[0] != os.getpid():
        _PROCESS = (os.getpid(), uuid.uuid4().hex[:16])
    return _PROCESS[1]


def reset_failure_rate(output: str) -> str:
    """Start counting a new run into ``output`` afresh: forget this process's counts and the
    count files earlier runs left there; return the id the new run's counts are kept under."""
    with _RATE_LOCK:
        for key in [k for k in _RATE if k[0] == output]:
            del _RATE[key]
    shards.clear_failure_counts(output)
    return uuid.uuid4().hex[:16]


def failure_rate_problem(
    output: str, run_id: str, *, max_failure_rate: float, min_inputs: int
) -> str | None:
    """Why run ``run_id`` must stop (``None``: it need not): more than ``max_failure_rate``
    of its videos failed, counted over every worker process, once ``min_inputs`` were seen."""
    if max_failure_rate >= 1.0:
        return None
    seen, failed = shards.failure_count(output, run_id)
    if seen < min_inputs or failed / seen <= max_failure_rate:
        return None
    return (
        f"{failed} of {seen} videos failed ({failed / seen:.0%}), above --max-failure-rate "
        f"{max_failure_rate:.0%}; stopped. Finished videos are committed under {output}; see "
        f"the failures table, fix the inputs, and rerun to resume"
    )


class FailureRateExceeded(RuntimeError):
    """Too many inputs failed; the run stops (what is committed stays committed).

    Its text starts with its name, as the runner relays a worker process's exception as
    text."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{type(self).__name__}: {problem}")
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.problem,)


class _CommitWorkFn(beam.DoFn):
    """Commit finished videos to ``OUT/_work`` in small atomic batches.

    A batch is committed when it holds ``every`` videos, when ``interval_s`` passed since the
    last commit, and at the end of each bundle; a crash loses at most the batch in flight,
    and a rerun redoes exactly those videos. With a ``max_failure_rate`` below 1, each commit
    publishes this process's counts of run ``run_id`` and checks the run's rate, over every
    worker process (:func:`failure_rate_problem`).
    """

    def __init__(
        self,
        output: str,
        *,
        run_id: str,
        every: int,
        interval_s: float,
        max_failure_rate: float,
        min_inputs: int,
    ) -> None:
        self.output = output
        self.run_id = run_id
        self.every = every
        self.interval_s = interval_s
        self.max_failure_rate = max_failure_rate
        self.min_inputs = min_inputs
        self.committed = Metrics.counter(NAMESPACE, "committed_videos")
        self.failed = Metrics.counter(NAMESPACE, "failed_videos")
        self.commits = Metrics.counter(NAMESPACE, "work_commits")

    @property
    def counting(self) -> bool:
        return self.max_failure_rate < 1.0

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
        if self.counting:
            self._check_rate()

    def _check_rate(self) -> None:
        with _RATE_LOCK:
            seen, failed = _RATE.get((self.output, self.run_id), (0, 0))
            shards.write_failure_count(
                self.output, self.run_id, _process_id(), seen=seen, failed=failed
            )
        problem = failure_rate_problem(
            self.output,
            self.run_id,
            max_failure_rate=self.max_failure_rate,
            min_inputs=self.min_inputs,
        )
        if problem:
            raise FailureRateExceeded(problem)

    def process(self, work: VideoWork) -> Iterator[tuple[str, int, bool]]:
        if self.counting:
            with _RATE_LOCK:
                counts = _RATE.setdefault((self.output, self.run_id), [0, 0])
                counts[0] += 1
                counts[1] += int(work.failed)
        if work.failed:
            self.failed.inc()
        self._buffer.append(work.record())
        if len(self._buffer) >= self.every or time.monotonic() - self._last >= self.interval_s:
            self._flush()
        yield work.video_id, len(work.clips), work.failed

    def finish_bundle(self) -> None:
        self._flush()


class CommitWork(beam.PTransform):
    """Per-video results (clips or failures) → committed work files; emits a summary per video.

    The committers of one run share its ``run_id`` (:func:`reset_failure_rate`): the failure
    rate they check is over all of them, in every worker process."""

    def __init__(
        self,
        output: str,
        *,
        run_id: str | None = None,
        every: int = 8,
        interval_s: float = 30.0,
        max_failure_rate: float = 1.0,
        min_inputs: int = 20,
    ) -> None:
        super().__init__()
        self.fn = _CommitWorkFn(
            output,
            run_id=run_id or uuid.uuid4().hex[:16],
            every=every,
            interval_s=interval_s,
            max_failure_rate=max_failure_rate,
            min_inputs=min_inputs,
        )

    def expand(self, works: beam.PCollection) -> beam.PCollection:
        return works | "Commit" >> beam.ParDo(self.fn)
