"""The corpus phase's dedup step, over the signatures and dedup columns the chunks spilled
(``OUT/_corpus/dedup``): up to the exact limit the in-memory exact search
(:meth:`curate.dedup.Deduplicator.duplicates`, the same pairs as a small run always found);
above it inverted lists (:mod:`curate.dedup_index`) built over one signature store and
searched a list group at a time, each group one keyed task. Either way the result is the
duplicate map, split by the shard of each duplicate's video
(``duplicates/s-SHARD.parquet``), which the shard step reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import shards
from ..dedup import (
    DEDUP_COLUMNS,
    SIGNATURE_KEY,
    ClipRows,
    Deduplicator,
    duplicate_map,
    nearest_pairs,
)
from ..dedup_index import (
    SignatureStore,
    assign_lists,
    list_count,
    search_list,
    train_lists,
)
from .scratch import _atomic_json, _atomic_npy, _atomic_parquet

#: a list group of the inverted-list search is one keyed task; at most this many groups
_MAX_SEARCH_GROUPS = 256


def _width(meta: Path, dtype: np.dtype) -> int:
    rows = pq.ParquetFile(meta).metadata.num_rows
    return int(meta.with_suffix(".sig").stat().st_size // max(rows, 1) // dtype.itemsize)


def dedup_metas(dedup_dir: Path) -> list[Path]:
    """The chunks' dedup columns, in chunk order (each beside its ``.sig`` signatures)."""
    return sorted(dedup_dir.glob("c-*.parquet"))


def dedup_table(dedup_dir: Path) -> pa.Table:
    """Every kept clip's dedup columns (:data:`curate.dedup.DEDUP_COLUMNS`), in chunk order."""
    metas = dedup_metas(dedup_dir)
    if not metas:
        return DEDUP_COLUMNS.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=DEDUP_COLUMNS) for f in metas])


def clip_order(table: pa.Table) -> np.ndarray:
    """The row order of ``table`` by clip id: the canonical order of the inverted-list
    search's store and dedup columns."""
    order = pc.sort_indices(table, sort_keys=[("clip_id", "ascending")])
    return order.to_numpy().astype(np.int64)


def signature_store(dedup_dir: Path) -> SignatureStore | None:
    """The joined signature store of the inverted-list search (``None`` before it is built)."""
    path = dedup_dir / "signatures.sig"
    meta = dedup_dir / "signatures.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return SignatureStore(path, int(info["dim"]), dtype=info["dtype"])


def build_lists(
    scratch: Path, dedup_dir: Path, metas: list[Path], dedup: Deduplicator, *, memory_mb: int
) -> dict[str, Any] | None:
    """The chunks' signatures (``metas``) joined into one store in clip id order, centroids
    trained on a sample and every clip written to its lists (``scratch/lists``, their sizes
    in ``list_sizes.npy``). Returns what the search is (the report's ``dedup``), or ``None``
    when there are fewer than two clips to search."""
    dtype = np.dtype(np.float16)
    dim = None
    sources: list[tuple[Path, int]] = []
    for meta in metas:
        part = meta.with_suffix(".sig")
        rows = pq.ParquetFile(meta).metadata.num_rows
        width = part.stat().st_size // max(rows, 1) // dtype.itemsize
        if dim is None:
            dim = width
        elif width != dim:
            raise ValueError(f"{part}: signatures are {width} wide, earlier chunks' {dim}")
        sources.append((part, rows))
    assert dim is not None
    # the store's rows in clip id order (as :func:`list_duplicates` reads the dedup columns),
    # not in the order the chunks spilled them: the k-means sample, the lists and so the
    # pairs found are the same however the work was committed, split or resumed
    order = clip_order(pa.concat_tables([pq.read_table(m, columns=["clip_id"]) for m in metas]))
    starts = np.cumsum([0] + [rows for _, rows in sources]).astype(np.int64)
    maps = [
        np.memmap(part, dtype=dtype, mode="r", shape=(rows, dim)) if rows else None
        for part, rows in sources
    ]
    target = dedup_dir / "signatures.sig"
    target.unlink(missing_ok=True)
    block = max(1, (1 << 24) // max(dim * dtype.itemsize, 1))
    with target.open("ab") as out:
        for k in range(0, len(order), block):
            take = order[k : k + block]
            src = np.searchsorted(starts, take, side="right") - 1
            rows_out = np.empty((len(take), dim), dtype)
            for f in np.unique(src):
                hit = src == f
                source = maps[int(f)]
                assert source is not None
                rows_out[hit] = source[take[hit] - starts[f]]
            out.write(rows_out.tobytes())
    del maps
    for part, _ in sources:
        part.unlink()
    assert dim is not None
    _atomic_json({"dim": int(dim), "dtype": dtype.name}, dedup_dir / "signatures.json")
    store = signature_store(dedup_dir)
    assert store is not None
    n = len(store)
    if n < 2:
        return None
    lists = list_count(n, dedup.n_centroids)
    centroids = train_lists(store, lists, memory_mb=memory_mb, seed=dedup.seed)
    sizes = assign_lists(
        store,
        centroids,
        scratch / "lists",
        nprobe=dedup.nprobe,
        memory_mb=memory_mb,
    )
    _atomic_npy(sizes, scratch / "list_sizes.npy")
    return {
        "method": "inverted lists",
        "clips": n,
        "lists": lists,
        "nprobe": min(dedup.nprobe, lists),
        "largest_list": int(sizes.max()),
    }


def search_groups(lists: int) -> list[int]:
    """The list groups (keyed tasks) of a search over ``lists`` inverted lists."""
    return list(range(min(lists, _MAX_SEARCH_GROUPS)))


def search_list_group(scratch: Path, dedup_dir: Path, group: int, threshold: float) -> int:
    """Exact search inside every inverted list of ``group`` → ``pairs/g-NNNNN.npy``.
    Returns the number of pairs found."""
    store = signature_store(dedup_dir)
    assert store is not None
    sizes = np.load(scratch / "list_sizes.npy")
    groups = min(len(sizes), _MAX_SEARCH_GROUPS)
    found: list[tuple[int, int, float]] = []
    for key in range(group, len(sizes), groups):
        if sizes[key] > 1:
            found += search_list(scratch / "lists", key, store, threshold)
    pairs = np.array(found, dtype=[("i", "<i8"), ("j", "<i8"), ("s", "<f8")])
    _atomic_npy(pairs, scratch / "pairs" / f"g-{group:05d}.npy")
    return len(found)


def found_pairs(scratch: Path) -> list[tuple[int, int, float]]:
    """The pairs the list groups found, each once (a pair may sit in two lists), each clip's
    :data:`curate.dedup.MAX_NEIGHBOURS` nearest among them (store rows are in clip id
    order, the canonical order that breaks ties)."""
    found: dict[tuple[int, int], float] = {}
    for file in sorted((scratch / "pairs").glob("g-*.npy")):
        for i, j, s in np.load(file).tolist():
            found[(i, j)] = max(s, found.get((i, j), s))
    return nearest_pairs((i, j, s) for (i, j), s in sorted(found.items()))


def list_duplicates(
    table: pa.Table,
    pairs: list[tuple[int, int, float]],
    store: SignatureStore | None,
    dedup: Deduplicator,
) -> dict[str, str]:
    """The duplicate map over the store and the dedup columns (``table``, in chunk order as
    :func:`dedup_table` reads them; put in the store's clip id order here) from the pairs
    the list groups found."""
    rows = ClipRows(table.take(pa.array(clip_order(table))))
    return duplicate_map(rows, *dedup.matches(rows, pairs, store)) if pairs else {}


def exact_duplicates(dedup_dir: Path, table: pa.Table, dedup: Deduplicator) -> dict[str, str]:
    """The duplicate map of a small run: the in-memory search on float32 signatures, the same
    pairs as ever."""
    if table.num_rows < 2:
        return {}
    signatures = np.concatenate(
        [
            SignatureStore(
                meta.with_suffix(".sig"),
                _width(meta, np.dtype(np.float32)),
                dtype=np.float32,
            ).read(0, pq.ParquetFile(meta).metadata.num_rows)
            for meta in dedup_metas(dedup_dir)
        ]
    )
    rows = table.to_pylist()
    for row, signature in zip(rows, signatures):
        row[SIGNATURE_KEY] = signature
    rows.sort(key=lambda r: r["clip_id"])
    return dedup.duplicates(rows)


def write_duplicates(scratch: Path, table: pa.Table, dup: dict[str, str], shard_count: int) -> None:
    """The duplicate map ``dup`` → ``duplicates/s-NNNNN.parquet``, split by the shard of
    each duplicate's video (from the dedup columns, ``table``)."""
    if not dup:
        return
    ids = pa.array(list(dup), pa.string())
    hit = table.filter(pc.is_in(table.column("clip_id"), value_set=ids))
    video_of = dict(zip(hit.column("clip_id").to_pylist(), hit.column("video_id").to_pylist()))
    parts: dict[int, list[tuple[str, str]]] = {}
    for clip, original in dup.items():
        shard = shards.shard_of(str(video_of[clip]), shard_count)
        parts.setdefault(shard, []).append((clip, original))
    for shard, items in parts.items():
        clip_ids, originals = zip(*sorted(items))
        _atomic_parquet(
            pa.table({"clip_id": list(clip_ids), "duplicate_of": list(originals)}),
            scratch / "duplicates" / f"s-{shard:05d}.parquet",
        )


def duplicates_of(scratch: Path, shard: int) -> dict[str, str]:
    """The duplicates (clip id → the clip it copies) among the clips of ``shard``'s videos."""
    path = scratch / "duplicates" / f"s-{shard:05d}.parquet"
    if not path.exists():
        return {}
    t = pq.read_table(path)
    return dict(zip(t.column("clip_id").to_pylist(), t.column("duplicate_of").to_pylist()))
