"""Dedup of whole copies: a re-upload and its original do not split their scenes, a repeated
shot stays in its video, identical and uniform clips match, and the corpus search does not
depend on how the work was chunked or on clips outside this run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.dedup import (
    DEDUP_COLUMNS,
    MAX_NEIGHBOURS,
    ClipRows,
    Deduplicator,
    clip_rank,
    clip_signature,
    duplicate_map,
    similar_pairs,
)
from curate.dedup_index import SignatureStore, ivf_pairs
from tests.test_corpus_scale import _script as corpus_scale_script


def _unit(v):
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _rows(videos, *, seed=0, noise=0.03, dim=64):
    """``videos``: ``{video_id: [(scene vector, caption score), ...]}`` → rows with
    signatures (each scene re-encoded: a little noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for vid, scenes in videos.items():
        for k, (vec, score) in enumerate(scenes):
            rows.append(
                {
                    "clip_id": f"{vid}:{k:04d}",
                    "video_id": vid,
                    "scene_index": k,
                    "caption_score": score,
                    "status": "kept",
                    "start_frame": 100 * k,
                    "end_frame": 100 * k + 100,
                    "dedup_signature": _unit(vec + noise * _unit(rng.normal(size=dim))),
                }
            )
    return rows


def _on_disk(tmp_path, rows, dedup):
    """The duplicate map as the corpus phase finds it: rows as Arrow columns, signatures in
    a store on disk."""
    sigs = np.stack([r["dedup_signature"] for r in rows])
    store = SignatureStore(tmp_path / "s.sig", sigs.shape[1], dtype=np.float32)
    store.append(sigs)
    table = ClipRows(pa.Table.from_pylist(rows, schema=DEDUP_COLUMNS))
    pairs = similar_pairs(sigs, dedup.threshold)
    return duplicate_map(table, *dedup.matches(table, pairs, store))


def test_a_reupload_keeps_every_scene_of_one_video(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [_unit(rng.normal(size=64)) for _ in range(3)]
    # copies score alike within re-encoding noise: which copy wins must not go scene by scene
    rows = _rows(
        {
            "orig": list(zip(scenes, [0.7463, 0.7502, 0.7520])),
            "copy": list(zip(scenes, [0.7464, 0.7501, 0.7521])),
        }
    )
    dedup = Deduplicator.at(0.95)
    one_way = {f"orig:{k:04d}": f"copy:{k:04d}" for k in range(3)}
    other_way = {v: k for k, v in one_way.items()}
    in_memory = dedup.duplicates(rows)
    assert in_memory in (one_way, other_way)
    assert _on_disk(tmp_path, rows, dedup) == in_memory
    assert dedup.duplicates(rows[::-1]) == in_memory


def test_a_trimmed_copy_gives_way_to_its_original_and_a_shared_scene_to_the_best_clip(
    tmp_path,
):
    rng = np.random.default_rng(1)
    s = [_unit(rng.normal(size=64)) for _ in range(6)]
    rows = _rows(
        {
            # the original, 4 scenes
            "a-orig": [(s[0], 0.50), (s[1], 0.50), (s[2], 0.50), (s[3], 0.50)],
            # its trimmed copy (scenes 1-3), better scored: still the copy, all of it goes
            "b-trim": [(s[1], 0.90), (s[2], 0.90), (s[3], 0.90)],
            # an unrelated video reusing scene 0: not a copy, the better clip is kept
            "c-other": [(s[0], 0.80), (s[4], 0.80), (s[5], 0.80)],
        }
    )
    dedup = Deduplicator.at(0.95)
    expected = {
        "b-trim:0000": "a-orig:0001",
        "b-trim:0001": "a-orig:0002",
        "b-trim:0002": "a-orig:0003",
        "a-orig:0000": "c-other:0000",
    }
    assert dedup.duplicates(rows) == expected
    assert _on_disk(tmp_path, rows, dedup) == expected


def test_a_repeated_shot_is_not_a_duplicate_of_its_own_video(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _unit(rng.normal(size=64)), _unit(rng.normal(size=64))
    # video A shows X, Y, X; B is A re-encoded
    rows = _rows({"A": [(x, 0.8), (y, 0.8), (x, 0.8)], "B": [(x, 0.7), (y, 0.7), (x, 0.7)]})
    dedup = Deduplicator(threshold=0.95)
    expected = {"B:0000": "A:0000", "B:0001": "A:0001", "B:0002": "A:0002"}
    assert dedup.duplicates(rows) == expected
    assert _on_disk(tmp_path, rows, dedup) == expected
    assert dedup.duplicates([r for r in rows if r["video_id"] == "A"]) == {}


def test_a_group_never_holds_two_clips_of_one_video():
    def row(clip_id, score):
        return {
            "clip_id": clip_id,
            "video_id": clip_id.split(":")[0],
            "caption_score": score,
            "status": "kept",
            "start_frame": 0,
            "end_frame": 30,
        }

    rows = [row("a:0000", 0.5), row("b:0000", 0.9), row("a:0001", 0.5)]
    # b:0000 looks like both scenes of a: only the stronger pair joins
    pairs = [(0, 1, 0.99), (1, 2, 0.97)]
    assert duplicate_map(rows, pairs) == {"a:0000": "b:0000"}
    # the same whatever the order of the rows and pairs
    order = [2, 0, 1]
    moved = [rows[i] for i in order]
    at = {old: new for new, old in enumerate(order)}
    assert duplicate_map(moved, [(at[j], at[i], s) for i, j, s in pairs[::-1]]) == {
        "a:0000": "b:0000"
    }


def test_identical_copies_are_found_at_threshold_one(tmp_path):
    rng = np.random.default_rng(0)
    sigs = [
        clip_signature(
            {
                "embedding": rng.normal(size=512).astype(np.float32),
                "frames": rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
            }
        )
        for _ in range(100)
    ]
    x = np.stack([s for s in sigs for _ in range(2)])  # each signature twice
    expected = {(2 * k, 2 * k + 1) for k in range(100)}
    assert {(i, j) for i, j, _ in similar_pairs(x, 1.0)} == expected
    store = SignatureStore(tmp_path / "s.sig", x.shape[1], dtype=np.float32)
    store.append(x)
    pairs, _ = ivf_pairs(store, 1.0, n_lists=4, nprobe=4, workers=1)
    assert {(i, j) for i, j, _ in pairs} == expected


def test_uniform_frames_give_a_unit_signature_and_match_their_copy():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=512).astype(np.float32)
    black = np.zeros((4, 32, 32, 3), np.uint8)
    grey = np.full((4, 32, 32, 3), 128, np.uint8)
    a = clip_signature({"embedding": emb, "frames": black})
    b = clip_signature({"embedding": emb, "frames": grey})
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert float(a @ b) > 0.999
    assert [(i, j) for i, j, _ in similar_pairs(np.stack([a, b]), 0.95)] == [(0, 1)]


# --- the corpus phase's search ------------------------------------------------------------


def _write_chunks(dedup_dir: Path, rows, sigs, splits) -> list[Path]:
    """Dedup columns and float16 signatures as the chunks spill them, split at ``splits``."""
    dedup_dir.mkdir(parents=True, exist_ok=True)
    metas = []
    for part, idx in enumerate(np.split(np.arange(len(rows)), splits)):
        meta = dedup_dir / f"c-{part:05d}.parquet"
        pq.write_table(pa.Table.from_pylist([rows[i] for i in idx], schema=DEDUP_COLUMNS), meta)
        SignatureStore(meta.with_suffix(".sig"), sigs.shape[1]).append(sigs[idx])
        metas.append(meta)
    return metas


def test_inverted_lists_do_not_depend_on_how_the_work_was_chunked(tmp_path):
    from curate.corpus.duplicates import (
        build_lists,
        dedup_table,
        found_pairs,
        list_duplicates,
        search_groups,
        search_list_group,
        signature_store,
    )

    rng = np.random.default_rng(0)
    n, dim = 3000, 16
    centres = rng.normal(size=(30, dim))
    x = _unit(centres[rng.integers(0, 30, n)] + 3.0 * rng.normal(size=(n, dim)))
    src = rng.choice(n, 300, replace=False)
    x = np.concatenate([x, _unit(x[src] + 0.05 * rng.normal(size=(300, dim)))])
    rows = [
        {
            "clip_id": f"v{i:05d}:0000",
            "video_id": f"v{i:05d}",
            "scene_index": 0,
            "caption_score": 0.5,
            "status": "kept",
            "start_frame": 0,
            "end_frame": 10,
        }
        for i in range(len(x))
    ]
    dedup = Deduplicator.at(0.95, n_centroids=40)
    results = []
    for name, perm, splits in (
        ("a", np.arange(len(x)), [1000, 2000]),
        ("b", rng.permutation(len(x)), [37, 1500, 1501, 3100]),
    ):
        scratch = tmp_path / name
        dedup_dir = scratch / "dedup"
        metas = _write_chunks(dedup_dir, [rows[i] for i in perm], x[perm], splits)
        table = dedup_table(dedup_dir)
        info = build_lists(scratch, dedup_dir, metas, dedup, memory_mb=64)
        assert info is not None
        for group in search_groups(info["lists"]):
            search_list_group(scratch, dedup_dir, group, dedup.threshold)
        store = signature_store(dedup_dir)
        results.append(list_duplicates(table, found_pairs(scratch), store, dedup))
    assert results[0] == results[1] and len(results[0]) >= 250


def test_exact_search_or_not_counts_this_runs_kept_clips(tmp_path):
    from curate.corpus import CorpusPhase
    from curate.threshold import Threshold

    script = corpus_scale_script()
    script.DIM = 16
    keep, _ = script.write_work(tmp_path, 1000, per_video=5, per_file=20, seed=0)
    this_run = dict(list(keep.items())[:40])  # 40 videos, 200 clips of 1000 in the work
    phase = CorpusPhase(
        tmp_path,
        threshold=Threshold(0.0, False),
        dedup=Deduplicator.at(0.95),
        exact_limit=500,
    )
    plan = phase.make_plan(this_run)
    assert plan.exact and plan.work_clips == 1000 and plan.dedup_clips == 200
    plan = phase.make_plan(keep)
    assert plan.dedup_clips == 1000 and not plan.exact


# --- a shot shared by many videos -----------------------------------------------------------


def _shared_intro(videos=300, seed=3):
    """``videos`` videos, each a shared intro card (re-encoded) and 4 scenes of its own."""
    rng = np.random.default_rng(seed)
    intro = _unit(rng.normal(size=64))
    spec = {
        f"v{v:04d}": [(intro, 0.5)] + [(_unit(rng.normal(size=64)), 0.5) for _ in range(4)]
        for v in range(videos)
    }
    return _rows(spec, seed=seed)


def test_a_shot_shared_by_many_videos_is_one_group_with_pairs_bounded(tmp_path, monkeypatch):
    import curate.dedup as dedup_module

    videos = 300
    rows = _shared_intro(videos)
    sigs = np.stack([r["dedup_signature"] for r in rows])
    handed: dict[str, int] = {}
    real = dedup_module.consistent_matches

    def counting(rows_, pairs, signatures, **settings):
        pairs = list(pairs)
        handed["pairs"] = len(pairs)
        handed["video_pairs"] = len(
            {tuple(sorted((rows_[i]["video_id"], rows_[j]["video_id"]))) for i, j, _ in pairs}
        )
        return real(rows_, pairs, signatures, **settings)

    monkeypatch.setattr(dedup_module, "consistent_matches", counting)
    dedup = Deduplicator.at(0.95)
    dup = dedup.duplicates(rows)
    intros = sorted(r["clip_id"] for r in rows if r["scene_index"] == 0)
    # one group of every intro, the best (ties: the first clip id) kept; no other scene touched
    assert dup == {c: intros[0] for c in intros[1:]}
    # every pair among the intros is above the threshold, but each clip keeps its nearest
    every = videos * (videos - 1) // 2
    assert len(similar_pairs(sigs, 0.95, neighbours=None)) == every
    bound = videos * MAX_NEIGHBOURS
    assert 0 < handed["pairs"] <= bound < every and len(rows) * MAX_NEIGHBOURS >= bound
    assert handed["video_pairs"] <= bound
    monkeypatch.setattr(dedup_module, "consistent_matches", real)

    # range search in small blocks of queries, inverted lists and the store find the same
    pairs = {(i, j) for i, j, _ in similar_pairs(sigs, 0.95)}
    monkeypatch.setattr(dedup_module, "RANGE_BLOCK_RESULTS", 50_000)
    assert {(i, j) for i, j, _ in similar_pairs(sigs, 0.95)} == pairs
    store = SignatureStore(tmp_path / "s.sig", sigs.shape[1], dtype=np.float32)
    store.append(sigs)
    found, report = ivf_pairs(store, 0.95, n_lists=4, nprobe=4, workers=1)
    assert {(i, j) for i, j, _ in found} == pairs and report.pairs == len(pairs)
    assert _on_disk(tmp_path / "disk", rows, dedup) == dup


def test_a_shared_shot_gives_the_same_groups_whatever_the_row_order():
    rows = _shared_intro(300)
    dedup = Deduplicator.at(0.95)
    dup = dedup.duplicates(rows)
    shuffled = [rows[i] for i in np.random.default_rng(7).permutation(len(rows))]
    assert dedup.duplicates(shuffled) == dup

    def clip_pairs(rs):
        sigs = np.stack([r["dedup_signature"] for r in rs])
        ids = [r["clip_id"] for r in rs]
        return {
            tuple(sorted((ids[i], ids[j])))
            for i, j, _ in similar_pairs(sigs, 0.95, rank=clip_rank(rs))
        }

    assert clip_pairs(shuffled) == clip_pairs(rows)
    # centroid groups (above the exact limit): the same, in either order
    grouped = Deduplicator.at(0.95, exact_limit=100)
    marked = {r["clip_id"]: r.get("duplicate_of") for r in grouped.process_all(rows)}
    again = {r["clip_id"]: r.get("duplicate_of") for r in grouped.process_all(shuffled)}
    assert again == marked and {k: v for k, v in marked.items() if v} == dup
