"""The curate pipeline: raw videos with noisy captions → clean Parquet shards.

Two Beam pipelines run one after the other:

1. **Per-video phase** (:func:`build_pipeline`), resumable::

       ReadManifest → ProbeAndSplit (isolated decoder process) → CleanCaptions
                    → ScoreCaptions (RunInference, CLIP) → CommitWork (OUT/_work, atomic)

   Videos already committed in ``OUT/_work`` are skipped, so a rerun after a crash or a
   ``kill -9`` picks up where the last commit left off.

2. **Corpus phase** (:func:`corpus_phase`, :func:`run_corpus_phase`), rerun in full every
   time: :class:`curate.corpus.CorpusPhase` streams the committed work in memory bounded by
   ``--corpus-memory-mb``::

       plan → cut-off (percentile over all scores) → prompt bank → filter and re-caption
            → dedup (faiss; exact, or inverted lists) → write shards → publish (_manifest.json)

   It reads every committed record, so percentile thresholds and dedup see the whole corpus
   whether the per-video work ran once or in several resumed runs. With the local runner it
   runs in the launcher's process; on a cluster (Dask) its keyed steps (re-captioning per
   chunk of work, dedup search per list group, writing per shard) run on the workers
   (:class:`pipelines.transforms.CorpusOnWorkers`).

The split also suits distributed runners: the corpus phase reads cheap committed files and
never re-triggers decoding.

The transforms of each phase are in :mod:`pipelines.transforms`; the settings of a run are
one :class:`~pipelines.settings.RunSettings`. After each run the invariant of
:mod:`curate.runs` is checked and printed: every input ends up with clips or a failures row,
never both (a stage that fails after the split withdraws the video's clips and records the
failure instead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import create_runner

from curate import shards
from curate.clip_score import ClipScorer
from curate.corpus import CorpusPhase
from curate.decode import VideoDecoder
from curate.dedup import Deduplicator
from curate.models import folder_state, resolve_model_path
from curate.recaption import Recaptioner
from curate.report import report_after_run
from curate.run_folder import RunLock, check_ownership, clear_run
from curate.runs import RunSummary, summarize
from curate.work import config_digest, fingerprint
from schemas.inputs import ManifestRead, detect_format, read_manifest

from .handlers import ClipModelHandler
from .options import runner_flags, settings_of
from .progress import WorkProgress
from .settings import RunSettings
from .transforms import (
    CleanCaptions,
    CommitWork,
    CorpusOnWorkers,
    FailureRateExceeded,
    ProbeAndSplit,
    ReadManifest,
    ScoreCaptions,
    failure_rate_problem,
    reset_failure_rate,
)

logger = logging.getLogger(__name__)

#: settings of the per-video phase; committed work is only reused under the same ones
WORK_SETTINGS = (
    "model",
    "detector",
    "samples_per_scene",
    "sample_size",
    "min_scene_frames",
    "keyframes",
    "keyframe_size",
)


@dataclass(frozen=True)
class Components:
    """The steps of a run, as importable factories and their settings (workers build them).

    ``decoder(**decoder_kwargs)`` has ``setup()`` and ``__call__(video_row) -> list[clip]``,
    each clip a clips-table row plus its sampled ``frames`` (it runs in a child process);
    ``scorer(**scorer_kwargs)`` has ``setup()`` and ``process_all(clips) -> clips`` (see
    :class:`curate.clip_score.ClipScorer`); ``recaptioner(**recaptioner_kwargs)`` has
    ``setup()``, ``use_corpus_bank(prompts)`` and ``recaption_record(video, clips)`` (see
    :class:`curate.recaption.Recaptioner`). ``dedup`` are :class:`curate.dedup.Deduplicator`
    settings other than the threshold (the signature is computed in the per-video phase).
    """

    decoder: Callable[..., Any]
    decoder_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scorer: Callable[..., Any] | None = None
    scorer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: :class:`curate.captioner.Captioner` keyword arguments (``None``: no captioner)
    captioner_kwargs: Mapping[str, Any] | None = None
    recaptioner: Callable[..., Any] = Recaptioner
    recaptioner_kwargs: Mapping[str, Any] = field(default_factory=dict)
    dedup: Mapping[str, Any] = field(default_factory=dict)

    def deduplicator(self, threshold: float) -> Deduplicator:
        return Deduplicator.at(threshold, **self.dedup)


def default_components(settings: RunSettings, *, workers: int = 1) -> Components:
    """The shipped steps, configured by (resolved) ``settings``."""
    model = resolve_model_path(settings.model)
    captioner = settings.captioner_folder
    return Components(
        decoder=VideoDecoder,
        decoder_kwargs={
            "detector": settings.detector,
            "samples_per_scene": settings.samples_per_scene,
            "sample_size": settings.sample_size,
            "min_scene_frames": settings.min_scene_frames,
            "keyframes": settings.keyframes,
            "keyframe_size": settings.keyframe_size,
        },
        scorer=ClipScorer,
        scorer_kwargs={
            "model": model,
            "device": settings.device,
            "batch_size": settings.clip_batch_size,
            "fp8": settings.clip_fp8,
            # several local workers share the cores: one torch thread pool each, not all cores
            "num_threads": _threads_per_worker(workers, settings.device),
        },
        captioner_kwargs=(
            {"model": captioner, "device": settings.device, "batch_size": settings.clip_batch_size}
            if captioner
            else None
        ),
        recaptioner_kwargs={
            "model": model,
            "prompt_bank": settings.prompt_bank,
            "captioner": captioner,
            # with a captioner: the bank's prompt or the captioner's caption, whichever CLIP
            # prefers
            "fallback": "best" if captioner else "prompt_bank",
        },
    )


def _threads_per_worker(workers: int, device: str) -> int | None:
    if workers <= 1 or device != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def _workers(options: PipelineOptions) -> int:
    return options.view_as(DirectOptions).direct_num_workers or 1


def _is_dask(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return "dask" in str(runner or "").lower()


# --- phase 1 -----------------------------------------------------------------------------------


def build_pipeline(
    p: beam.Pipeline,
    settings: RunSettings,
    *,
    videos: Sequence[Mapping[str, Any]],
    skip: Sequence[str] = (),
    components: Components,
    run_id: str | None = None,
) -> beam.PCollection:
    """The per-video phase on ``p``: the manifest's usable ``videos`` minus the done-set
    ``skip`` → committed work; returns the committed-video summaries. ``run_id`` names the
    run's failure counts (:func:`~pipelines.transforms.reset_failure_rate`; by default
    counting starts afresh here)."""
    options = p.options
    comps = components
    handler = ClipModelHandler(
        comps.scorer,
        comps.scorer_kwargs,
        max_batch_videos=settings.inference_batch_videos,
        share_model=settings.share_model,
        dedup=comps.dedup,
        captioner=comps.captioner_kwargs,
        # Beam 2.77's DaskRunner drops what a DoFn emits in finish_bundle, where
        # BatchElements emits its last batch: there, videos go to CLIP one at a time
        prebatched=_is_dask(options),
    )
    out = str(settings.output)
    several = _workers(options) > 1
    todo = p | "ReadManifest" >> ReadManifest(videos, skip=skip, reshuffle=several)
    split, split_failed = todo | "ProbeAndSplit" >> ProbeAndSplit(
        comps.decoder,
        comps.decoder_kwargs,
        timeout_s=settings.decode_timeout,
        isolate=settings.isolate_decode,
    )
    cleaned, clean_failed = split | "CleanCaptions" >> CleanCaptions()
    scored, score_failed = cleaned | "ScoreCaptions" >> ScoreCaptions(handler)
    # Each branch is committed by its own step: a Flatten in front of one committer splits
    # the local runner's fused stage there, and no video would be committed before every
    # video was decoded (a crash would then lose the whole run's work).
    run_id = run_id or reset_failure_rate(out)
    branches = {
        "Scored": scored,
        "SplitFailed": split_failed,
        "CleanFailed": clean_failed,
        "ScoreFailed": score_failed,
    }
    committed = [
        works
        | f"CommitWork{name}"
        >> CommitWork(
            out,
            run_id=run_id,
            every=settings.commit_every,
            interval_s=settings.commit_interval_s,
            max_failure_rate=settings.max_failure_rate,
            min_inputs=settings.failure_rate_min_inputs,
        )
        for name, works in branches.items()
    ]
    # one sink: the DaskRunner computes only what feeds the last transform
    return tuple(committed) | "Committed" >> beam.Flatten()


# --- phase 2 -----------------------------------------------------------------------------------


def corpus_phase(
    settings: RunSettings,
    *,
    manifest: ManifestRead,
    config: Mapping[str, Any],
    components: Components,
) -> CorpusPhase:
    """The corpus phase of a run (:class:`curate.corpus.CorpusPhase`) under ``settings``."""
    threshold = settings.resolved_threshold
    if threshold is None:
        raise ValueError("the run settings are not resolved (RunSettings.resolved)")
    return CorpusPhase(
        str(settings.output),
        threshold=threshold,
        dedup=components.deduplicator(settings.dedup_threshold),
        exact_limit=settings.dedup_exact_limit,
        rows_per_shard=settings.videos_per_shard,
        memory_mb=settings.corpus_memory_mb,
        threads=max(1, min(8, os.cpu_count() or 1)),
        config={**config, "threshold": str(threshold)},
        counts={
            "inputs": manifest.inputs,
            "manifest_rejected": len(manifest.failures),
            "videos": len(manifest.videos),
        },
    )


def run_corpus_phase(
    phase: CorpusPhase,
    options: PipelineOptions,
    *,
    manifest: ManifestRead,
    fingerprints: Mapping[str, str],
    components: Components,
) -> None:
    """Plan ``phase`` over the current committed record of every usable manifest row
    (``fingerprints``: video id -> the fingerprint its result must have; a row without one is
    pending) and run it: in this process with the local runner, as Beam stages on the
    workers of any other (:class:`pipelines.transforms.CorpusOnWorkers`)."""
    if not _on_cluster(options):
        phase.run(
            fingerprints,
            components.recaptioner(**components.recaptioner_kwargs),
            manifest_failures=manifest.failures,
        )
        return
    phase.make_plan(fingerprints, manifest.failures)
    p = beam.Pipeline(options=options)
    _ = p | "Corpus" >> CorpusOnWorkers(
        phase, components.recaptioner, components.recaptioner_kwargs
    )
    with _quiet_stops():
        result = p.run()
        result.wait_until_finish()
    client = getattr(result, "client", None)  # the DaskRunner's (see _run_per_video)
    if client is not None:
        client.close()


def _on_cluster(options: PipelineOptions) -> bool:
    """Whether the run's runner executes on other machines (the corpus phase then runs on
    its workers), rather than in this process or its children."""
    runner = str(options.view_as(StandardOptions).runner or "").lower()
    return any(name in runner for name in ("dask", "dataflow", "flink", "spark", "portable"))


# --- run ---------------------------------------------------------------------------------------


def _work_config(settings: RunSettings) -> dict[str, Any]:
    cfg = {k: getattr(settings, k) for k in WORK_SETTINGS}
    cfg["model"] = resolve_model_path(settings.model)
    # the captioner's captions are made in the per-video phase and committed with the work
    cfg["captioner"] = settings.captioner
    return cfg


def _fingerprint_config(work_config: Mapping[str, Any]) -> str:
    """The per-video settings and the model files they name (a model retrained in place
    changes every result), as one digest."""
    states = {
        f"{key}_files": folder_state(work_config[key])
        for key in ("model", "captioner")
        if work_config.get(key) not in (None, "none")
    }
    return config_digest({**work_config, **states})


def pipeline_options(argv: Sequence[str]) -> PipelineOptions:
    """Beam options of ``argv``, the local runner where none is named."""
    options = PipelineOptions(list(argv))
    if options.view_as(StandardOptions).runner is None:
        options = PipelineOptions([*runner_flags("local"), *argv])
    return options


def check_runner(options: PipelineOptions) -> None:
    """Refuse a runner Beam does not know or cannot load here, naming it."""
    name = str(options.view_as(StandardOptions).runner)
    try:
        create_runner(name)
    except ValueError:  # not a runner Beam knows by name
        raise ValueError(
            f"unknown runner {name!r}: give local, dask, or a Beam runner such as "
            "DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, PortableRunner"
        ) from None
    except (ImportError, AttributeError) as exc:  # a module path that does not load
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"runner {name!r} cannot be loaded: {why}") from None


#: exceptions that stop a run on purpose: the failure-rate stop and Ctrl-C
_STOPS = ("FailureRateExceeded", "KeyboardInterrupt")
#: Beam's loggers that log them with a traceback: the ``DoFn`` runner's, and the local job
#: service's, which relays what the worker processes of ``--workers N`` log
_STOP_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.portability.local_job_service")


class _QuietStops(logging.Filter):
    """Drops Beam's ERROR records (with a traceback) of an exception that stops a run on
    purpose, which the run reports in one line itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (FailureRateExceeded, KeyboardInterrupt)):
            return False
        text = record.getMessage()
        return not any(name in text for name in _STOPS)


@contextlib.contextmanager
def _quiet_stops() -> Iterator[None]:
    """:class:`_QuietStops` on Beam's loggers that report a stopping exception, for the
    ``with`` block."""
    quiet = _QuietStops()
    for name in _STOP_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        yield
    finally:
        for name in _STOP_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)


def _metrics(result: Any) -> dict[str, Any]:
    """Per-stage counters and timers of a finished run (runners without metrics give {})."""
    try:
        res = result.metrics().query()
    except Exception:  # the DaskRunner does not collect metrics
        return {}
    out: dict[str, Any] = {}
    for c in res.get("counters", []):
        if c.key.metric.namespace == "storyloom":
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + c.committed
    for d in res.get("distributions", []):
        if d.key.metric.namespace == "storyloom" and d.committed is not None:
            name = d.key.metric.name
            out[name] = out.get(name, 0) + d.committed.sum
    return out


def run(
    argv: Sequence[str] | None = None,
    *,
    settings: RunSettings | None = None,
    components: Components | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run both phases; return the summary. Raises on unusable settings, before any work.

    ``argv`` holds Beam flags: the run's options (``--input=... --output=...``) and the
    runner's. A caller that parsed the run's options already (``curate run``) passes them as
    ``settings``, resolved, and only the runner's flags in ``argv``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options = pipeline_options(argv)
    if settings is None:
        runner = str(options.view_as(StandardOptions).runner)
        settings = dataclasses.replace(settings_of(options), runner=runner).resolved()
    components = components or default_components(settings, workers=_workers(options))
    t0 = time.perf_counter()

    # an unreadable manifest or an unknown runner fails before the output folder is touched
    detect_format(str(settings.input))
    check_runner(options)
    out = shards.check_output_dir(str(settings.output))
    with RunLock(out):
        return _run_locked(out, settings, options, components, progress=progress, t0=t0)


def _run_locked(
    out: Path,
    settings: RunSettings,
    options: PipelineOptions,
    components: Components,
    *,
    progress: bool,
    t0: float,
) -> RunSummary:
    """Both phases, in an output folder this run holds the lock of."""
    check_ownership(out, overwrite=settings.overwrite)
    manifest = read_manifest(str(settings.input), limits=settings.manifest_limits)
    if settings.overwrite:
        clear_run(out)
    work_config = _work_config(settings)
    config_id = _fingerprint_config(work_config)
    fingerprints = {v["video_id"]: fingerprint(v, config=config_id) for v in manifest.videos}
    plan = shards.resume_plan(
        out, manifest.videos, fingerprints, retry_failed=not settings.no_retry_failed
    )
    logger.info(
        "%s (%s): %d inputs, %d usable videos, %s",
        settings.input,
        manifest.format,
        manifest.inputs,
        len(fingerprints),
        plan.describe(),
    )

    phase_s: dict[str, float] = {}
    stage_metrics: dict[str, Any] = {}
    stopped = None
    if plan.todo:
        p = beam.Pipeline(options=options)
        run_id = reset_failure_rate(str(out))
        build_pipeline(p, settings, videos=plan.todo, components=components, run_id=run_id)
        watcher = WorkProgress(
            out, total=len(fingerprints), already=len(plan.done), enabled=progress
        )
        start = time.perf_counter()
        with watcher:
            stage_metrics, stopped = _run_per_video(p)
        if stopped is None:
            # the worker processes check the rate as they commit, but two that commit their
            # last videos at once may each miss the other's: the whole run is checked here
            stopped = failure_rate_problem(
                str(out),
                run_id,
                max_failure_rate=settings.max_failure_rate,
                min_inputs=settings.failure_rate_min_inputs,
            )
            if stopped:
                logger.error("%s", stopped)
        shards.clear_failure_counts(out)
        phase_s["per-video"] = time.perf_counter() - start

    start = time.perf_counter()
    config = {
        **work_config,
        "input": str(settings.input),
        "manifest_format": manifest.format,
        "threshold": settings.threshold,
        "dedup_threshold": settings.dedup_threshold,
        "retry_failed": not settings.no_retry_failed,
        "runner": str(options.get_all_options().get("runner")),
    }
    if stopped:
        config["stopped"] = stopped
    phase = corpus_phase(settings, manifest=manifest, config=config, components=components)
    run_corpus_phase(
        phase, options, manifest=manifest, fingerprints=fingerprints, components=components
    )
    phase_s["corpus"] = time.perf_counter() - start

    summary = summarize(out, wall_s=time.perf_counter() - t0, phase_s=phase_s)
    summary.stopped = stopped
    summary.stage_s = {
        k[: -len("_ms")]: v / 1000.0 for k, v in stage_metrics.items() if k.endswith("_ms")
    }
    summary.counts.update(
        {f"metric_{k}": v for k, v in stage_metrics.items() if not k.endswith("_ms")}
    )
    summary.report = report_after_run(out, summary.timing())  # OUT/report.html
    return summary


def _run_per_video(p: beam.Pipeline) -> tuple[dict[str, Any], str | None]:
    """Run the per-video phase; its metrics, and why it stopped (``None``: it did not)."""
    try:
        with _quiet_stops():
            result = p.run()
            result.wait_until_finish()
    except Exception as exc:
        if "FailureRateExceeded" not in f"{exc!r}{exc}":
            raise
        stopped = _failure_rate_message(exc)
        logger.error("%s", stopped)
        return {}, stopped
    metrics = _metrics(result)
    client = getattr(result, "client", None)  # the DaskRunner's; close it before its
    if client is not None:  # cluster goes, or it keeps trying to reconnect
        client.close()
    return metrics, None


def _failure_rate_message(exc: BaseException) -> str:
    text = str(exc)
    i = text.find("FailureRateExceeded:")
    if i < 0:
        return text.splitlines()[0] if text else repr(exc)
    line = text[i + len("FailureRateExceeded:") :].strip().splitlines()[0]
    line = line.split(" [while running")[0].strip(" '\"")
    # a worker process's exception arrives wrapped, its type name repeated
    while line.startswith("FailureRateExceeded:"):
        line = line[len("FailureRateExceeded:") :].strip(" '\"")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = run(argv)
    for line in summary.lines():
        print(line)
    if summary.stopped:
        return 3
    return 0 if summary.invariant_ok else 4


if __name__ == "__main__":
    sys.exit(main())
