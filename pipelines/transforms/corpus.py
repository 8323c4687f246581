"""The corpus phase: every committed video, filtered, re-captioned and deduplicated together.

Two ways to run it in Beam, both over ``curate`` steps called as tests and benchmarks call
them (:class:`curate.threshold.Threshold`, :class:`curate.filtering.CaptionFilter`,
:class:`curate.recaption.Recaptioner`, :class:`curate.dedup.Deduplicator`):

* :class:`CorpusOnWorkers`, what ``curate run`` runs on a cluster: the keyed steps of
  :class:`curate.corpus.CorpusPhase` (a chunk of work files, a group of inverted lists, a
  shard) as ``ParDo`` s spread over the workers, each reading and writing the run folder, one
  stage after another::

      scores per chunk → cut-off → bank prompts per chunk → bank → re-caption per chunk
        → dedup search per list group → duplicate map → write per shard → publish

  Elements are keys only, so the runner holds no corpus data in memory, and no stage reads a
  side input (Beam 2.77's DaskRunner gives them unreliable values).
* The record-level transforms (:class:`ReadWork` → :class:`CaptionCutoff` →
  :class:`FilterAndRecaption` → :class:`MarkDuplicates` → :class:`WriteShards` →
  :class:`Publish`): the corpus phase over a ``PCollection`` of whole records and side
  inputs, for corpora that fit in memory.

Nothing here decodes video, so the whole phase reruns cheaply over every committed record: its
result does not depend on how the per-video work was split across runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from curate import shards
from curate.corpus import CorpusPhase, recaption_filtered
from curate.dedup import (
    Deduplicator,
    apply_duplicates,
    assign_centroids,
    dedup_row,
    story_survives_dedup,
    train_centroids,
)
from curate.filtering import CaptionFilter
from curate.prompt_bank import bank_prompts, clean_prompt_bank
from curate.recaption import with_clip_status
from curate.threshold import Threshold, scorable
from curate.work import joined_clips, table_row
from schemas import ShardInfo
from schemas.tables import KEPT

from .common import NAMESPACE, Gather


class ReadWork(beam.PTransform):
    """The current committed record of every video in ``keep`` (video id -> fingerprint), its
    clips joined with their extras (:func:`curate.work.joined_clips`).

    A record made under another fingerprint (an older row, file or setting) is passed over.
    Of a video's records under its fingerprint, the latest attempt wins, and among equals (a
    retried bundle committed twice) the first in file order: the same choice on every runner
    (:func:`curate.shards.choose_record`).
    """

    def __init__(self, files: Sequence[str], *, keep: Mapping[str, str]) -> None:
        super().__init__()
        self.files = sorted(str(f) for f in files)
        self.keep = dict(keep)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        keep = self.keep

        def read(path: str) -> Iterator[tuple[str, tuple[str, dict]]]:
            for record in shards.read_work_file(path):
                vid = record["video_id"]
                if vid in keep and record.get("fingerprint") == keep[vid]:
                    yield vid, (path, record)

        def current(kv: tuple[str, Iterable[tuple[str, dict]]]) -> dict:
            record = shards.choose_record(kv[1])
            return {
                "video_id": record["video_id"],
                "video": record["video"],
                "clips": joined_clips(record),
                "failures": record["failures"],
            }

        return (
            pbegin
            | "Files" >> beam.Create(self.files, reshuffle=False)
            | "Read" >> beam.FlatMap(read)
            | "ByVideo" >> beam.GroupByKey()
            | "Current" >> beam.Map(current)
        )


class CaptionCutoff(beam.PTransform):
    """The corpus's caption-score cut-off (:meth:`Threshold.cutoff` over every scorable clip),
    as a one-element PCollection (a side input)."""

    def __init__(self, threshold: Threshold) -> None:
        super().__init__()
        self.threshold = threshold

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        threshold = self.threshold
        return (
            records
            | "Scores"
            >> beam.FlatMap(lambda r: [c["caption_score"] for c in r["clips"] if scorable(c)])
            | "AllScores" >> Gather()
            | "Cutoff" >> beam.Map(lambda scores: threshold.cutoff(sorted(scores)))
        )


class _FilterFn(beam.DoFn):
    """Per video: every clip's final caption status under the corpus cut-off."""

    def __init__(self) -> None:
        self.kept = Metrics.counter(NAMESPACE, "filter_kept")
        self.dropped = Metrics.counter(NAMESPACE, "filter_dropped")

    def process(self, record: dict, cutoff: float | None) -> Iterator[dict]:
        if not record["clips"]:
            yield record
            return
        clips = list(CaptionFilter.fitted(cutoff).process_all(record["clips"]))
        kept = sum(1 for c in clips if c["status"] == KEPT)
        self.kept.inc(kept)
        self.dropped.inc(len(clips) - kept)
        yield {**record, "clips": clips}


class _RecaptionFn(beam.DoFn):
    """Per video: prompts for its scenes and its stories row, from the re-captioner that
    ``factory(**kwargs)`` builds once per worker (it loads a CLIP)."""

    def __init__(self, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
        self.factory, self.kwargs = factory, dict(kwargs)
        self.stories = Metrics.counter(NAMESPACE, "stories")
        self.failed = Metrics.counter(NAMESPACE, "recaption_failed")

    def setup(self) -> None:
        self._step = self.factory(**self.kwargs)
        self._step.setup()

    def teardown(self) -> None:
        self._step.teardown()

    def process(self, record: dict, bank: Sequence[str] | None) -> Iterator[dict]:
        if not record["clips"]:
            yield {**record, "story": None}
            return
        start = time.perf_counter()
        bank_error = None
        try:
            self._step.use_corpus_bank(bank or ())
        except Exception as exc:  # the video fails with it, as any re-captioning error
            bank_error = exc
        out = recaption_filtered(self._step, record, bank_error=bank_error)
        if not out["clips"]:  # the whole video moved to the failures table
            self.failed.inc()
        elif out["story"] is not None:
            self.stories.inc()
        Metrics.distribution(NAMESPACE, "recaption_ms").update(
            int((time.perf_counter() - start) * 1000)
        )
        yield out


class FilterAndRecaption(beam.PTransform):
    """Per video: the corpus cut-off (a side input), then re-captioning into a story.

    Between the two, the corpus's prompt bank (:func:`curate.prompt_bank.bank_prompts` of
    every video's kept clips) is gathered as a side input: a scene whose own caption failed
    the filter gets the bank prompt CLIP finds closest.
    """

    def __init__(
        self,
        cutoff: beam.PCollection,
        recaptioner: Callable[..., Any],
        recaptioner_kwargs: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.recaptioner = recaptioner
        self.recaptioner_kwargs = dict(recaptioner_kwargs)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        filtered = records | "Filter" >> beam.ParDo(
            _FilterFn(), cutoff=beam.pvalue.AsSingleton(self.cutoff, default_value=None)
        )
        bank = (
            filtered
            | "BankPrompts" >> beam.Map(lambda r: bank_prompts(r["clips"]))
            | "AllPrompts" >> Gather()
            # cleaned over the whole corpus: a video's cut prompt goes where another's says more
            | "Bank"
            >> beam.Map(lambda lists: sorted(clean_prompt_bank(p for ps in lists for p in ps)))
        )
        return filtered | "Recaption" >> beam.ParDo(
            _RecaptionFn(self.recaptioner, self.recaptioner_kwargs),
            bank=beam.pvalue.AsSingleton(bank, default_value=None),
        )


def _sample(items: list, size: int, seed: int) -> list:
    """A reproducible random sample (in input order) of at most ``size`` items."""
    if len(items) <= size:
        return items
    take = np.random.default_rng(seed).choice(len(items), size=size, replace=False)
    return [items[i] for i in sorted(take)]


class FindDuplicates(beam.PTransform):
    """``(clip_id, duplicate_of)`` pairs among kept clips (rows from :func:`dedup_row`).

    Up to the exact limit, one exact search over all of them. Above it, k-means centroids are
    trained on a fixed-size random sample, every clip is keyed by its nearest centroid
    (``GroupByKey``) and :meth:`Deduplicator.duplicates` runs inside each group, as
    large-scale pipelines do; pairs that straddle two groups are not found.
    """

    def __init__(
        self,
        dedup: Deduplicator,
        *,
        exact: bool,
        clusters: int = 64,
        sample: int = 50_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dedup = dedup
        self.exact = exact
        self.clusters = clusters
        self.sample = sample
        self.seed = seed

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        dedup = self.dedup

        def pairs(group: Iterable[dict]) -> list[tuple[str, str]]:
            return sorted(dedup.duplicates(sorted(group, key=lambda r: r["clip_id"])).items())

        if self.exact:
            return rows | "AllRows" >> Gather() | "Exact" >> beam.FlatMap(pairs)
        clusters, seed, size = self.clusters, self.seed, self.sample

        def train(sigs: list) -> np.ndarray:
            sample = np.asarray(_sample(sigs, size, seed), np.float32)
            return train_centroids(sample, n_centroids=min(clusters, len(sample)), seed=seed)

        def key(row: dict, centroids: np.ndarray) -> tuple[int, dict]:
            # one group per clip (nprobe 1): the groups are what the runner distributes
            sig = np.asarray([row["dedup_signature"]], np.float32)
            return int(assign_centroids(sig, centroids)[0]), row

        centroids = (
            rows
            | "Signatures" >> beam.Map(lambda r: r["dedup_signature"])
            | "AllSignatures" >> Gather()
            | "Train" >> beam.Map(train)
        )
        return (
            rows
            | "Assign" >> beam.Map(key, centroids=beam.pvalue.AsSingleton(centroids))
            | "ByCentroid" >> beam.GroupByKey()
            | "InGroup" >> beam.FlatMap(lambda kv: pairs(kv[1]))
        )


class MarkDuplicates(beam.PTransform):
    """Re-captioned records → ``("clips", row)`` and ``("stories", row)`` table rows, with
    duplicates among the kept clips marked (:func:`curate.dedup.apply_duplicates`).

    A story is withdrawn only when *every* one of its segments is a duplicate (a re-upload or
    trimmed copy of another video): a story that reuses one scene of another video is still a
    distinct timeline.
    """

    def __init__(self, dedup: Deduplicator, *, exact: bool, clusters: int) -> None:
        super().__init__()
        self.dedup, self.exact, self.clusters = dedup, exact, clusters

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        def kept_rows(record: dict) -> list[dict]:
            return [
                dedup_row(c)
                for c in record["clips"]
                if c["status"] == KEPT and c.get("dedup_signature") is not None
            ]

        def final_rows(record: dict, dup_of: dict[str, str]) -> list[tuple[str, dict]]:
            clips = apply_duplicates(record["clips"], dup_of)
            out = [("clips", table_row(c)) for c in clips]
            story = record.get("story")
            if story and story_survives_dedup(story, dup_of, record["clips"]):
                out.append(("stories", with_clip_status(story, clips)))
            return out

        dups = (
            records
            | "KeptSignatures" >> beam.FlatMap(kept_rows)
            | "FindDuplicates"
            >> FindDuplicates(self.dedup, exact=self.exact, clusters=self.clusters)
        )
        # one consumer of the duplicate map: Beam 2.77's DaskRunner did not give a second
        # AsDict view of it the same contents
        return records | "Dedup" >> beam.FlatMap(final_rows, dup_of=beam.pvalue.AsDict(dups))


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, table: str, count: int, sort_key: Sequence[str]) -> None:
        self.output, self.table, self.count, self.sort_key = output, table, count, list(sort_key)

    def process(self, kv: tuple[int, Iterable[dict]]) -> Iterator[tuple[Any, dict]]:
        index, rows = kv
        rows = list(rows)
        info = shards.write_shard(
            self.output, self.table, index, self.count, rows, sort_key=self.sort_key
        )
        yield info, dict(shards.table_counts(self.table, rows))


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


class _PublishFn(beam.DoFn):
    def __init__(self, output: str, config: dict[str, Any], extra_counts: dict[str, int]) -> None:
        self.output, self.config, self.extra_counts = output, config, extra_counts

    def process(self, written: list[tuple[ShardInfo, dict[str, int]] | None], cutoff: Any) -> Any:
        config = {**self.config, "cutoff": cutoff}
        path, _ = shards.publish_written(
            self.output, written, config=config, counts=self.extra_counts
        )
        yield str(path)


class Publish(beam.PTransform):
    """The written shards' manifest entries → ``_manifest.json`` (with the cut-off and the
    counts), written last; a run with nothing to write still publishes its empty tables."""

    def __init__(
        self,
        output: str,
        cutoff: beam.PCollection,
        *,
        config: dict[str, Any],
        counts: dict[str, int],
        default_cutoff: float | None,
    ) -> None:
        super().__init__()
        self.output, self.cutoff = output, cutoff
        self.config, self.counts, self.default_cutoff = config, counts, default_cutoff

    def expand(self, written: beam.PCollection) -> beam.PCollection:
        # a sentinel, so that Gather has an element whatever was written
        nothing = written.pipeline | "Nothing" >> beam.Create([None])
        return (
            (written, nothing)
            | "Written" >> beam.Flatten()
            | "Gather" >> Gather()
            | "Publish"
            >> beam.ParDo(
                _PublishFn(self.output, self.config, self.counts),
                cutoff=beam.pvalue.AsSingleton(self.cutoff, default_value=self.default_cutoff),
            )
        )


# --- the corpus phase on a cluster's workers ---------------------------------------------------


class _KeyedStep(beam.DoFn):
    """One keyed step of a :class:`curate.corpus.CorpusPhase` (its method ``step``) per
    element; the re-captioning step gets a re-captioner built once per ``DoFn`` instance
    (``factory(**kwargs)``, set up in ``setup``). ``None`` (the stage's sentinel) passes."""

    def __init__(
        self,
        phase: CorpusPhase,
        step: str,
        factory: Callable[..., Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.phase, self.step = phase, step
        self.factory, self.kwargs = factory, dict(kwargs or {})
        self._model: Any = None

    def setup(self) -> None:
        if self.factory is not None:
            self._model = self.factory(**self.kwargs)
            self._model.setup()

    def teardown(self) -> None:
        if self._model is not None and hasattr(self._model, "teardown"):
            self._model.teardown()

    def process(self, key: Any) -> Iterator[Any]:
        if key is None:
            yield None
            return
        method = getattr(self.phase, self.step)
        yield method(key, self._model) if self._model is not None else method(key)


class _Stage(beam.PTransform):
    """A one-element token → ``keys(token)`` spread over the workers (keyed by a
    ``GroupByKey``: the DaskRunner ignores ``Reshuffle``) → ``fn`` per key → when every key
    is done, ``then(results)`` as the next token. A sentinel rides along so that a stage
    with no keys still hands a token on."""

    def __init__(
        self,
        keys: Callable[[Any], Sequence[Any]],
        fn: beam.DoFn,
        then: Callable[[list], Any],
    ) -> None:
        super().__init__()
        self.keys, self.fn, self.then = keys, fn, then

    def expand(self, token: beam.PCollection) -> beam.PCollection:
        keys, then = self.keys, self.then
        return (
            token
            | "Keys" >> beam.FlatMap(lambda t: [None, *keys(t)])
            | "Key" >> beam.Map(lambda k: (repr(k), k))
            | "Spread" >> beam.GroupByKey()
            | "Each" >> beam.FlatMap(lambda kv: kv[1])
            | "Step" >> beam.ParDo(self.fn)
            | "Done" >> Gather()
            | "Then" >> beam.Map(lambda results: then([r for r in results if r is not None]))
        )


class CorpusOnWorkers(beam.PTransform):
    """The corpus phase of a planned :class:`curate.corpus.CorpusPhase` as Beam stages (see
    the module's docstring); ``recaptioner(**recaptioner_kwargs)`` is built on the workers.
    Its output is the published manifest's path."""

    def __init__(
        self,
        phase: CorpusPhase,
        recaptioner: Callable[..., Any],
        recaptioner_kwargs: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.phase = phase
        self.recaptioner, self.recaptioner_kwargs = recaptioner, dict(recaptioner_kwargs)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        phase = self.phase
        step = lambda name, *more: _KeyedStep(phase, name, *more)  # noqa: E731
        return (
            pbegin
            | "Start" >> beam.Create([0])
            | "Scores"
            >> _Stage(lambda _: phase.score_keys(), step("chunk_scores"), lambda _: phase.cutoff())
            | "Prompts"
            >> _Stage(lambda _: phase.chunk_keys(), step("chunk_prompts"), lambda _: phase.bank())
            | "Recaption"
            >> _Stage(
                lambda _: phase.chunk_keys(),
                step("recaption_chunk", self.recaptioner, self.recaptioner_kwargs),
                lambda _: phase.dedup_keys(),
            )
            | "Dedup"
            >> _Stage(lambda groups: groups, step("search_group"), lambda _: phase.resolve())
            | "Shards" >> _Stage(lambda _: phase.shard_keys(), step("write_shard"), phase.publish)
            | "Manifest" >> beam.Map(str)
        )
