"""The curate pipeline: raw videos with noisy captions → clean Parquet shards.

Two Beam pipelines run one after the other:

1. **Per-video phase** (:func:`build_pipeline`), resumable::

       ReadManifest → ProbeAndSplit (isolated decoder process) → CleanCaptions
                    → ScoreCaptions (RunInference, CLIP) → CommitWork (OUT/_work, atomic)

   Videos already committed in ``OUT/_work`` are skipped, so a rerun after a crash or a
   ``kill -9`` picks up where the last commit left off.

2. **Corpus phase** (:func:`build_finalize_pipeline`), rerun in full every time::

       ReadWork → CaptionCutoff (percentile over all scores, side input)
                → FilterAndRecaption (per video) → FindDuplicates (faiss; exact, or by centroid)
                → WriteShards (clips, stories, failures) → Publish (_manifest.json)

   It reads every committed record, so percentile thresholds and dedup see the whole corpus
   whether the per-video work ran once or in several resumed runs.

The split also suits distributed runners: the corpus phase's side inputs read cheap committed
files, never re-trigger decoding.

Invariant, checked and printed after each run (each manifest entry is one input)::

    inputs = videos with clips + videos with failures + rows the manifest reader rejected
             (+ inputs still pending when a run was stopped)

and no video has both clips and failures: a stage that fails after the split (scoring,
re-captioning) withdraws the video's clips and records the failure instead.

Stories are built from the clips kept by the caption filter. Dedup runs after re-captioning
and marks clips duplicate in the clips table; a story is withdrawn only when *every* one of
its segments is a duplicate (a re-upload or trimmed copy of another video), since a story
that reuses one scene of another video is still a distinct timeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from curate import shards
from curate.errors import OutputError
from curate.models import resolve_captioner, resolve_model_path
from curate.threshold import auto_threshold, parse_threshold
from schemas import RunManifest, ShardInfo
from schemas.inputs import ManifestRead, read_manifest

from .corpus import CorpusSteps
from .handlers import ClipModelHandler
from .options import CurateOptions, runner_flags
from .transforms import (
    CaptionCutoff,
    CleanCaptions,
    CommitWork,
    FilterAndRecaption,
    FindDuplicates,
    Gather,
    ProbeAndSplit,
    ReadManifest,
    ReadWork,
    ScoreCaptions,
    WriteShards,
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
WORK_CONFIG = "_config.json"


@dataclass(frozen=True)
class Components:
    """The per-video steps, as importable factories (the decoder runs in a child process).

    ``decoder(**decoder_kwargs)`` has ``setup()`` and ``__call__(video_row) -> list[clip]``,
    each clip a clips-table row plus its sampled ``frames``; ``scorer(**scorer_kwargs)`` has
    ``setup()`` and ``process_all(clips) -> clips`` (see :class:`curate.clip_score.ClipScorer`).
    """

    decoder: Callable[..., Any]
    decoder_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scorer: Callable[..., Any] | None = None
    scorer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    corpus: CorpusSteps = field(default_factory=CorpusSteps)
    #: :class:`curate.captioner.Captioner` keyword arguments (``None``: no captioner)
    captioner_kwargs: Mapping[str, Any] | None = None


def default_components(opts: CurateOptions) -> Components:
    from curate.clip_score import ClipScorer

    from .decode import VideoDecoder

    captioner = resolve_captioner(opts.model, opts.captioner)
    return Components(
        decoder=VideoDecoder,
        decoder_kwargs={
            "detector": opts.detector,
            "samples_per_scene": opts.samples_per_scene,
            "sample_size": opts.sample_size,
            "min_scene_frames": opts.min_scene_frames,
            "keyframes": opts.keyframes,
            "keyframe_size": opts.keyframe_size,
        },
        scorer=ClipScorer,
        scorer_kwargs={
            "model": resolve_model_path(opts.model),
            "device": opts.device,
            "batch_size": opts.clip_batch_size,
            # several local workers share the cores: one torch thread pool each, not all cores
            "num_threads": _threads_per_worker(opts),
        },
        captioner_kwargs=(
            {"model": opts.captioner, "device": opts.device, "batch_size": opts.clip_batch_size}
            if captioner
            else None
        ),
        corpus=CorpusSteps(
            model=resolve_model_path(opts.model),
            prompt_bank=opts.prompt_bank,
            captioner=captioner,
        ),
    )


def _threads_per_worker(opts: CurateOptions) -> int | None:
    from apache_beam.options.pipeline_options import DirectOptions

    workers = opts.view_as(DirectOptions).direct_num_workers or 1
    if workers <= 1 or opts.device != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def _is_dask(options: PipelineOptions) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    return "dask" in str(runner or "").lower()


# --- phase 1 -----------------------------------------------------------------------------------


def build_pipeline(
    p: beam.Pipeline,
    options: PipelineOptions,
    *,
    videos: Sequence[Mapping[str, Any]] | None = None,
    skip: Sequence[str] = (),
    components: Components | None = None,
) -> beam.PCollection:
    """The per-video phase on ``p``; returns the committed-video summaries.

    ``videos`` (the manifest's usable rows) and ``skip`` (the done-set) are read from
    ``options`` when not given.
    """
    opts = options.view_as(CurateOptions)
    if videos is None:
        videos = read_manifest(opts.input).videos
    if not skip and not opts.overwrite:
        skip = sorted(shards.done_set(opts.output))
    comps = components or default_components(opts)
    handler = ClipModelHandler(
        comps.scorer,
        comps.scorer_kwargs,
        max_batch_videos=opts.inference_batch_videos,
        share_model=opts.share_model,
        signature=comps.corpus.signature,
        captioner=comps.captioner_kwargs,
        # Beam 2.77's DaskRunner drops what a DoFn emits in finish_bundle, where
        # BatchElements emits its last batch: there, videos go to CLIP one at a time
        prebatched=_is_dask(options),
    )
    from apache_beam.options.pipeline_options import DirectOptions

    several = (options.view_as(DirectOptions).direct_num_workers or 1) > 1
    todo = p | "ReadManifest" >> ReadManifest(videos, skip=skip, reshuffle=several)
    split, split_failed = todo | "ProbeAndSplit" >> ProbeAndSplit(
        comps.decoder,
        comps.decoder_kwargs,
        timeout_s=opts.decode_timeout,
        isolate=opts.isolate_decode,
    )
    cleaned, clean_failed = split | "CleanCaptions" >> CleanCaptions()
    scored, score_failed = cleaned | "ScoreCaptions" >> ScoreCaptions(handler)
    # Each branch is committed by its own step: a Flatten in front of one committer splits
    # the local runner's fused stage there, and no video would be committed before every
    # video was decoded (a crash would then lose the whole run's work).
    from .transforms import reset_failure_rate

    reset_failure_rate(opts.output)
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
            opts.output,
            every=opts.commit_every,
            interval_s=opts.commit_interval_s,
            max_failure_rate=opts.max_failure_rate,
            min_inputs=opts.failure_rate_min_inputs,
        )
        for name, works in branches.items()
    ]
    # one sink: the DaskRunner computes only what feeds the last transform
    return tuple(committed) | "Committed" >> beam.Flatten()


# --- phase 2 -----------------------------------------------------------------------------------


class _PublishFn(beam.DoFn):
    def __init__(self, output: str, config: dict[str, Any], extra_counts: dict[str, int]) -> None:
        self.output, self.config, self.extra_counts = output, config, extra_counts

    def process(self, written: list[tuple[ShardInfo, dict[str, int]]], cutoff: Any) -> Any:
        counts: Counter = Counter(self.extra_counts)
        infos = []
        for item in written:
            if item is None:
                continue
            info, c = item
            infos.append(info)
            counts.update(c)
        config = {**self.config, "cutoff": cutoff}
        manifest = RunManifest(config=config, counts=dict(counts), shards=infos)
        path = shards.publish(self.output, manifest)
        yield str(path)


def build_finalize_pipeline(
    p: beam.Pipeline,
    options: PipelineOptions,
    *,
    manifest: ManifestRead,
    config: Mapping[str, Any],
    pending: int = 0,
    corpus: CorpusSteps | None = None,
) -> beam.PCollection:
    """The corpus phase on ``p``: every committed record → published shards and manifest."""
    opts = options.view_as(CurateOptions)
    steps = corpus or CorpusSteps()
    out = opts.output
    threshold = parse_threshold(opts.threshold)
    keep = {v["video_id"] for v in manifest.videos}
    files = shards.work_files(out)
    done = len(shards.done_set(out) & keep)
    n_shards = shards.shard_count(max(done, 1), rows_per_shard=opts.videos_per_shard)
    n_clips = shards.count_work_clips(out)
    exact = n_clips <= opts.dedup_exact_limit
    clusters = max(2, int(math.sqrt(n_clips)))  # ~sqrt(n) groups, as faiss guidance has it
    shards.begin_publish(out)

    records = p | "ReadWork" >> ReadWork([str(f) for f in files], keep=keep)
    cutoff = records | "CaptionCutoff" >> CaptionCutoff(threshold, steps)
    filtered = records | "FilterAndRecaption" >> FilterAndRecaption(cutoff, steps)

    def kept_rows(record: dict) -> list[dict]:
        from .transforms import dedup_row

        sigs = {e["clip_id"]: e.get("dedup_signature") for e in record.get("clip_extras") or ()}
        return [
            dedup_row(c, sigs[c["clip_id"]])
            for c in record["clips"]
            if c["status"] == "kept" and sigs.get(c["clip_id"]) is not None
        ]

    kept = filtered | "KeptSignatures" >> beam.FlatMap(kept_rows)
    dups = kept | "FindDuplicates" >> FindDuplicates(
        steps, threshold=opts.dedup_threshold, exact=exact, clusters=clusters
    )

    def final_rows(record: dict, dup_of: dict[str, str]) -> list[tuple[str, dict]]:
        from .corpus import apply_duplicates, story_survives_dedup

        out = [("clips", c) for c in apply_duplicates(record["clips"], dup_of)]
        story = record.get("story")
        if story and story_survives_dedup(story, dup_of):
            out.append(("stories", story))
        return out

    # one consumer of the duplicate map: Beam 2.77's DaskRunner did not give a second
    # AsDict view of it the same contents
    final = filtered | "Dedup" >> beam.FlatMap(final_rows, dup_of=beam.pvalue.AsDict(dups))
    clips = final | "Clips" >> beam.FlatMap(lambda tr: [tr[1]] if tr[0] == "clips" else [])
    stories = final | "StoriesOf" >> beam.FlatMap(lambda tr: [tr[1]] if tr[0] == "stories" else [])
    failures = (
        filtered | "WorkFailures" >> beam.FlatMap(lambda r: r["failures"] or []),
        p | "ManifestFailures" >> beam.Create(manifest.failures, reshuffle=False),
    ) | "AllFailures" >> beam.Flatten()
    written = [
        clips | "WriteClips" >> WriteShards(out, "clips", n_shards),
        stories | "WriteStories" >> WriteShards(out, "stories", n_shards),
        failures | "WriteFailures" >> WriteShards(out, "failures", n_shards),
    ]
    extra = {
        "inputs": manifest.inputs,
        "manifest_rejected": len(manifest.failures),
        "videos": len(manifest.videos),
        "videos_done": done,
        "pending": pending,
        "dedup_exact": int(exact),
    }
    publish_config = {**config, "threshold": str(threshold)}
    default_cutoff = None if threshold.percentile else threshold.value
    # a sentinel, so that a run with nothing to write still publishes its (empty) tables
    written.append(p | "Nothing" >> beam.Create([None]))
    return (
        tuple(written)
        | "Written" >> beam.Flatten()
        | "Gather" >> Gather()
        | "Publish"
        >> beam.ParDo(
            _PublishFn(out, publish_config, extra),
            cutoff=beam.pvalue.AsSingleton(cutoff, default_value=default_cutoff),
        )
    )


# --- run ---------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    output: Path
    counts: dict[str, int]
    invariant_ok: bool
    invariant: str
    wall_s: float
    phase_s: dict[str, float]
    stage_s: dict[str, float]
    stopped: str | None = None

    def lines(self) -> list[str]:
        c = self.counts
        out = [
            f"inputs {c.get('inputs', 0)}: {c.get('videos_with_clips', 0)} videos with clips, "
            f"{c.get('videos_failed', 0)} failed, {c.get('manifest_rejected', 0)} manifest rows "
            f"rejected, {c.get('pending', 0)} pending",
            f"clips {c.get('clips', 0)} (kept {c.get('clips_kept', 0)}, dropped "
            f"{c.get('clips_dropped', 0)}); stories {c.get('stories', 0)}; failures rows "
            f"{c.get('failures', 0)}",
            f"invariant: {self.invariant} [{'ok' if self.invariant_ok else 'BROKEN'}]",
            f"shards: {self.output}/{{clips,stories,failures}}/part-*.parquet and "
            f"{self.output}/_manifest.json",
            f"wall time {self.wall_s:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in self.phase_s.items())
            + ")",
        ]
        if self.stopped:
            out.append(f"STOPPED: {self.stopped}")
        return out


def _work_config(opts: CurateOptions) -> dict[str, Any]:
    cfg = {k: getattr(opts, k) for k in WORK_SETTINGS}
    cfg["model"] = resolve_model_path(opts.model)
    # the captioner's captions are made in the per-video phase and committed with the work
    cfg["captioner"] = opts.captioner
    return cfg


def check_work_config(output: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Refuse to mix committed work done under other per-video settings."""
    path = Path(output) / shards.WORK_DIR / WORK_CONFIG
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{WORK_CONFIG}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
        return
    before = json.loads(path.read_text())
    changed = {k: (before.get(k), config.get(k)) for k in config if before.get(k) != config.get(k)}
    if changed:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise OutputError(
            f"the committed work was done with other per-video settings ({what}); "
            "rerun with --overwrite to redo it, or use another output folder",
            uri=str(output),
        )


def _pipeline_options(argv: Sequence[str]) -> PipelineOptions:
    options = PipelineOptions(list(argv))
    if options.view_as(CurateOptions).input is None:
        raise ValueError("--input is required")
    if options.view_as(CurateOptions).output is None:
        raise ValueError("--output is required")
    bank = options.view_as(CurateOptions).prompt_bank
    if bank:
        from curate.recaption import load_prompt_bank

        load_prompt_bank(bank)  # an unreadable or empty file fails before any work starts
    from apache_beam.options.pipeline_options import StandardOptions

    if options.view_as(StandardOptions).runner is None:
        options = PipelineOptions([*runner_flags("local"), *argv])
    opts = options.view_as(CurateOptions)
    if str(opts.threshold).strip().lower() == "auto":
        opts.threshold = auto_threshold(opts.model)
    # resolved once here, so that the workers and the committed work see one folder
    captioner = resolve_captioner(opts.model, opts.captioner)
    if captioner:
        from curate.captioner import Captioner

        Captioner(captioner).check_folder()  # a missing or incomplete folder fails now
    opts.captioner = captioner or "none"
    return options


def _corpus_phase_options(options: PipelineOptions, argv: Sequence[str]) -> PipelineOptions:
    """Runner options for the corpus phase.

    It decodes nothing, so on the local runner one in-process worker does it faster than
    starting worker processes. On Dask it runs on the launcher with the local runner: Beam
    2.77's DaskRunner gives different values to transforms that read the same side input
    (seen with the cut-off and the duplicate map), and this phase is made of side inputs.
    The expensive per-video phase is the part that runs on the cluster.
    """
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = str(options.view_as(StandardOptions).runner or "")
    dask = "dask" in runner.lower()
    if not dask and not runner.endswith("FnApiRunner"):
        return options
    if not dask and options.view_as(DirectOptions).direct_num_workers <= 1:
        return options
    skip = ("--direct_num_workers", "--direct_running_mode", "--runner", "--dask_")
    flags = [a for a in argv if not a.startswith(skip)]
    return PipelineOptions(
        [
            *runner_flags("local"),
            *flags,
            "--direct_num_workers=1",
            "--direct_running_mode=in_memory",
        ]
    )


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
    components: Components | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run both phases; return the summary (also printed). Raises on unusable settings."""
    from .progress import WorkProgress

    argv = list(sys.argv[1:] if argv is None else argv)
    options = _pipeline_options(argv)
    opts = options.view_as(CurateOptions)
    parse_threshold(opts.threshold)  # fail on a bad threshold before any work
    t0 = time.perf_counter()

    out = shards.check_output_dir(opts.output)
    manifest = read_manifest(opts.input)
    if opts.overwrite:
        shards.clear_run(out)
    work_config = _work_config(opts)
    check_work_config(out, work_config)
    keep = {v["video_id"] for v in manifest.videos}
    done = shards.done_set(out) & keep
    todo = len(keep) - len(done)
    logger.info(
        "%s (%s): %d inputs, %d usable videos, %d already done, %d to process",
        opts.input,
        manifest.format,
        manifest.inputs,
        len(keep),
        len(done),
        todo,
    )

    phase_s: dict[str, float] = {}
    stage_metrics: dict[str, Any] = {}
    stopped = None
    if todo:
        p = beam.Pipeline(options=options)
        build_pipeline(p, options, videos=manifest.videos, skip=sorted(done), components=components)
        watcher = WorkProgress(out, total=len(keep), already=len(done), enabled=progress)
        start = time.perf_counter()
        with watcher:
            try:
                result = p.run()
                result.wait_until_finish()
                stage_metrics = _metrics(result)
                client = getattr(result, "client", None)  # the DaskRunner's; close it before
                if client is not None:  # its cluster goes, or it keeps trying to reconnect
                    client.close()
            except Exception as exc:
                if "FailureRateExceeded" not in f"{exc!r}{exc}":
                    raise
                stopped = _failure_rate_message(exc)
                logger.error("%s", stopped)
        phase_s["per-video"] = time.perf_counter() - start

    done_now = shards.done_set(out) & keep
    start = time.perf_counter()
    p2 = beam.Pipeline(options=_corpus_phase_options(options, argv))
    config = {
        **work_config,
        "input": str(opts.input),
        "manifest_format": manifest.format,
        "threshold": opts.threshold,
        "dedup_threshold": opts.dedup_threshold,
        "runner": str(options.get_all_options().get("runner")),
    }
    if stopped:
        config["stopped"] = stopped
    build_finalize_pipeline(
        p2,
        options,
        manifest=manifest,
        config=config,
        pending=len(keep) - len(done_now),
        corpus=(components or default_components(opts)).corpus,
    )
    p2.run().wait_until_finish()
    phase_s["corpus"] = time.perf_counter() - start

    summary = summarize(out, wall_s=time.perf_counter() - t0, phase_s=phase_s)
    summary.stopped = stopped
    summary.stage_s = {
        k[: -len("_ms")]: v / 1000.0 for k, v in stage_metrics.items() if k.endswith("_ms")
    }
    summary.counts.update(
        {f"metric_{k}": v for k, v in stage_metrics.items() if not k.endswith("_ms")}
    )
    return summary


def _failure_rate_message(exc: BaseException) -> str:
    text = str(exc)
    i = text.find("FailureRateExceeded:")
    if i < 0:
        return text.splitlines()[0] if text else repr(exc)
    line = text[i + len("FailureRateExceeded:") :].strip().splitlines()[0]
    line = line.split(" [while running")[0]
    return line.strip(" '\"")


def summarize(
    output: str | os.PathLike[str], *, wall_s: float, phase_s: dict[str, float]
) -> RunSummary:
    """Counts and the invariant of a published run, from its tables."""
    out = Path(output)
    manifest = RunManifest.read(out)
    counts = dict(manifest.counts)
    clip_videos = set(shards.read_table(out, "clips").column("video_id").to_pylist())
    failures = shards.read_table(out, "failures").to_pylist()
    failed_videos = {f["input_id"] for f in failures if f["stage"] != "read-manifest"}
    rejected = sum(1 for f in failures if f["stage"] == "read-manifest")
    both = clip_videos & failed_videos
    counts["videos_with_clips"] = len(clip_videos)
    counts["videos_failed"] = len(failed_videos)
    total = len(clip_videos) + len(failed_videos) + rejected + counts.get("pending", 0)
    ok = total == counts.get("inputs", -1) and not both
    text = (
        f"inputs {counts.get('inputs')} = {len(clip_videos)} with clips + "
        f"{len(failed_videos)} failed + {rejected} rejected by the manifest reader"
        + (f" + {counts.get('pending')} pending" if counts.get("pending") else "")
        + (f"; {len(both)} videos in both tables: {sorted(both)[:5]}" if both else "")
    )
    return RunSummary(
        output=out,
        counts=counts,
        invariant_ok=ok,
        invariant=text,
        wall_s=wall_s,
        phase_s=phase_s,
        stage_s={},
    )


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
