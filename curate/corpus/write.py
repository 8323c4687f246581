"""The corpus phase's shard step: one output shard of one table, its chunks' sorted parts
(:mod:`curate.corpus.spill`) merged a row group at a time (:mod:`curate.corpus.merge`) into
``OUT/_staging``, duplicates marked (:func:`_mark_duplicates`) and stories given their clips'
final status (:func:`_final_stories`), with the counts the manifest takes."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import ShardInfo
from schemas.io import rows_to_table, stamped_schema
from schemas.tables import DROPPED, DUPLICATE, KEPT

from .. import shards
from ..dedup import apply_duplicates, story_survives_dedup
from ..recaption import with_clip_status
from ..run_folder import STAGING_DIR
from .duplicates import duplicates_of
from .merge import _merge, _row_groups
from .plan import Budget
from .spill import SORT_KEYS


def spilled_shards(scratch: Path) -> list[tuple[str, int]]:
    """``(table, shard)`` of every shard that has rows."""
    keys = set()
    for table in SORT_KEYS:
        for part in (scratch / "spill" / table).glob("c-*-s-*.parquet"):
            keys.add((table, int(part.stem.rsplit("-", 1)[1])))
    order = list(SORT_KEYS)
    return sorted(keys, key=lambda k: (order.index(k[0]), k[1]))


def merge_shard(
    output: Path, scratch: Path, key: tuple[str, int], *, shard_count: int, budget: Budget
) -> tuple[ShardInfo, dict[str, int]] | None:
    """Merge the chunks' sorted parts of one shard (``key``: table and shard, of
    ``shard_count`` per table) into ``output``'s ``_staging/``, a row group at a time, with
    the buffers ``budget`` allows; returns its manifest entry and counts, or ``None`` when no
    row is left."""
    table, shard = key
    parts = sorted((scratch / "spill" / table).glob(f"c-*-s-{shard:05d}.parquet"))
    metas = [pq.ParquetFile(p).metadata for p in parts]
    rows_total = sum(m.num_rows for m in metas)
    raw = sum(m.row_group(g).total_byte_size for m in metas for g in range(m.num_row_groups))
    row_bytes = raw / max(rows_total, 1)
    batch = budget.merge_rows(len(parts), row_bytes)
    group_rows = budget.row_group_rows(row_bytes)
    dup = duplicates_of(scratch, shard) if table in ("clips", "stories") else {}
    dup_cache: dict[int, dict[str, str]] = {shard: dup}

    def duplicates_for(video_id: str) -> dict[str, str]:
        s = shards.shard_of(str(video_id), shard_count)
        if s not in dup_cache:
            dup_cache[s] = duplicates_of(scratch, s)
        return dup_cache[s]

    rel = f"{table}/{shards.shard_name(shard, shard_count)}"
    path = output / STAGING_DIR / rel
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
    if not written:
        tmp.unlink()
        return None
    os.replace(tmp, path)
    return ShardInfo(table=table, path=rel, rows=written), dict(counts)


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
        if not story_survives_dedup(row, dup, clips):
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
