"""The corpus phase, streamed: every committed video filtered, re-captioned, deduplicated and
written to shards, in memory bounded by a setting (``memory_mb``), not by the corpus' size.

The corpus phase needs the whole corpus for three decisions (a percentile cut-off, the prompt
bank, duplicates across videos) but never needs it in memory at once. :class:`CorpusPhase`
reads the committed work (``OUT/_work``) a chunk of work files at a time and keeps what later
steps need on disk, in its scratch folder ``OUT/_corpus``::

    plan ─► scores (per chunk) ─► cut-off ─► bank prompts (per chunk) ─► prompt bank
         ─► re-caption (per chunk): rows spilled per output shard, sorted; kept clips'
            signatures appended to a store with a compact table (dedup columns)
         ─► dedup: exact search (up to the exact limit), or inverted lists (per list group)
            ─► the video pass and union-find ─► the duplicate map, per shard
         ─► write shards (per shard: the chunks' sorted parts merged, row group by row group)
         ─► publish (_manifest.json, last)

Each step after the plan is keyed (a chunk, a list group, a shard) and reads and writes only
files of the run folder, so the same methods run one after another in one process
(:meth:`CorpusPhase.run`) or as Beam ``ParDo`` s on a cluster's workers
(:mod:`pipelines.transforms.corpus`), with the same result.

What stays in memory: one chunk of records (sized by ``memory_mb`` from the work files'
metadata), one work file at a time within it, one row group per shard writer and a batch per
merged part; besides that one float per clip (the scores of a percentile cut-off), a few dozen
bytes per kept clip (the dedup columns) and per video (the plan), and the duplicate map.

The decisions are the ones of :mod:`curate.filtering`, :mod:`curate.prompt_bank`,
:mod:`curate.recaption` and :mod:`curate.dedup`, called as everywhere else; below the exact
limit dedup is the in-memory exact search, so a small run's output is the same as before.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import RunManifest, ShardInfo
from schemas.io import rows_to_table, stamped_schema
from schemas.tables import DROPPED, DUPLICATE, KEPT, STORIES_SCHEMA

from . import shards
from .dedup import (
    DEDUP_COLUMNS,
    SIGNATURE_KEY,
    ClipRows,
    Deduplicator,
    apply_duplicates,
    duplicate_map,
    story_survives_dedup,
)
from .dedup_index import (
    SignatureStore,
    assign_lists,
    list_count,
    search_list,
    train_lists,
)
from .filtering import CaptionFilter
from .isolation import traceback_tail
from .prompt_bank import build_prompt_bank
from .recaption import with_clip_status
from .run_folder import CORPUS_DIR, STAGING_DIR, remove_owned
from .threshold import Threshold, scorable
from .work import failure_from_exception, joined_clips, rows_problem, table_row

logger = logging.getLogger(__name__)

#: the default memory setting of the corpus phase, in MiB
DEFAULT_MEMORY_MB = 1024
#: the sort order of each table's rows within a shard
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "clips": ("video_id", "scene_index"),
    "stories": ("story_id",),
    "failures": ("input_id", "stage", "source_line"),
}
#: the column that decides each table's shard
SHARD_KEYS = {"clips": "video_id", "stories": "story_id", "failures": "input_id"}

#: the extras held as arrays (not lists of Python floats) while a chunk is re-captioned
_ARRAY_EXTRAS = ("frame_embeddings", "scene_embedding", "dedup_signature")
#: what :func:`curate.recaption.with_clip_status` reads of a story's clips after dedup
_STORY_CLIP = pa.struct(
    [
        pa.field("clip_id", pa.string()),
        pa.field("start_frame", pa.int64()),
        pa.field("end_frame", pa.int64()),
        pa.field("fps", pa.float64()),
        pa.field("recaption", pa.string()),
        pa.field("recaption_source", pa.string()),
        pa.field("recaption_score", pa.float64()),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
    ]
)
#: a spilled story: its row and its clips (dedup decides their final status later)
_STORY_SPILL = pa.schema([*STORIES_SCHEMA, pa.field("_clips", pa.list_(_STORY_CLIP))])
#: a list group of the inverted-list search is one keyed task; at most this many groups
_MAX_SEARCH_GROUPS = 256
#: rows buffered as Python dicts before they are turned into compact Arrow tables (at most;
#: a quarter of a chunk when chunks are smaller)
_FLUSH_ROWS = 2048
#: the in-memory size of a clip record against its uncompressed Parquet size (Python
#: objects, the arrays of its extras, and its output rows until they are spilled)
_RECORD_EXPANSION = 4.0


@dataclass(frozen=True)
class Budget:
    """What ``memory_mb`` allows each step: the sizes that bound the corpus phase's memory.

    Half of it goes to the chunk being re-captioned (its records and its spilled rows), the
    dedup search gets all of it for its own buffers (:func:`curate.dedup_index.assign_lists`
    takes an eighth per streamed chunk), a shard writer a quarter (a batch per merged part
    and one row group).
    """

    memory_mb: int = DEFAULT_MEMORY_MB

    def __post_init__(self) -> None:
        if self.memory_mb < 16:
            raise ValueError(f"memory_mb must be >= 16, got {self.memory_mb!r}")

    @property
    def bytes(self) -> int:
        return self.memory_mb * 2**20

    def chunk_clips(self, clip_bytes: float) -> int:
        """Clips per chunk, a clip taking ``clip_bytes`` of memory while it is re-captioned."""
        return int(min(1_000_000, max(16, self.bytes / 2 / max(clip_bytes, 1.0))))

    def merge_rows(self, parts: int, row_bytes: float) -> int:
        """Rows read at a time from each of ``parts`` sorted parts merged into one shard."""
        return int(min(65_536, max(16, self.bytes / 8 / max(parts, 1) / max(row_bytes, 1.0))))

    def row_group_rows(self, row_bytes: float) -> int:
        """Rows per row group of a written shard."""
        return int(min(1_000_000, max(64, self.bytes / 8 / max(row_bytes, 1.0))))


@dataclass
class CorpusPlan:
    """What the corpus phase reads: the work files and, of each, the rows of the current
    records (:func:`curate.shards.current_entry`), split into chunks of files."""

    files: list[str]
    rows: list[list[int]]
    #: per chunk, the indices of its files
    chunks: list[list[int]]
    chunk_clips: int
    #: estimated memory of one clip record while it is re-captioned, in bytes
    clip_bytes: float
    #: videos with a current record; output shards per table; clips in all work files
    done: int
    shards: int
    work_clips: int
    exact: bool
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CorpusPlan:
        return cls(**json.loads(text))


@dataclass
class CorpusReport:
    """What a corpus phase did: seconds per step and the sizes that decided its memory."""

    seconds: dict[str, float] = field(default_factory=dict)
    chunks: int = 0
    chunk_clips: int = 0
    dedup: dict[str, Any] = field(default_factory=dict)
    shards: int = 0
    manifest: str | None = None


# --- reading committed work ---------------------------------------------------------------------


def _list_arrays(arr: pa.Array) -> list[Any]:
    """``list<float>`` or ``list<list<float>>`` per row → a float32 array per row (2-D for a
    list of equal-length lists, else a list of 1-D arrays), ``None`` for a null."""
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    offsets = arr.offsets.to_numpy()
    inner = arr.values
    if not pa.types.is_list(inner.type):
        values = inner.to_numpy(zero_copy_only=False)
        return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(arr))]
    mid = inner.offsets.to_numpy()
    values = inner.values.to_numpy(zero_copy_only=False)
    out: list[Any] = []
    for i in range(len(arr)):
        a, b = offsets[i], offsets[i + 1]
        lengths = np.diff(mid[a : b + 1])
        if not valid[i]:
            out.append(None)
        elif len(lengths) and (lengths == lengths[0]).all():
            out.append(values[mid[a] : mid[b]].reshape(len(lengths), int(lengths[0])))
        else:  # empty or ragged: a list of rows, as the record held them
            out.append([values[mid[k] : mid[k + 1]] for k in range(a, b)])
    return out


def _extras(column: pa.ChunkedArray) -> list[list[dict[str, Any]]]:
    """The ``clip_extras`` of each record: dicts whose float lists are float32 arrays."""
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy()
    flat = lists.flatten()  # every record's extras, in order
    names = [f.name for f in flat.type]
    children = dict(zip(names, flat.flatten()))
    values = {
        name: _list_arrays(child) if name in _ARRAY_EXTRAS else child.to_pylist()
        for name, child in children.items()
    }
    rows = [{name: values[name][k] for name in names} for k in range(len(flat))]
    valid = lists.is_valid().to_numpy(zero_copy_only=False)
    return [rows[offsets[i] : offsets[i + 1]] if valid[i] else [] for i in range(len(lists))]


def read_records(file: str, rows: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The records at ``rows`` of one work file, as the corpus phase takes them: the videos
    row, the clips with their extras joined (:func:`curate.work.joined_clips`; the extras'
    float lists as arrays) and the failures rows."""
    table = pq.ParquetFile(file).read().take(pa.array(list(rows), pa.int64()))
    ids = table.column("video_id").to_pylist()
    videos = table.column("video").to_pylist()
    clips = table.column("clips").to_pylist()
    failures = table.column("failures").to_pylist()
    extras = _extras(table.column("clip_extras"))
    del table
    for i, video_id in enumerate(ids):
        yield {
            "video_id": video_id,
            "video": videos[i],
            "clips": joined_clips({"clips": clips[i], "clip_extras": extras[i]}),
            "failures": failures[i] or [],
        }


def _read_light(file: str, rows: Sequence[int], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Some nested columns of the records at ``rows`` (``clips.list.element.status``), the
    clips joined with their extras."""
    table = pq.ParquetFile(file).read(columns=list(columns)).take(pa.array(list(rows), pa.int64()))
    data = table.to_pydict()
    out = []
    for i in range(table.num_rows):
        record = {k: data[k][i] for k in data}
        out.append({"clips": joined_clips(record)})
    return out


_SCORE_COLUMNS = ("clips.list.element.caption_score", "clips.list.element.status")
_PROMPT_COLUMNS = (
    "clips.list.element.clip_id",
    "clips.list.element.status",
    "clips.list.element.reason",
    "clips.list.element.caption_score",
    "clips.list.element.source_caption",
    "clip_extras.list.element.clip_id",
    "clip_extras.list.element.fragment",
)


# --- one video ----------------------------------------------------------------------------------


def filter_and_recaption(
    step: Any,
    record: Mapping[str, Any],
    cutoff: float | None,
    *,
    bank_error: BaseException | None = None,
) -> dict[str, Any]:
    """One committed record under the corpus cut-off, then re-captioned by ``step`` (a
    :class:`curate.recaption.Recaptioner`, its corpus bank set): ``{**record, "clips",
    "story", "failures"}``. A video that fails re-captioning (or whose rows no table takes)
    moves to the failures table whole: no video is in both (``bank_error``: the corpus bank
    could not be set, which fails every video that needed it)."""
    if not record["clips"]:
        return {**record, "story": None}
    clips = list(CaptionFilter.fitted(cutoff).process_all(record["clips"]))
    return recaption_filtered(step, {**record, "clips": clips}, bank_error=bank_error)


def recaption_filtered(
    step: Any, record: Mapping[str, Any], *, bank_error: BaseException | None = None
) -> dict[str, Any]:
    """Re-caption one record whose clips are filtered (see :func:`filter_and_recaption`)."""
    if not record["clips"]:
        return {**record, "story": None}
    video = record["video"]
    try:
        if bank_error is not None:
            raise bank_error
        clips, story = step.recaption_record(video, record["clips"])
    except Exception as exc:
        row = failure_from_exception(video, exc, stage="recaption", traceback=traceback_tail(exc))
        return {**record, "clips": [], "failures": [row], "story": None}
    problem = rows_problem(video, clips, story)
    if problem is not None:  # a value no table takes fails this video, not the shards
        row = failure_from_exception(
            video, None, stage="validate", error_type="InvalidValue", message=problem
        )
        return {**record, "clips": [], "failures": [row], "story": None}
    return {**record, "clips": clips, "story": story}


# --- spilled rows -------------------------------------------------------------------------------


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value)


def _sorted(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """``table`` in the order :func:`curate.shards.write_shard` sorts rows: by ``keys``,
    nulls first, stable (UTF-8 byte order is code point order)."""
    if table.num_rows < 2:
        return table
    order = pc.sort_indices(table, sort_keys=[(k, "ascending", "at_start") for k in keys])
    return table.take(order)


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _atomic_json(value: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _atomic_npy(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with tmp.open("wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


class _Spill:
    """One chunk's output: rows per table and shard, kept as compact Arrow tables and written
    sorted when the chunk ends; kept clips' signatures and dedup columns."""

    def __init__(self, phase: CorpusPhase, part: int, *, dtype: Any) -> None:
        self.phase, self.part, self.dtype = phase, part, dtype
        self._flush_rows = max(16, min(_FLUSH_ROWS, phase.plan.chunk_clips // 4))
        self._rows: dict[tuple[str, int], list[dict]] = {}
        self._tables: dict[tuple[str, int], list[pa.Table]] = {}
        self._buffered = 0
        self._dedup: list[dict] = []
        self._signatures: list[np.ndarray] = []
        self._store: SignatureStore | None = None
        self.counts: Counter = Counter()

    def add(self, table: str, row: dict[str, Any]) -> None:
        shard = shards.shard_of(str(row[SHARD_KEYS[table]]), self.phase.plan.shards)
        self._rows.setdefault((table, shard), []).append(row)
        self._buffered += 1
        if self._buffered >= self._flush_rows:
            self._flush()

    def add_signature(self, clip: Mapping[str, Any]) -> None:
        self._dedup.append({name: clip.get(name) for name in DEDUP_COLUMNS.names})
        self._signatures.append(np.asarray(clip[SIGNATURE_KEY], np.float32).reshape(-1))
        if len(self._signatures) >= self._flush_rows:
            self._flush_signatures()

    def _flush(self) -> None:
        for key, rows in self._rows.items():
            table, _ = key
            if table == "stories":
                t = pa.Table.from_pylist(rows, schema=_STORY_SPILL)
            else:
                # clips rows are checked with their video (rows_problem); failures rows here
                t = rows_to_table(rows, table, validate=table == "failures")
            self._tables.setdefault(key, []).append(t)
        self._rows.clear()
        self._buffered = 0

    def _flush_signatures(self) -> None:
        if not self._signatures:
            return
        x = np.stack(self._signatures)
        if self._store is None:
            self._store = SignatureStore(
                self.phase.dedup_dir / f"c-{self.part:05d}.sig", x.shape[1], dtype=self.dtype
            )
        self._store.append(x)
        self._signatures.clear()

    def close(self) -> None:
        self._flush()
        self._flush_signatures()
        for (table, shard), parts in self._tables.items():
            merged = _sorted(pa.concat_tables(parts), SORT_KEYS[table])
            _atomic_parquet(merged, self.phase.part_path(table, self.part, shard))
        if self._dedup:
            meta = pa.Table.from_pylist(self._dedup, schema=DEDUP_COLUMNS)
            _atomic_parquet(meta, self.phase.dedup_dir / f"c-{self.part:05d}.parquet")


def _story_clips(clips: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{f.name: c.get(f.name) for f in _STORY_CLIP} for c in clips]


# --- the phase ----------------------------------------------------------------------------------


class CorpusPhase:
    """The corpus phase of a run folder (see the module's docstring).

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
        return self.scratch / "dedup"

    def part_path(self, table: str, part: int, shard: int) -> Path:
        return self.scratch / "spill" / table / f"c-{part:05d}-s-{shard:05d}.parquet"

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

        files = [str(f) for f in shards.work_files(self.output)]
        index = shards.work_index(self.output)
        position = {f: i for i, f in enumerate(files)}
        rows: list[list[int]] = [[] for _ in files]
        done = 0
        for vid, fp in keep.items():
            entry = shards.current_entry(index.get(vid, ()), fp)
            if entry is not None:
                rows[position[entry.file]].append(entry.row)
                done += 1
        del index
        clips_in: list[int] = []
        rows_in: list[int] = []
        raw = 0
        for file in files:
            meta = pq.ParquetFile(file).metadata
            clips_in.append(shards.work_file_clips(meta))
            rows_in.append(meta.num_rows)
            raw += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        work_clips = sum(clips_in)
        clip_bytes = _RECORD_EXPANSION * raw / max(work_clips, 1) if work_clips else 65_536.0
        chunk_clips = self.chunk_clips or self.budget.chunk_clips(clip_bytes)
        chunks: list[list[int]] = []
        size = 0
        for i, chosen in enumerate(rows):
            if not chosen:
                continue
            chosen.sort()
            clips = math.ceil(clips_in[i] * len(chosen) / max(rows_in[i], 1))
            if not chunks or size + clips > chunk_clips:
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += clips
        exact = work_clips <= self.exact_limit
        plan = CorpusPlan(
            files=files,
            rows=rows,
            chunks=chunks,
            chunk_clips=chunk_clips,
            clip_bytes=clip_bytes,
            done=done,
            shards=shards.shard_count(max(done, 1), rows_per_shard=self.rows_per_shard),
            work_clips=work_clips,
            exact=exact,
            counts={
                **self.counts,
                "videos_done": done,
                "pending": len(keep) - done,
                "dedup_exact": int(exact),
            },
        )
        (self.scratch / "plan.json").write_text(plan.to_json())
        self.__dict__["plan"] = plan
        if manifest_failures:
            spill = _Spill(self, len(chunks), dtype=np.float32)
            for row in manifest_failures:
                spill.add("failures", dict(row))
            spill.close()
        self.report.chunks, self.report.chunk_clips = len(chunks), chunk_clips
        logger.info(
            "corpus phase: %d videos in %d work files, %d clips; %d chunks of <= %d clips "
            "(%d MB); dedup %s",
            done,
            len(files),
            work_clips,
            len(chunks),
            chunk_clips,
            self.budget.memory_mb,
            "exact" if exact else "by inverted lists",
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
        """The bank prompts of ``chunk``'s videos (:func:`build_prompt_bank` of each video's
        filtered clips) → ``prompts/c-NNNNN.json``."""
        start = time.perf_counter()
        cut = CaptionFilter.fitted(self.read_cutoff())
        prompts: set[str] = set()
        for file, rows in self._chunk_files(chunk):
            for record in _read_light(file, rows, _PROMPT_COLUMNS):
                if record["clips"]:
                    prompts.update(build_prompt_bank(cut.process_all(record["clips"])))
        _atomic_json(sorted(prompts), self.scratch / "prompts" / f"c-{chunk:05d}.json")
        self._timed("bank", start)
        return len(prompts)

    def bank(self) -> list[str]:
        """The corpus' prompt bank: every chunk's prompts, sorted → ``bank.json``."""
        start = time.perf_counter()
        prompts: set[str] = set()
        for file in sorted((self.scratch / "prompts").glob("c-*.json")):
            prompts.update(json.loads(file.read_text()))
        bank = sorted(prompts)
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
        spill = _Spill(self, chunk, dtype=np.float32 if self.plan.exact else np.float16)
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

    def _metas(self) -> list[Path]:
        return sorted(self.dedup_dir.glob("c-*.parquet"))

    def _dedup_table(self) -> pa.Table:
        metas = self._metas()
        if not metas:
            return DEDUP_COLUMNS.empty_table()
        return pa.concat_tables([pq.read_table(f, schema=DEDUP_COLUMNS) for f in metas])

    def _store(self) -> SignatureStore | None:
        path = self.dedup_dir / "signatures.sig"
        meta = self.dedup_dir / "signatures.json"
        if not meta.exists():
            return None
        info = json.loads(meta.read_text())
        return SignatureStore(path, int(info["dim"]), dtype=info["dtype"])

    def dedup_keys(self) -> list[int]:
        """Get the search ready: for the exact search nothing (it runs in :meth:`resolve`);
        for the inverted lists, the chunks' signatures joined into one store, centroids
        trained on a sample and every clip written to its lists. Returns the list groups to
        search (:meth:`search_group`)."""
        start = time.perf_counter()
        metas = self._metas()
        if self.plan.exact or not metas:
            self.report.dedup = {"method": "exact" if self.plan.exact else "none"}
            self._timed("dedup", start)
            return []
        dtype = np.dtype(np.float16)
        dim = None
        target = self.dedup_dir / "signatures.sig"
        target.unlink(missing_ok=True)
        with target.open("ab") as out:
            for meta in metas:
                part = meta.with_suffix(".sig")
                rows = pq.ParquetFile(meta).metadata.num_rows
                size = part.stat().st_size
                width = size // max(rows, 1) // dtype.itemsize
                if dim is None:
                    dim = width
                elif width != dim:
                    raise ValueError(f"{part}: signatures are {width} wide, earlier chunks' {dim}")
                with part.open("rb") as src:
                    while block := src.read(1 << 24):
                        out.write(block)
                part.unlink()
        assert dim is not None
        _atomic_json({"dim": int(dim), "dtype": dtype.name}, self.dedup_dir / "signatures.json")
        store = self._store()
        assert store is not None
        n = len(store)
        if n < 2:
            self._timed("dedup", start)
            return []
        lists = list_count(n, self.dedup.n_centroids)
        centroids = train_lists(store, lists, memory_mb=self.budget.memory_mb, seed=self.dedup.seed)
        sizes = assign_lists(
            store,
            centroids,
            self.scratch / "lists",
            nprobe=self.dedup.nprobe,
            memory_mb=self.budget.memory_mb,
        )
        _atomic_npy(sizes, self.scratch / "list_sizes.npy")
        self.report.dedup = {
            "method": "inverted lists",
            "clips": n,
            "lists": lists,
            "nprobe": min(self.dedup.nprobe, lists),
            "largest_list": int(sizes.max()),
        }
        self._timed("dedup", start)
        return list(range(min(lists, _MAX_SEARCH_GROUPS)))

    def search_group(self, group: int) -> int:
        """Exact search inside every inverted list of ``group`` → ``pairs/g-NNNNN.npy``."""
        start = time.perf_counter()
        store = self._store()
        assert store is not None
        sizes = np.load(self.scratch / "list_sizes.npy")
        groups = min(len(sizes), _MAX_SEARCH_GROUPS)
        found: list[tuple[int, int, float]] = []
        for key in range(group, len(sizes), groups):
            if sizes[key] > 1:
                found += search_list(self.scratch / "lists", key, store, self.dedup.threshold)
        pairs = np.array(found, dtype=[("i", "<i8"), ("j", "<i8"), ("s", "<f8")])
        _atomic_npy(pairs, self.scratch / "pairs" / f"g-{group:05d}.npy")
        self._timed("dedup", start)
        return len(found)

    def pairs(self) -> list[tuple[int, int, float]]:
        """The pairs the list groups found, each once (a pair may sit in two lists)."""
        found: dict[tuple[int, int], float] = {}
        for file in sorted((self.scratch / "pairs").glob("g-*.npy")):
            for i, j, s in np.load(file).tolist():
                found[(i, j)] = s
        return [(i, j, s) for (i, j), s in sorted(found.items())]

    def resolve(self) -> int:
        """The duplicate map (:meth:`Deduplicator.duplicates` in memory up to the exact
        limit; over the store and the dedup columns above it) → ``duplicates/s-NNNNN.parquet``,
        split by the shard of each duplicate's video. Returns the number of duplicates."""
        start = time.perf_counter()
        table = self._dedup_table()
        if self.plan.exact:
            dup = self._exact_duplicates(table)
        else:
            rows = ClipRows(table)
            store = self._store()
            pairs = self.pairs()
            self.report.dedup["pairs"] = len(pairs)
            dup = duplicate_map(rows, self.dedup.video_pairs(rows, pairs, store)) if pairs else {}
        if dup:
            ids = pa.array(list(dup), pa.string())
            hit = table.filter(pc.is_in(table.column("clip_id"), value_set=ids))
            video_of = dict(
                zip(hit.column("clip_id").to_pylist(), hit.column("video_id").to_pylist())
            )
            parts: dict[int, list[tuple[str, str]]] = {}
            for clip, original in dup.items():
                shard = shards.shard_of(str(video_of[clip]), self.plan.shards)
                parts.setdefault(shard, []).append((clip, original))
            for shard, items in parts.items():
                clip_ids, originals = zip(*sorted(items))
                _atomic_parquet(
                    pa.table({"clip_id": list(clip_ids), "duplicate_of": list(originals)}),
                    self.scratch / "duplicates" / f"s-{shard:05d}.parquet",
                )
        self.report.dedup["duplicates"] = len(dup)
        logger.info("corpus phase: %d duplicates of %d kept clips", len(dup), table.num_rows)
        self._timed("dedup", start)
        return len(dup)

    def _exact_duplicates(self, table: pa.Table) -> dict[str, str]:
        # the in-memory search of a small run, on float32 signatures: the same pairs as ever
        if table.num_rows < 2:
            return {}
        signatures = np.concatenate(
            [
                SignatureStore(
                    meta.with_suffix(".sig"),
                    _width(meta, np.dtype(np.float32)),
                    dtype=np.float32,
                ).read(0, pq.ParquetFile(meta).metadata.num_rows)
                for meta in self._metas()
            ]
        )
        rows = table.to_pylist()
        for row, signature in zip(rows, signatures):
            row[SIGNATURE_KEY] = signature
        rows.sort(key=lambda r: r["clip_id"])
        return self.dedup.duplicates(rows)

    def _duplicates_of(self, shard: int) -> dict[str, str]:
        path = self.scratch / "duplicates" / f"s-{shard:05d}.parquet"
        if not path.exists():
            return {}
        t = pq.read_table(path)
        return dict(zip(t.column("clip_id").to_pylist(), t.column("duplicate_of").to_pylist()))

    # -- 6. shards

    def shard_keys(self) -> list[tuple[str, int]]:
        """``(table, shard)`` of every shard that has rows."""
        keys = set()
        for table in SORT_KEYS:
            for part in (self.scratch / "spill" / table).glob("c-*-s-*.parquet"):
                keys.add((table, int(part.stem.rsplit("-", 1)[1])))
        order = list(SORT_KEYS)
        return sorted(keys, key=lambda k: (order.index(k[0]), k[1]))

    def write_shard(self, key: tuple[str, int]) -> tuple[ShardInfo, dict[str, int]] | None:
        """Merge the chunks' sorted parts of one shard into ``_staging/`` (duplicates
        marked, stories given their clips' final status), a row group at a time; returns its
        manifest entry and counts (:func:`curate.shards.table_counts`), or ``None`` when no
        row is left (every story of the shard withdrawn as a copy)."""
        start = time.perf_counter()
        table, shard = key
        parts = sorted((self.scratch / "spill" / table).glob(f"c-*-s-{shard:05d}.parquet"))
        metas = [pq.ParquetFile(p).metadata for p in parts]
        rows_total = sum(m.num_rows for m in metas)
        raw = sum(m.row_group(g).total_byte_size for m in metas for g in range(m.num_row_groups))
        row_bytes = raw / max(rows_total, 1)
        batch = self.budget.merge_rows(len(parts), row_bytes)
        group_rows = self.budget.row_group_rows(row_bytes)
        dup = self._duplicates_of(shard) if table in ("clips", "stories") else {}
        dup_cache: dict[int, dict[str, str]] = {shard: dup}

        def duplicates_for(video_id: str) -> dict[str, str]:
            s = shards.shard_of(str(video_id), self.plan.shards)
            if s not in dup_cache:
                dup_cache[s] = self._duplicates_of(s)
            return dup_cache[s]

        rel = f"{table}/{shards.shard_name(shard, self.plan.shards)}"
        path = self.output / STAGING_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        counts: Counter = Counter()
        written = 0
        schema = stamped_schema(table)
        with pq.ParquetWriter(tmp, schema) as writer:
            for group in _row_groups(_merge(parts, SORT_KEYS[table], batch), group_rows):
                if table == "clips":
                    out = _mark_duplicates(group, dup)
                elif table == "stories":
                    out = _final_stories(group, duplicates_for)
                else:
                    out = group
                if not out.num_rows:
                    continue
                out = out.select(schema.names).cast(schema)
                counts.update(_table_counts(table, out))
                writer.write_table(out, row_group_size=out.num_rows)
                written += out.num_rows
        self._timed("write", start)
        if not written:
            tmp.unlink()
            return None
        os.replace(tmp, path)
        return ShardInfo(table=table, path=rel, rows=written), dict(counts)

    # -- 7. publish

    def publish(self, written: Iterable[tuple[ShardInfo, Mapping[str, int]] | None]) -> Path:
        """``_manifest.json`` over the written shards (see :func:`curate.shards.publish`),
        with the cut-off and the counts; the scratch folder goes (unless ``keep_scratch``)."""
        start = time.perf_counter()
        counts: Counter = Counter(self.plan.counts)
        infos = []
        for item in written:
            if item is None:
                continue
            info, c = item
            infos.append(info)
            counts.update(c)
        config = {**self.config, "cutoff": self.read_cutoff()}
        manifest = RunManifest(config=config, counts=dict(counts), shards=infos)
        path = shards.publish(self.output, manifest)
        if not self.keep_scratch:
            remove_owned(self.scratch)
        self.report.shards = len(infos)
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


def _width(meta: Path, dtype: np.dtype) -> int:
    rows = pq.ParquetFile(meta).metadata.num_rows
    return int(meta.with_suffix(".sig").stat().st_size // max(rows, 1) // dtype.itemsize)


# --- merging sorted parts ----------------------------------------------------------------------


class _Cursor:
    """A sorted part read a batch at a time, with its rows' sort keys."""

    def __init__(self, path: Path, keys: Sequence[str], batch: int) -> None:
        self._batches = pq.ParquetFile(path).iter_batches(batch_size=batch)
        self._keys = list(keys)
        self.batch: pa.RecordBatch | None = None
        self.keys: list[tuple] = []
        self.pos = 0
        self.advance()

    def advance(self) -> None:
        self.batch, self.keys, self.pos = None, [], 0
        for batch in self._batches:
            if batch.num_rows:
                self.batch = batch
                cols = [batch.column(k).to_pylist() for k in self._keys]
                self.keys = [tuple(_sortable(v) for v in row) for row in zip(*cols)]
                return


def _merge(parts: Sequence[Path], keys: Sequence[str], batch: int) -> Iterator[pa.RecordBatch]:
    """The rows of sorted ``parts`` in one sorted order (ties: the earlier part first), as
    slices of their batches."""
    cursors = [_Cursor(p, keys, batch) for p in parts]
    heap = [(c.keys[0], i) for i, c in enumerate(cursors) if c.batch is not None]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        cur = cursors[i]
        assert cur.batch is not None
        end = len(cur.keys)
        if heap:
            # this part's rows up to the next part's head; of equal keys, the earlier part's
            bound, j = heap[0]
            cut = bisect_right if i < j else bisect_left
            end = max(cut(cur.keys, bound, lo=cur.pos), cur.pos + 1)
        yield cur.batch.slice(cur.pos, end - cur.pos)
        cur.pos = end
        if cur.pos >= len(cur.keys):
            cur.advance()
        if cur.batch is not None:
            heapq.heappush(heap, (cur.keys[cur.pos], i))


def _row_groups(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Batches gathered into tables of about ``rows`` rows."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(held).combine_chunks()
            held, count = [], 0
    if held:
        yield pa.Table.from_batches(held).combine_chunks()


def _mark_duplicates(table: pa.Table, dup: Mapping[str, str]) -> pa.Table:
    """:func:`curate.dedup.apply_duplicates` on a table of clips rows."""
    if not dup:
        return table
    ids = table.column("clip_id").to_pylist()
    status = table.column("status").to_pylist()
    hit = [dup.get(c) if s == KEPT else None for c, s in zip(ids, status)]
    if not any(h is not None for h in hit):
        return table
    mask = pa.array([h is not None for h in hit])
    for name, value in (
        ("status", pa.scalar(DROPPED)),
        ("reason", pa.scalar(DUPLICATE)),
        ("duplicate_of", pa.array(hit, pa.string())),
    ):
        i = table.schema.get_field_index(name)
        column = table.column(name).combine_chunks()
        table = table.set_column(i, name, pc.if_else(mask, value, column).cast(column.type))
    return table


def _final_stories(table: pa.Table, duplicates_for: Any) -> pa.Table:
    """Spilled stories → stories rows: withdrawn when every segment is a duplicate, each
    segment given its clips' final status (:func:`curate.recaption.with_clip_status`)."""
    out = []
    for row in table.to_pylist():
        clips = row.pop("_clips") or []
        dup = duplicates_for(row["video_id"]) if row.get("video_id") is not None else {}
        if not story_survives_dedup(row, dup):
            continue
        out.append(with_clip_status(row, apply_duplicates(clips, dup)))
    return rows_to_table(out, "stories")


def _table_counts(table: str, rows: pa.Table) -> Counter:
    """:func:`curate.shards.table_counts` of a table's rows, from its columns."""
    counts: Counter = Counter()
    counts[table] += rows.num_rows
    if table == "clips":
        for status, reason in zip(
            rows.column("status").to_pylist(), rows.column("reason").to_pylist()
        ):
            counts[f"clips_{status}"] += 1
            if reason:
                counts[f"clips_dropped_{reason}"] += 1
    elif table == "failures":
        for stage in rows.column("stage").to_pylist():
            counts[f"failures_stage_{stage}"] += 1
    return counts


__all__ = [
    "DEFAULT_MEMORY_MB",
    "Budget",
    "CorpusPhase",
    "CorpusPlan",
    "CorpusReport",
    "filter_and_recaption",
    "read_records",
    "recaption_filtered",
]
