"""The run folder: atomic work commits, the done-set, shard writing and publishing."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from curate import shards
from curate.errors import OutputError
from curate.work import work_record
from schemas import RunManifest


def clip(vid: str, i: int, **extra) -> dict:
    return {
        "clip_id": f"{vid}:{i:04d}",
        "video_id": vid,
        "scene_index": i,
        "uri": f"{vid}.mp4",
        "start_frame": 10 * i,
        "end_frame": 10 * (i + 1),
        "start_s": float(i),
        "end_s": float(i + 1),
        "fps": 10.0,
        "width": 4,
        "height": 4,
        "status": "kept",
        **extra,
    }


def record(vid: str, n: int = 2, *, fp: str = "fp", attempt: int = 1, failed: bool = False) -> dict:
    video = {"video_id": vid, "uri": f"{vid}.mp4", "fingerprint": fp, "attempt": attempt}
    if failed:
        row = {"input_id": vid, "stage": "probe", "error_type": "E", "message": "m"}
        return work_record(video, [], [row])
    return work_record(video, [clip(vid, i) for i in range(n)], [])


def test_output_dir_is_created_and_a_file_in_the_way_is_named(tmp_path):
    out = shards.check_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and not any(out.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file exists and is not a folder"):
        shards.check_output_dir(tmp_path / "file" / "out")


def test_committed_work_is_the_done_set_and_reads_back_once(tmp_path):
    first = shards.commit_work(tmp_path, [record("a"), record("b", 1)])
    again = shards.commit_work(tmp_path, [record("b", 1), record("a")])  # a retried batch
    assert first == again and first.name == shards.work_file_name(["b\tfp\t1", "a\tfp\t1"])
    shards.commit_work(tmp_path, [record("c", 3), record("a")])
    assert shards.commit_work(tmp_path, []) is None
    assert shards.done_set(tmp_path) == {"a", "b", "c"}
    assert sorted(r["video_id"] for r in shards.read_work(tmp_path)) == ["a", "b", "c"]
    assert shards.count_work_clips(tmp_path) == (2 + 1) + (3 + 2)
    # nothing half-written is left behind, and no temporary file counts as work
    assert [p.name for p in shards.work_files(tmp_path)] == sorted(
        p.name for p in (tmp_path / shards.WORK_DIR).iterdir() if p.name.startswith("w-")
    )


def test_work_from_another_layout_is_refused(tmp_path):
    path = shards.commit_work(tmp_path, [record("a")])
    table = pq.read_table(path).replace_schema_metadata({})
    pq.write_table(table, path)
    with pytest.raises(OutputError, match="work version none"):
        shards.read_work_file(path)


def test_shard_of_is_stable_and_in_range():
    assert shards.shard_of("video-1", 7) == shards.shard_of("video-1", 7)
    assert {shards.shard_of(f"v{i}", 3) for i in range(100)} == {0, 1, 2}
    assert shards.shard_count(0, rows_per_shard=10) == 1
    assert shards.shard_count(21, rows_per_shard=10) == 3
    assert shards.shard_name(2, 3) == "part-00002-of-00003.parquet"
    with pytest.raises(ValueError, match="rows_per_shard"):
        shards.shard_count(5, rows_per_shard=0)


def test_publish_swaps_the_staged_tables_in_and_writes_the_manifest_last(tmp_path):
    rows = [clip("b", 1), clip("a", 0), clip("b", 0)]
    shards.begin_publish(tmp_path)
    info = shards.write_shard(tmp_path, "clips", 0, 1, rows, sort_key=("video_id", "scene_index"))
    assert info.rows == 3 and not (tmp_path / "clips").exists()  # staged only
    manifest = RunManifest(config={"x": 1}, counts=dict(shards.table_counts("clips", rows)))
    manifest.shards.append(info)
    path = shards.publish(tmp_path, manifest)
    assert path.name == "_manifest.json"
    assert not (tmp_path / shards.STAGING_DIR).exists()
    listed = json.loads(path.read_text())["shards"]
    assert [s["table"] for s in listed] == list(shards.TABLES)  # empty tables get a shard too
    clips = shards.read_table(tmp_path, "clips").to_pylist()
    assert [c["clip_id"] for c in clips] == ["a:0000", "b:0000", "b:0001"]
    assert shards.read_table(tmp_path, "stories").num_rows == 0
    assert shards.RunFolder(tmp_path).manifest.counts == {"clips": 3, "clips_kept": 3}
    with pytest.raises(ValueError, match="table must be one of"):
        shards.read_table(tmp_path, "videos")


def test_table_counts():
    counts = shards.table_counts(
        "clips",
        [
            {"status": "kept", "reason": None},
            {"status": "dropped", "reason": "duplicate"},
            {"status": "dropped", "reason": "too_short"},
        ],
    )
    assert counts == {
        "clips": 3,
        "clips_kept": 1,
        "clips_dropped": 2,
        "clips_dropped_duplicate": 1,
        "clips_dropped_too_short": 1,
    }
    assert shards.table_counts("failures", [{"stage": "probe"}] * 2) == {
        "failures": 2,
        "failures_stage_probe": 2,
    }


def test_a_rerun_redoes_changed_and_failed_videos_and_publishes_the_latest(tmp_path):
    shards.commit_work(tmp_path, [record("same"), record("changed", fp="old")])
    shards.commit_work(tmp_path, [record("failed", failed=True)])
    videos = [{"video_id": v} for v in ("same", "changed", "failed", "new")]
    fingerprints = {"same": "fp", "changed": "new", "failed": "fp", "new": "fp"}
    plan = shards.resume_plan(tmp_path, videos, fingerprints)
    assert plan.done == {"same"}
    assert [(v["video_id"], v["fingerprint"], v["attempt"]) for v in plan.todo] == [
        ("changed", "new", 2),
        ("failed", "fp", 2),
        ("new", "fp", 1),
    ]
    assert (plan.changed, plan.retried) == (1, 1)
    kept = shards.resume_plan(tmp_path, videos, fingerprints, retry_failed=False)
    assert kept.done == {"same", "failed"}
    # the redone videos are committed; the latest attempt under the current fingerprint wins
    shards.commit_work(tmp_path, [record("changed", 3, fp="new", attempt=2)])
    shards.commit_work(tmp_path, [record("failed", 1, attempt=2)])
    assert shards.current_records(tmp_path, fingerprints) == {"same", "changed", "failed"}
    current = {r["video_id"]: r for r in shards.read_work(tmp_path, fingerprints)}
    assert {v: (r["attempt"], len(r["clips"])) for v, r in current.items()} == {
        "same": (1, 2),
        "changed": (2, 3),
        "failed": (2, 1),
    }
    assert shards.resume_plan(tmp_path, videos, fingerprints).done == {"same", "changed", "failed"}
