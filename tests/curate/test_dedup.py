"""Dedup: signatures, faiss search, union-find, video consistency, the k-means path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curate.dedup import (
    Deduplicator,
    UnionFind,
    assign_centroids,
    clip_signature,
    similar_pairs,
    thumbnail_signature,
    train_centroids,
)
from curate.shapes import SceneFacts, render_scene

FACTS = [
    SceneFacts("red", "circle", "moving right", "navy"),
    SceneFacts("yellow", "star", "moving up", "gray"),
    SceneFacts("white", "square", "growing", "brown"),
]


def content_embedding(facts: SceneFacts) -> list[float]:
    """Stands in for CLIP at its worst for dedup: knows what is shown, not where."""
    e = np.zeros(16, np.float32)
    e[hash(facts.color) % 5] += 1
    e[5 + hash(facts.shape) % 5] += 1
    e[10 + hash(facts.background) % 6] += 1
    return (e / np.linalg.norm(e)).tolist()


def sample(frames: np.ndarray, k: int = 4, trim: int = 0) -> np.ndarray:
    n = len(frames) - trim
    idx = [trim + int((2 * i + 1) * n // (2 * k)) for i in range(k)]
    return frames[idx]


def clip_row(video, i, facts, seed, *, score=0.3, trim=0, resize=None, noise=0, n=60):
    frames = render_scene(facts, num_frames=n, width=128, height=72, seed=seed)
    if resize:
        frames = np.stack([cv2.resize(cv2.resize(f, resize), (128, 72)) for f in frames])
    if noise:
        rng = np.random.default_rng(seed + 99)
        frames = np.clip(frames + rng.integers(-noise, noise + 1, frames.shape), 0, 255).astype(
            np.uint8
        )
    return {
        "clip_id": f"{video}:{i:04d}",
        "video_id": video,
        "scene_index": i,
        "start_frame": 0,
        "end_frame": n - trim,
        "caption_score": score,
        "status": "kept",
        "reason": None,
        "embedding": content_embedding(facts),
        "frames": sample(frames, trim=trim),
    }


@pytest.fixture(scope="module")
def corpus():
    rows = []
    # video a: original, b: re-encoded copy (noise + resize), c: same facts, other positions
    for i, f in enumerate(FACTS):
        rows.append(clip_row("a", i, f, seed=10 + i, score=0.30))
        rows.append(clip_row("b", i, f, seed=10 + i, score=0.35, noise=3, resize=(96, 54)))
        rows.append(clip_row("c", i, f, seed=50 + i, score=0.40))
    return rows


def test_signature_shape_and_norm(corpus):
    sig = clip_signature(corpus[0], pixel_weight=0.5, k=4)
    assert sig.shape == (16 + 4 * 8 * 8 * 3,) and sig.dtype == np.float32
    assert np.linalg.norm(sig) == pytest.approx(1.0, abs=1e-5)
    only_emb = clip_signature(corpus[0], pixel_weight=0.0)
    assert only_emb.shape == (16,)
    with pytest.raises(ValueError, match="no embedding"):
        clip_signature({"clip_id": "x", "frames": corpus[0]["frames"]})
    with pytest.raises(ValueError, match="no sampled frames"):
        clip_signature({"clip_id": "x", "embedding": [1.0, 0.0]})
    with pytest.raises(ValueError, match="pixel_weight"):
        clip_signature(corpus[0], pixel_weight=2)


def test_thumbnails_ignore_a_global_brightness_shift(corpus):
    frames = corpus[0]["frames"]
    brighter = np.clip(frames.astype(int) + 20, 0, 255).astype(np.uint8)
    assert thumbnail_signature(frames) @ thumbnail_signature(brighter) > 0.99


def test_copies_are_found_and_same_content_elsewhere_is_not(corpus):
    out = {r["clip_id"]: r for r in Deduplicator(threshold=0.9).process_all(corpus)}
    for i in range(3):
        a, b, c = out[f"a:{i:04d}"], out[f"b:{i:04d}"], out[f"c:{i:04d}"]
        # b is the better-scored copy: kept; a points to it
        assert (b["status"], b.get("duplicate_of")) == ("kept", None)
        assert (a["status"], a["reason"], a["duplicate_of"]) == (
            "dropped",
            "duplicate",
            b["clip_id"],
        )
        # c shows the same facts at other positions: not a duplicate
        assert (c["status"], c.get("duplicate_of")) == ("kept", None)
    # the embedding alone cannot tell c from a copy: pixels are what separates them
    emb_only = list(
        Deduplicator(threshold=0.9, pixel_weight=0.0, relaxed_threshold=None).process_all(corpus)
    )
    assert sum(r["status"] == "dropped" for r in emb_only) > 3


def test_similar_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x[5] = x[3] + 0.01
    x[17] = x[3] + 0.02
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = {(i, j) for i, j, _ in similar_pairs(x, 0.97)}
    sims = x @ x.T
    want = {(i, j) for i in range(40) for j in range(i + 1, 40) if sims[i, j] >= 0.97}
    assert got == want and {(3, 5), (3, 17), (5, 17)} <= got
    assert similar_pairs(x[:1], 0.5) == []


def test_union_find_groups_transitively():
    uf = UnionFind(6)
    for i, j in [(0, 1), (1, 2), (4, 5)]:
        uf.union(i, j)
    assert sorted(sorted(g) for g in uf.groups()) == [[0, 1, 2], [4, 5]]


@pytest.mark.parametrize("noise", [1e-7, -1e-7])
def test_float_noise_in_scores_does_not_decide_the_kept_copy(noise):
    from curate.dedup import resolve_duplicates

    def row(clip_id, score):
        return {
            "clip_id": clip_id,
            "status": "kept",
            "caption_score": score,
            "start_frame": 0,
            "end_frame": 30,
        }

    # two copies of one scene score alike; a resumed run may see the second one a hair higher
    rows = [row("a:0001", 0.745123), row("b:0001", 0.745123 + noise)]
    out = resolve_duplicates(rows, [(0, 1, 0.99)])
    assert [r["status"] for r in out] == ["kept", "dropped"]
    assert out[1]["duplicate_of"] == "a:0001"
    # a real difference in score still decides
    out = resolve_duplicates([row("a:0001", 0.70), row("b:0001", 0.75)], [(0, 1, 0.99)])
    assert out[0]["duplicate_of"] == "b:0001"


def test_pairs_within_one_video_are_not_duplicates(corpus):
    row = corpus[0]
    twin = {**row, "clip_id": "a:0009", "scene_index": 9}
    out = Deduplicator(threshold=0.9).dedup_group([row, twin])
    assert all(r["status"] == "kept" for r in out)


def test_trimmed_copy_is_caught_through_video_consistency():
    rows = []
    for i, f in enumerate(FACTS):
        rows.append(clip_row("a", i, f, seed=10 + i, n=60))
        # first scene of the copy loses 12 frames at its start; the others are whole
        rows.append(clip_row("t", i, f, seed=10 + i, n=60, trim=12 if i == 0 else 0, score=0.2))
    strict = Deduplicator(threshold=0.97, relaxed_threshold=None)
    relaxed = Deduplicator(threshold=0.97, relaxed_threshold=0.7)
    n_strict = sum(r["reason"] == "duplicate" for r in strict.process_all(rows))
    out = list(relaxed.process_all(rows))
    dups = {r["clip_id"]: r["duplicate_of"] for r in out if r["reason"] == "duplicate"}
    assert dups == {"t:0000": "a:0000", "t:0001": "a:0001", "t:0002": "a:0002"}
    assert n_strict <= len(dups)


def test_kmeans_path_matches_exact_search():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 24)).astype(np.float32)
    rows = []
    for i, v in enumerate(base):
        rows.append(
            {
                "clip_id": f"v{i}:0000",
                "video_id": f"v{i}",
                "scene_index": 0,
                "start_frame": 0,
                "end_frame": 10,
                "caption_score": 0.5,
                "status": "kept",
            }
        )
        rows[-1]["dedup_signature"] = (v / np.linalg.norm(v)).tolist()
    for i in range(0, 60, 3):  # 20 planted copies
        v = base[i] + rng.normal(scale=0.05, size=24)
        rows.append(
            {
                "clip_id": f"d{i}:0000",
                "video_id": f"d{i}",
                "scene_index": 0,
                "start_frame": 0,
                "end_frame": 10,
                "caption_score": 0.1,
                "status": "kept",
                "dedup_signature": (v / np.linalg.norm(v)).tolist(),
            }
        )
    exact = Deduplicator(threshold=0.95, relaxed_threshold=None)
    approx = Deduplicator(
        threshold=0.95, relaxed_threshold=None, exact_limit=50, n_centroids=8, nprobe=2
    )
    e = {r["clip_id"]: r.get("duplicate_of") for r in exact.process_all(rows)}
    a = {r["clip_id"]: r.get("duplicate_of") for r in approx.process_all(rows)}
    planted = {f"d{i}:0000": f"v{i}:0000" for i in range(0, 60, 3)}
    assert {k: v for k, v in e.items() if v} == planted
    found = {k: v for k, v in a.items() if v}
    assert set(found.items()) <= set(planted.items()) and len(found) >= 18


def test_assign_centroids_keys():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cents = train_centroids(x, n_centroids=4)
    keys = assign_centroids(x, cents)
    assert keys.shape == (200,) and set(keys.tolist()) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(keys, np.argmax(x @ cents.T, axis=1))
    assert assign_centroids(x, cents, nprobe=2).shape == (200, 2)
    with pytest.raises(ValueError, match="n_centroids"):
        train_centroids(x[:3], n_centroids=4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1.5},
        {"threshold": 0.9, "relaxed_threshold": 0.95},
        {"pixel_weight": -0.1},
        {"k": 0},
        {"nprobe": 0},
    ],
)
def test_settings_are_validated(kwargs):
    with pytest.raises(ValueError, match="got"):
        Deduplicator(**kwargs)
