"""The corpus phase's plan and its memory budget: which record of each video the phase reads
(:func:`curate.shards.current_entry`), the work files split into chunks sized by
:class:`Budget` from the files' metadata, the output shard count, and whether dedup is the
exact search (:func:`plan_corpus`). The plan is written once, on the launcher, and every
later step reads it from the scratch folder (:class:`CorpusPlan`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.tables import KEPT

from .. import shards

#: the default memory setting of the corpus phase, in MiB
DEFAULT_MEMORY_MB = 1024
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
    #: kept clips of the chosen records: at most what enters dedup (decides ``exact``)
    dedup_clips: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CorpusPlan:
        return cls(**json.loads(text))


def plan_corpus(
    output: Path,
    keep: Mapping[str, str],
    *,
    budget: Budget,
    chunk_clips: int | None,
    exact_limit: int,
    rows_per_shard: int,
    counts: Mapping[str, int],
) -> CorpusPlan:
    """The plan over the current record of every video in ``keep`` (video id -> the
    fingerprint its record must have) in the work files of the run folder ``output``: chunks
    of ``chunk_clips`` clips (``None``: as many as ``budget`` allows), dedup exact up to
    ``exact_limit`` clips, ``rows_per_shard`` videos per output shard, ``counts`` carried
    into the manifest's counts."""
    files = [str(f) for f in shards.work_files(output)]
    index = shards.work_index(output)
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
    per_chunk = chunk_clips or budget.chunk_clips(clip_bytes)
    chunks: list[list[int]] = []
    size = 0
    for i, chosen in enumerate(rows):
        if not chosen:
            continue
        chosen.sort()
        clips = math.ceil(clips_in[i] * len(chosen) / max(rows_in[i], 1))
        if not chunks or size + clips > per_chunk:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += clips
    dedup_clips = sum(
        kept_clips(file, chosen, fallback=clips_in[i])
        for i, (file, chosen) in enumerate(zip(files, rows))
        if chosen
    )
    # exact or not is decided by the clips this run can deduplicate (the kept clips of the
    # chosen records), not by every clip in the work files (older records, other videos)
    exact = dedup_clips <= exact_limit
    return CorpusPlan(
        files=files,
        rows=rows,
        chunks=chunks,
        chunk_clips=per_chunk,
        clip_bytes=clip_bytes,
        done=done,
        shards=shards.shard_count(max(done, 1), rows_per_shard=rows_per_shard),
        work_clips=work_clips,
        exact=exact,
        dedup_clips=dedup_clips,
        counts={
            **counts,
            "videos_done": done,
            "pending": len(keep) - done,
            "dedup_exact": int(exact),
        },
    )


def kept_clips(file: str, rows: list[int], *, fallback: int) -> int:
    """Kept clips of the records at ``rows`` of a work file (one nested column read);
    ``fallback`` (the file's clips, an upper bound) where the column cannot be read, so a
    file of another layout never makes a large corpus look small enough for exact dedup."""
    column = "clips.list.element.status"
    try:
        table = pq.ParquetFile(file).read(columns=[column])
    except (KeyError, pa.ArrowInvalid):
        return fallback
    statuses = pc.list_flatten(table.column(0).take(pa.array(rows, pa.int64())))
    if len(statuses) == 0:
        return 0
    if pa.types.is_struct(statuses.type):
        statuses = pc.struct_field(statuses, "status")
    return int(pc.sum(pc.equal(statuses, KEPT)).as_py() or 0)
