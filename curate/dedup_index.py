"""Near-duplicate search that scales past memory: signatures on disk, an inverted-file index.

:mod:`curate.dedup` finds duplicate pairs in memory, which is right for a run of thousands of
clips. A corpus of millions of clips (WebVid-10M cuts into tens of millions) does not fit: a
900-dimensional float32 signature is 3.6 KB, so 1 M clips are 3.6 GB before any index. Here:

1. :class:`SignatureStore` keeps signatures on disk as float16 rows (appended in chunks as
   committed work streams by), so nothing holds the corpus in memory.
2. :func:`train_lists` trains k-means centroids (``faiss.Kmeans``, spherical) on a sample;
   :func:`assign_lists` streams the store once to assign every clip to its ``nprobe`` nearest
   centroids (the inverted lists of an IVF index) and appends each row to its lists' bucket
   files.
3. :func:`search_list` reads one list back whole (one sequential read) and searches it
   exactly (``faiss.IndexFlatIP`` range search); lists are independent, so they run in
   parallel (threads in :func:`ivf_pairs`, workers on a cluster in the corpus phase). A pair
   found in two lists is counted once. Each clip keeps its
   :data:`curate.dedup.MAX_NEIGHBOURS` nearest in a list, and of those found in its lists
   its nearest overall (:func:`curate.dedup.nearest_pairs`), as the exact search does.

Memory is bounded by ``memory_mb``: it sets the streaming chunk and caps the k-means sample;
the largest list is what must fit at once (lists are about ``n / n_lists`` rows; with the
default ``n_lists ≈ 2·√n`` a 1 M-clip list is ~500 rows, ×``nprobe``). Recall against exact
search is what :func:`recall_against_exact` measures, on a sample of query clips.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dedup import MAX_NEIGHBOURS, _undirected, at_least, nearest_pairs, range_neighbours

logger = logging.getLogger(__name__)

_ROW_DTYPE = np.float16  # the default: half the disk, recall measured


class SignatureStore:
    """An append-only matrix of unit signatures on disk (float16 rows, ``dim`` columns).

    Rows are read back in chunks (:meth:`chunks`) or by index (:meth:`rows`, or ``store[idx]``
    as for an array) with plain file reads, not a memory map, so reading never grows the
    process's resident memory past the rows in hand. ``dtype`` float32 keeps signatures exact
    (twice the disk), for a search whose results must equal an in-memory one.
    """

    def __init__(self, path: str | os.PathLike[str], dim: int, *, dtype: Any = _ROW_DTYPE) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
        self.path = Path(path)
        self.dim = int(dim)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        size = self.path.stat().st_size
        row_bytes = self.dim * self.dtype.itemsize
        if size % row_bytes:
            raise ValueError(
                f"{self.path}: {size} bytes is not a whole number of {self.dim}-wide rows "
                "(a torn write? delete the file and rebuild the store)"
            )
        self._rows = size // row_bytes
        self._row_bytes = row_bytes

    def __len__(self) -> int:
        return self._rows

    def append(self, signatures: np.ndarray) -> None:
        x = np.asarray(signatures, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) signatures, got shape {x.shape}")
        with self.path.open("ab") as f:
            f.write(np.ascontiguousarray(x, self.dtype).tobytes())
        self._rows += len(x)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float32 ``(n, dim)``."""
        start, stop = max(0, start), min(stop, self._rows)
        if stop <= start:
            return np.empty((0, self.dim), np.float32)
        with self.path.open("rb") as f:
            f.seek(start * self._row_bytes)
            raw = f.read((stop - start) * self._row_bytes)
        return np.frombuffer(raw, self.dtype).reshape(-1, self.dim).astype(np.float32)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """The rows at ``index`` (any order) as float32 ``(len(index), dim)``."""
        index = np.asarray(index, np.int64)
        out = np.empty((len(index), self.dim), np.float32)
        order = np.argsort(index, kind="stable")
        if len(index) and (index.min() < 0 or index.max() >= self._rows):
            raise IndexError(f"{self.path}: row index out of range 0..{self._rows - 1}")
        with self.path.open("rb") as f:
            for k in order:
                f.seek(int(index[k]) * self._row_bytes)
                out[k] = np.frombuffer(f.read(self._row_bytes), self.dtype)
        return out

    def __getitem__(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """``store[[3, 1, 7]]``: those rows, as an array would give them (for code written
        for an in-memory ``(n, dim)`` matrix, such as :func:`curate.dedup.consistent_pairs`)."""
        return self.rows(np.asarray(index, np.int64).reshape(-1))

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` pairs covering the store in order."""
        for start in range(0, self._rows, rows):
            yield start, self.read(start, start + rows)


@dataclass
class IvfReport:
    """What :func:`ivf_pairs` did: sizes, time split and the largest list."""

    clips: int
    n_lists: int
    nprobe: int
    sample: int
    chunk_rows: int
    largest_list: int
    pairs: int
    train_s: float = 0.0
    assign_s: float = 0.0
    search_s: float = 0.0


def default_lists(n: int) -> int:
    """About 2·√n inverted lists: lists of ~√n/2 rows keep the per-list search cheap while
    k-means (whose cost grows with the number of lists) stays a small share of the time."""
    return max(1, min(n, int(2 * math.sqrt(max(n, 1)))))


def _chunk_rows(dim: int, memory_mb: float) -> int:
    # a chunk in float32, its float16 source and faiss' distance table to the centroids
    return max(1024, int(memory_mb * 2**20 / 8 / (dim * 4)))


def list_count(n: int, n_lists: int | None = None) -> int:
    """The number of inverted lists for ``n`` signatures: ``n_lists``, or
    :func:`default_lists`, at most ``n``."""
    return max(1, min(n_lists or default_lists(n), n))


def train_lists(
    store: SignatureStore,
    n_lists: int,
    *,
    memory_mb: float = 1024.0,
    sample: int = 100_000,
    seed: int = 0,
) -> np.ndarray:
    """``(n_lists, dim)`` k-means centroids (spherical) trained on a random sample of the
    store: at most ``sample`` rows and a quarter of ``memory_mb``, at least 40 per list."""
    import faiss

    n = len(store)
    take = training_sample(n, store.dim, n_lists, memory_mb=memory_mb, sample=sample)
    picks = np.sort(np.random.default_rng(seed).choice(n, size=take, replace=False))
    km = faiss.Kmeans(store.dim, n_lists, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(store.rows(picks))
    return np.ascontiguousarray(km.centroids, np.float32)


def training_sample(
    n: int, dim: int, n_lists: int, *, memory_mb: float = 1024.0, sample: int = 100_000
) -> int:
    """How many rows :func:`train_lists` trains on."""
    return int(min(n, sample, max(40 * n_lists, memory_mb * 2**20 / 4 / (dim * 4))))


def _record_dtype(store: SignatureStore) -> np.dtype:
    # a bucket file holds (id int64, row) records, the row in the store's dtype
    return np.dtype([("id", "<i8"), ("v", store.dtype, store.dim)])


def list_path(folder: str | os.PathLike[str], key: int) -> Path:
    """The bucket file of inverted list ``key`` under ``folder``."""
    return Path(folder) / f"{key}.bin"


def assign_lists(
    store: SignatureStore,
    centroids: np.ndarray,
    folder: str | os.PathLike[str],
    *,
    nprobe: int = 2,
    memory_mb: float = 1024.0,
) -> np.ndarray:
    """Stream the store once and append every row to the bucket files of its ``nprobe``
    nearest centroids under ``folder`` (which must hold no older buckets); returns the size
    of every list."""
    import faiss

    lists = len(centroids)
    nprobe = max(1, min(nprobe, lists))
    index = faiss.IndexFlatIP(store.dim)
    index.add(np.ascontiguousarray(centroids, np.float32))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    record = _record_dtype(store)
    sizes = np.zeros(lists, np.int64)
    for start, x in store.chunks(_chunk_rows(store.dim, memory_mb)):
        _, keys = index.search(x, nprobe)
        ids = np.arange(start, start + len(x), dtype=np.int64)
        flat_keys = keys.reshape(-1)
        flat_ids = np.repeat(ids, nprobe)
        flat_rows = np.repeat(np.arange(len(x)), nprobe)
        order = np.argsort(flat_keys, kind="stable")
        bounds = np.flatnonzero(np.diff(flat_keys[order])) + 1
        for part in np.split(order, bounds):
            key = int(flat_keys[part[0]])
            rec = np.empty(len(part), dtype=record)
            rec["id"] = flat_ids[part]
            rec["v"] = x[flat_rows[part]]
            with list_path(out, key).open("ab") as f:
                f.write(rec.tobytes())
            sizes[key] += len(part)
    return sizes


def search_list(
    folder: str | os.PathLike[str], key: int, store: SignatureStore, threshold: float
) -> list[tuple[int, int, float]]:
    """Exact pairs ``(i, j, cosine)``, ``i < j``, cosine >= ``threshold``, among the rows of
    inverted list ``key`` (written by :func:`assign_lists` from ``store``), each row's
    :data:`curate.dedup.MAX_NEIGHBOURS` nearest (ties by store row, the canonical order)."""
    path = list_path(folder, key)
    if not path.exists():
        return []
    rec = np.fromfile(path, dtype=_record_dtype(store))
    if len(rec) < 2:
        return []
    return _pairs_in(rec["id"], rec["v"].astype(np.float32), threshold)


def ivf_pairs(
    store: SignatureStore,
    threshold: float,
    *,
    n_lists: int | None = None,
    nprobe: int = 2,
    memory_mb: float = 1024.0,
    sample: int = 100_000,
    workers: int = 2,
    seed: int = 0,
    work_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[tuple[int, int, float]], IvfReport]:
    """The pairs ``(i, j, cosine)``, ``i < j``, cosine >= ``threshold``, found within the
    ``nprobe`` nearest inverted lists of each clip (exact inside a list), each clip's
    :data:`curate.dedup.MAX_NEIGHBOURS` nearest (:func:`curate.dedup.nearest_pairs`; ties by
    store row)."""
    import time

    n = len(store)
    if n < 2:
        return [], IvfReport(n, 0, nprobe, 0, 0, 0, 0)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold!r}")
    lists = list_count(n, n_lists)
    nprobe = max(1, min(nprobe, lists))
    chunk = _chunk_rows(store.dim, memory_mb)
    take = training_sample(n, store.dim, lists, memory_mb=memory_mb, sample=sample)
    report = IvfReport(n, lists, nprobe, take, chunk, 0, 0)

    t0 = time.perf_counter()
    centroids = train_lists(store, lists, memory_mb=memory_mb, sample=sample, seed=seed)
    report.train_s = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="ivf-", dir=work_dir))
    try:
        t0 = time.perf_counter()
        sizes = assign_lists(store, centroids, tmp, nprobe=nprobe, memory_mb=memory_mb)
        report.assign_s = time.perf_counter() - t0
        report.largest_list = int(sizes.max())

        t0 = time.perf_counter()
        found: dict[tuple[int, int], float] = {}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for pairs in pool.map(
                lambda key: search_list(tmp, key, store, threshold), range(lists)
            ):
                for i, j, s in pairs:
                    found[(i, j)] = max(s, found.get((i, j), s))
        report.search_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = nearest_pairs((i, j, s) for (i, j), s in sorted(found.items()))
    report.pairs = len(out)
    logger.info(
        "ivf dedup: %d clips, %d lists (largest %d), %d pairs >= %.3f",
        n,
        lists,
        report.largest_list,
        len(out),
        threshold,
    )
    return out, report


def _pairs_in(ids: np.ndarray, x: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Exact pairs above ``threshold`` among rows ``x`` with global ``ids`` (the canonical
    order, which breaks ties): each row's :data:`curate.dedup.MAX_NEIGHBOURS` nearest."""
    ids = np.asarray(ids, np.int64)
    q, nbr, s = range_neighbours(x, threshold, neighbours=MAX_NEIGHBOURS, rank=ids)
    return _undirected(ids[q], ids[nbr], s)


def exact_neighbours(
    store: SignatureStore,
    queries: np.ndarray,
    threshold: float,
    *,
    memory_mb: float = 1024.0,
) -> set[tuple[int, int]]:
    """Every pair ``(min, max)`` between a query row and any row of the store with cosine >=
    ``threshold`` (brute force, the store streamed in chunks): the ground truth of recall."""
    q = store.rows(np.asarray(queries))
    qid = np.asarray(queries, np.int64)
    out: set[tuple[int, int]] = set()
    for start, x in store.chunks(_chunk_rows(store.dim, memory_mb)):
        sims = q @ x.T
        a, b = np.nonzero(sims >= at_least(threshold))
        for i, j in zip(qid[a], b + start):
            if i != j:
                out.add((int(min(i, j)), int(max(i, j))))
    return out


def recall_against_exact(
    store: SignatureStore,
    pairs: list[tuple[int, int, float]],
    threshold: float,
    *,
    queries: int = 1000,
    seed: int = 0,
    memory_mb: float = 1024.0,
) -> dict[str, float]:
    """Share of the exact pairs of ``queries`` random clips that ``pairs`` holds."""
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(len(store), size=min(queries, len(store)), replace=False))
    truth = exact_neighbours(store, q, threshold, memory_mb=memory_mb)
    qs = set(q.tolist())
    found = {(i, j) for i, j, _ in pairs if i in qs or j in qs}
    hit = len(truth & found)
    return {
        "queries": float(len(q)),
        "exact_pairs": float(len(truth)),
        "found_pairs": float(hit),
        "recall": hit / len(truth) if truth else 1.0,
        "false_pairs": float(len(found - truth)),
    }
