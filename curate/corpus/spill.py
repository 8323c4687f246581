"""Spilled rows: what one chunk of the corpus phase re-captioned, written to the scratch
folder per table and output shard, sorted (``spill/TABLE/c-CHUNK-s-SHARD.parquet``), with its
kept clips' signatures and dedup columns (``dedup/c-CHUNK.sig`` and ``.parquet``). The
shard step merges the chunks' parts of a shard (:mod:`curate.corpus.merge`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.io import rows_to_table
from schemas.tables import STORIES_SCHEMA

from .. import shards
from ..dedup import DEDUP_COLUMNS, SIGNATURE_KEY
from ..dedup_index import SignatureStore
from .merge import _sorted
from .plan import CorpusPlan
from .scratch import _atomic_parquet, dedup_dir, part_path

#: the sort order of each table's rows within a shard
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "clips": ("video_id", "scene_index"),
    "stories": ("story_id",),
    "failures": ("input_id", "stage", "source_line"),
}
#: the column that decides each table's shard
SHARD_KEYS = {"clips": "video_id", "stories": "story_id", "failures": "input_id"}

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
#: rows buffered as Python dicts before they are turned into compact Arrow tables (at most;
#: a quarter of a chunk when chunks are smaller)
_FLUSH_ROWS = 2048


class _Spill:
    """One chunk's output: rows per table and shard, kept as compact Arrow tables and written
    sorted when the chunk ends; kept clips' signatures and dedup columns.

    ``scratch`` is the phase's scratch folder, ``part`` the chunk (the number its files
    carry), ``plan`` the phase's plan (its shard count and chunk size), ``dtype`` the
    signatures' dtype on disk."""

    def __init__(self, scratch: Path, part: int, *, plan: CorpusPlan, dtype: Any) -> None:
        self.scratch, self.part, self.plan, self.dtype = scratch, part, plan, dtype
        self._flush_rows = max(16, min(_FLUSH_ROWS, plan.chunk_clips // 4))
        self._rows: dict[tuple[str, int], list[dict]] = {}
        self._tables: dict[tuple[str, int], list[pa.Table]] = {}
        self._buffered = 0
        self._dedup: list[dict] = []
        self._signatures: list[np.ndarray] = []
        self._store: SignatureStore | None = None
        self.counts: Counter = Counter()

    def add(self, table: str, row: dict[str, Any]) -> None:
        shard = shards.shard_of(str(row[SHARD_KEYS[table]]), self.plan.shards)
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
                dedup_dir(self.scratch) / f"c-{self.part:05d}.sig", x.shape[1], dtype=self.dtype
            )
        self._store.append(x)
        self._signatures.clear()

    def close(self) -> None:
        self._flush()
        self._flush_signatures()
        for (table, shard), parts in self._tables.items():
            merged = _sorted(pa.concat_tables(parts), SORT_KEYS[table])
            _atomic_parquet(merged, part_path(self.scratch, table, self.part, shard))
        if self._dedup:
            meta = pa.Table.from_pylist(self._dedup, schema=DEDUP_COLUMNS)
            _atomic_parquet(meta, dedup_dir(self.scratch) / f"c-{self.part:05d}.parquet")


def _story_clips(clips: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{f.name: c.get(f.name) for f in _STORY_CLIP} for c in clips]
