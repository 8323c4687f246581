"""Schema round-trips, version checks and row validation messages."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from schemas import (
    CLIPS_SCHEMA,
    SCHEMA_VERSION,
    RunManifest,
    SchemaError,
    ShardInfo,
    read_parquet,
    rows_to_table,
    table_to_rows,
    write_parquet,
)
from schemas.tables import META_SCHEMA_VERSION, META_TABLE


def clip_row(i: int = 0, **overrides):
    row = {
        "clip_id": f"v{i}:0000",
        "video_id": f"v{i}",
        "scene_index": 0,
        "uri": f"/data/v{i}.mp4",
        "start_frame": 0,
        "end_frame": 48,
        "start_s": 0.0,
        "end_s": 2.0,
        "fps": 24.0,
        "width": 320,
        "height": 240,
        "transition": "start",
        "detector_score": 31.5,
        "source_caption": "a red circle moving right on a blue background",
        "caption_score": 0.31,
        "frame_scores": [0.3, 0.32],
        "status": "kept",
        "reason": "",
        "recaption": "a red circle moving right on a blue background",
        "recaption_source": "source",
        "recaption_score": 0.31,
        "embedding": [0.6, 0.8],
        "duplicate_of": None,
        "keyframes": [b"\xff\xd8jpeg"],
        "keyframe_format": "jpeg",
    }
    row.update(overrides)
    return row


def story_row():
    return {
        "story_id": "v0",
        "video_id": "v0",
        "uri": "/data/v0.mp4",
        "fps": 24.0,
        "duration_s": 4.0,
        "num_frames": 96,
        "segments": [
            {
                "start_s": 0.0,
                "end_s": 2.0,
                "start_frame": 0,
                "end_frame": 48,
                "prompt": "a red circle moving right on a blue background",
                "clip_id": "v0:0000",
                "score": 0.3,
            },
            {
                "start_s": 2.0,
                "end_s": 4.0,
                "start_frame": 48,
                "end_frame": 96,
                "prompt": "a green square growing on a black background",
                "clip_id": "v0:0001",
                "score": 0.28,
            },
        ],
    }


@pytest.mark.parametrize(
    "kind,rows",
    [
        ("clips", [clip_row(0), clip_row(1, duplicate_of="v0:0000", status="dropped")]),
        ("stories", [story_row()]),
        (
            "failures",
            [
                {
                    "input_id": "v9",
                    "uri": "/x.mp4",
                    "stage": "probe",
                    "error_type": "VideoOpenFailure",
                    "message": "/x.mp4: zero-byte file",
                    "traceback": "Traceback ...",
                    "source": "m.jsonl",
                    "source_line": 3,
                }
            ],
        ),
        (
            "videos",
            [
                {
                    "video_id": "a",
                    "uri": "/a.mp4",
                    "caption": "x",
                    "captions": [{"start_s": 0.0, "end_s": 1.0, "text": "x"}],
                    "duration_s": 1.0,
                    "source": "m.jsonl",
                    "source_line": 1,
                }
            ],
        ),
    ],
)
def test_round_trip_through_parquet(tmp_path, kind, rows):
    table = rows_to_table(rows, kind)
    path = write_parquet(table, tmp_path / f"{kind}.parquet", kind)
    back = read_parquet(path, kind)
    got = table_to_rows(back)
    expected = table_to_rows(rows_to_table(rows, kind))
    assert got == expected
    # nullable columns that were not given come back as None, given ones exactly
    assert got[0][next(iter(rows[0]))] == rows[0][next(iter(rows[0]))]
    meta = pq.read_schema(path).metadata
    assert meta[META_SCHEMA_VERSION] == SCHEMA_VERSION.encode()
    assert meta[META_TABLE] == kind.encode()
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_missing_nullable_columns_become_null():
    row = clip_row()
    for col in ("keyframes", "keyframe_format", "embedding", "duplicate_of"):
        row.pop(col)
    table = rows_to_table([row], "clips")
    assert table.schema.equals(CLIPS_SCHEMA, check_metadata=False)
    assert table.column("keyframes").to_pylist() == [None]


@pytest.mark.parametrize(
    "override,message",
    [
        ({"start_frame": "0"}, "clips row 1: start_frame must be an integer, got str '0'"),
        ({"clip_id": None}, "clips row 1: clip_id is required but missing"),
        ({"fps": float("nan")}, "clips row 1: fps must be a number, got NaN"),
        ({"frame_scores": [0.1, "high"]}, "clips row 1: frame_scores[1] must be a number"),
        ({"embedding": "0.1,0.2"}, "clips row 1: embedding must be a list"),
        ({"colour": "red"}, "clips row 1: unknown columns ['colour']"),
    ],
)
def test_validation_names_row_column_and_value(override, message):
    rows = [clip_row(0), clip_row(1, **override)]
    with pytest.raises(SchemaError) as err:
        rows_to_table(rows, "clips")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "embedding,message",
    [
        ([0.1] * 100 + [float("nan")], "embedding[100] must be a number, got NaN"),
        ([0.1, True, 0.2], "embedding[1] must be a number, got bool"),
        ([0.1, None, 0.2], None),  # a null item is allowed, as before the fast path
        ([0.1, 2, 0.3], None),
        ([0.5] * 512, None),
    ],
)
def test_long_float_lists_are_checked_item_by_item(embedding, message):
    row = clip_row(0, embedding=embedding)
    if message is None:
        assert rows_to_table([row], "clips").column("embedding").to_pylist()[0] is not None
        return
    with pytest.raises(SchemaError, match=re.escape(message)):
        rows_to_table([row], "clips")


def test_story_segment_validation_names_nested_field():
    row = story_row()
    row["segments"][1]["prompt"] = None
    with pytest.raises(SchemaError, match=r"stories row 0: segments\[1\]\.prompt is required"):
        rows_to_table([row], "stories")


def test_write_rejects_table_of_other_schema(tmp_path):
    table = rows_to_table([story_row()], "stories")
    with pytest.raises(SchemaError, match="does not match the clips schema"):
        write_parquet(table, tmp_path / "x.parquet", "clips")


def _write_with_version(path, version: str):
    table = rows_to_table([story_row()], "stories")
    meta = {META_SCHEMA_VERSION: version.encode(), META_TABLE: b"stories"}
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_newer_and_older_files_get_a_clear_message(tmp_path):
    major = int(SCHEMA_VERSION.split(".")[0])
    _write_with_version(tmp_path / "new.parquet", f"{major + 1}.0")
    with pytest.raises(SchemaError, match="newer storyloom.*upgrade"):
        read_parquet(tmp_path / "new.parquet", "stories")
    _write_with_version(tmp_path / "old.parquet", "0.1")
    with pytest.raises(SchemaError, match="older storyloom.*re-run"):
        read_parquet(tmp_path / "old.parquet", "stories")


def test_stories_from_before_segment_status_name_the_change_and_the_fix(tmp_path):
    _write_with_version(tmp_path / "old.parquet", "1.0")
    with pytest.raises(
        SchemaError, match=r"schema version 1.0.*clips' status.*`curate run` again with --overwrite"
    ):
        read_parquet(tmp_path / "old.parquet", "stories")
    # the other tables did not change in 1.1: their 1.0 files still read
    table = rows_to_table([clip_row(0)], "clips")
    meta = {META_SCHEMA_VERSION: b"1.0", META_TABLE: b"clips"}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "clips.parquet")
    assert read_parquet(tmp_path / "clips.parquet", "clips").num_rows == 1


def test_foreign_parquet_and_wrong_kind(tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(SchemaError, match="not a storyloom table"):
        read_parquet(tmp_path / "foreign.parquet")
    write_parquet(rows_to_table([story_row()], "stories"), tmp_path / "s.parquet", "stories")
    with pytest.raises(SchemaError, match="holds a 'stories' table, expected 'clips'"):
        read_parquet(tmp_path / "s.parquet", "clips")
    (tmp_path / "text.parquet").write_text("hello")
    with pytest.raises(SchemaError, match="not a Parquet file"):
        read_parquet(tmp_path / "text.parquet")


def test_read_folder_of_shards_concatenates(tmp_path):
    for i in range(3):
        write_parquet(
            rows_to_table([clip_row(i)], "clips"), tmp_path / f"part-{i}.parquet", "clips"
        )
    table = read_parquet(tmp_path, "clips")
    assert sorted(table.column("video_id").to_pylist()) == ["v0", "v1", "v2"]


def test_run_manifest_round_trip(tmp_path):
    m = RunManifest(
        config={"threshold": 0.2},
        counts={"kept": 3, "dropped": 1},
        shards=[ShardInfo("clips", "clips/part-00000.parquet", 4)],
    )
    m.write(tmp_path)
    back = RunManifest.read(tmp_path)
    assert back == m
    data = json.loads((tmp_path / schemas.MANIFEST_NAME).read_text())
    data["schema_version"] = "99.0"
    (tmp_path / schemas.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="newer storyloom"):
        RunManifest.read(tmp_path)
    with pytest.raises(SchemaError, match="no run manifest"):
        RunManifest.read(tmp_path / "nowhere")


def test_a_failures_file_of_schema_1_0_reads_with_attempt_null(tmp_path):
    """Files written before ``attempt`` existed stay readable, alone or beside new ones."""
    old_schema = pa.schema([f for f in schemas.FAILURES_SCHEMA if f.name != "attempt"])
    row = {"input_id": "v", "stage": "probe", "error_type": "E", "message": "m"}
    old = pa.Table.from_pylist([row], schema=old_schema)
    meta = {META_SCHEMA_VERSION: b"1.0", META_TABLE: b"failures"}
    pq.write_table(old.replace_schema_metadata(meta), tmp_path / "part-0.parquet")
    new = rows_to_table([{**row, "input_id": "w", "attempt": 2}], "failures")
    write_parquet(new, tmp_path / "part-1.parquet", "failures")
    table = read_parquet(tmp_path, "failures")
    assert table.schema.equals(schemas.FAILURES_SCHEMA, check_metadata=False)
    assert table.column("attempt").to_pylist() == [None, 2]


def test_a_shard_missing_a_required_column_is_named(tmp_path):
    table = rows_to_table([clip_row()], "clips").drop_columns(["video_id"])
    pq.write_table(table, tmp_path / "c.parquet")
    with pytest.raises(SchemaError, match="lacks its column 'video_id'"):
        read_parquet(tmp_path / "c.parquet", "clips")
