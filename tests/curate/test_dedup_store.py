"""Dedup over signatures on disk: the video pass reads a store as it reads an array, the
sparse duplicate map equals union-find over every row, and inverted lists over a store find
what exact search in memory finds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.dedup import (
    DEDUP_COLUMNS,
    ClipRows,
    Deduplicator,
    consistent_pairs,
    duplicate_map,
    resolve_duplicates,
    similar_pairs,
)
from curate.dedup_index import (
    SignatureStore,
    assign_lists,
    recall_against_exact,
    search_list,
    train_lists,
)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def corpus(videos=300, dim=32, seed=0):
    """Videos of 1-5 scenes; every 10th a trimmed copy of the one before (its scenes near
    its source's, the first one less so); rows and signatures in video order."""
    rng = np.random.default_rng(seed)
    rows, sigs, planted = [], [], []
    prev: list[int] = []
    for v in range(videos):
        vid = f"v{v:04d}"
        copy = v % 10 == 9 and prev
        n = len(prev) if copy else int(rng.integers(1, 6))
        mine = []
        for i in range(n):
            if copy:
                noise = 0.45 if i == 0 else 0.05  # the trimmed scene matches less well
                sigs.append(_unit(sigs[prev[i]] + noise * _unit(rng.normal(size=dim))))
                planted.append((prev[i], len(rows)))
            else:
                sigs.append(_unit(rng.normal(size=dim)))
            mine.append(len(rows))
            rows.append(
                {
                    "clip_id": f"{vid}-{i:03d}",
                    "video_id": vid,
                    "scene_index": i,
                    "caption_score": float(rng.uniform(0.2, 0.9)),
                    "status": "kept",
                    "start_frame": 10 * i,
                    "end_frame": 10 * i + 10,
                }
            )
        prev = mine
    return rows, np.stack(sigs), planted


def test_the_video_pass_reads_a_store_as_it_reads_an_array(tmp_path):
    rows, sigs, _ = corpus()
    store = SignatureStore(tmp_path / "s.sig", sigs.shape[1], dtype=np.float32)
    store.append(sigs)
    pairs = similar_pairs(sigs, 0.95)
    table = ClipRows(pa.Table.from_pylist(rows, schema=DEDUP_COLUMNS))
    in_memory = consistent_pairs(rows, pairs, sigs, threshold=0.95, relaxed_threshold=0.8)
    on_disk = consistent_pairs(table, pairs, store, threshold=0.95, relaxed_threshold=0.8)
    assert on_disk == in_memory and len(in_memory) > len(pairs) > 0


def test_the_sparse_duplicate_map_is_union_find_over_every_row():
    rng = np.random.default_rng(2)
    rows = [
        {"clip_id": f"c{i:03d}", "caption_score": float(rng.choice([0.3, 0.5, 0.5, 0.9]))}
        for i in range(200)
    ]
    pairs = [(int(a), int(b), 1.0) for a, b in rng.integers(200, size=(120, 2)) if a != b]
    marked = resolve_duplicates(rows, pairs)
    expected = {r["clip_id"]: r["duplicate_of"] for r in marked if r.get("duplicate_of")}
    assert duplicate_map(rows, pairs) == expected and expected


def test_inverted_lists_over_a_store_give_the_exact_duplicate_map(tmp_path):
    rows, sigs, planted = corpus(videos=600)
    dedup = Deduplicator.at(0.95, pixel_weight=0.0)
    exact = dedup.duplicates([{**r, "dedup_signature": s} for r, s in zip(rows, sigs)])

    store = SignatureStore(tmp_path / "s.sig", sigs.shape[1])  # float16 rows
    store.append(sigs)
    centroids = train_lists(store, 24, seed=0)
    sizes = assign_lists(store, centroids, tmp_path / "lists", nprobe=2)
    found = {}
    for key in range(len(sizes)):
        for i, j, s in search_list(tmp_path / "lists", key, store, 0.95):
            found[(i, j)] = s
    pairs = sorted((i, j, s) for (i, j), s in found.items())
    table = ClipRows(pa.Table.from_pylist(rows, schema=DEDUP_COLUMNS))
    approx = duplicate_map(table, *dedup.matches(table, pairs, store))

    assert approx == exact
    strong = {(a, b) for a, b in planted if float(sigs[a] @ sigs[b]) >= 0.95}
    assert strong <= {(i, j) for i, j, _ in pairs}  # every planted copy above the threshold
    recall = recall_against_exact(store, pairs, 0.95, queries=len(rows))
    assert recall["recall"] >= 0.95 and recall["false_pairs"] == 0
