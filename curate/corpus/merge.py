"""Sorted rows: the order rows take within an output shard (:func:`_sorted`, as
:func:`curate.shards.write_shard` sorts them) and the merge of a shard's sorted parts, one per
chunk, into that order a batch at a time (:func:`_merge`, :func:`_row_groups`)."""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value)


def _sorted(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """``table`` in the order :func:`curate.shards.write_shard` sorts rows: by ``keys``,
    nulls first, stable (UTF-8 byte order is code point order)."""
    if table.num_rows < 2:
        return table
    order = pc.sort_indices(table, sort_keys=[(k, "ascending", "at_start") for k in keys])
    return table.take(order)


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
