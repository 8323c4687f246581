"""benchmarks/corpus_scale.py at toy size: its synthetic committed work is what the per-video
phase commits, and the whole corpus phase on it finds the planted copies."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from curate import shards

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "corpus_scale", ROOT / "benchmarks" / "corpus_scale.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_work_is_committed_work_with_planted_copies(tmp_path):
    script = _script()
    keep, planted = script.write_work(tmp_path, 1003, per_file=60, copy_rate=0.1, seed=3)
    assert len(keep) == 201 and shards.count_work_clips(tmp_path) == 1005
    index = shards.work_index(tmp_path)
    assert all(shards.current_entry(index[v], fp) is not None for v, fp in keep.items())
    assert planted and all(a.split(":")[0] in keep and b.split(":")[0] in keep for a, b in planted)
    assert all(a != b for a, b in planted)


def test_the_whole_phase_finds_the_planted_copies(tmp_path):
    script = _script()
    args = argparse.Namespace(
        sizes="4000",
        threshold=0.95,
        percentile=20.0,
        nprobe=2,
        memory_mb=16,
        exact_limit=500,
        workers=2,
        queries=300,
        videos_per_file=20,
        seed=1,
        work_dir=str(tmp_path),
    )
    (row,) = script.run_phase(args)["rows"]
    assert row["chunks"] > 1 and row["dedup"]["method"] == "inverted lists"
    assert row["recall"] >= 0.95 and row["recall_exact_pairs"] > 0
    assert row["planted_pairs_kept"] > 50 and row["planted_found"] >= 0.95
    # every clip is in the clips table, a fifth of them under the percentile cut-off
    assert row["clips_kept"] + row["clips_dropped_duplicate"] < 4000 * 0.85
    assert row["clips_dropped_duplicate"] >= row["planted_pairs_kept"] * 0.95
    assert row["scratch_peak_mb"] > 0 and row["peak_rss_mb"] >= row["rss_before_mb"]
    json.dumps(row)
