"""The corpus phase's steps in order (:class:`CorpusPhase`, see :mod:`curate.corpus`): each
step after the plan is keyed (a chunk, a list group, a shard), reads what earlier steps wrote
to the scratch folder and writes its own result there, so the steps run one after another
here (:meth:`CorpusPhase.run`) or as Beam stages on a cluster's workers
(:mod:`pipelines.transforms.corpus`). What a step does lives in the modules beside this one:
the plan (:mod:`.plan`), reading committed work (:mod:`.read`), one video (:mod:`.per_video`),
spilled rows (:mod:`.spill`), dedup (:mod:`.duplicates`) and the shards (:mod:`.write`)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from schemas import ShardInfo
from schemas.tables import KEPT

from .. import shards
from ..dedup import SIGNATURE_KEY, Deduplicator
from ..filtering import CaptionFilter
from ..prompt_bank import bank_prompts, clean_prompt_bank
from ..run_folder import CORPUS_DIR, remove_owned
from ..threshold import Threshold, scorable
from ..work import table_row
from .duplicates import (
    build_lists,
    dedup_metas,
    dedup_table,
    exact_duplicates,
    found_pairs,
    list_duplicates,
    search_groups,
    search_list_group,
    signature_store,
    write_duplicates,
)
from .per_video import filter_and_recaption
from .plan import DEFAULT_MEMORY_MB, Budget, CorpusPlan, plan_corpus
from .read import _PROMPT_COLUMNS, _SCORE_COLUMNS, _read_light, read_records
from .scratch import _atomic_json, _atomic_npy, dedup_dir, part_path
from .spill import _Spill, _story_clips
from .write import merge_shard, spilled_shards

# the package's logger, as before the phase became a package: log lines keep their name
logger = logging.getLogger("curate.corpus")


@dataclass
class CorpusReport:
    """What a corpus phase did: seconds per step and the sizes that decided its memory."""

    seconds: dict[str, float] = field(default_factory=dict)
    chunks: int = 0
    chunk_clips: int = 0
    dedup: dict[str, Any] = field(default_factory=dict)
    shards: int = 0
    manifest: str | None = None


class CorpusPhase:
    """The corpus phase of a run folder (see :mod:`curate.corpus`).

    ``threshold`` is the run's caption threshold, ``dedup`` its deduplicator; ``exact_limit``:
    up to this many clips in the committed work, dedup is one exact search in memory, above
    it inverted lists over a signature store; ``rows_per_shard``: videos per output shard;
    ``memory_mb``: what the phase may hold besides its models (:class:`Budget`); ``threads``:
    list groups searched at once by :meth:`run`; ``chunk_clips`` overrides the chunk size
    ``memory_mb`` gives; ``config`` and ``counts`` go into the manifest. ``keep_scratch``
    leaves ``OUT/_corpus`` in place (for a benchmark to check recall against).

    A corpus phase is planned once (:meth:`plan`, on the launcher); every later step reads
    the plan and what earlier steps wrote from the run folder.
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        *,
        threshold: Threshold,
        dedup: Deduplicator,
        exact_limit: int = 50_000,
        rows_per_shard: int = 1000,
        memory_mb: int = DEFAULT_MEMORY_MB,
        threads: int = 2,
        chunk_clips: int | None = None,
        config: Mapping[str, Any] | None = None,
        counts: Mapping[str, int] | None = None,
        keep_scratch: bool = False,
    ) -> None:
        if exact_limit < 1:
            raise ValueError(f"exact_limit must be >= 1, got {exact_limit!r}")
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard!r}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        if chunk_clips is not None and chunk_clips < 1:
            raise ValueError(f"chunk_clips must be >= 1, got {chunk_clips!r}")
        self.output = Path(output)
        self.threshold = threshold
        self.dedup = dedup
        self.exact_limit = int(exact_limit)
        self.rows_per_shard = int(rows_per_shard)
        self.budget = Budget(int(memory_mb))
        self.threads = int(threads)
        self.chunk_clips = chunk_clips
        self.config = dict(config or {})
        self.counts = dict(counts or {})
        self.keep_scratch = keep_scratch
        self.report = CorpusReport()

    # -- the scratch folder

    @property
    def scratch(self) -> Path:
        return self.output / CORPUS_DIR

    @property
    def dedup_dir(self) -> Path:
        return dedup_dir(self.scratch)

    def part_path(self, table: str, part: int, shard: int) -> Path:
        return part_path(self.scratch, table, part, shard)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("plan", None)  # read from the run folder where the step runs
        return state

    @cached_property
    def plan(self) -> CorpusPlan:
        return CorpusPlan.from_json((self.scratch / "plan.json").read_text())

    def _timed(self, step: str, start: float) -> None:
        self.report.seconds[step] = self.report.seconds.get(step, 0.0) + time.perf_counter() - start

    # -- 1. the plan (launcher)

    def make_plan(
        self, keep: Mapping[str, str], manifest_failures: Sequence[Mapping[str, Any]] = ()
    ) -> CorpusPlan:
        """Plan the phase over the current record of every video in ``keep`` (video id ->
        the fingerprint its record must have): clear the scratch and staging folders and the
        manifest, choose each video's record, split the files into chunks, and spill the
        manifest's rejected rows (``manifest_failures``) as failures rows."""
        start = time.perf_counter()
        shards.begin_publish(self.output)
        remove_owned(self.scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.__dict__.pop("plan", None)

        plan = plan_corpus(
            self.output,
            keep,
            budget=self.budget,
            chunk_clips=self.chunk_clips,
            exact_limit=self.exact_limit,
            rows_per_shard=self.rows_per_shard,
            counts=self.counts,
        )
        (self.scratch / "plan.json").write_text(plan.to_json())
        self.__dict__["plan"] = plan
        if manifest_failures:
            spill = _Spill(self.scratch, len(plan.chunks), plan=plan, dtype=np.float32)
            for row in manifest_failures:
                spill.add("failures", dict(row))
            spill.close()
        self.report.chunks, self.report.chunk_clips = len(plan.chunks), plan.chunk_clips
        logger.info(
            "corpus phase: %d videos in %d work files, %d clips; %d chunks of <= %d clips "
            "(%d MB); dedup %s",
            plan.done,
            len(plan.files),
            plan.work_clips,
            len(plan.chunks),
            plan.chunk_clips,
            self.budget.memory_mb,
            "exact" if plan.exact else "by inverted lists",
        )
        self._timed("plan", start)
        return plan

    def chunk_keys(self) -> list[int]:
        return list(range(len(self.plan.chunks)))

    def _chunk_files(self, chunk: int) -> Iterator[tuple[str, list[int]]]:
        plan = self.plan
        for i in plan.chunks[chunk]:
            yield plan.files[i], plan.rows[i]

    # -- 2. the cut-off

    def score_keys(self) -> list[int]:
        """The chunks to read scores from: none for an absolute threshold."""
        return self.chunk_keys() if self.threshold.percentile else []

    def chunk_scores(self, chunk: int) -> int:
        """Every scorable clip's caption score in ``chunk`` → ``scores/c-NNNNN.npy``."""
        start = time.perf_counter()
        scores: list[float] = []
        for file, rows in self._chunk_files(chunk):
            for record in _read_light(file, rows, _SCORE_COLUMNS):
                scores.extend(float(c["caption_score"]) for c in record["clips"] if scorable(c))
        _atomic_npy(np.asarray(scores, np.float64), self.scratch / "scores" / f"c-{chunk:05d}.npy")
        self._timed("scores", start)
        return len(scores)

    def cutoff(self) -> float | None:
        """The corpus cut-off (:meth:`curate.threshold.Threshold.cutoff` over every scorable
        clip's score) → ``cutoff.json``."""
        start = time.perf_counter()
        if self.threshold.percentile:
            files = sorted((self.scratch / "scores").glob("c-*.npy"))
            scores = np.concatenate([np.load(f) for f in files]) if files else np.zeros(0)
            value = self.threshold.cutoff(scores.tolist())
        else:
            value = self.threshold.value
        _atomic_json({"cutoff": value}, self.scratch / "cutoff.json")
        self._timed("cutoff", start)
        return value

    def read_cutoff(self) -> float | None:
        value = json.loads((self.scratch / "cutoff.json").read_text())["cutoff"]
        return None if value is None else float(value)

    # -- 3. the prompt bank

    def chunk_prompts(self, chunk: int) -> int:
        """The bank prompts of ``chunk``'s videos (:func:`bank_prompts` of each video's
        filtered clips, not yet cleaned) → ``prompts/c-NNNNN.json``."""
        start = time.perf_counter()
        cut = CaptionFilter.fitted(self.read_cutoff())
        prompts: set[str] = set()
        for file, rows in self._chunk_files(chunk):
            for record in _read_light(file, rows, _PROMPT_COLUMNS):
                if record["clips"]:
                    prompts.update(bank_prompts(cut.process_all(record["clips"])))
        _atomic_json(sorted(prompts), self.scratch / "prompts" / f"c-{chunk:05d}.json")
        self._timed("bank", start)
        return len(prompts)

    def bank(self) -> list[str]:
        """The corpus' prompt bank: every chunk's prompts, cleaned over the whole corpus
        (:func:`clean_prompt_bank`: a prompt says less than one of another video's, a word
        cut off in one video stands whole in another), sorted → ``bank.json``."""
        start = time.perf_counter()
        prompts: set[str] = set()
        for file in sorted((self.scratch / "prompts").glob("c-*.json")):
            prompts.update(json.loads(file.read_text()))
        bank = sorted(clean_prompt_bank(prompts))
        _atomic_json(bank, self.scratch / "bank.json")
        self._timed("bank", start)
        return bank

    def read_bank(self) -> list[str]:
        return list(json.loads((self.scratch / "bank.json").read_text()))

    # -- 4. re-captioning

    def recaption_chunk(self, chunk: int, step: Any) -> dict[str, int]:
        """Filter and re-caption every video of ``chunk`` with ``step`` (set up; see
        :func:`filter_and_recaption`); spill its rows per shard and its kept clips'
        signatures. Returns counts (videos, clips, kept, stories, failed)."""
        start = time.perf_counter()
        cutoff = self.read_cutoff()
        bank_error = None
        try:
            step.use_corpus_bank(self.read_bank())
        except Exception as exc:  # every video that needs the bank fails with it
            bank_error = exc
        dtype = np.float32 if self.plan.exact else np.float16
        spill = _Spill(self.scratch, chunk, plan=self.plan, dtype=dtype)
        counts: Counter = Counter()
        for file, rows in self._chunk_files(chunk):
            for record in read_records(file, rows):
                out = filter_and_recaption(step, record, cutoff, bank_error=bank_error)
                counts["videos"] += 1
                for failure in out["failures"] or ():
                    spill.add("failures", dict(failure))
                clips = out["clips"]
                counts["clips"] += len(clips)
                if out["story"]:
                    counts["stories"] += 1
                    spill.add("stories", {**out["story"], "_clips": _story_clips(clips)})
                for clip in clips:
                    spill.add("clips", table_row(clip))
                    if clip["status"] == KEPT and clip.get(SIGNATURE_KEY) is not None:
                        counts["kept"] += 1
                        spill.add_signature(clip)
                if record["clips"] and not clips:
                    counts["failed"] += 1
        spill.close()
        self._timed("recaption", start)
        return dict(counts)

    # -- 5. dedup

    def dedup_keys(self) -> list[int]:
        """Get the search ready: for the exact search nothing (it runs in :meth:`resolve`);
        for the inverted lists, the chunks' signatures joined into one store, centroids
        trained on a sample and every clip written to its lists
        (:func:`curate.corpus.duplicates.build_lists`). Returns the list groups to search
        (:meth:`search_group`)."""
        start = time.perf_counter()
        metas = dedup_metas(self.dedup_dir)
        if self.plan.exact or not metas:
            self.report.dedup = {"method": "exact" if self.plan.exact else "none"}
            self._timed("dedup", start)
            return []
        info = build_lists(
            self.scratch, self.dedup_dir, metas, self.dedup, memory_mb=self.budget.memory_mb
        )
        if info is None:
            self._timed("dedup", start)
            return []
        self.report.dedup = info
        self._timed("dedup", start)
        return search_groups(info["lists"])

    def search_group(self, group: int) -> int:
        """Exact search inside every inverted list of ``group`` → ``pairs/g-NNNNN.npy``."""
        start = time.perf_counter()
        found = search_list_group(self.scratch, self.dedup_dir, group, self.dedup.threshold)
        self._timed("dedup", start)
        return found

    def pairs(self) -> list[tuple[int, int, float]]:
        """The pairs the list groups found, each once (a pair may sit in two lists)."""
        return found_pairs(self.scratch)

    def resolve(self) -> int:
        """The duplicate map (:meth:`Deduplicator.duplicates` in memory up to the exact
        limit; over the store and the dedup columns above it) → ``duplicates/s-NNNNN.parquet``,
        split by the shard of each duplicate's video. Returns the number of duplicates."""
        start = time.perf_counter()
        table = dedup_table(self.dedup_dir)
        if self.plan.exact:
            dup = exact_duplicates(self.dedup_dir, table, self.dedup)
        else:
            store = signature_store(self.dedup_dir)
            pairs = self.pairs()
            self.report.dedup["pairs"] = len(pairs)
            dup = list_duplicates(table, pairs, store, self.dedup)
        write_duplicates(self.scratch, table, dup, self.plan.shards)
        self.report.dedup["duplicates"] = len(dup)
        logger.info("corpus phase: %d duplicates of %d kept clips", len(dup), table.num_rows)
        self._timed("dedup", start)
        return len(dup)

    # -- 6. shards

    def shard_keys(self) -> list[tuple[str, int]]:
        """``(table, shard)`` of every shard that has rows."""
        return spilled_shards(self.scratch)

    def write_shard(self, key: tuple[str, int]) -> tuple[ShardInfo, dict[str, int]] | None:
        """Merge the chunks' sorted parts of one shard into ``_staging/`` (duplicates
        marked, stories given their clips' final status), a row group at a time; returns its
        manifest entry and counts (:func:`curate.shards.table_counts`), or ``None`` when no
        row is left (every story of the shard withdrawn as a copy)."""
        start = time.perf_counter()
        written = merge_shard(
            self.output, self.scratch, key, shard_count=self.plan.shards, budget=self.budget
        )
        self._timed("write", start)
        return written

    # -- 7. publish

    def publish(self, written: Iterable[tuple[ShardInfo, Mapping[str, int]] | None]) -> Path:
        """``_manifest.json`` over the written shards (see :func:`curate.shards.publish`),
        with the cut-off and the counts; the scratch folder goes (unless ``keep_scratch``)."""
        start = time.perf_counter()
        config = {**self.config, "cutoff": self.read_cutoff()}
        path, self.report.shards = shards.publish_written(
            self.output, written, config=config, counts=self.plan.counts
        )
        if not self.keep_scratch:
            remove_owned(self.scratch)
        self.report.manifest = str(path)
        self._timed("publish", start)
        return path

    # -- all of it, here

    def run(
        self,
        keep: Mapping[str, str],
        recaptioner: Any,
        *,
        manifest_failures: Sequence[Mapping[str, Any]] = (),
    ) -> CorpusReport:
        """Every step in this process (list groups searched by ``threads`` threads), with
        ``recaptioner`` (a :class:`curate.recaption.Recaptioner`, set up here)."""
        self.make_plan(keep, manifest_failures)
        for chunk in self.score_keys():
            self.chunk_scores(chunk)
        self.cutoff()
        for chunk in self.chunk_keys():
            self.chunk_prompts(chunk)
        self.bank()
        recaptioner.setup()
        try:
            for chunk in self.chunk_keys():
                self.recaption_chunk(chunk, recaptioner)
        finally:
            teardown = getattr(recaptioner, "teardown", None)
            if teardown is not None:
                teardown()
        groups = self.dedup_keys()
        if groups:
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                list(pool.map(self.search_group, groups))
        self.resolve()
        self.publish([self.write_shard(key) for key in self.shard_keys()])
        logger.info(
            "corpus phase: %s",
            ", ".join(f"{k} {v:.1f} s" for k, v in self.report.seconds.items()),
        )
        return self.report
