"""Near-duplicate clips: faiss search over clip signatures, union-find, keep the best member.

A clip's *signature* is what two copies of one scene share and two different scenes do not.
The clip's CLIP embedding alone is not enough: CLIP is built to ignore where things are, so
two scenes with the same content (a red circle on navy, in two unrelated videos) look alike to
it. The signature therefore joins, with weights, the mean CLIP embedding of the sampled frames
(what is shown) and a temporal pixel signature: small mean-centred thumbnails of the sampled
frames in order (where it is and how it moves). Re-encoded or resized copies keep both; a
trimmed copy shifts the sampled frames a little in time, which coarse thumbnails tolerate.

Search: exact inner product (``faiss.IndexFlatIP``) for small sets; for large ones,
:func:`assign_centroids` keys every clip by its nearest k-means centroid (trained on a sample)
and :func:`dedup_group` searches inside each key's group. The two halves are separate so that
a distributed pipeline can group by key between them.

Each clip keeps at most its :data:`MAX_NEIGHBOURS` nearest neighbours above the threshold
(ties broken by clip id order), so a shot shared by many videos (an intro, a logo card) gives
pairs and candidate video pairs in proportion to the clips, not to their square; union-find
still joins every copy of the shot.

Between two videos only scenes matched one to one and in order count (a repeated shot is
not a duplicate of its own video), and a group never holds two clips of one video. In each
connected group the member with the best caption score is kept (ties: the earliest clip id);
where two videos are copies of one another (a re-upload, a trimmed copy) the better video
keeps every scene they share, so one story stays whole. The others are dropped with reason
``duplicate`` and ``duplicate_of`` naming the kept clip.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import DROPPED, DUPLICATE, KEPT

from .step import Step, check_positive

logger = logging.getLogger(__name__)

SIGNATURE_KEY = "dedup_signature"


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def thumbnail_signature(frames: np.ndarray, *, size: int = 8) -> np.ndarray:
    """``(k, H, W, 3)`` uint8 → unit vector of the k frames' ``size``×``size`` RGB thumbnails,
    each frame mean-centred per channel so a global brightness or encoding shift cancels."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (k, H, W, 3) with k >= 1, got shape {frames.shape}")
    thumbs = np.stack(
        [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
    ).astype(np.float32)
    thumbs -= thumbs.mean(axis=(1, 2), keepdims=True)
    return _unit(thumbs.reshape(-1))


def clip_signature(
    record: Mapping[str, Any],
    *,
    pixel_weight: float = 0.5,
    thumb_size: int = 8,
    k: int | None = None,
) -> np.ndarray:
    """The dedup signature of a scored clip record (unit norm, float32).

    ``cos(sig_a, sig_b) = (1 - w) cos(clip_a, clip_b) + w cos(pix_a, pix_b)`` for
    ``w = pixel_weight``. Uses ``embedding`` (mean CLIP embedding) and ``frames`` (the sampled
    frames); with ``pixel_weight`` 0 only the embedding is needed. ``k`` resamples the frames
    to a fixed count so clips sampled with different counts stay comparable.
    """
    if not 0.0 <= pixel_weight <= 1.0:
        raise ValueError(f"pixel_weight must be in [0, 1], got {pixel_weight!r}")
    emb = record.get("embedding")
    if emb is None:
        raise ValueError(f"clip {record.get('clip_id')!r} has no embedding to deduplicate on")
    parts = [np.sqrt(1.0 - pixel_weight) * _unit(np.asarray(emb, np.float32))]
    if pixel_weight > 0:
        frames = record.get("frames")
        if frames is None or len(frames) == 0:
            raise ValueError(f"clip {record.get('clip_id')!r} has no sampled frames for dedup")
        frames = np.asarray(frames)
        if k is not None and len(frames) != k:
            pick = np.linspace(0, len(frames) - 1, k).round().astype(int)
            frames = frames[pick]
        parts.append(np.sqrt(pixel_weight) * thumbnail_signature(frames, size=thumb_size))
    # a uniform (black, single-colour) clip has no pixel part once mean-centred: renormalise
    # so the signature stays a unit vector and two copies of it still score 1
    return _unit(np.concatenate(parts))


# --- search ---------------------------------------------------------------------------------


#: a cosine this close below the threshold still counts: float32 inner products of unit
#: vectors are off by a few ULPs (an identical copy can score 0.99999994), so a threshold of
#: 1.0 must still catch exact copies
THRESHOLD_TOLERANCE = 1e-6


def at_least(threshold: float) -> float:
    """The lowest cosine accepted at ``threshold`` (:data:`THRESHOLD_TOLERANCE` below it)."""
    return float(threshold) - THRESHOLD_TOLERANCE


#: the most neighbours above the threshold a clip keeps: its nearest (by cosine at
#: :data:`RANK_DECIMALS`, ties by the canonical row order). A shot shared by K clips (an intro
#: or logo card) then gives O(K·MAX_NEIGHBOURS) pairs, not K²/2, and the video pass as many
#: candidate video pairs; union-find over these pairs still joins all K copies. Where no clip
#: has more neighbours than this, every pair above the threshold is kept.
MAX_NEIGHBOURS = 32

#: range search runs over blocks of queries with at most about this many results each
#: (queries × rows), so K identical clips do not make a K² result table at once
RANGE_BLOCK_RESULTS = 1 << 22


def _nearest_mask(
    q: np.ndarray, nbr: np.ndarray, s: np.ndarray, neighbours: int | None, rank: np.ndarray | None
) -> np.ndarray:
    """Which of the directed candidates ``q → nbr`` (cosine ``s``) are among the
    ``neighbours`` nearest of their query ``q``: by cosine at :data:`RANK_DECIMALS`, then by
    ``rank[nbr]`` (``nbr`` itself without ``rank``), so the choice does not depend on the
    order of the rows, and float noise in the scores (below the rounding) cannot change it."""
    keep = np.zeros(len(q), bool)
    if neighbours is None or len(q) == 0:
        keep[:] = True
        return keep
    tie = nbr if rank is None else rank[nbr]
    order = np.lexsort((tie, -np.round(s.astype(np.float64), RANK_DECIMALS), q))
    qs = q[order]
    starts = np.flatnonzero(np.r_[True, qs[1:] != qs[:-1]])
    runs = np.diff(np.r_[starts, len(qs)])
    place = np.arange(len(qs)) - np.repeat(starts, runs)
    keep[order[place < neighbours]] = True
    return keep


def _undirected(q: np.ndarray, nbr: np.ndarray, s: np.ndarray) -> list[tuple[int, int, float]]:
    """Directed pairs → ``(i, j, cosine)`` with ``i < j``, each once, sorted; the score of the
    ``i → j`` direction where both are present."""
    if len(q) == 0:
        return []
    lo, hi = np.minimum(q, nbr), np.maximum(q, nbr)
    order = np.lexsort((q > nbr, hi, lo))
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])]
    return list(
        zip(
            lo[first].tolist(),
            hi[first].tolist(),
            s[first].astype(np.float64).tolist(),
        )
    )


def nearest_pairs(
    pairs: Iterable[tuple[int, int, float]],
    *,
    neighbours: int | None = MAX_NEIGHBOURS,
    rank: np.ndarray | None = None,
) -> list[tuple[int, int, float]]:
    """The ``pairs`` ``(i, j, cosine)`` that are among the ``neighbours`` nearest of ``i`` or
    of ``j`` (as :func:`similar_pairs` chooses them; ``rank[i]`` is row ``i``'s place in the
    canonical order, the row index itself without it), sorted. For pairs merged from
    several searches (inverted lists, centroid groups): a clip's nearest overall are among
    its nearest in some search, so this gives what one search over all of them would."""
    arr = np.array([(int(i), int(j), float(s)) for i, j, s in pairs], dtype=np.float64)
    if not len(arr):
        return []
    a, b = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    i, j, s = np.minimum(a, b), np.maximum(a, b), arr[:, 2]
    # a pair found twice (in two lists) counts once, at its best score
    order = np.lexsort((-s, j, i))
    i, j, s = i[order], j[order], s[order]
    first = np.r_[True, (i[1:] != i[:-1]) | (j[1:] != j[:-1])]
    i, j, s = i[first], j[first], s[first]
    q, nbr, s = np.r_[i, j], np.r_[j, i], np.r_[s, s]
    keep = _nearest_mask(q, nbr, s, neighbours, rank)
    return _undirected(q[keep], nbr[keep], s[keep])


def range_neighbours(
    signatures: np.ndarray,
    threshold: float,
    *,
    neighbours: int | None = MAX_NEIGHBOURS,
    rank: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact range search of every row against the others: directed ``(query, neighbour,
    cosine)`` arrays (row positions) with cosine >= ``threshold`` (up to
    :data:`THRESHOLD_TOLERANCE`), each query's ``neighbours`` nearest (:func:`nearest_pairs`
    for ``rank``). Queries are searched in blocks of :data:`RANGE_BLOCK_RESULTS` results."""
    import faiss

    x = np.ascontiguousarray(signatures, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"signatures must be (n, d), got shape {x.shape}")
    n = len(x)
    empty = np.empty(0, np.int64)
    if n < 2:
        return empty, empty, np.empty(0, np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    low = at_least(threshold)
    # faiss' range search keeps scores strictly above the radius
    radius = float(np.nextafter(np.float32(low), -np.inf))
    block = n if n * n <= RANGE_BLOCK_RESULTS else max(1, RANGE_BLOCK_RESULTS // n)
    qs, ns, ss = [], [], []
    for start in range(0, n, block):
        lims, dist, ids = index.range_search(x[start : start + block], radius)
        lims = lims.astype(np.int64)
        q = np.repeat(np.arange(start, start + len(lims) - 1, dtype=np.int64), np.diff(lims))
        ids = ids.astype(np.int64)
        ok = (ids != q) & (dist >= low)
        q, ids, dist = q[ok], ids[ok], dist[ok]
        keep = _nearest_mask(q, ids, dist, neighbours, rank)
        qs.append(q[keep])
        ns.append(ids[keep])
        ss.append(dist[keep])
    return np.concatenate(qs), np.concatenate(ns), np.concatenate(ss)


def similar_pairs(
    signatures: np.ndarray,
    threshold: float,
    *,
    neighbours: int | None = MAX_NEIGHBOURS,
    rank: np.ndarray | None = None,
) -> list[tuple[int, int, float]]:
    """The pairs ``(i, j, cosine)`` with ``i < j`` and cosine >= ``threshold`` (exact search,
    up to :data:`THRESHOLD_TOLERANCE`) where ``j`` is among the ``neighbours`` nearest of
    ``i`` or ``i`` among those of ``j`` (:data:`MAX_NEIGHBOURS`; ``None``: every pair).
    Ties are broken by ``rank`` (row ``i``'s place in the canonical order; the row order
    itself without it), so the pairs do not depend on the order of the rows."""
    return _undirected(*range_neighbours(signatures, threshold, neighbours=neighbours, rank=rank))


def clip_rank(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Each row's place in clip id order: the canonical order that breaks ties between
    equally near neighbours (:func:`similar_pairs`)."""
    order = sorted(range(len(rows)), key=lambda i: str(rows[i].get("clip_id")))
    rank = np.empty(len(rows), np.int64)
    rank[order] = np.arange(len(rows), dtype=np.int64)
    return rank


def train_centroids(
    signatures: np.ndarray,
    *,
    n_centroids: int,
    sample: int = 50_000,
    seed: int = 0,
    niter: int = 20,
) -> np.ndarray:
    """k-means centroids (``faiss.Kmeans``, spherical) trained on a random sample."""
    import faiss

    check_positive("n_centroids", n_centroids)
    x = np.ascontiguousarray(signatures, dtype=np.float32)
    if len(x) < n_centroids:
        raise ValueError(f"need at least n_centroids={n_centroids} signatures, got {len(x)}")
    rng = np.random.default_rng(seed)
    if len(x) > sample:
        x = x[rng.choice(len(x), size=sample, replace=False)]
    km = faiss.Kmeans(
        x.shape[1], n_centroids, niter=niter, seed=seed, spherical=True, verbose=False
    )
    km.train(x)
    return np.asarray(km.centroids, np.float32)


def assign_centroids(
    signatures: np.ndarray, centroids: np.ndarray, *, nprobe: int = 1
) -> np.ndarray:
    """Key each signature by its nearest centroid: ``(n,)`` int64 (``nprobe`` = 1), or
    ``(n, nprobe)`` keys: a clip sent to its ``nprobe`` nearest groups is compared across
    cluster borders, where near-duplicates straddling a border would otherwise be missed."""
    import faiss

    check_positive("nprobe", nprobe)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    _, keys = index.search(np.ascontiguousarray(signatures, np.float32), nprobe)
    return keys[:, 0].astype(np.int64) if nprobe == 1 else keys.astype(np.int64)


# --- resolving groups ----------------------------------------------------------------------


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return [g for g in out.values() if len(g) > 1]


#: caption scores are compared at this many decimals when choosing a group's kept member: two
#: copies of one scene score alike, and float noise (CLIP batches differ with how a run was
#: split, after a resume say) must not decide which one is kept
RANK_DECIMALS = 4


def _rank_key(row: Mapping[str, Any]) -> tuple:
    # best first: kept before dropped, then caption score, then longer, then clip id
    score = row.get("caption_score")
    score = -1e9 if score is None else round(float(score), RANK_DECIMALS)
    length = int(row.get("end_frame", 0)) - int(row.get("start_frame", 0))
    return (row.get("status") == DROPPED, -score, -length, str(row.get("clip_id")))


def _video_ranks(rows: Sequence[Mapping[str, Any]], videos: Iterable[str]) -> dict[str, tuple]:
    """Rank of each of ``videos`` among copies of one another, best first: more kept scenes
    (a trimmed copy has fewer), then the mean caption score (at :data:`RANK_DECIMALS`), then
    more frames, then the video id. Ranked once per video, so a copy pair's winner is the
    same for every scene they share."""
    wanted = set(videos)
    if not wanted:
        return {}
    members: dict[str, list[Mapping[str, Any]]]
    if isinstance(rows, ClipRows):
        members = {v: [rows[i] for i in idx] for v, idx in rows.by_video(wanted).items()}
    else:
        members = defaultdict(list)
        for r in rows:
            if r.get("video_id") in wanted:
                members[r["video_id"]].append(r)
    out = {}
    for v in wanted:
        kept = [r for r in members.get(v, ()) if r.get("status") != DROPPED]
        scores = [float(r["caption_score"]) for r in kept if r.get("caption_score") is not None]
        mean = round(sum(scores) / len(scores), RANK_DECIMALS) if scores else -1e9
        frames = sum(int(r.get("end_frame", 0)) - int(r.get("start_frame", 0)) for r in kept)
        out[v] = (-len(kept), -mean, -frames, str(v))
    return out


def duplicate_map(
    rows: Sequence[Mapping[str, Any]],
    pairs: Iterable[tuple[int, int, float]],
    copies: Iterable[tuple[str, str]] = (),
) -> dict[str, str]:
    """``{clip_id: duplicate_of}`` over the duplicate ``pairs`` of ``rows``, touching only
    the rows that are in a pair, so a corpus of millions of clips (``rows`` a
    :class:`ClipRows`) is resolved without a dict per clip.

    Pairs join groups (union-find), strongest first (then by clip ids, so the order of the
    rows does not matter); a pair that would put two clips of one video in a group is refused:
    a video's scenes are never duplicates of one another. ``copies`` are video pairs that the
    video pass found to be copies (one entirely inside the other, :func:`consistent_matches`):
    in a group holding clips of both, the clip of the better video (:func:`_video_ranks`)
    stands for both, so a re-upload and its original do not split their scenes between them.
    Among what remains, the best clip (:func:`_rank_key`) is kept and the others point to it.
    """
    pairs = list(pairs)
    info: dict[int, Mapping[str, Any]] = {}
    for i, j, _ in pairs:
        for k in (int(i), int(j)):
            if k not in info:
                info[k] = rows[k]

    def video(k: int) -> Any:
        v = info[k].get("video_id")
        return ("", k) if v is None else v  # no video: a clip of its own

    def cid(k: int) -> str:
        return str(info[k].get("clip_id"))

    parent: dict[int, int] = {k: k for k in info}
    videos: dict[int, set] = {k: {video(k)} for k in info}

    def find(k: int) -> int:
        root = k
        while parent[root] != root:
            root = parent[root]
        while parent[k] != root:
            parent[k], k = root, parent[k]
        return root

    ordered = sorted(
        ((int(i), int(j), float(sim)) for i, j, sim in pairs),
        key=lambda p: (
            -round(p[2], RANK_DECIMALS),
            min(cid(p[0]), cid(p[1])),
            max(cid(p[0]), cid(p[1])),
        ),
    )
    for i, j, _ in ordered:
        a, b = find(i), find(j)
        if a == b or videos[a] & videos[b]:
            continue  # already one group, or two clips of one video would share it
        if len(videos[a]) < len(videos[b]):
            a, b = b, a
        parent[b] = a
        videos[a] |= videos.pop(b)
    groups: dict[int, list[int]] = defaultdict(list)
    for k in info:
        groups[find(k)].append(k)

    copied = [tuple(c) for c in copies]
    rank = _video_ranks(rows, {v for c in copied for v in c})
    beaten: dict[Any, set] = defaultdict(set)  # video -> the better videos it copies
    for va, vb in copied:
        if va != vb:
            lo, hi = sorted((va, vb), key=lambda v: rank[v])
            beaten[hi].add(lo)

    out: dict[str, str] = {}
    for group in groups.values():
        if len(group) < 2:
            continue
        present = {video(k) for k in group}
        # a clip of a video copying a better video present here gives way to it
        standing = [k for k in group if not (beaten.get(video(k), set()) & present)]
        best = min(standing, key=lambda k: _rank_key(info[k]))
        for k in group:
            if k != best:
                out[cid(k)] = cid(best)
    return out


def resolve_duplicates(
    rows: Sequence[Mapping[str, Any]],
    pairs: Iterable[tuple[int, int, float]],
    copies: Iterable[tuple[str, str]] = (),
) -> list[dict]:
    """The rows with :func:`duplicate_map` applied: each group keeps one member, the rest
    point to it (``duplicate_of``) and are dropped as duplicates."""
    out = [dict(r) for r in rows]
    dup = duplicate_map(out, pairs, copies)
    for row in out:
        original = dup.get(str(row.get("clip_id")))
        if original is None:
            continue
        row["duplicate_of"] = original
        if row.get("status") != DROPPED:
            row["status"], row["reason"] = DROPPED, DUPLICATE
    return out


#: what dedup keeps of a clip besides its signature (:func:`dedup_row`), as columns
DEDUP_COLUMNS = pa.schema(
    [
        pa.field("clip_id", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("scene_index", pa.int64()),
        pa.field("caption_score", pa.float64()),
        pa.field("status", pa.string()),
        pa.field("start_frame", pa.int64()),
        pa.field("end_frame", pa.int64()),
    ]
)


class ClipRows(Sequence[dict]):
    """Dedup rows (:data:`DEDUP_COLUMNS`, no signatures) held as Arrow columns: a few dozen
    bytes a clip where a list of dicts takes hundreds. ``rows[i]`` builds row ``i``'s dict;
    :meth:`by_video` finds a video's rows without a pass in Python."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table.select(DEDUP_COLUMNS.names).combine_chunks()
        self._columns = [self.table.column(n) for n in DEDUP_COLUMNS.names]
        self._videos: tuple[dict[str, int], np.ndarray] | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    @overload
    def __getitem__(self, i: int) -> dict: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict]: ...
    def __getitem__(self, i: int | slice) -> dict | list[dict]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        return {n: c[int(i)].as_py() for n, c in zip(DEDUP_COLUMNS.names, self._columns)}

    def by_video(self, videos: Iterable[str]) -> dict[str, list[int]]:
        """The row indices of each of ``videos`` (in row order)."""
        if self._videos is None:
            encoded = pc.dictionary_encode(self.table.column("video_id")).combine_chunks()
            names = encoded.dictionary.to_pylist()
            codes = encoded.indices.to_numpy(zero_copy_only=False)
            self._videos = ({v: k for k, v in enumerate(names)}, codes)
        lookup, codes = self._videos
        wanted = {v: lookup[v] for v in videos if v in lookup}
        if not wanted:
            return {}
        hits = np.flatnonzero(np.isin(codes, list(wanted.values())))
        out: dict[str, list[int]] = {v: [] for v in wanted}
        names_of = {k: v for v, k in wanted.items()}
        for i, code in zip(hits.tolist(), codes[hits].tolist()):
            out[names_of[code]].append(i)
        return out


def consistent_matches(
    rows: Sequence[Mapping[str, Any]],
    pairs: Iterable[tuple[int, int, float]],
    signatures: Any,
    *,
    threshold: float,
    relaxed_threshold: float,
) -> tuple[list[tuple[int, int, float]], list[tuple[str, str]]]:
    """Video-level consistency: duplicate videos are copies of whole videos.

    Pairs above ``threshold`` between two videos make those videos duplicate candidates; the
    scenes of two such videos are then matched one to one, in order (:func:`_align`), down to
    ``relaxed_threshold`` (a trimmed copy's first and last scenes lose frames, so they match
    less well than the untouched middle ones). Only those matches are duplicate pairs: a
    shot repeated inside one video matches one scene of the other video, not every one. Pairs
    inside one video are ignored: scenes of one video that look alike are a repeated shot,
    not a duplicate.

    Returns the pairs and the *copies*: the candidate video pairs whose match covers every
    scene of one of the two (a re-upload, or a trimmed copy), for :func:`duplicate_map`.

    ``signatures`` is an ``(n, dim)`` array or anything indexed like one by a list of rows
    (a :class:`curate.dedup_index.SignatureStore`): only the two videos' scenes are read for
    each candidate pair.
    """
    strong = [(i, j, s) for i, j, s in pairs if rows[i]["video_id"] != rows[j]["video_id"]]
    video_pairs = sorted(
        {tuple(sorted((rows[i]["video_id"], rows[j]["video_id"]))) for i, j, _ in strong}
    )
    needed = {v for pair in video_pairs for v in pair}
    if isinstance(rows, ClipRows):
        by_video = rows.by_video(needed)
    else:
        by_video = defaultdict(list)
        for i, r in enumerate(rows):
            if r["video_id"] in needed:
                by_video[r["video_id"]].append(i)

    def scene_order(i: int) -> tuple:
        r = rows[i]
        return (r.get("scene_index", 0), str(r.get("clip_id")))

    accepted: dict[tuple[int, int], float] = {}
    copies: list[tuple[str, str]] = []
    for va, vb in video_pairs:
        a = sorted(by_video[va], key=scene_order)
        b = sorted(by_video[vb], key=scene_order)
        sims = np.asarray(signatures[a] @ signatures[b].T)
        # monotone alignment of the two scene lists (longest chain of in-order matches)
        matched = _align(sims, relaxed_threshold)
        for ia, ib in matched:
            key = (min(a[ia], b[ib]), max(a[ia], b[ib]))
            accepted[key] = max(accepted.get(key, -np.inf), float(sims[ia, ib]))
        if matched and len(matched) in (len(a), len(b)):
            copies.append((va, vb))
    return [(i, j, s) for (i, j), s in sorted(accepted.items())], copies


def consistent_pairs(
    rows: Sequence[Mapping[str, Any]],
    pairs: Iterable[tuple[int, int, float]],
    signatures: Any,
    *,
    threshold: float,
    relaxed_threshold: float,
) -> list[tuple[int, int, float]]:
    """The duplicate pairs of :func:`consistent_matches` (without the copies)."""
    return consistent_matches(
        rows, pairs, signatures, threshold=threshold, relaxed_threshold=relaxed_threshold
    )[0]


def _align(sims: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Order-preserving matching of rows to columns maximising the summed similarity of
    matches above ``threshold`` (dynamic programming, as in sequence alignment)."""
    n, m = sims.shape
    gain = np.where(sims >= at_least(threshold), sims, -np.inf)
    best = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best[i, j] = max(
                best[i - 1, j], best[i, j - 1], best[i - 1, j - 1] + gain[i - 1, j - 1]
            )
    out, i, j = [], n, m
    while i > 0 and j > 0:
        if best[i, j] == best[i - 1, j]:
            i -= 1
        elif best[i, j] == best[i, j - 1]:
            j -= 1
        else:
            out.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return out[::-1]


class Deduplicator(Step[Any, dict]):
    """Mark near-duplicate clips of a run (``process_all``) or of one key's group.

    Settings: ``threshold`` (signature cosine for a duplicate pair), ``relaxed_threshold``
    (for the other scenes of two videos already found to be copies; ``None`` disables the
    video-level pass), ``pixel_weight`` / ``thumb_size`` / ``k`` (the signature, see
    :func:`clip_signature`), ``exact_limit`` (up to this many clips, one exact search; above,
    k-means with ``n_centroids`` (default ~sqrt(n)) and ``nprobe`` groups per clip).
    """

    stage = "dedup"

    def __init__(
        self,
        *,
        threshold: float = 0.95,
        relaxed_threshold: float | None = 0.85,
        pixel_weight: float = 0.5,
        thumb_size: int = 8,
        k: int = 4,
        exact_limit: int = 20_000,
        n_centroids: int | None = None,
        nprobe: int = 2,
        seed: int = 0,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold!r}")
        if relaxed_threshold is not None and not -1.0 <= relaxed_threshold <= threshold:
            raise ValueError(
                f"relaxed_threshold must be in [-1, threshold={threshold}], got {relaxed_threshold!r}"
            )
        if not 0.0 <= pixel_weight <= 1.0:
            raise ValueError(f"pixel_weight must be in [0, 1], got {pixel_weight!r}")
        check_positive("thumb_size", thumb_size)
        check_positive("k", k)
        check_positive("exact_limit", exact_limit)
        if n_centroids is not None:
            check_positive("n_centroids", n_centroids)
        check_positive("nprobe", nprobe)
        self.threshold = float(threshold)
        self.relaxed_threshold = relaxed_threshold
        self.pixel_weight = float(pixel_weight)
        self.thumb_size = int(thumb_size)
        self.k = int(k)
        self.exact_limit = int(exact_limit)
        self.n_centroids = n_centroids
        self.nprobe = int(nprobe)
        self.seed = int(seed)

    @classmethod
    def at(cls, threshold: float, **settings: Any) -> Deduplicator:
        """A deduplicator at ``threshold`` whose relaxed threshold (default 0.85, for the
        other scenes of two videos found to be copies) is capped at ``threshold``."""
        relaxed = settings.pop("relaxed_threshold", 0.85)
        if relaxed is not None:
            relaxed = min(relaxed, threshold)
        return cls(threshold=threshold, relaxed_threshold=relaxed, **settings)

    def signature(self, record: Mapping[str, Any]) -> np.ndarray:
        sig = record.get(SIGNATURE_KEY)
        if sig is not None:
            return np.asarray(sig, np.float32)
        return clip_signature(
            record, pixel_weight=self.pixel_weight, thumb_size=self.thumb_size, k=self.k
        )

    def with_signature(self, record: Mapping[str, Any]) -> dict:
        """``record`` plus its ``dedup_signature`` (a list), computed while frames are at hand."""
        out = dict(record)
        out[SIGNATURE_KEY] = self.signature(record).tolist()
        return out

    def matches(
        self,
        rows: Sequence[Mapping[str, Any]],
        pairs: Iterable[tuple[int, int, float]],
        signatures: Any,
    ) -> tuple[list[tuple[int, int, float]], list[tuple[str, str]]]:
        """The duplicate pairs among ``rows`` given the ``pairs`` above the threshold, and the
        video pairs that are copies (:func:`consistent_matches`; without a relaxed threshold
        scenes are matched at the threshold itself). ``signatures`` as
        :func:`consistent_matches` takes them."""
        relaxed = self.threshold if self.relaxed_threshold is None else self.relaxed_threshold
        return consistent_matches(
            rows, pairs, signatures, threshold=self.threshold, relaxed_threshold=relaxed
        )

    def video_pairs(
        self,
        rows: Sequence[Mapping[str, Any]],
        pairs: Iterable[tuple[int, int, float]],
        signatures: Any,
    ) -> list[tuple[int, int, float]]:
        """The duplicate pairs of :meth:`matches` (without the copies)."""
        return self.matches(rows, pairs, signatures)[0]

    def dedup_group(self, rows: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Mark duplicates among ``rows`` (one centroid key's group, or a whole small run)."""
        if not rows:
            return []
        sigs = np.stack([self.signature(r) for r in rows])
        pairs = similar_pairs(sigs, self.threshold, rank=clip_rank(rows))
        return resolve_duplicates(rows, *self.matches(rows, pairs, sigs))

    def duplicates(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """``{clip_id: duplicate_of}`` among ``rows`` (one group; see :meth:`dedup_group`)."""
        if len(rows) < 2:
            return {}
        sigs = np.stack([self.signature(r) for r in rows])
        pairs = similar_pairs(sigs, self.threshold, rank=clip_rank(rows))
        return duplicate_map(rows, *self.matches(rows, pairs, sigs))

    def assign_centroids(self, signatures: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        return assign_centroids(signatures, centroids, nprobe=self.nprobe)

    def process(self, record: Any) -> Iterator[dict]:
        """One group of rows (e.g. all clips with one centroid key) → the same rows, marked."""
        rows = [record] if isinstance(record, Mapping) else list(record)
        yield from self.dedup_group(rows)

    def process_all(self, records: Iterable[Mapping[str, Any]]) -> Iterator[dict]:
        """Deduplicate a whole run: exact search when small, centroid groups when large."""
        rows = list(records)
        if len(rows) <= self.exact_limit:
            yield from self.dedup_group(rows)
            return
        sigs = np.stack([self.signature(r) for r in rows])
        n_centroids = self.n_centroids or max(2, int(np.sqrt(len(rows))))
        # trained in clip id order, so the centroids do not depend on the order of the rows
        rank = clip_rank(rows)
        canonical = np.argsort(rank)
        centroids = train_centroids(sigs[canonical], n_centroids=n_centroids, seed=self.seed)
        keys = assign_centroids(sigs, centroids, nprobe=self.nprobe).reshape(len(rows), -1)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, ks in enumerate(keys):
            for key in ks:
                groups[int(key)].append(i)
        pairs: set[tuple[int, int, float]] = set()
        for members in groups.values():
            sub = sigs[members]
            for a, b, s in similar_pairs(sub, self.threshold, rank=rank[members]):
                i, j = members[a], members[b]
                if rows[i]["video_id"] != rows[j]["video_id"]:
                    pairs.add((min(i, j), max(i, j), s))
        logger.info(
            "dedup: %d clips in %d centroid groups, %d pairs >= %.3f",
            len(rows),
            len(groups),
            len(pairs),
            self.threshold,
        )
        # a clip's nearest in each group it was sent to → its nearest overall
        found = nearest_pairs(sorted(pairs), rank=rank)
        yield from resolve_duplicates(rows, *self.matches(rows, found, sigs))


# --- a run's duplicate map ------------------------------------------------------------------


def dedup_row(clip: Mapping[str, Any]) -> dict[str, Any]:
    """What dedup needs of a kept clip: its ``dedup_signature`` and what ranks duplicates."""
    keys = ("clip_id", "video_id", "scene_index", "caption_score", "status")
    row = {k: clip.get(k) for k in keys}
    row["start_frame"], row["end_frame"] = clip["start_frame"], clip["end_frame"]
    row[SIGNATURE_KEY] = list(clip[SIGNATURE_KEY])
    return row


def apply_duplicates(clips: Iterable[Mapping[str, Any]], dup_of: Mapping[str, str]) -> list[dict]:
    """The clips with ``{clip_id: duplicate_of}`` applied: a kept duplicate is dropped with
    reason ``duplicate`` and names the clip it copies."""
    out = []
    for clip in clips:
        clip = dict(clip)
        original = dup_of.get(clip["clip_id"])
        if original is not None and clip.get("status") == KEPT:
            clip["status"], clip["reason"], clip["duplicate_of"] = DROPPED, DUPLICATE, original
        out.append(clip)
    return out


def story_survives_dedup(
    story: Mapping[str, Any],
    dup_of: Mapping[str, str],
    clips: Sequence[Mapping[str, Any]] | None = None,
) -> bool:
    """False when every segment of ``story`` shows a duplicate clip (a re-upload or trimmed
    copy of another video); a story that reuses one scene of another video is still a
    distinct timeline.

    A segment names only its first clip, and may span several scenes (consecutive scenes with
    one prompt merge). With ``clips`` (the video's clip rows) the story is judged on the
    segments dedup leaves (:func:`curate.recaption.with_clip_status` splits a segment whose
    scenes dedup parted): it goes only when every one of them is a duplicate. Without
    ``clips`` a merged segment is judged by its first clip alone."""
    if clips is not None:
        from .recaption import with_clip_status

        segments = with_clip_status(story, apply_duplicates(clips, dup_of))["segments"]
        # a segment not built from these clips is left as it was: judged by its first clip
        unchanged = [dict(seg) for seg in story.get("segments") or ()]
        return not segments or not all(
            seg.get("reason") == DUPLICATE or (seg in unchanged and seg.get("clip_id") in dup_of)
            for seg in segments
        )
    ids = [seg.get("clip_id") for seg in story.get("segments") or ()]
    return not ids or not all(i in dup_of for i in ids)
