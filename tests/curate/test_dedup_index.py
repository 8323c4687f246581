"""Dedup that scales past memory: signatures on disk, inverted lists, exact search per list."""

from __future__ import annotations

import numpy as np
import pytest

from curate.dedup import similar_pairs
from curate.dedup_index import SignatureStore, ivf_pairs, recall_against_exact


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _corpus(n=3000, dim=64, dups=60, seed=0):
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((20, dim)))
    x = _unit(topics[rng.integers(20, size=n)] + 1.2 * _unit(rng.standard_normal((n, dim))))
    src = rng.choice(n // 2, size=dups, replace=False)
    dst = n // 2 + rng.choice(n // 2, size=dups, replace=False)
    x[dst] = _unit(x[src] + 0.15 * _unit(rng.standard_normal((dups, dim))))
    return x, set(zip(src.tolist(), dst.tolist()))


def test_store_round_trips_rows_in_chunks_and_by_index(tmp_path):
    x, _ = _corpus(n=500)
    store = SignatureStore(tmp_path / "s.f16", 64)
    store.append(x[:300])
    store.append(x[300:])
    again = SignatureStore(tmp_path / "s.f16", 64)  # reopened: the length is read from disk
    assert len(again) == 500
    back = np.concatenate([rows for _, rows in again.chunks(128)])
    assert np.abs(back - x).max() < 2e-3  # float16 rows
    idx = np.array([499, 3, 250, 3])
    assert np.allclose(again.rows(idx), back[idx])


def test_torn_store_is_refused(tmp_path):
    path = tmp_path / "s.f16"
    path.write_bytes(b"\0" * 129)
    with pytest.raises(ValueError, match="whole number"):
        SignatureStore(path, 64)


def test_inverted_lists_find_what_exact_search_finds(tmp_path):
    x, planted = _corpus()
    store = SignatureStore(tmp_path / "s.f16", 64)
    store.append(x)
    pairs, report = ivf_pairs(store, 0.9, n_lists=16, nprobe=2, memory_mb=1, work_dir=tmp_path)
    exact = {
        (i, j) for i, j, _ in similar_pairs(np.concatenate([r for _, r in store.chunks(4096)]), 0.9)
    }
    found = {(i, j) for i, j, _ in pairs}
    assert planted <= exact  # the planted copies are above the threshold
    assert len(found & exact) / len(exact) >= 0.95 and found <= exact
    assert report.largest_list < len(x) and report.pairs == len(pairs)
    assert not list(tmp_path.glob("ivf-*"))  # its bucket files are cleaned up
    recall = recall_against_exact(store, pairs, 0.9, queries=3000)
    assert recall["recall"] >= 0.95 and recall["false_pairs"] == 0
